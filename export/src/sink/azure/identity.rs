//! Entra ID access tokens for the Logs Ingestion API: the client-credentials
//! exchange with a client secret or a federated (workload identity) token,
//! and the managed identity endpoint (IMDS), behind one cache.
//!
//! [`TokenSource::token`] hands out the cached token until it is close to
//! expiry ([`refresh_margin`]), then fetches a new one; only one fetch runs
//! at a time, other callers wait for its result instead of starting their
//! own. [`TokenSource::invalidate`] forgets a token the service refused
//! (HTTP 401), so that the next call fetches a fresh one.
//!
//! Secret and federated-token files are read again for every token
//! request, so that a rotated file is picked up without a restart.
//!
//! This module must not log, print or put into an error a client secret, a
//! federated token or an access token; [`AccessToken`]'s `Debug` is
//! redacted for that reason.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::io::AsyncReadExt as _;

use super::AzureAuth;

/// The scope of the Logs Ingestion API in Azure's public cloud.
pub const PUBLIC_SCOPE: &str = "https://monitor.azure.com/.default";
/// The scope in Azure US Government.
pub const US_GOVERNMENT_SCOPE: &str = "https://monitor.azure.us/.default";
/// The scope in Azure operated by 21Vianet (China).
pub const CHINA_SCOPE: &str = "https://monitor.azure.cn/.default";
/// The resource the managed identity endpoint is asked a token for.
pub const IMDS_RESOURCE: &str = "https://monitor.azure.com/";
/// The API version of the managed identity endpoint.
pub const IMDS_API_VERSION: &str = "2018-02-01";
/// `client_assertion_type` of a federated (workload identity) credential.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long before expiry a token is refreshed, when its lifetime is at
/// least [`SHORT_LIFETIME`]; shorter-lived tokens are refreshed at half
/// their lifetime.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Tokens living less than this are refreshed at half their lifetime.
pub const SHORT_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// The longest lifetime believed from a token response (longer claims are
/// cut to it, so that an absurd `expires_in` cannot keep a token forever).
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The most bytes read from a token response or a credential file.
const MAX_READ: u64 = 64 * 1024;
/// How much of an unexpected response body an error quotes.
const QUOTE_CHARS: usize = 300;

/// An access token. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    /// The token itself, for an `Authorization: Bearer` header and
    /// nothing else.
    #[must_use]
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the client secret file {path}: {source}")]
    ReadSecret {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the client secret file {path} is empty")]
    EmptySecret { path: PathBuf },
    #[error("reading the federated token file {path}: {source}")]
    ReadFederatedToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the federated token file {path} is empty")]
    EmptyFederatedToken { path: PathBuf },
    #[error("building the token request URL from {base:?}: {reason}")]
    Url { base: String, reason: String },
    #[error("requesting a token from {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("the token endpoint {url} refused: HTTP {status}, {error}: {description}")]
    Refused { url: String, status: u16, error: String, description: String },
    #[error("reading the token response of {url} (HTTP {status}): {reason}")]
    BadResponse { url: String, status: u16, reason: String },
}

/// A token and when it stops being used.
struct Cached {
    token: AccessToken,
    /// When it is fetched again (before `expires_at`).
    refresh_at: Instant,
    /// When the service stops accepting it.
    expires_at: Instant,
}

/// The current token of one identity, fetched when needed.
pub struct TokenSource {
    client: reqwest::Client,
    auth: AzureAuth,
    timeout: Duration,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource").field("auth", &self.auth).finish_non_exhaustive()
    }
}

impl TokenSource {
    /// A token source for `auth`, fetching through `client` with
    /// `timeout` per request. Nothing is contacted yet.
    #[must_use]
    pub fn new(client: reqwest::Client, auth: AzureAuth, timeout: Duration) -> Self {
        Self { client, auth, timeout, cached: tokio::sync::Mutex::new(None) }
    }

    /// The scope (or, for a managed identity, the resource) tokens are
    /// asked for.
    #[must_use]
    pub fn scope(&self) -> &'static str {
        match &self.auth {
            AzureAuth::ClientSecret { authority_host, .. } | AzureAuth::WorkloadIdentity { authority_host, .. } => {
                scope_for_authority(authority_host)
            }
            AzureAuth::ManagedIdentity { .. } => IMDS_RESOURCE,
        }
    }

    /// The cached token, or a new one when there is none or it is due for
    /// refresh. Concurrent callers wait for one fetch.
    ///
    /// When a refresh fails while the cached token is still valid, the
    /// cached token is returned (and the failure logged); the next call
    /// tries again.
    ///
    /// # Errors
    ///
    /// [`TokenError`] when no valid token is cached and fetching failed.
    pub async fn token(&self) -> Result<AccessToken, TokenError> {
        let mut cached = self.cached.lock().await;
        let now = Instant::now();
        if let Some(c) = cached.as_ref()
            && now < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        match self.fetch().await {
            Ok(fresh) => {
                let token = fresh.token.clone();
                *cached = Some(fresh);
                Ok(token)
            }
            Err(e) => match cached.as_ref() {
                Some(c) if Instant::now() < c.expires_at => {
                    log::warn!(
                        "refreshing the Azure Monitor token failed, using the current one until it expires: {e}"
                    );
                    Ok(c.token.clone())
                }
                _ => {
                    *cached = None;
                    Err(e)
                }
            },
        }
    }

    /// Forgets `rejected` if it is the cached token (the service answered
    /// 401 to it), so that the next [`token`](Self::token) fetches a new
    /// one. A token cached since (by a concurrent caller) is kept.
    pub async fn invalidate(&self, rejected: &AccessToken) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| &c.token == rejected) {
            *cached = None;
        }
    }

    /// Asks the identity's endpoint for a new token.
    async fn fetch(&self) -> Result<Cached, TokenError> {
        let started = Instant::now();
        let started_wall = SystemTime::now();
        let (url, request) = match &self.auth {
            AzureAuth::ClientSecret { tenant_id, client_id, secret_file, authority_host } => {
                let secret = read_credential(secret_file, true).await?;
                let url = token_url(authority_host, tenant_id)?;
                let body = form_urlencode(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    ("client_secret", &secret),
                    ("scope", scope_for_authority(authority_host)),
                ]);
                let request = self.form_post(url.clone(), body);
                (url, request)
            }
            AzureAuth::WorkloadIdentity { tenant_id, client_id, token_file, authority_host } => {
                let assertion = read_credential(token_file, false).await?;
                let url = token_url(authority_host, tenant_id)?;
                let body = form_urlencode(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    ("scope", scope_for_authority(authority_host)),
                    ("client_assertion_type", JWT_BEARER_ASSERTION),
                    ("client_assertion", &assertion),
                ]);
                let request = self.form_post(url.clone(), body);
                (url, request)
            }
            AzureAuth::ManagedIdentity { client_id, endpoint } => {
                let url = imds_url(endpoint, client_id.as_deref())?;
                let request = self.client.get(url.clone()).header("Metadata", "true").timeout(self.timeout);
                (url, request)
            }
        };
        // The URL carries no secret (tenant, client id, resource only).
        let shown = url.to_string();
        let response =
            request.send().await.map_err(|e| TokenError::Request { url: shown.clone(), reason: error_chain(&e) })?;
        let status = response.status().as_u16();
        let body = read_limited(response, MAX_READ).await.map_err(|reason| TokenError::BadResponse {
            url: shown.clone(),
            status,
            reason,
        })?;
        if !(200..300).contains(&status) {
            let (error, description) = token_error(&body);
            return Err(TokenError::Refused { url: shown, status, error, description });
        }
        let parsed = parse_token_response(&body, started_wall).map_err(|reason| TokenError::BadResponse {
            url: shown.clone(),
            status,
            reason,
        })?;
        let expires_at = started.checked_add(parsed.lifetime).unwrap_or(started);
        let refresh_at = expires_at.checked_sub(refresh_margin(parsed.lifetime)).unwrap_or(started);
        log::debug!("got an Azure Monitor token from {shown}, valid for {:?}", parsed.lifetime);
        Ok(Cached { token: parsed.token, refresh_at, expires_at })
    }

    fn form_post(&self, url: reqwest::Url, body: String) -> reqwest::RequestBuilder {
        self.client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout)
            .body(body)
    }
}

/// How long before expiry a token of `lifetime` is refreshed:
/// [`REFRESH_MARGIN`], or half the lifetime when it is shorter than
/// [`SHORT_LIFETIME`].
#[must_use]
pub fn refresh_margin(lifetime: Duration) -> Duration {
    if lifetime < SHORT_LIFETIME { lifetime / 2 } else { REFRESH_MARGIN }
}

/// The Logs Ingestion scope for tokens from `authority_host`: the
/// sovereign clouds' own audiences for their authorities, the public
/// cloud's for any other host.
#[must_use]
pub fn scope_for_authority(authority_host: &str) -> &'static str {
    let host = reqwest::Url::parse(authority_host)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.trim_end_matches('.').to_ascii_lowercase()));
    match host.as_deref() {
        Some("login.microsoftonline.us") => US_GOVERNMENT_SCOPE,
        Some("login.chinacloudapi.cn" | "login.partner.microsoftonline.cn") => CHINA_SCOPE,
        _ => PUBLIC_SCOPE,
    }
}

/// `{authority_host}/{tenant_id}/oauth2/v2.0/token`.
fn token_url(authority_host: &str, tenant_id: &str) -> Result<reqwest::Url, TokenError> {
    let bad = |reason: String| TokenError::Url { base: authority_host.to_owned(), reason };
    let mut url = reqwest::Url::parse(authority_host).map_err(|e| bad(e.to_string()))?;
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| bad("it cannot carry a path".to_owned()))?
        .pop_if_empty()
        .extend([tenant_id, "oauth2", "v2.0", "token"]);
    Ok(url)
}

/// `{endpoint}?api-version=2018-02-01&resource=…[&client_id=…]`.
fn imds_url(endpoint: &str, client_id: Option<&str>) -> Result<reqwest::Url, TokenError> {
    let mut url = reqwest::Url::parse(endpoint)
        .map_err(|e| TokenError::Url { base: endpoint.to_owned(), reason: e.to_string() })?;
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("api-version", IMDS_API_VERSION).append_pair("resource", IMDS_RESOURCE);
        if let Some(id) = client_id {
            query.append_pair("client_id", id);
        }
    }
    Ok(url)
}

/// Reads a secret or federated token file: at most [`MAX_READ`] bytes,
/// UTF-8, without its trailing line end (all surrounding white space for a
/// federated token).
async fn read_credential(path: &Path, secret: bool) -> Result<String, TokenError> {
    let read_error = |source: std::io::Error| {
        if secret {
            TokenError::ReadSecret { path: path.to_owned(), source }
        } else {
            TokenError::ReadFederatedToken { path: path.to_owned(), source }
        }
    };
    let file = tokio::fs::File::open(path).await.map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_READ + 1).read_to_end(&mut bytes).await.map_err(read_error)?;
    if bytes.len() as u64 > MAX_READ {
        return Err(read_error(std::io::Error::other(format!("longer than {MAX_READ} bytes"))));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8")))?;
    let value = if secret { text.trim_end_matches(['\r', '\n']) } else { text.trim() };
    if value.is_empty() {
        return Err(if secret {
            TokenError::EmptySecret { path: path.to_owned() }
        } else {
            TokenError::EmptyFederatedToken { path: path.to_owned() }
        });
    }
    Ok(value.to_owned())
}

/// Reads at most `limit` bytes of a response body (the rest is dropped).
pub(crate) async fn read_limited(mut response: reqwest::Response, limit: u64) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
        let room = usize::try_from(limit).unwrap_or(usize::MAX).saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() as u64 >= limit {
            break;
        }
    }
    Ok(body)
}

/// A token response's useful parts.
struct Parsed {
    token: AccessToken,
    lifetime: Duration,
}

/// Parses `{"access_token", "expires_in", "expires_on"?}` (numbers or
/// strings of digits); the lifetime comes from `expires_in` when present
/// (immune to clock skew), else from `expires_on` against `now`.
fn parse_token_response(body: &[u8], now: SystemTime) -> Result<Parsed, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object().ok_or("not a JSON object")?;
    let token = match object.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        Some(_) => return Err("access_token is not a non-empty string".to_owned()),
        None => return Err("no access_token".to_owned()),
    };
    if let Some(kind) = object.get("token_type").and_then(Value::as_str)
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(format!("token_type is {kind:?}, not Bearer"));
    }
    let lifetime = if let Some(v) = object.get("expires_in") {
        let secs = seconds(v).ok_or("expires_in is not a number of seconds")?;
        Duration::from_secs(secs)
    } else if let Some(v) = object.get("expires_on") {
        let epoch = seconds(v).ok_or("expires_on is not a number of seconds")?;
        let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Duration::from_secs(epoch.saturating_sub(now_secs))
    } else {
        return Err("neither expires_in nor expires_on".to_owned());
    };
    Ok(Parsed { token: AccessToken(token), lifetime: lifetime.min(MAX_LIFETIME) })
}

/// A non-negative whole number of seconds, as a JSON number or a string of
/// digits.
fn seconds(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| {
                // Saturating float-to-int conversion; fractions dropped.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let whole = f as u64;
                whole
            })
        }),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
}

/// `(error, error_description)` of an OAuth error response, or what can be
/// said of another body.
fn token_error(body: &[u8]) -> (String, String) {
    if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(body) {
        let text = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
        if let Some(error) = text("error") {
            return (error, text("error_description").unwrap_or_default());
        }
        // Some proxies and IMDS failures answer in the Azure Core shape.
        if let Some(Value::Object(inner)) = o.get("error") {
            let get = |k: &str| inner.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
            return (get("code"), get("message"));
        }
    }
    ("unknown_error".to_owned(), quote(body, QUOTE_CHARS))
}

/// At most `max` characters of `body`, lossily decoded.
pub(crate) fn quote(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `application/x-www-form-urlencoded` of `pairs`.
#[must_use]
pub fn form_urlencode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_component(k, &mut out);
        out.push('=');
        encode_component(v, &mut out);
    }
    out
}

fn encode_component(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(char::from(b)),
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
}

/// An error and its sources, `: `-separated.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_the_authority_host() {
        assert_eq!(scope_for_authority("https://login.microsoftonline.com"), PUBLIC_SCOPE);
        assert_eq!(scope_for_authority("https://login.microsoftonline.us/"), US_GOVERNMENT_SCOPE);
        assert_eq!(scope_for_authority("https://LOGIN.chinacloudapi.cn"), CHINA_SCOPE);
        assert_eq!(scope_for_authority("https://127.0.0.1:4443"), PUBLIC_SCOPE);
        assert_eq!(scope_for_authority("not a url"), PUBLIC_SCOPE);
    }

    #[test]
    fn refresh_margin_is_five_minutes_or_half_a_short_lifetime() {
        assert_eq!(refresh_margin(Duration::from_secs(3600)), REFRESH_MARGIN);
        assert_eq!(refresh_margin(Duration::from_secs(600)), REFRESH_MARGIN);
        assert_eq!(refresh_margin(Duration::from_secs(300)), Duration::from_secs(150));
        assert_eq!(refresh_margin(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn form_encoding_escapes_reserved_characters() {
        assert_eq!(
            form_urlencode(&[("scope", "https://monitor.azure.com/.default"), ("client_secret", "a b+c&d=é~")]),
            "scope=https%3A%2F%2Fmonitor.azure.com%2F.default&client_secret=a+b%2Bc%26d%3D%C3%A9%7E"
        );
    }

    #[test]
    fn token_urls() {
        let url = token_url("https://login.microsoftonline.com/", "t-1").expect("url");
        assert_eq!(url.as_str(), "https://login.microsoftonline.com/t-1/oauth2/v2.0/token");
        let url = token_url("https://127.0.0.1:8443", "a/b").expect("url");
        assert_eq!(url.as_str(), "https://127.0.0.1:8443/a%2Fb/oauth2/v2.0/token");
        assert!(token_url("nope", "t").is_err());
        let url = imds_url(super::super::IMDS_ENDPOINT, Some("c 1")).expect("url");
        assert_eq!(
            url.as_str(),
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmonitor.azure.com%2F&client_id=c+1"
        );
    }

    #[test]
    fn token_responses_parse_numbers_and_strings() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let p = parse_token_response(br#"{"access_token":"x","expires_in":3599,"token_type":"Bearer"}"#, now)
            .expect("entra");
        assert_eq!(p.lifetime, Duration::from_secs(3599));
        assert_eq!(p.token.secret(), "x");
        let p = parse_token_response(br#"{"access_token":"x","expires_in":"86399","expires_on":"1086399"}"#, now)
            .expect("imds");
        assert_eq!(p.lifetime, Duration::from_secs(86399));
        let p = parse_token_response(br#"{"access_token":"x","expires_on":1000060}"#, now).expect("expires_on");
        assert_eq!(p.lifetime, Duration::from_secs(60));
        let p = parse_token_response(br#"{"access_token":"x","expires_on":"5"}"#, now).expect("past");
        assert_eq!(p.lifetime, Duration::ZERO);
        let p = parse_token_response(br#"{"access_token":"x","expires_in":1e300}"#, now).expect("huge");
        assert_eq!(p.lifetime, MAX_LIFETIME);
        for bad in [
            &b"garbage"[..],
            br#"[]"#,
            br#"{"expires_in":5}"#,
            br#"{"access_token":"","expires_in":5}"#,
            br#"{"access_token":7,"expires_in":5}"#,
            br#"{"access_token":"x"}"#,
            br#"{"access_token":"x","expires_in":-5}"#,
            br#"{"access_token":"x","expires_in":"soon"}"#,
            br#"{"access_token":"x","expires_in":5,"token_type":"PoP"}"#,
        ] {
            assert!(parse_token_response(bad, now).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn token_errors_carry_error_and_description() {
        let (e, d) = token_error(br#"{"error":"invalid_client","error_description":"AADSTS7000215: bad"}"#);
        assert_eq!((e.as_str(), d.as_str()), ("invalid_client", "AADSTS7000215: bad"));
        let (e, d) = token_error(br#"{"error":{"code":"Forbidden","message":"no"}}"#);
        assert_eq!((e.as_str(), d.as_str()), ("Forbidden", "no"));
        let (e, d) = token_error(b"<html>proxy</html>");
        assert_eq!((e.as_str(), d.as_str()), ("unknown_error", "<html>proxy</html>"));
    }

    #[test]
    fn access_tokens_do_not_debug_print() {
        assert_eq!(format!("{:?}", AccessToken("s3cr3t".to_owned())), "AccessToken(<redacted>)");
    }

    #[tokio::test]
    async fn credential_files_are_trimmed_and_checked() {
        let dir = std::env::temp_dir().join(format!("sightline-identity-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("secret");
        std::fs::write(&file, "  s3 cr3t \r\n").expect("write");
        assert_eq!(read_credential(&file, true).await.expect("secret"), "  s3 cr3t ");
        assert_eq!(read_credential(&file, false).await.expect("token"), "s3 cr3t");
        std::fs::write(&file, "\n").expect("write");
        let e = read_credential(&file, true).await.expect_err("empty");
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
        let missing = dir.join("missing");
        let e = read_credential(&missing, true).await.expect_err("missing");
        assert!(e.to_string().contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
