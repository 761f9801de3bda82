//! The plugin's errors and their CNI encoding: `{"cniVersion", "code", "msg",
//! "details"}` on stdout, with the specification's codes (1–99) and the
//! plugin's own (100 and up).

use serde::Serialize;

/// Codes the CNI specification defines.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD requests.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: the plugin cannot serve ADD requests, and existing containers
    /// may be damaged.
    pub const NOT_AVAILABLE_DAMAGED: u32 = 51;
    /// The requested address is outside the ranges, excluded or taken.
    pub const ADDRESS_UNAVAILABLE: u32 = 100;
    /// Every address of the ranges is taken.
    pub const RANGE_EXHAUSTED: u32 = 101;
    /// CHECK found the container's network not as its previous result says.
    pub const CHECK_FAILED: u32 = 102;
    /// A netlink operation (through `ip`) failed.
    pub const NETLINK: u32 = 103;
    /// The collector refused the endpoint.
    pub const REGISTRATION_REFUSED: u32 = 104;
}

/// Everything that can make an invocation fail.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI version {version:?} is not supported (supported: {supported})")]
    IncompatibleVersion { version: String, supported: String },
    #[error("unsupported field {field}: {reason}")]
    UnsupportedField { field: String, reason: String },
    #[error("container {container_id}: {reason}")]
    UnknownContainer { container_id: String, reason: String },
    #[error("environment variable {var}: {reason}")]
    InvalidEnvironment { var: &'static str, reason: String },
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("decoding the network configuration on stdin: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("invalid network configuration: {field}: {reason}")]
    InvalidConfig { field: String, reason: String },
    #[error("{0}")]
    TryAgainLater(String),
    #[error("not available: {0}")]
    NotAvailable(String),
    #[error("address {address}: {reason}")]
    AddressUnavailable { address: String, reason: String },
    #[error("no free address left in {ranges}")]
    RangeExhausted { ranges: String },
    #[error("check failed: {0}")]
    CheckFailed(String),
    #[error("{action}: `{command}` failed: {stderr}")]
    Netlink { action: String, command: String, stderr: String },
    #[error("the collector at {socket} refused the endpoint: {reason}")]
    RegistrationRefused { socket: String, reason: String },
}

impl CniError {
    /// The error's CNI code.
    #[must_use]
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion { .. } => code::INCOMPATIBLE_VERSION,
            CniError::UnsupportedField { .. } => code::UNSUPPORTED_FIELD,
            CniError::UnknownContainer { .. } => code::UNKNOWN_CONTAINER,
            CniError::InvalidEnvironment { .. } => code::INVALID_ENVIRONMENT,
            CniError::Io { .. } => code::IO_FAILURE,
            CniError::Decode(_) => code::DECODING_FAILURE,
            CniError::InvalidConfig { .. } => code::INVALID_NETWORK_CONFIG,
            CniError::TryAgainLater(_) => code::TRY_AGAIN_LATER,
            CniError::NotAvailable(_) => code::NOT_AVAILABLE,
            CniError::AddressUnavailable { .. } => code::ADDRESS_UNAVAILABLE,
            CniError::RangeExhausted { .. } => code::RANGE_EXHAUSTED,
            CniError::CheckFailed(_) => code::CHECK_FAILED,
            CniError::Netlink { .. } => code::NETLINK,
            CniError::RegistrationRefused { .. } => code::REGISTRATION_REFUSED,
        }
    }

    /// A short message (`msg`); the whole text goes in `details`.
    #[must_use]
    pub fn short(&self) -> &'static str {
        match self {
            CniError::IncompatibleVersion { .. } => "incompatible CNI version",
            CniError::UnsupportedField { .. } => "unsupported field in network configuration",
            CniError::UnknownContainer { .. } => "container unknown or does not exist",
            CniError::InvalidEnvironment { .. } => "invalid environment variables",
            CniError::Io { .. } => "I/O failure",
            CniError::Decode(_) => "failed to decode content",
            CniError::InvalidConfig { .. } => "invalid network configuration",
            CniError::TryAgainLater(_) => "try again later",
            CniError::NotAvailable(_) => "plugin not available",
            CniError::AddressUnavailable { .. } => "requested address unavailable",
            CniError::RangeExhausted { .. } => "no free address",
            CniError::CheckFailed(_) => "container network differs from its result",
            CniError::Netlink { .. } => "netlink operation failed",
            CniError::RegistrationRefused { .. } => "collector refused the endpoint",
        }
    }

    /// The error as the specification encodes it.
    #[must_use]
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Encoded<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: String,
        }
        let encoded = Encoded { cni_version, code: self.code(), msg: self.short(), details: self.to_string() };
        serde_json::to_string(&encoded).expect("an error always encodes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_encode_with_the_spec_fields_and_codes() {
        let e = CniError::InvalidEnvironment { var: "CNI_IFNAME", reason: "missing".into() };
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["code"], 4);
        assert_eq!(v["msg"], "invalid environment variables");
        assert_eq!(v["details"], "environment variable CNI_IFNAME: missing");
        assert_eq!(v.as_object().unwrap().len(), 4);
        let cases: [(CniError, u32); 5] = [
            (CniError::IncompatibleVersion { version: "0.1.0".into(), supported: "1.0.0".into() }, 1),
            (CniError::Decode(serde_json::from_str::<u8>("x").unwrap_err()), 6),
            (CniError::InvalidConfig { field: "mtu".into(), reason: "too small".into() }, 7),
            (CniError::TryAgainLater("locked".into()), 11),
            (CniError::NotAvailable("no data dir".into()), 50),
        ];
        for (e, c) in cases {
            assert_eq!(e.code(), c, "{e}");
        }
    }
}
