//! Authentication of the relay's API: bearer tokens (JWT) from Entra ID or
//! any OpenID Connect issuer, in the `authorization: Bearer <token>` gRPC
//! metadata, checked against the issuer's published keys (JWKS); and
//! optional authorization by namespace from the token's roles and groups.
//!
//! - [`jwt`]: decoding, signature (ring), claims (`iss`, `aud`, `exp`,
//!   `nbf` with 60 s of clock skew);
//! - [`jwks`]: the key set, fetched over HTTPS (discovered from
//!   `<issuer>/.well-known/openid-configuration` unless a URL is given),
//!   cached, fetched again for an unknown `kid` (rate-limited);
//! - [`scope`]: the roles/groups → namespaces mapping.
//!
//! A missing or bad token is refused with `UNAUTHENTICATED` and the reason;
//! keys that cannot be fetched give `UNAVAILABLE`. Health and reflection are
//! not behind authentication (they carry no flow data).

pub mod jwks;
pub mod jwt;
pub mod scope;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::Status;
use tonic::metadata::MetadataMap;

pub use jwt::{Claims, Validation};
pub use scope::{NamespacePolicy, Scope};

/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(60);

/// Why a request was not authenticated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no bearer token: send the metadata `authorization: Bearer <token>`")]
    Missing,
    #[error("the authorization metadata is not `Bearer <token>`")]
    NotBearer,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token's algorithm {0:?} is not accepted (RS256/384/512, PS256/384/512, ES256, ES384)")]
    Algorithm(String),
    #[error("the token is signed with key {0:?}, which the issuer does not publish")]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token expired {seconds_ago} s ago")]
    Expired { seconds_ago: i64 },
    #[error("the token is not valid yet (for another {in_seconds} s)")]
    NotYetValid { in_seconds: i64 },
    #[error("the token's issuer {0:?} is not the one configured")]
    Issuer(String),
    #[error("the token's audience ({0}) is not this relay's")]
    Audience(String),
    #[error("{0}")]
    Claim(&'static str),
    #[error("the issuer's keys cannot be fetched: {0}")]
    Keys(String),
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Keys(_) => Self::unavailable(e.to_string()),
            e => Self::unauthenticated(e.to_string()),
        }
    }
}

/// How the relay authenticates (its `--auth-*` flags).
#[derive(Clone, Debug, Default)]
pub struct AuthOptions {
    /// `iss` of valid tokens; with no JWKS URL, its OpenID configuration
    /// names the key set.
    pub issuer: String,
    /// Valid tokens' `aud` holds one of these.
    pub audiences: Vec<String>,
    /// The key set's URL (instead of discovery).
    pub jwks_url: Option<String>,
    /// A CA file to trust for the issuer's HTTPS, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// The roles/groups → namespaces mapping (authorization).
    pub namespaces_file: Option<PathBuf>,
}

/// Why authentication could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("--auth-issuer {0:?}: {1}")]
    Issuer(String, &'static str),
    #[error("--auth-jwks-url {0:?}: {1}")]
    JwksUrl(String, &'static str),
    #[error("--auth-audience: at least one audience is needed")]
    NoAudience,
    #[error("--auth-ca-file: {0}")]
    Https(#[from] sightline_tls::https::HttpsError),
    #[error("--auth-namespaces-file {0}")]
    Policy(#[from] scope::PolicyError),
}

fn https_url(url: &str) -> Result<(), &'static str> {
    let Some(rest) = url.strip_prefix("https://") else { return Err("must be an https:// URL") };
    if rest.is_empty() || rest.starts_with('/') {
        return Err("has no host");
    }
    Ok(())
}

/// Who made a request and what it may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub who: String,
    pub scope: Scope,
}

/// Checks the tokens of requests.
pub struct Authenticator {
    validation: Validation,
    keys: jwks::Keys,
    policy: Option<NamespacePolicy>,
}

impl Authenticator {
    /// From the relay's flags: keys fetched over HTTPS.
    ///
    /// # Errors
    ///
    /// [`AuthSetupError`] for a URL that is not https, no audience, an
    /// unusable CA file or mapping file.
    pub fn new(opts: &AuthOptions) -> Result<Self, AuthSetupError> {
        https_url(&opts.issuer).map_err(|why| AuthSetupError::Issuer(opts.issuer.clone(), why))?;
        if let Some(url) = &opts.jwks_url {
            https_url(url).map_err(|why| AuthSetupError::JwksUrl(url.clone(), why))?;
        }
        if opts.audiences.iter().all(String::is_empty) {
            return Err(AuthSetupError::NoAudience);
        }
        let client = sightline_tls::https::client(opts.ca_file.as_deref())?;
        let policy = opts.namespaces_file.as_deref().map(NamespacePolicy::load).transpose()?;
        let fetch = jwks::HttpFetch::new(client, &opts.issuer, opts.jwks_url.clone());
        Ok(Self::with_keys(
            Validation {
                issuer: opts.issuer.clone(),
                audiences: opts.audiences.iter().filter(|a| !a.is_empty()).cloned().collect(),
                leeway: LEEWAY.as_secs() as i64,
            },
            jwks::Keys::new(Box::new(fetch)),
            policy,
        ))
    }

    /// With any key source (tests).
    #[must_use]
    pub fn with_keys(validation: Validation, keys: jwks::Keys, policy: Option<NamespacePolicy>) -> Self {
        Self { validation, keys, policy }
    }

    /// Fetches the keys once, so that a wrong issuer or URL shows at start.
    ///
    /// # Errors
    ///
    /// [`AuthError::Keys`].
    pub async fn warm_up(&self) -> Result<usize, AuthError> {
        self.keys.warm_up().await
    }

    /// Whether namespaces are mapped (authorization on).
    #[must_use]
    pub fn authorizes(&self) -> bool {
        self.policy.is_some()
    }

    /// The request's token, checked; who it is and what it may see.
    ///
    /// # Errors
    ///
    /// [`AuthError`]: why the request is refused.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<Principal, AuthError> {
        let value = metadata.get("authorization").ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::NotBearer);
        }
        let claims = self.verify(token.trim(), unix_now()).await?;
        let scope = self.policy.as_ref().map_or(Scope::All, |p| p.scope(&claims));
        Ok(Principal { who: claims.who(), scope })
    }

    /// Checks a token at `now` (seconds since the epoch): its signature
    /// with the issuer's key, then its claims.
    ///
    /// # Errors
    ///
    /// [`AuthError`].
    pub async fn verify(&self, token: &str, now: i64) -> Result<Claims, AuthError> {
        let token = jwt::decode(token)?;
        let candidates = self.keys.find(token.header.kid.as_deref(), token.header.alg).await?;
        if !candidates.iter().any(|k| token.verify(k).is_ok()) {
            return Err(AuthError::Signature);
        }
        self.validation.check(&token.claims, now)?;
        Ok(token.claims)
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use serde_json::json;
    use sightline_standins::oidc::{SigningKey, jwks as jwks_of};

    use super::*;

    const ISS: &str = "https://login.microsoftonline.com/tenant-1/v2.0";
    const AUD: &str = "api://sightline-relay";
    const NOW: i64 = 1_750_000_000;

    /// A key set the test changes, counting fetches.
    #[derive(Clone, Default)]
    struct Published {
        keys: Arc<Mutex<Vec<SigningKey>>>,
        fetches: Arc<AtomicUsize>,
    }

    #[tonic::async_trait]
    impl jwks::Fetch for Published {
        async fn fetch(&self) -> Result<Vec<u8>, String> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            Ok(jwks_of(&self.keys.lock().expect("keys")).to_string().into_bytes())
        }
        fn describe(&self) -> String {
            "the test's keys".to_owned()
        }
    }

    fn rsa(kid: &str) -> SigningKey {
        SigningKey::rs256(kid, include_bytes!("../../testdata/rsa-2048-a.pk8")).expect("RSA key")
    }

    fn rsa_b(kid: &str) -> SigningKey {
        SigningKey::rs256(kid, include_bytes!("../../testdata/rsa-2048-b.pk8")).expect("RSA key")
    }

    fn authenticator(keys: Vec<SigningKey>, min_refresh: Duration, policy: Option<NamespacePolicy>) -> (Authenticator, Published) {
        let published = Published::default();
        *published.keys.lock().expect("keys") = keys;
        let validation = Validation { issuer: ISS.to_owned(), audiences: vec![AUD.to_owned()], leeway: 60 };
        let keys = jwks::Keys::with_intervals(Box::new(published.clone()), min_refresh, Duration::from_secs(3600));
        (Authenticator::with_keys(validation, keys, policy), published)
    }

    fn claims() -> serde_json::Value {
        json!({"iss": ISS, "aud": AUD, "sub": "user-1", "iat": NOW - 10, "nbf": NOW - 10, "exp": NOW + 3600})
    }

    fn with(mut base: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
        base[key] = value;
        base
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    #[test]
    fn valid_tokens_rs256_and_es256() {
        let es = SigningKey::es256("ec-1").expect("EC key");
        let (auth, _) = authenticator(vec![rsa("rsa-1"), es.clone()], Duration::from_secs(10), None);
        rt().block_on(async {
            let t = rsa("rsa-1").sign(&claims()).expect("sign");
            assert_eq!(auth.verify(&t, NOW).await.expect("RS256 accepted").sub.as_deref(), Some("user-1"));
            let t = es.sign(&with(claims(), "aud", json!(["other", AUD]))).expect("sign");
            auth.verify(&t, NOW).await.expect("ES256 accepted, aud as an array");
            // Within the skew on both ends.
            let t = rsa("rsa-1").sign(&with(claims(), "exp", json!(NOW - 30))).expect("sign");
            auth.verify(&t, NOW).await.expect("expired 30 s ago is within the skew");
            let t = rsa("rsa-1").sign(&with(claims(), "nbf", json!(NOW + 30))).expect("sign");
            auth.verify(&t, NOW).await.expect("valid in 30 s is within the skew");
        });
    }

    #[test]
    fn bad_tokens_are_refused_with_the_reason() {
        let key = rsa("rsa-1");
        let (auth, _) = authenticator(vec![key.clone()], Duration::from_secs(10), None);
        rt().block_on(async {
            let verify = |t: String| {
                let auth = &auth;
                async move { auth.verify(&t, NOW).await.map(|_| ()) }
            };
            let sign = |c: serde_json::Value| key.sign(&c).expect("sign");
            assert_eq!(verify(sign(with(claims(), "exp", json!(NOW - 61)))).await, Err(AuthError::Expired { seconds_ago: 61 }));
            assert_eq!(verify(sign(with(claims(), "nbf", json!(NOW + 120)))).await, Err(AuthError::NotYetValid { in_seconds: 120 }));
            assert_eq!(verify(sign(with(claims(), "aud", json!("api://other")))).await, Err(AuthError::Audience("api://other".into())));
            assert_eq!(
                verify(sign(with(claims(), "iss", json!("https://evil.example/v2.0")))).await,
                Err(AuthError::Issuer("https://evil.example/v2.0".into()))
            );
            let mut no_exp = claims();
            no_exp.as_object_mut().expect("object").remove("exp");
            assert!(matches!(verify(sign(no_exp)).await, Err(AuthError::Claim(_))));
            // Signed by another key under the published kid.
            let forged = rsa_b("rsa-1").sign(&claims()).expect("sign");
            assert_eq!(verify(forged).await, Err(AuthError::Signature));
            // A valid token with its payload changed.
            let t = sign(claims());
            let mut parts: Vec<&str> = t.split('.').collect();
            let other = jwt::B64.encode(with(claims(), "sub", json!("admin")).to_string());
            parts[1] = &other;
            assert_eq!(verify(parts.join(".")).await, Err(AuthError::Signature));
            // alg none (no signature), and HMAC with the public key as secret.
            let none = format!(
                "{}.{}.",
                jwt::B64.encode(json!({"alg": "none", "kid": "rsa-1"}).to_string()),
                jwt::B64.encode(claims().to_string())
            );
            assert_eq!(verify(none).await, Err(AuthError::Algorithm("none".into())));
            let hs = key.sign_with_header(&json!({"alg": "HS256", "kid": "rsa-1"}), &claims()).expect("sign");
            assert_eq!(verify(hs).await, Err(AuthError::Algorithm("HS256".into())));
            // An RS256 key claimed as ES256.
            let mixed = key.sign_with_header(&json!({"alg": "ES256", "kid": "rsa-1"}), &claims()).expect("sign");
            assert_eq!(verify(mixed).await, Err(AuthError::Signature));
            // Garbage.
            for garbage in ["", "abc", "a.b", "a.b.c", "....", "eyJ.eyJ.sig", &"x".repeat(20_000), "é.é.é"] {
                assert!(matches!(verify(garbage.to_owned()).await, Err(AuthError::Malformed(_))), "{garbage:.40}");
            }
            let not_object = format!("{}.{}.c2ln", jwt::B64.encode("[1]"), jwt::B64.encode("{}"));
            assert!(matches!(verify(not_object).await, Err(AuthError::Malformed(_))));
            let wrong_types = sign(with(claims(), "exp", json!("tomorrow")));
            assert!(matches!(verify(wrong_types).await, Err(AuthError::Malformed(_))));
        });
    }

    #[test]
    fn an_unknown_kid_fetches_the_keys_again_rate_limited() {
        let (old, new) = (rsa("2024"), rsa_b("2025"));
        let (auth, published) = authenticator(vec![old.clone()], Duration::from_millis(300), None);
        rt().block_on(async {
            auth.verify(&old.sign(&claims()).expect("sign"), NOW).await.expect("old key");
            assert_eq!(published.fetches.load(Ordering::SeqCst), 1);
            // The issuer rotates: tokens with the new kid.
            *published.keys.lock().expect("keys") = vec![old.clone(), new.clone()];
            let t = new.sign(&claims()).expect("sign");
            // Fetched at most once per interval: the first fetch was just now.
            assert_eq!(auth.verify(&t, NOW).await.map(|_| ()), Err(AuthError::UnknownKey("2025".into())));
            assert_eq!(published.fetches.load(Ordering::SeqCst), 1);
            tokio::time::sleep(Duration::from_millis(350)).await;
            auth.verify(&t, NOW).await.expect("new key after a refetch");
            assert_eq!(published.fetches.load(Ordering::SeqCst), 2);
            // Known keys need no fetch; an unknown kid is refused without
            // fetching again within the interval.
            auth.verify(&old.sign(&claims()).expect("sign"), NOW).await.expect("old key still published");
            let stray = rsa("nobody").sign(&claims()).expect("sign");
            assert_eq!(auth.verify(&stray, NOW).await.map(|_| ()), Err(AuthError::UnknownKey("nobody".into())));
            assert_eq!(auth.verify(&stray, NOW).await.map(|_| ()), Err(AuthError::UnknownKey("nobody".into())));
            assert_eq!(published.fetches.load(Ordering::SeqCst), 2, "unknown kids do not make a fetch storm");
        });
    }

    #[test]
    fn the_metadata_must_be_a_bearer_token() {
        let key = rsa("rsa-1");
        let policy = NamespacePolicy::parse("roles: {Flows.Shop: [shop]}").expect("policy");
        let (auth, _) = authenticator(vec![key.clone()], Duration::from_secs(10), Some(policy));
        rt().block_on(async {
            let mut md = MetadataMap::new();
            assert_eq!(auth.authenticate(&md).await, Err(AuthError::Missing));
            md.insert("authorization", "Basic dXNlcjpwdw==".parse().expect("ascii"));
            assert_eq!(auth.authenticate(&md).await, Err(AuthError::NotBearer));
            let now = unix_now();
            let t = key
                .sign(&json!({"iss": ISS, "aud": AUD, "sub": "u", "exp": now + 600, "roles": ["Flows.Shop"]}))
                .expect("sign");
            md.insert("authorization", format!("Bearer {t}").parse().expect("ascii"));
            let p = auth.authenticate(&md).await.expect("accepted");
            assert_eq!(p.scope, Scope::Namespaces(["shop".to_owned()].into()));
            let status = Status::from(AuthError::Expired { seconds_ago: 5 });
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(status.message().contains("expired"));
            assert_eq!(Status::from(AuthError::Keys("down".into())).code(), tonic::Code::Unavailable);
        });
    }

    #[test]
    fn setup_wants_https_and_an_audience() {
        let opts = AuthOptions { issuer: "http://idp.example".into(), audiences: vec!["a".into()], ..AuthOptions::default() };
        assert!(Authenticator::new(&opts).err().expect("refused").to_string().contains("https"));
        let opts = AuthOptions { issuer: "https://idp.example".into(), ..AuthOptions::default() };
        assert!(matches!(Authenticator::new(&opts), Err(AuthSetupError::NoAudience)));
    }

    use base64::Engine as _;
}
