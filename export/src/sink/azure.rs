//! The Azure Monitor Logs Ingestion sink (to be written).
