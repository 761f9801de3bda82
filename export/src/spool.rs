//! The on-disk spool (to be written).
