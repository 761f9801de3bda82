//! JSON Web Tokens (compact JWS) checked with ring: the signature against a
//! key of the issuer's JWKS, then `iss`, `aud`, `exp` and `nbf`.
//!
//! Written here rather than taken from a crate: the maintained JWT crates
//! (jsonwebtoken ≥ 10) verify with RustCrypto or aws-lc-rs, and Sightline
//! uses one crypto library, ring, everywhere.
//!
//! Accepted algorithms: RS256/384/512 (Entra ID signs with RS256), PS256/
//! 384/512, ES256 and ES384; RSA keys of 2048 bits at least. `none` and the
//! HMAC algorithms (a shared secret is not an issuer's public key) are
//! refused.

use base64::Engine as _;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

use super::AuthError;
use super::jwks::{Jwk, KeyMaterial};

/// Longest token accepted (Entra ID tokens with many groups stay far below).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The base64url engine for JWT segments and JWK members (padding or not).
pub(crate) const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new().with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// A signature algorithm this module verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
}

impl Alg {
    /// The JOSE name (`RS256` …).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
        }
    }

    fn parse(name: &str) -> Result<Self, AuthError> {
        Ok(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            other => return Err(AuthError::Algorithm(other.chars().take(20).collect())),
        })
    }

    /// Whether a key of this kind can check this algorithm.
    #[must_use]
    pub fn fits(self, key: &KeyMaterial) -> bool {
        matches!(
            (self, key),
            (Self::Rs256 | Self::Rs384 | Self::Rs512 | Self::Ps256 | Self::Ps384 | Self::Ps512, KeyMaterial::Rsa { .. })
                | (Self::Es256, KeyMaterial::P256 { .. })
                | (Self::Es384, KeyMaterial::P384 { .. })
        )
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

/// The protected header of a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub alg: Alg,
    pub kid: Option<String>,
}

/// `aud`: one string or several.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values.
    #[must_use]
    pub fn values(&self) -> Vec<&str> {
        match self {
            Self::None => Vec::new(),
            Self::One(s) => vec![s.as_str()],
            Self::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// The claims Sightline reads.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Claims {
    pub iss: Option<String>,
    pub aud: OneOrMany,
    pub sub: Option<String>,
    /// Seconds since the epoch (NumericDate: a fraction is allowed).
    pub exp: Option<f64>,
    pub nbf: Option<f64>,
    /// Entra ID app roles (and Keycloak-style flat roles).
    pub roles: OneOrMany,
    /// Group object ids (Entra ID) or names.
    pub groups: OneOrMany,
    /// Entra ID: the caller's object id, and the client application.
    pub oid: Option<String>,
    pub azp: Option<String>,
    pub appid: Option<String>,
}

impl Claims {
    /// Who the token is for, for log lines.
    #[must_use]
    pub fn who(&self) -> String {
        let id = self.sub.as_deref().or(self.oid.as_deref()).unwrap_or("?");
        match self.azp.as_deref().or(self.appid.as_deref()) {
            Some(app) => format!("{id} (client {app})"),
            None => id.to_owned(),
        }
    }
}

/// A token split and decoded, not yet verified.
pub struct Token {
    pub header: Header,
    pub claims: Claims,
    /// `header.payload`, what the signature covers.
    signed: Vec<u8>,
    signature: Vec<u8>,
}

/// Splits and decodes a compact JWS.
///
/// # Errors
///
/// [`AuthError::Malformed`] for anything that is not three base64url JSON
/// segments with an `alg`; [`AuthError::Algorithm`] for `none`, HMAC or an
/// unknown algorithm.
pub fn decode(token: &str) -> Result<Token, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed(format!("the token is longer than {MAX_TOKEN_LEN} bytes")));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::Malformed("a JWT has three dot-separated parts".to_owned()));
    };
    let header_bytes = B64.decode(h).map_err(|_| AuthError::Malformed("the header is not base64url".to_owned()))?;
    let raw: RawHeader = serde_json::from_slice(&header_bytes)
        .map_err(|e| AuthError::Malformed(format!("the header is not a JSON object: {e}")))?;
    let alg = raw.alg.ok_or_else(|| AuthError::Malformed("the header has no alg".to_owned()))?;
    let alg = Alg::parse(&alg)?;
    if raw.crit.is_some() {
        // RFC 7515 4.1.11: extensions we do not know must make it fail.
        return Err(AuthError::Malformed("critical header extensions are not supported".to_owned()));
    }
    let payload = B64.decode(p).map_err(|_| AuthError::Malformed("the payload is not base64url".to_owned()))?;
    let claims: Claims = serde_json::from_slice(&payload)
        .map_err(|e| AuthError::Malformed(format!("the claims are not a JSON object of the expected types: {e}")))?;
    let signature = B64.decode(s).map_err(|_| AuthError::Malformed("the signature is not base64url".to_owned()))?;
    let signed_len = h.len() + 1 + p.len();
    Ok(Token { header: Header { alg, kid: raw.kid }, claims, signed: token.as_bytes()[..signed_len].to_vec(), signature })
}

impl Token {
    /// Checks the signature with `key`.
    ///
    /// # Errors
    ///
    /// [`AuthError::Signature`] when it does not verify or the key does not
    /// fit the algorithm.
    pub fn verify(&self, key: &Jwk) -> Result<(), AuthError> {
        let alg = self.header.alg;
        if !alg.fits(&key.material) || key.alg.as_deref().is_some_and(|a| a != alg.name()) {
            return Err(AuthError::Signature);
        }
        let ok = match &key.material {
            KeyMaterial::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                    Alg::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
                    Alg::Es256 | Alg::Es384 => return Err(AuthError::Signature),
                };
                RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() }.verify(params, &self.signed, &self.signature).is_ok()
            }
            KeyMaterial::P256 { point } => UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(&self.signed, &self.signature)
                .is_ok(),
            KeyMaterial::P384 { point } => UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                .verify(&self.signed, &self.signature)
                .is_ok(),
        };
        if ok { Ok(()) } else { Err(AuthError::Signature) }
    }
}

/// What a valid token must say.
#[derive(Clone, Debug)]
pub struct Validation {
    /// `iss`, exactly.
    pub issuer: String,
    /// `aud` must hold one of these.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway: i64,
}

impl Validation {
    /// Checks the claims at `now` (seconds since the epoch).
    ///
    /// # Errors
    ///
    /// The first claim that is wrong, missing or out of time.
    pub fn check(&self, claims: &Claims, now: i64) -> Result<(), AuthError> {
        let now = now as f64;
        let leeway = self.leeway as f64;
        let exp = claims.exp.ok_or(AuthError::Claim("the token has no exp (expiry)"))?;
        if !exp.is_finite() || now > exp + leeway {
            return Err(AuthError::Expired { seconds_ago: (now - exp).max(0.0) as i64 });
        }
        if let Some(nbf) = claims.nbf
            && (!nbf.is_finite() || now + leeway < nbf)
        {
            return Err(AuthError::NotYetValid { in_seconds: (nbf - now).max(0.0) as i64 });
        }
        match claims.iss.as_deref() {
            Some(iss) if iss == self.issuer => {}
            Some(iss) => return Err(AuthError::Issuer(iss.chars().take(200).collect())),
            None => return Err(AuthError::Claim("the token has no iss (issuer)")),
        }
        let aud = claims.aud.values();
        if aud.is_empty() {
            return Err(AuthError::Claim("the token has no aud (audience)"));
        }
        if !aud.iter().any(|a| self.audiences.iter().any(|want| want == a)) {
            return Err(AuthError::Audience(aud.join(", ").chars().take(200).collect()));
        }
        Ok(())
    }
}
