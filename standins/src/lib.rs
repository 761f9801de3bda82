//! Local stand-ins for the services Sightline exports to (and for the
//! OpenID Connect issuer whose tokens the relay checks), for tests and
//! benchmarks (and a Kubernetes API server's list and watch, for the
//! collector's state source): they enforce the documented contracts (status codes, limits,
//! headers, payload shapes) and nothing looser, record what they accepted,
//! and can be told to misbehave (throttle, fail, go down).
//!
//! Nothing here is used by the product itself.
#![forbid(unsafe_code)]

pub mod azure;
pub mod kubernetes;
pub mod oidc;
pub mod otlp;
pub mod tls;
