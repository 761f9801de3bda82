//! The file sink (to be written).
