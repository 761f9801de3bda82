//! Reaching the flow API: which address, TLS, dial and request timeouts, and
//! errors that say what to do.

use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sightline_proto::observer::observer_client::ObserverClient;
use sightline_tls::{ClientTls, ClientTlsFiles};
use tonic::codegen::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::connection::ConnectionArgs;

/// hubble's default port (the relay's).
pub const DEFAULT_PORT: u16 = 4245;
/// Where to look when neither `--server` nor a lab gives an address.
pub const DEFAULT_SERVER: &str = "localhost:4245";

/// A failure to reach or use the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--server` is not an address.
    #[error("--server {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    /// The TLS flags or files.
    #[error("{0}")]
    Tls(String),
    /// The connection could not be made.
    #[error("cannot reach the flow API at {addr}: {cause}; {HINT}")]
    Unreachable { addr: String, cause: String },
    /// The server did not answer in time.
    #[error("{what} at {addr}: no answer within {after:?}{}", if *what == "connecting" { format!("; {HINT}") } else { String::new() })]
    Timeout { addr: String, what: &'static str, after: Duration },
    /// The server answered with an error.
    #[error("{}", rpc_message(addr, what, status))]
    Rpc { addr: String, what: &'static str, status: tonic::Status },
}

const HINT: &str = "is a lab running? start one with `sightline lab up`, or point --server at a flow API";

/// What an RPC error means to the user, by its code.
fn rpc_message(addr: &str, what: &str, status: &tonic::Status) -> String {
    use tonic::Code;
    match status.code() {
        Code::Unauthenticated => {
            format!("{what} at {addr}: not authenticated: {}; give a valid token with --token-file", status.message())
        }
        Code::PermissionDenied => format!("{what} at {addr}: not allowed: {}", status.message()),
        Code::Unavailable => format!("{what} at {addr}: the server is unavailable: {}; {HINT}", status.message()),
        Code::Unimplemented => format!("{what} at {addr}: the server does not implement it ({})", status.message()),
        code => format!("{what} at {addr} failed: {} ({code:?})", status.message()),
    }
}

/// The address to use: `--server`, else the lab's relay (or collector), else
/// `localhost:4245`; and how to name it in messages.
pub fn server_address(conn: &ConnectionArgs) -> (String, String) {
    if let Some(s) = &conn.server {
        return (s.clone(), s.clone());
    }
    match sightline_lab::cluster::default_server_named(&conn.lab) {
        Some((addr, what)) => {
            let label = format!("{addr} (the {what} of lab {:?})", conn.lab);
            (addr, label)
        }
        None => {
            let label =
                format!("{DEFAULT_SERVER} (the default: lab {:?} is not running or serves no flow API)", conn.lab);
            (DEFAULT_SERVER.to_owned(), label)
        }
    }
}

/// A parsed `--server`: the URI to dial and whether TLS is implied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub uri: String,
    pub tls: bool,
}

/// `host:port`, `[v6]:port`, `host` (port 4245), `http://…`, `https://…`.
pub fn parse_target(addr: &str, tls_flag: bool) -> Result<Target, ClientError> {
    let bad = |reason: &str| ClientError::Address { addr: addr.to_owned(), reason: reason.to_owned() };
    let a = addr.trim();
    let (rest, scheme_tls) = if let Some(r) = a.strip_prefix("https://") {
        (r, true)
    } else if let Some(r) = a.strip_prefix("http://") {
        (r, false)
    } else if a.starts_with("unix://") || a.starts_with("unix:") {
        return Err(bad("Unix sockets are not supported by this client; give host:port"));
    } else if a.contains("://") {
        return Err(bad("expected host:port, http://host:port or https://host:port"));
    } else {
        (a, false)
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(bad("expected host:port"));
    }
    let hostport = if let Ok(v6) = rest.parse::<Ipv6Addr>() {
        format!("[{v6}]:{DEFAULT_PORT}")
    } else if rest.starts_with('[') {
        match rest.split_once(']') {
            Some((_, "")) => format!("{rest}:{DEFAULT_PORT}"),
            Some((_, p)) if p.starts_with(':') => rest.to_owned(),
            _ => return Err(bad("expected [IPv6]:port")),
        }
    } else {
        match rest.rsplit_once(':') {
            None => format!("{rest}:{DEFAULT_PORT}"),
            Some(("", _)) => return Err(bad("the host is missing")),
            Some(_) => rest.to_owned(),
        }
    };
    if let Some((_, port)) = hostport.rsplit_once(':') {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(bad("the port must be 1 to 65535")),
        }
    }
    let tls = tls_flag || scheme_tls;
    let uri = format!("{}://{hostport}", if tls { "https" } else { "http" });
    Endpoint::from_shared(uri.clone()).map_err(|e| bad(&e.to_string()))?;
    Ok(Target { uri, tls })
}

fn uses_tls_flags(conn: &ConnectionArgs) -> bool {
    !conn.tls_ca_cert_files.is_empty()
        || conn.tls_client_cert_file.is_some()
        || conn.tls_client_key_file.is_some()
        || conn.tls_server_name.is_some()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Adds `authorization: Bearer <token>` from a file to every request,
/// reading the file each time (a token refreshed on disk is used at once).
#[derive(Clone, Default)]
pub struct Token {
    file: Option<PathBuf>,
}

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(path) = &self.file else { return Ok(request) };
        let text = std::fs::read_to_string(path).map_err(|e| {
            tonic::Status::unauthenticated(format!("reading the token file {}: {e}", path.display()))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(tonic::Status::unauthenticated(format!("the token file {} is empty", path.display())));
        }
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| tonic::Status::unauthenticated(format!("the token in {} is not printable ASCII", path.display())))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// The Observer client the commands use.
pub type Client = ObserverClient<InterceptedService<Channel, Token>>;

/// A connected client and the address it talks to.
pub struct Connected {
    pub client: Client,
    /// The address as given.
    pub addr: String,
    /// The address and where it came from, for messages.
    pub label: String,
    pub request_timeout: Duration,
}

/// Dials the server (eagerly, so that an unreachable server is reported
/// before anything else happens).
pub async fn connect(conn: &ConnectionArgs) -> Result<Connected, ClientError> {
    let (addr, label) = server_address(conn);
    connect_to(conn, &addr, &label).await
}

/// The TLS a connection uses: the flags', or a lab's files for the lab's
/// own servers, or none.
fn tls_for(conn: &ConnectionArgs, addr: &str, target: &Target) -> Result<Option<(ClientTlsFiles, Option<String>)>, ClientError> {
    let explicit_plain = addr.trim().starts_with("http://");
    if !conn.tls && !uses_tls_flags(conn) && !target.tls && !explicit_plain {
        let hostport = target.uri.trim_start_matches("http://");
        if let Some(lab) = sightline_lab::cluster::client_tls_for(&conn.lab, hostport) {
            let files = ClientTlsFiles { ca: vec![lab.ca], cert: Some(lab.cert), key: Some(lab.key) };
            return Ok(Some((files, Some(lab.server_name))));
        }
    }
    if !target.tls {
        if uses_tls_flags(conn) {
            return Err(ClientError::Tls("the --tls-* flags need --tls (or an https:// server)".to_owned()));
        }
        return Ok(None);
    }
    if conn.tls_client_cert_file.is_some() != conn.tls_client_key_file.is_some() {
        return Err(ClientError::Tls(
            "--tls-client-cert-file and --tls-client-key-file go together (mutual TLS needs both)".to_owned(),
        ));
    }
    let files = ClientTlsFiles {
        ca: conn.tls_ca_cert_files.clone(),
        cert: conn.tls_client_cert_file.clone(),
        key: conn.tls_client_key_file.clone(),
    };
    Ok(Some((files, conn.tls_server_name.clone())))
}

/// Dials `addr` with the TLS and timeout settings of `conn`; `label` names
/// it in errors.
pub async fn connect_to(conn: &ConnectionArgs, addr: &str, label: &str) -> Result<Connected, ClientError> {
    let target = parse_target(addr, conn.tls)?;
    let tls = tls_for(conn, addr, &target)?;
    // The connector does the TLS: the endpoint itself is plain HTTP/2.
    let uri = target.uri.replacen("https://", "http://", 1);
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| ClientError::Address { addr: addr.to_owned(), reason: e.to_string() })?
        .connect_timeout(conn.timeout)
        .tcp_nodelay(true);
    let connecting = async {
        match tls {
            Some((files, server_name)) => {
                let tls = ClientTls::new("TLS", files).map_err(|e| ClientError::Tls(e.to_string()))?;
                let connector = sightline_tls::Connector::new(Arc::new(tls), server_name.as_deref())
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
                endpoint.connect_with_connector(connector).await
            }
            None => endpoint.connect().await,
        }
        .map_err(|e| ClientError::Unreachable { addr: label.to_owned(), cause: error_chain(&e) })
    };
    let channel = match tokio::time::timeout(conn.timeout, connecting).await {
        Err(_) => return Err(ClientError::Timeout { addr: label.to_owned(), what: "connecting", after: conn.timeout }),
        Ok(result) => result?,
    };
    Ok(Connected {
        client: ObserverClient::with_interceptor(channel, Token { file: conn.token_file.clone() }),
        addr: addr.to_owned(),
        label: label.to_owned(),
        request_timeout: conn.request_timeout,
    })
}

/// A channel to a lab's server at `addr`, with the lab's TLS files when it
/// has them (the demo's client).
pub async fn lab_channel(state: &sightline_lab::cluster::LabState, addr: &str) -> Result<Channel, ClientError> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ClientError::Address { addr: addr.to_owned(), reason: e.to_string() })?
        .connect_timeout(Duration::from_secs(5));
    match state.client_tls_for(addr) {
        Some(lab) => {
            let files = ClientTlsFiles { ca: vec![lab.ca], cert: Some(lab.cert), key: Some(lab.key) };
            let tls = ClientTls::new("the lab's TLS", files).map_err(|e| ClientError::Tls(e.to_string()))?;
            let connector = sightline_tls::Connector::new(Arc::new(tls), Some(&lab.server_name))
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            endpoint.connect_with_connector(connector).await
        }
        None => endpoint.connect().await,
    }
    .map_err(|e| ClientError::Unreachable { addr: addr.to_owned(), cause: error_chain(&e) })
}

impl Connected {
    /// Runs a request under `--request-timeout`.
    pub async fn call<T, F>(&self, what: &'static str, fut: F) -> Result<T, ClientError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Err(_) => Err(ClientError::Timeout { addr: self.label.clone(), what, after: self.request_timeout }),
            Ok(Err(status)) => Err(ClientError::Rpc { addr: self.label.clone(), what, status }),
            Ok(Ok(resp)) => Ok(resp.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(addr: &str) -> Result<Target, String> {
        parse_target(addr, false).map_err(|e| e.to_string())
    }

    #[test]
    fn the_address_says_where_it_came_from() {
        let mut conn = crate::observe::args::tests::parse(&[]).expect("parses").opts.conn;
        conn.lab = "no-such-lab-for-tests".into();
        assert_eq!(
            server_address(&conn),
            (
                "localhost:4245".to_owned(),
                "localhost:4245 (the default: lab \"no-such-lab-for-tests\" is not running or serves no flow API)"
                    .to_owned()
            )
        );
        conn.server = Some("10.0.0.1:4244".into());
        assert_eq!(server_address(&conn), ("10.0.0.1:4244".to_owned(), "10.0.0.1:4244".to_owned()));
    }

    #[test]
    fn addresses() {
        let ok = |uri: &str, tls: bool| Ok(Target { uri: uri.to_owned(), tls });
        assert_eq!(t("127.0.0.1:4245"), ok("http://127.0.0.1:4245", false));
        assert_eq!(t("localhost"), ok("http://localhost:4245", false));
        assert_eq!(t("http://localhost:1234/"), ok("http://localhost:1234", false));
        assert_eq!(t("https://relay.example:443"), ok("https://relay.example:443", true));
        assert_eq!(t("[::1]:80"), ok("http://[::1]:80", false));
        assert_eq!(t("::1"), ok("http://[::1]:4245", false));
        assert_eq!(t("[fd00::1]"), ok("http://[fd00::1]:4245", false));
        assert_eq!(parse_target("x:1", true).map_err(|e| e.to_string()), ok("https://x:1", true));
        for (bad, why) in [
            ("unix:///var/run/cilium/hubble.sock", "Unix sockets are not supported"),
            ("grpc://x:1", "expected host:port"),
            ("x:0", "the port must be 1 to 65535"),
            ("x:99999", "the port must be 1 to 65535"),
            ("x:http", "the port must be 1 to 65535"),
            (":80", "the host is missing"),
            ("", "expected host:port"),
            ("x:1/path", "expected host:port"),
        ] {
            let e = t(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.starts_with(&format!("--server {bad:?}")), "{e}");
        }
    }
}
