//! Rows for Azure Monitor Logs Ingestion, shaped like the
//! `ContainerNetworkLogs` table of Azure Container Networking Services, so
//! that its KQL and workbooks work against Sightline's custom table with
//! only the table name changed.

/// A column type, as a DCR stream declaration and a Log Analytics table
/// spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Int,
    Boolean,
    DateTime,
    Dynamic,
}

impl ColumnType {
    /// The name in ARM templates (`streamDeclarations` and table schemas).
    #[must_use]
    pub fn arm_name(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Int => "int",
            ColumnType::Boolean => "boolean",
            ColumnType::DateTime => "datetime",
            ColumnType::Dynamic => "dynamic",
        }
    }
}

/// Every column a row carries, in the order the encoder writes them: the
/// columns of `ContainerNetworkLogs` that a client may send (Azure's
/// reserved `TenantId`, `Type`, `SourceSystem` and `_…` are never sent).
/// The custom table and the DCR in `dashboards/azure/` are checked against
/// this list.
pub const COLUMNS: &[(&str, ColumnType)] = &[
    ("TimeGenerated", ColumnType::DateTime),
    ("UUID", ColumnType::String),
    ("Verdict", ColumnType::String),
    ("DropReason", ColumnType::String),
    ("TrafficDirection", ColumnType::String),
    ("TraceObservationPoint", ColumnType::String),
    ("FlowType", ColumnType::String),
    ("NodeName", ColumnType::String),
    ("Reply", ColumnType::Boolean),
    ("SourceNamespace", ColumnType::String),
    ("SourcePodName", ColumnType::String),
    ("SourceIdentity", ColumnType::Int),
    ("SourceWorkloads", ColumnType::Dynamic),
    ("SourceClusterName", ColumnType::String),
    ("DestinationNamespace", ColumnType::String),
    ("DestinationPodName", ColumnType::String),
    ("DestinationIdentity", ColumnType::Int),
    ("DestinationWorkloads", ColumnType::Dynamic),
    ("DestinationClusterName", ColumnType::String),
    ("IP", ColumnType::Dynamic),
    ("Layer4", ColumnType::Dynamic),
    ("Layer7", ColumnType::Dynamic),
    ("EventType", ColumnType::Dynamic),
    ("Policies", ColumnType::Dynamic),
    ("Service", ColumnType::Dynamic),
    ("IngressFlowCount", ColumnType::Int),
    ("EgressFlowCount", ColumnType::Int),
    ("UnknownDirectionFlowCount", ColumnType::Int),
    ("AdditionalFlowData", ColumnType::Dynamic),
];

/// Names Azure reserves, never sent as columns.
pub const RESERVED: &[&str] = &[
    "TenantId",
    "Type",
    "SourceSystem",
    "_ResourceId",
    "id",
    "_SubscriptionId",
    "UniqueId",
    "Title",
];
