//! The issuer's signing keys: a JSON Web Key Set fetched over HTTPS (from
//! `--auth-jwks-url`, or the `jwks_uri` of the issuer's OpenID
//! configuration), cached, and fetched again when a token names a key the
//! cache does not hold (the issuer rotated its keys), at most once per
//! [`Keys::min_refresh`]; also when the cache is older than an hour.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

use super::AuthError;
use super::jwt::{Alg, B64};

/// A public key of the set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The algorithm the key is for, when the set says.
    pub alg: Option<String>,
    pub material: KeyMaterial,
}

/// The key itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyMaterial {
    /// Modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Uncompressed point (0x04 ‖ x ‖ y).
    P256 { point: Vec<u8> },
    P384 { point: Vec<u8> },
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

fn member(v: Option<&String>, name: &str) -> Result<Vec<u8>, String> {
    let v = v.ok_or_else(|| format!("no {name}"))?;
    B64.decode(v).map_err(|_| format!("{name} is not base64url"))
}

fn parse_key(raw: RawKey) -> Result<Option<Jwk>, String> {
    if raw.usage.as_deref().is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let material = match raw.kty.as_str() {
        "RSA" => KeyMaterial::Rsa { n: member(raw.n.as_ref(), "n")?, e: member(raw.e.as_ref(), "e")? },
        "EC" => {
            let (x, y) = (member(raw.x.as_ref(), "x")?, member(raw.y.as_ref(), "y")?);
            let size = match raw.crv.as_deref() {
                Some("P-256") => 32,
                Some("P-384") => 48,
                _ => return Ok(None),
            };
            if x.len() != size || y.len() != size {
                return Err(format!("x and y of a {} key are {size} bytes", raw.crv.unwrap_or_default()));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            if size == 32 { KeyMaterial::P256 { point } } else { KeyMaterial::P384 { point } }
        }
        // Symmetric keys (oct), OKP and others: not for Sightline.
        _ => return Ok(None),
    };
    Ok(Some(Jwk { kid: raw.kid, alg: raw.alg, material }))
}

/// The usable keys of a JWKS document. Keys of kinds Sightline does not
/// verify with (or not for signatures) are skipped; a broken key of a kind
/// it does verify with is skipped with a log line.
///
/// # Errors
///
/// When the document is not a JWKS (`{"keys": [...]}`).
pub fn parse(document: &[u8]) -> Result<Vec<Jwk>, String> {
    let set: RawSet = serde_json::from_slice(document).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for value in set.keys {
        let raw: RawKey = match serde_json::from_value(value) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("JWKS: a key is skipped: {e}");
                continue;
            }
        };
        let kid = raw.kid.clone().unwrap_or_default();
        match parse_key(raw) {
            Ok(Some(k)) => keys.push(k),
            Ok(None) => {}
            Err(e) => log::warn!("JWKS: key {kid:?} is skipped: {e}"),
        }
    }
    Ok(keys)
}

/// Where key sets come from.
#[tonic::async_trait]
pub trait Fetch: Send + Sync {
    /// The JWKS document.
    async fn fetch(&self) -> Result<Vec<u8>, String>;
    /// What it fetches, for messages.
    fn describe(&self) -> String;
}

/// Largest discovery or JWKS document read.
const MAX_DOCUMENT: usize = 1024 * 1024;
/// Time limit of one HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Over HTTPS: the JWKS URL, or the one the issuer's OpenID configuration
/// names (looked up on every fetch: the issuer may move it).
pub struct HttpFetch {
    client: reqwest::Client,
    issuer: String,
    jwks_url: Option<String>,
}

impl HttpFetch {
    #[must_use]
    pub fn new(client: reqwest::Client, issuer: &str, jwks_url: Option<String>) -> Self {
        Self { client, issuer: issuer.to_owned(), jwks_url }
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let response = self
            .client
            .get(url)
            .header("accept", "application/json")
            .timeout(HTTP_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url}: HTTP {status}"));
        }
        if response.content_length().is_some_and(|l| l > MAX_DOCUMENT as u64) {
            return Err(format!("GET {url}: the document is larger than {MAX_DOCUMENT} bytes"));
        }
        let body = response.bytes().await.map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        if body.len() > MAX_DOCUMENT {
            return Err(format!("GET {url}: the document is larger than {MAX_DOCUMENT} bytes"));
        }
        Ok(body.to_vec())
    }

    async fn jwks_url(&self) -> Result<String, String> {
        if let Some(url) = &self.jwks_url {
            return Ok(url.clone());
        }
        #[derive(Deserialize)]
        struct Discovery {
            issuer: Option<String>,
            jwks_uri: Option<String>,
        }
        let url = discovery_url(&self.issuer);
        let doc: Discovery = serde_json::from_slice(&self.get(&url).await?)
            .map_err(|e| format!("{url} is not an OpenID configuration: {e}"))?;
        if let Some(iss) = &doc.issuer
            && iss != &self.issuer
        {
            return Err(format!("{url} is the configuration of issuer {iss:?}, not {:?}", self.issuer));
        }
        doc.jwks_uri.ok_or_else(|| format!("{url} names no jwks_uri"))
    }
}

/// `<issuer>/.well-known/openid-configuration`.
#[must_use]
pub fn discovery_url(issuer: &str) -> String {
    format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cur = s.source();
    }
    text
}

#[tonic::async_trait]
impl Fetch for HttpFetch {
    async fn fetch(&self) -> Result<Vec<u8>, String> {
        let url = self.jwks_url().await?;
        self.get(&url).await
    }

    fn describe(&self) -> String {
        match &self.jwks_url {
            Some(url) => url.clone(),
            None => format!("the jwks_uri of {}", discovery_url(&self.issuer)),
        }
    }
}

struct Cache {
    keys: Arc<Vec<Jwk>>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

/// The cached key set.
pub struct Keys {
    fetch: Box<dyn Fetch>,
    cache: tokio::sync::Mutex<Cache>,
    /// Least time between two fetches.
    pub min_refresh: Duration,
    /// Keys older than this are fetched again at the next use.
    pub max_age: Duration,
}

impl Keys {
    /// At most one fetch every 10 s; keys kept an hour.
    #[must_use]
    pub fn new(fetch: Box<dyn Fetch>) -> Self {
        Self::with_intervals(fetch, Duration::from_secs(10), Duration::from_secs(3600))
    }

    #[must_use]
    pub fn with_intervals(fetch: Box<dyn Fetch>, min_refresh: Duration, max_age: Duration) -> Self {
        Self {
            fetch,
            cache: tokio::sync::Mutex::new(Cache { keys: Arc::new(Vec::new()), fetched: None, attempted: None }),
            min_refresh,
            max_age,
        }
    }

    /// Fetches now, unless the last attempt was less than `min_refresh`
    /// ago. Failures keep the keys held.
    async fn refresh(&self, cache: &mut Cache) -> Result<(), AuthError> {
        if cache.attempted.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return Ok(());
        }
        cache.attempted = Some(Instant::now());
        let fetched = self.fetch.fetch().await.and_then(|doc| parse(&doc));
        match fetched {
            Ok(keys) => {
                log::info!("token keys: {} usable key(s) from {}", keys.len(), self.fetch.describe());
                cache.keys = Arc::new(keys);
                cache.fetched = Some(Instant::now());
                Ok(())
            }
            Err(e) => {
                log::warn!("token keys from {}: {e}", self.fetch.describe());
                if cache.fetched.is_none() {
                    return Err(AuthError::Keys(e));
                }
                Ok(())
            }
        }
    }

    /// Fetches the keys once (at start, so that a wrong URL shows early).
    ///
    /// # Errors
    ///
    /// [`AuthError::Keys`] when they cannot be fetched.
    pub async fn warm_up(&self) -> Result<usize, AuthError> {
        let mut cache = self.cache.lock().await;
        self.refresh(&mut cache).await?;
        Ok(cache.keys.len())
    }

    /// The key that checks a token with this `kid` and algorithm.
    ///
    /// # Errors
    ///
    /// [`AuthError::Keys`] while no key set could be fetched yet;
    /// [`AuthError::UnknownKey`] when the set (fetched again if allowed)
    /// has no such key.
    pub async fn find(&self, kid: Option<&str>, alg: Alg) -> Result<Vec<Jwk>, AuthError> {
        let mut cache = self.cache.lock().await;
        if cache.fetched.is_none_or(|t| t.elapsed() >= self.max_age) {
            self.refresh(&mut cache).await?;
        }
        let pick = |keys: &[Jwk]| -> Vec<Jwk> {
            keys.iter()
                .filter(|k| match kid {
                    Some(kid) => k.kid.as_deref() == Some(kid),
                    None => alg.fits(&k.material),
                })
                .cloned()
                .collect()
        };
        let found = pick(&cache.keys);
        if !found.is_empty() {
            return Ok(found);
        }
        // A key we do not know: the issuer may have rotated.
        self.refresh(&mut cache).await?;
        let found = pick(&cache.keys);
        if found.is_empty() {
            if cache.fetched.is_none() {
                return Err(AuthError::Keys("no key set could be fetched yet".to_owned()));
            }
            return Err(AuthError::UnknownKey(kid.unwrap_or("(none)").chars().take(100).collect()));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_other_kinds_are_skipped() {
        let doc = br#"{"keys":[
            {"kty":"RSA","kid":"r","use":"sig","n":"AQAB","e":"AQAB"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"EC","kid":"bad","crv":"P-256","x":"AQAB","y":"AQAB"},
            {"kty":"OKP","kid":"ed","crv":"Ed25519","x":"AQAB"},
            {"no":"kty"}
        ]}"#;
        let keys = parse(doc).expect("a JWKS");
        assert_eq!(keys.iter().map(|k| k.kid.as_deref()).collect::<Vec<_>>(), [Some("r")]);
        assert!(parse(b"[]").is_err());
        assert!(parse(b"garbage").is_err());
    }

    #[test]
    fn discovery_is_under_the_issuer() {
        assert_eq!(
            discovery_url("https://login.microsoftonline.com/tid/v2.0"),
            "https://login.microsoftonline.com/tid/v2.0/.well-known/openid-configuration"
        );
        assert_eq!(discovery_url("https://idp.example/"), "https://idp.example/.well-known/openid-configuration");
    }
}
