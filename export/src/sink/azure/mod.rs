//! The Azure Monitor Logs Ingestion sink: one batch of rows is one gzip
//! compressed JSON array POSTed to
//! `{endpoint}/dataCollectionRules/{dcr}/streams/{stream}?api-version=2023-01-01`
//! with an Entra ID bearer token ([`identity`]), and the answer becomes an
//! [`Outcome`]: 204 sent; 401 refresh the token and resend once; 413 too
//! large; 429/503 retry after `Retry-After`; other 5xx, 408 and transport
//! failures retry; 400/403/404 and other 4xx rejected with Azure's error
//! code.
//!
//! Each request holds at most [`MAX_REQUEST_BYTES`] both before and after
//! compression; a batch that would not fit is answered
//! [`Outcome::TooLarge`] without a request.
//!
//! This module must not retry beyond the single resend after a 401 (the
//! delivery loop paces retries), must not parse or alter the rows (they
//! are the encoder's), must not contact anything while being built, and
//! must not log tokens or secrets.

pub mod identity;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;

use self::identity::{AccessToken, TokenSource, error_chain, quote, read_limited};
use super::{Delivery, Outcome, SendFuture, Sink};

/// The managed identity endpoint of Azure virtual machines and AKS nodes.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// Entra ID's authority host in Azure's public cloud.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// The Logs Ingestion API version spoken.
pub const API_VERSION: &str = "2023-01-01";
/// The most bytes one request body may hold, compressed and uncompressed
/// alike ("1 MB", read as 10^6 bytes).
pub const MAX_REQUEST_BYTES: usize = 1_000_000;
/// The most rows one request carries.
pub const MAX_BATCH_RECORDS: usize = 5000;
/// The default timeout of one HTTP request (ingestion or token).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of an error body a rejection quotes.
const MESSAGE_CHARS: usize = 500;
/// The most bytes of a response body read.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// Where and as whom the sink sends.
#[derive(Clone, Debug)]
pub struct AzureOptions {
    /// The DCE or the DCR's `logsIngestion` endpoint, `https://…`, without
    /// a path.
    pub endpoint: String,
    /// The DCR's immutable id (`dcr-…`).
    pub dcr_immutable_id: String,
    /// The stream declared in the DCR, e.g. `Custom-SightlineFlows`.
    pub stream: String,
    /// An extra trust anchor (PEM, one or more certificates) for the
    /// endpoint and for the token endpoints, besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// How tokens are obtained.
    pub auth: AzureAuth,
    /// The timeout of one HTTP request.
    pub request_timeout: Duration,
}

impl AzureOptions {
    /// Options with no CA file and [`DEFAULT_REQUEST_TIMEOUT`].
    #[must_use]
    pub fn new(
        endpoint: impl Into<String>,
        dcr_immutable_id: impl Into<String>,
        stream: impl Into<String>,
        auth: AzureAuth,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            dcr_immutable_id: dcr_immutable_id.into(),
            stream: stream.into(),
            ca_file: None,
            auth,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// How the sink gets its Entra ID tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AzureAuth {
    /// An app registration's client secret, read from `secret_file` at
    /// every token request (without its trailing line end), exchanged at
    /// `{authority_host}/{tenant_id}/oauth2/v2.0/token`.
    ClientSecret { tenant_id: String, client_id: String, secret_file: PathBuf, authority_host: String },
    /// A federated credential (AKS workload identity): the projected
    /// service account token in `token_file`, read at every token request,
    /// exchanged at `{authority_host}/{tenant_id}/oauth2/v2.0/token`.
    WorkloadIdentity { tenant_id: String, client_id: String, token_file: PathBuf, authority_host: String },
    /// The managed identity endpoint (IMDS, normally [`IMDS_ENDPOINT`]);
    /// `client_id` picks a user-assigned identity.
    ManagedIdentity { client_id: Option<String>, endpoint: String },
}

/// Why the sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AzureError {
    #[error("reading the CA file {path}: {source}")]
    ReadCaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the CA file {path}: {source}")]
    ParseCaFile {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the CA file {path} holds no certificate")]
    EmptyCaFile { path: PathBuf },
    #[error("adding a certificate of the CA file {path} to the trust store: {source}")]
    AddCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("building the TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("parsing the {what} {url:?}: {reason}")]
    Url { what: &'static str, url: String, reason: String },
}

/// The Logs Ingestion sink.
#[derive(Debug)]
pub struct AzureSink {
    client: reqwest::Client,
    url: reqwest::Url,
    tokens: Arc<TokenSource>,
    timeout: Duration,
}

impl AzureSink {
    /// A sink for `opts`: reads the CA file and checks the URLs now; no
    /// connection is made until the first [`Sink::send`].
    ///
    /// # Errors
    ///
    /// [`AzureError`] when the CA file is missing or holds no usable
    /// certificate, a URL does not parse (or the endpoint or authority host
    /// is not `https`), or the HTTP client cannot be built.
    pub fn new(opts: AzureOptions) -> Result<Self, AzureError> {
        let url = ingestion_url(&opts.endpoint, &opts.dcr_immutable_id, &opts.stream)?;
        match &opts.auth {
            AzureAuth::ClientSecret { authority_host, .. } | AzureAuth::WorkloadIdentity { authority_host, .. } => {
                check_url("authority host", authority_host, false)?;
            }
            AzureAuth::ManagedIdentity { endpoint, .. } => {
                check_url("managed identity endpoint", endpoint, true)?;
            }
        }
        let client = http_client(opts.ca_file.as_deref())?;
        let tokens = Arc::new(TokenSource::new(client.clone(), opts.auth, opts.request_timeout));
        Ok(Self { client, url, tokens, timeout: opts.request_timeout })
    }

    /// The URL rows are POSTed to.
    #[must_use]
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// The sink's token source.
    #[must_use]
    pub fn token_source(&self) -> Arc<TokenSource> {
        Arc::clone(&self.tokens)
    }

    async fn deliver(&self, records: &[Vec<u8>]) -> Delivery {
        let Some(body) = json_array(records) else {
            return too_large();
        };
        let gzipped = match tokio::task::spawn_blocking(move || gzip(&body)).await {
            Ok(Ok(gzipped)) => gzipped,
            Ok(Err(e)) => return retry_error(format!("compressing the request body: {e}")),
            Err(e) => return retry_error(format!("compressing the request body: {e}")),
        };
        if gzipped.len() > MAX_REQUEST_BYTES {
            return too_large();
        }
        let body = bytes::Bytes::from(gzipped);

        let token = match self.tokens.token().await {
            Ok(token) => token,
            Err(e) => {
                log::warn!("Azure Monitor: no token, batch of {} rows not sent: {e}", records.len());
                return retry_error(format!("getting a token: {e}"));
            }
        };
        let first = match self.post(&token, body.clone()).await {
            Ok(response) => response,
            Err(delivery) => return delivery,
        };
        if first.status().as_u16() != 401 {
            return self.outcome(first).await;
        }
        log::info!("Azure Monitor answered 401, refreshing the token and sending again");
        // Read the short error body so that the connection can be reused.
        let _ = read_limited(first, MAX_RESPONSE_BYTES).await;
        self.tokens.invalidate(&token).await;
        let token = match self.tokens.token().await {
            Ok(token) => token,
            Err(e) => {
                log::warn!("Azure Monitor: no token after a 401, batch of {} rows not sent: {e}", records.len());
                return retry_error(format!("getting a token after a 401: {e}"));
            }
        };
        match self.post(&token, body).await {
            Ok(response) => self.outcome(response).await,
            Err(delivery) => delivery,
        }
    }

    /// One POST of `body`; a transport failure is already a delivery.
    async fn post(&self, token: &AccessToken, body: bytes::Bytes) -> Result<reqwest::Response, Delivery> {
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.secret()))
            .map_err(|_| retry_error("the token is not a valid header value".to_owned()))?;
        authorization.set_sensitive(true);
        self.client
            .post(self.url.clone())
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::CONTENT_ENCODING, "gzip")
            .header("x-ms-client-request-id", uuid_v4())
            .timeout(self.timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let reason = format!("sending to {}: {}", self.url, error_chain(&e));
                log::debug!("Azure Monitor: {reason}");
                retry_error(reason)
            })
    }

    /// The outcome of an answered request.
    async fn outcome(&self, response: reqwest::Response) -> Delivery {
        let status = response.status().as_u16();
        let code = status.to_string();
        let headers = response.headers().clone();
        if status == 204 || (200..300).contains(&status) {
            return Delivery { outcome: Outcome::Sent, code };
        }
        // The body explains errors; a failure to read it leaves it empty.
        let body = read_limited(response, MAX_RESPONSE_BYTES).await.unwrap_or_default();
        let outcome = match status {
            413 => Outcome::TooLarge,
            429 | 503 => Outcome::Retry {
                after: retry_after(&headers, SystemTime::now()),
                reason: format!("HTTP {status}: {}", describe(&headers, &body, status).1),
            },
            408 | 500..=599 => Outcome::Retry {
                after: None,
                reason: format!("HTTP {status}: {}", describe(&headers, &body, status).1),
            },
            // A fresh token refused too: the credentials are at fault, not
            // the rows; keep them.
            401 => {
                let (error_code, message) = describe(&headers, &body, status);
                log::warn!("Azure Monitor refused a fresh token: {error_code}: {message}");
                Outcome::Retry { after: None, reason: format!("HTTP 401 with a fresh token: {error_code}: {message}") }
            }
            400..=499 => {
                let (error_code, message) = describe(&headers, &body, status);
                log::warn!("Azure Monitor rejected a batch with HTTP {status}: {error_code}: {message}");
                Outcome::Rejected { error_code, message }
            }
            // 1xx or 3xx (redirects are not followed): a misconfigured
            // endpoint, not a fault of the rows.
            _ => {
                log::warn!("Azure Monitor answered HTTP {status} (not followed)");
                Outcome::Retry { after: None, reason: format!("unexpected HTTP {status}") }
            }
        };
        Delivery { outcome, code }
    }
}

impl Sink for AzureSink {
    fn max_batch_bytes(&self) -> usize {
        MAX_REQUEST_BYTES - 2 - self.max_batch_records()
    }

    fn max_batch_records(&self) -> usize {
        MAX_BATCH_RECORDS
    }

    fn send<'a>(&'a mut self, records: &'a [Vec<u8>]) -> SendFuture<'a> {
        Box::pin(self.deliver(records))
    }
}

/// The HTTP client of the sink and its token exchange: rustls with ring,
/// TLS 1.3 and 1.2, the system's roots (when there are any) plus every
/// certificate of `ca_file`, HTTP/2 or HTTP/1.1, no redirects (the shared
/// `sightline_tls::https::client`, which the relay's token keys use too).
///
/// # Errors
///
/// [`AzureError`] when `ca_file` cannot be read or holds no usable
/// certificate, or the client cannot be built.
pub fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client, AzureError> {
    use sightline_tls::https::HttpsError;
    sightline_tls::https::client(ca_file).map_err(|e| match e {
        HttpsError::ReadCaFile { path, source } => AzureError::ReadCaFile { path, source },
        HttpsError::ParseCaFile { path, source } => AzureError::ParseCaFile { path, source },
        HttpsError::EmptyCaFile { path } => AzureError::EmptyCaFile { path },
        HttpsError::AddCa { path, source } => AzureError::AddCa { path, source },
        HttpsError::Tls(source) => AzureError::Tls(source),
        HttpsError::Client(source) => AzureError::Client(source),
    })
}

/// Checks that `url` parses, is `https` (or `http` when `http_ok`) and has
/// a host.
fn check_url(what: &'static str, url: &str, http_ok: bool) -> Result<reqwest::Url, AzureError> {
    let bad = |reason: &str| AzureError::Url { what, url: url.to_owned(), reason: reason.to_owned() };
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    match parsed.scheme() {
        "https" => {}
        "http" if http_ok => {}
        _ => return Err(bad(if http_ok { "not an http(s) URL" } else { "not an https URL" })),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(parsed)
}

/// `{endpoint}/dataCollectionRules/{dcr}/streams/{stream}?api-version=…`.
fn ingestion_url(endpoint: &str, dcr: &str, stream: &str) -> Result<reqwest::Url, AzureError> {
    let mut url = check_url("endpoint", endpoint, false)?;
    let bad = |reason: &str| AzureError::Url { what: "endpoint", url: endpoint.to_owned(), reason: reason.to_owned() };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must not carry a query or fragment"));
    }
    if dcr.is_empty() || stream.is_empty() {
        return Err(bad("the DCR immutable id and the stream must not be empty"));
    }
    url.path_segments_mut().map_err(|()| bad("it cannot carry a path"))?.pop_if_empty().extend([
        "dataCollectionRules",
        dcr,
        "streams",
        stream,
    ]);
    url.query_pairs_mut().append_pair("api-version", API_VERSION);
    Ok(url)
}

/// `[` + records joined by `,` + `]`, or `None` when it would exceed
/// [`MAX_REQUEST_BYTES`].
fn json_array(records: &[Vec<u8>]) -> Option<Vec<u8>> {
    let len = records
        .iter()
        .try_fold(2 + records.len().saturating_sub(1), |sum, r| sum.checked_add(r.len()))
        .filter(|len| *len <= MAX_REQUEST_BYTES)?;
    let mut body = Vec::with_capacity(len);
    body.push(b'[');
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(record);
    }
    body.push(b']');
    Some(body)
}

/// Gzip at level 1: Azure's 1 MB limit on the uncompressed body binds long
/// before the compressed one (rows compress about 7:1 at level 1, 15:1 at
/// the default level), so a stronger level would only cost CPU — about 2.6
/// times as much per row (`cargo bench -p sightline-export`).
fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    encoder.write_all(body)?;
    encoder.finish()
}

fn too_large() -> Delivery {
    Delivery { outcome: Outcome::TooLarge, code: "error".to_owned() }
}

fn retry_error(reason: String) -> Delivery {
    Delivery { outcome: Outcome::Retry { after: None, reason }, code: "error".to_owned() }
}

/// A random UUID (version 4, RFC 9562), lower-case hyphenated.
fn uuid_v4() -> String {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// `(error_code, message)` of an error answer: the `x-ms-error-code`
/// header, else the Azure Core body's `error.code`, else the status; the
/// body's `error.message`, else its text (quoted up to ~500 characters).
fn describe(headers: &HeaderMap, body: &[u8], status: u16) -> (String, String) {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |k: &str| {
        error.and_then(|e| e.get(k)).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
    };
    let header_code = headers
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let code = header_code.or_else(|| field("code")).unwrap_or_else(|| status.to_string());
    let message = field("message").map_or_else(|| quote(body, MESSAGE_CHARS), |m| quote(m.as_bytes(), MESSAGE_CHARS));
    (code, message)
}

/// How long the service asked to wait: `retry-after-ms` or
/// `x-ms-retry-after-ms` (milliseconds, as Azure's SDKs read them), else
/// `Retry-After` in delta-seconds or as an HTTP-date (relative to `now`;
/// a date in the past is no wait). `None` when absent or unreadable.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = text(name).and_then(|v| v.parse::<u64>().ok()) {
            return Some(Duration::from_millis(ms));
        }
    }
    let value = text("retry-after")?;
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long digit strings saturate rather than fail.
        return Some(Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses an HTTP-date (RFC 9110 §5.6.7): IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), and the obsolete RFC 850
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime
/// (`Sun Nov  6 08:49:37 1994`) forms. The weekday is not checked.
fn parse_http_date(s: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = |m: &str| MONTHS.iter().position(|x| *x == m).map(|i| i + 1);
    let parts: Vec<&str> = s.split_ascii_whitespace().collect();
    let (year, month, day, time) = match parts.as_slice() {
        [_, day, mon, year, time, "GMT"] => (year.parse::<i64>().ok()?, month(mon)?, day.parse::<u32>().ok()?, *time),
        [_, date, time, "GMT"] => {
            let mut d = date.split('-');
            let (day, mon, yy) = (d.next()?, d.next()?, d.next()?);
            if d.next().is_some() || yy.len() != 2 {
                return None;
            }
            let yy = yy.parse::<i64>().ok()?;
            // RFC 9110: a two-digit year more than 50 years ahead is in the past century.
            let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
            (year, month(mon)?, day.parse::<u32>().ok()?, *time)
        }
        [_, mon, day, time, year] => (year.parse::<i64>().ok()?, month(mon)?, day.parse::<u32>().ok()?, *time),
        _ => return None,
    };
    let mut t = time.split(':');
    let (h, m, sec) = (t.next()?.parse::<u64>().ok()?, t.next()?.parse::<u64>().ok()?, t.next()?.parse::<u64>().ok()?);
    if t.next().is_some() || h > 23 || m > 59 || sec > 60 || day == 0 || day > 31 || !(1970..=9999).contains(&year) {
        return None;
    }
    let date = jiff::civil::Date::new(i16::try_from(year).ok()?, i8::try_from(month).ok()?, i8::try_from(day).ok()?).ok()?;
    // A leap second (:60) counts as the minute's last second.
    let time = jiff::civil::Time::new(i8::try_from(h).ok()?, i8::try_from(m).ok()?, i8::try_from(sec.min(59)).ok()?, 0).ok()?;
    let at = date.to_datetime(time).to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
    Some(SystemTime::from(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn http_dates_in_all_three_forms() {
        let want = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(want));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(want));
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(want));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(UNIX_EPOCH));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(1_835_481_599))
        );
        for bad in [
            "",
            "soon",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun, 99999999999999999999 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn retry_after_in_seconds_dates_and_milliseconds() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_770);
        assert_eq!(retry_after(&headers(&[("retry-after", "7")]), now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&headers(&[("retry-after", " 0 ")]), now), Some(Duration::ZERO));
        assert_eq!(
            retry_after(&headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:30 GMT")]), now + Duration::from_secs(60)),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "5"), ("retry-after-ms", "1500")]), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "-1")]), now), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "later")]), now), None);
        assert_eq!(retry_after(&headers(&[]), now), None);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "99999999999999999999999")]), now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn error_descriptions_prefer_the_header_then_the_body() {
        let body = br#"{"error":{"code":"InvalidStream","message":"no such stream"}}"#;
        assert_eq!(
            describe(&headers(&[("x-ms-error-code", "NotFound")]), body, 404),
            ("NotFound".to_owned(), "no such stream".to_owned())
        );
        assert_eq!(describe(&headers(&[]), body, 404), ("InvalidStream".to_owned(), "no such stream".to_owned()));
        assert_eq!(describe(&headers(&[]), b"plain words", 403), ("403".to_owned(), "plain words".to_owned()));
        let long = "x".repeat(2000);
        let (_, message) = describe(&headers(&[]), long.as_bytes(), 400);
        assert_eq!(message.chars().count(), MESSAGE_CHARS + 1);
        assert_eq!(describe(&headers(&[]), &[0xff, 0xfe], 400).0, "400");
    }

    #[test]
    fn bodies_are_json_arrays_within_the_limit() {
        assert_eq!(json_array(&[]).as_deref(), Some(&b"[]"[..]));
        assert_eq!(json_array(&[b"{\"a\":1}".to_vec(), b"{}".to_vec()]).as_deref(), Some(&b"[{\"a\":1},{}]"[..]));
        assert_eq!(json_array(&[vec![b'x'; MAX_REQUEST_BYTES - 2]]).map(|b| b.len()), Some(MAX_REQUEST_BYTES));
        assert_eq!(json_array(&[vec![b'x'; MAX_REQUEST_BYTES - 1]]), None);
        assert_eq!(json_array(&[vec![b'x'; MAX_REQUEST_BYTES / 2], vec![b'x'; MAX_REQUEST_BYTES / 2 - 2]]), None);
    }

    #[test]
    fn uuids_are_version_4() {
        let a = uuid_v4();
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'4');
        assert!(matches!(a.as_bytes()[19], b'8' | b'9' | b'a' | b'b'));
        assert_ne!(a, uuid_v4());
    }

    #[test]
    fn urls_are_checked() {
        let url = ingestion_url("https://dce.example/", "dcr-1", "Custom-X").expect("url");
        assert_eq!(
            url.as_str(),
            "https://dce.example/dataCollectionRules/dcr-1/streams/Custom-X?api-version=2023-01-01"
        );
        assert!(ingestion_url("http://dce.example", "dcr-1", "Custom-X").is_err());
        assert!(ingestion_url("https://dce.example?x=1", "dcr-1", "Custom-X").is_err());
        assert!(ingestion_url("dce.example", "dcr-1", "Custom-X").is_err());
        assert!(ingestion_url("https://dce.example", "", "Custom-X").is_err());
        assert!(check_url("managed identity endpoint", IMDS_ENDPOINT, true).is_ok());
        assert!(check_url("authority host", "http://login.example", false).is_err());
    }

    #[test]
    fn batch_limits_leave_room_for_brackets_and_commas() {
        let auth = AzureAuth::ManagedIdentity { client_id: None, endpoint: IMDS_ENDPOINT.to_owned() };
        let sink = AzureSink::new(AzureOptions::new("https://dce.example", "dcr-1", "Custom-X", auth)).expect("sink");
        assert_eq!(sink.max_batch_records(), 5000);
        assert_eq!(sink.max_batch_bytes() + 2 + sink.max_batch_records() - 1, MAX_REQUEST_BYTES - 1);
    }
}
