//! The OTLP sink (to be written).
