//! An OpenID Connect issuer stand-in (Entra ID's shape) over HTTPS with a
//! test CA: its OpenID configuration at
//! `<issuer>/.well-known/openid-configuration`, its signing keys (JWKS) at
//! `jwks_uri`, and tokens it signs on request (RS256 as Entra ID, or ES256)
//! with whatever claims a test wants. Keys can be rotated; fetches of the
//! configuration and the key set are counted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{Value, json};

use crate::tls::{TestCa, TlsError};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a key could not be made or a token signed.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("making or loading a key: {0}")]
    Key(String),
    #[error("signing: {0}")]
    Sign(String),
    #[error("TLS for the stand-in: {0}")]
    Tls(#[from] TlsError),
    #[error("binding the stand-in: {0}")]
    Bind(#[source] std::io::Error),
}

enum Pair {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

/// A signing key with its `kid`.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    pair: Arc<Pair>,
}

impl SigningKey {
    /// A new P-256 key (ES256).
    ///
    /// # Errors
    ///
    /// [`OidcError::Key`] when ring fails.
    pub fn es256(kid: &str) -> Result<Self, OidcError> {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|e| OidcError::Key(e.to_string()))?;
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).map_err(|e| OidcError::Key(e.to_string()))?;
        Ok(Self { kid: kid.to_owned(), pair: Arc::new(Pair::Es256(pair)) })
    }

    /// An RSA key (RS256) from PKCS#8 DER (ring cannot make RSA keys; the
    /// tests keep two in `relay/testdata/`).
    ///
    /// # Errors
    ///
    /// [`OidcError::Key`] when the DER is not an RSA key ring accepts.
    pub fn rs256(kid: &str, pkcs8_der: &[u8]) -> Result<Self, OidcError> {
        let pair = RsaKeyPair::from_pkcs8(pkcs8_der).map_err(|e| OidcError::Key(e.to_string()))?;
        Ok(Self { kid: kid.to_owned(), pair: Arc::new(Pair::Rs256(pair)) })
    }

    /// The same key material under another `kid`.
    #[must_use]
    pub fn renamed(&self, kid: &str) -> Self {
        Self { kid: kid.to_owned(), pair: Arc::clone(&self.pair) }
    }

    #[must_use]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `RS256` or `ES256`.
    #[must_use]
    pub fn alg(&self) -> &'static str {
        match *self.pair {
            Pair::Es256(_) => "ES256",
            Pair::Rs256(_) => "RS256",
        }
    }

    /// The public key as a JWK (with `kid`, `use` and `alg`, as Entra ID
    /// publishes them).
    #[must_use]
    pub fn jwk(&self) -> Value {
        match &*self.pair {
            Pair::Es256(p) => {
                let point = p.public_key().as_ref();
                let (x, y) = point[1..].split_at(32);
                json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
                       "x": B64.encode(x), "y": B64.encode(y)})
            }
            Pair::Rs256(p) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(p.public());
                json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                       "n": B64.encode(&c.n), "e": B64.encode(&c.e)})
            }
        }
    }

    /// A compact JWS of `claims`, with this key's `alg` and `kid`.
    ///
    /// # Errors
    ///
    /// [`OidcError::Sign`] when ring fails.
    pub fn sign(&self, claims: &Value) -> Result<String, OidcError> {
        self.sign_with_header(&json!({"alg": self.alg(), "kid": self.kid, "typ": "JWT"}), claims)
    }

    /// A compact JWS with any header (to try `alg: none` and the like).
    ///
    /// # Errors
    ///
    /// [`OidcError::Sign`] when ring fails.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String, OidcError> {
        let signed = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
        let rng = SystemRandom::new();
        let sig = match &*self.pair {
            Pair::Es256(p) => p.sign(&rng, signed.as_bytes()).map_err(|e| OidcError::Sign(e.to_string()))?.as_ref().to_vec(),
            Pair::Rs256(p) => {
                let mut sig = vec![0; p.public().modulus_len()];
                p.sign(&signature::RSA_PKCS1_SHA256, &rng, signed.as_bytes(), &mut sig)
                    .map_err(|e| OidcError::Sign(e.to_string()))?;
                sig
            }
        };
        Ok(format!("{signed}.{}", B64.encode(sig)))
    }
}

/// A JWKS document of these keys.
#[must_use]
pub fn jwks(keys: &[SigningKey]) -> Value {
    json!({"keys": keys.iter().map(SigningKey::jwk).collect::<Vec<_>>()})
}

struct Shared {
    issuer: String,
    published: Mutex<Vec<SigningKey>>,
    discovery_fetches: AtomicUsize,
    jwks_fetches: AtomicUsize,
}

/// The issuer, serving until dropped.
pub struct OidcIssuer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OidcIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OidcIssuer {
    /// Serves on a loopback port with a certificate of `ca`, publishing
    /// `keys`; the issuer is `https://127.0.0.1:PORT/<tenant>/v2.0` (as
    /// Entra ID's v2 issuers).
    ///
    /// # Errors
    ///
    /// [`OidcError`] when binding or TLS fails.
    pub async fn start(ca: &TestCa, tenant: &str, keys: Vec<SigningKey>) -> Result<Self, OidcError> {
        let pair = ca.issue(&["localhost", "127.0.0.1"])?;
        let tls = crate::tls::server_config(&pair, &[b"h2", b"http/1.1"])?;
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.map_err(OidcError::Bind)?;
        let addr = listener.local_addr().map_err(OidcError::Bind)?;
        let shared = Arc::new(Shared {
            issuer: format!("https://{addr}/{tenant}/v2.0"),
            published: Mutex::new(keys),
            discovery_fetches: AtomicUsize::new(0),
            jwks_fetches: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, tls, Arc::clone(&shared)));
        Ok(Self { addr, shared, task })
    }

    /// The `iss` of its tokens.
    #[must_use]
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// Where its key set is.
    #[must_use]
    pub fn jwks_uri(&self) -> String {
        format!("https://{}/discovery/v2.0/keys", self.addr)
    }

    /// Publishes these keys instead (a key rotation).
    pub fn publish(&self, keys: Vec<SigningKey>) {
        *self.shared.published.lock().unwrap_or_else(PoisonError::into_inner) = keys;
    }

    /// How many times the key set was fetched.
    #[must_use]
    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::Relaxed)
    }

    /// How many times the OpenID configuration was fetched.
    #[must_use]
    pub fn discovery_fetches(&self) -> usize {
        self.shared.discovery_fetches.load(Ordering::Relaxed)
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, tls: Arc<rustls::ServerConfig>, shared: Arc<Shared>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else { return };
            let service = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(&shared, &req)) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
        });
    }
}

fn handle(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let discovery = format!(
        "{}/.well-known/openid-configuration",
        shared.issuer.split_once("://").and_then(|(_, rest)| rest.split_once('/')).map_or("", |(_, p)| p)
    );
    let body = if path.trim_start_matches('/') == discovery {
        shared.discovery_fetches.fetch_add(1, Ordering::Relaxed);
        let base = shared.issuer.split('/').take(3).collect::<Vec<_>>().join("/");
        json!({"issuer": shared.issuer, "jwks_uri": format!("{base}/discovery/v2.0/keys"),
               "id_token_signing_alg_values_supported": ["RS256"]})
    } else if path == "/discovery/v2.0/keys" {
        shared.jwks_fetches.fetch_add(1, Ordering::Relaxed);
        jwks(&shared.published.lock().unwrap_or_else(PoisonError::into_inner))
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
        *r.status_mut() = hyper::StatusCode::NOT_FOUND;
        return r;
    };
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}
