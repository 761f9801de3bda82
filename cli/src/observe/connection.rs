//! Where the flow API is and how to reach it: the connection flags every
//! `observe`, `status` and `list` command shares (its own module, so that
//! the argument parsers and the commands that connect depend on it, not on
//! each other).

use std::path::PathBuf;
use std::time::Duration;

use super::time;

/// Where the flow API is and how to reach it.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionArgs {
    /// Address of the flow API (host:port, http://…, https://…); default:
    /// the relay of the lab named by --lab, else localhost:4245. A lab's
    /// relay or collector is reached with the lab's TLS files unless TLS
    /// flags are given.
    #[arg(long, value_name = "ADDR", help_heading = "Connection")]
    pub server: Option<String>,
    /// The lab whose collector to ask when --server is not given.
    #[arg(long = "lab", value_name = "NAME", default_value = "sightline", help_heading = "Connection")]
    pub lab: String,
    /// Connect with TLS.
    #[arg(long, help_heading = "Connection")]
    pub tls: bool,
    /// PEM files of the CAs to trust (default: the system's).
    #[arg(long, value_name = "FILE", num_args = 1.., value_delimiter = ',', help_heading = "Connection")]
    pub tls_ca_cert_files: Vec<PathBuf>,
    /// PEM client certificate, for mutual TLS.
    #[arg(long, value_name = "FILE", help_heading = "Connection")]
    pub tls_client_cert_file: Option<PathBuf>,
    /// PEM key of the client certificate.
    #[arg(long, value_name = "FILE", help_heading = "Connection")]
    pub tls_client_key_file: Option<PathBuf>,
    /// Name to verify in the server's certificate (default: the host of
    /// --server).
    #[arg(long, value_name = "NAME", help_heading = "Connection")]
    pub tls_server_name: Option<String>,
    /// Send the bearer token (a JWT) in this file with every request, as
    /// `authorization: Bearer …` (read again for each request, so a
    /// refreshed token is picked up).
    #[arg(long, value_name = "FILE", help_heading = "Connection")]
    pub token_file: Option<PathBuf>,
    /// Timeout of requests that return one answer (status, list); a flow
    /// stream has none, as in hubble.
    #[arg(long, value_name = "DURATION", default_value = "12s", value_parser = parse_timeout, help_heading = "Connection")]
    pub request_timeout: Duration,
    /// Timeout to establish the connection.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_timeout, help_heading = "Connection")]
    pub timeout: Duration,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match time::parse_duration(s) {
        Some(d) if !d.is_zero() => Ok(d),
        Some(_) => Err("must be more than zero".to_owned()),
        None => Err(format!("{s:?} is not a duration such as 500ms, 5s or 1m")),
    }
}

