//! A Kubernetes API server's list and watch protocol, on loopback, for tests
//! of watchers (the collector's Kubernetes state source and anything else).
//!
//! Six collections, cluster-wide, over plain HTTP/1.1:
//! `/api/v1/{pods,namespaces,services,nodes}`,
//! `/apis/discovery.k8s.io/v1/endpointslices`,
//! `/apis/networking.k8s.io/v1/networkpolicies`.
//!
//! What it does the way the API server does:
//!
//! - one resourceVersion counter for every kind, growing with each change;
//!   objects get `metadata.resourceVersion`, `uid` and `creationTimestamp`;
//! - a **list** answers `<Kind>List` with `metadata.resourceVersion`, items
//!   without `apiVersion`/`kind` (as typed lists are served); `limit` and
//!   `continue` page through one consistent snapshot; `resourceVersion` with
//!   `resourceVersionMatch=NotOlderThan|Exact` (a match without a version is
//!   `400`; `Exact` at a compacted version is `410 Expired`; a version newer
//!   than the newest is `504 Too large resource version`);
//! - a **watch** (`watch=true`) streams `{"type":…,"object":…}` lines:
//!   from a `resourceVersion`, every change after it (a compacted version:
//!   one `ERROR` event with a `410 Expired` Status, then the end); without
//!   one (or `0`), synthetic `ADDED` events for what exists, then changes;
//!   `BOOKMARK` events (an object with only `apiVersion`, `kind` and
//!   `metadata.resourceVersion`) only with `allowWatchBookmarks=true`; the
//!   stream ends after `timeoutSeconds`;
//! - field selectors `metadata.name`, `metadata.namespace` and, on pods,
//!   `spec.nodeName` and `status.podIP` (with `=`, `==`, `!=`; several
//!   joined by `,`); any other field is `400` naming it, as the API server
//!   refuses unsupported field labels; an unknown query parameter is `400`
//!   too (stricter than the API server, which ignores them, so that a
//!   client sending something unexpected is noticed).
//!
//! What a test can make it do: [`ApiServer::expire_watches`] (compacts the
//! history and ends every watch with `ERROR` 410: the client must relist),
//! [`ApiServer::drop_connections`] (every open watch connection is cut in
//! the middle of its chunked body: the client must resume from the last
//! version it saw), [`ApiServer::bookmark`]. Every request is recorded
//! ([`ApiServer::requests`]).
//!
//! Not implemented (a request for it is refused, never silently served):
//! label selectors, namespaced paths, writes (objects are put with
//! [`ApiServer::put`] and [`ApiServer::delete`]), `sendInitialEvents`,
//! protobuf, authentication.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

type ResponseBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// One collection the stand-in serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Collection {
    /// `/api/v1/pods`, …
    pub path: &'static str,
    pub api_version: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

/// The collections served.
pub const COLLECTIONS: &[Collection] = &[
    Collection { path: "/api/v1/pods", api_version: "v1", kind: "Pod", namespaced: true },
    Collection { path: "/api/v1/namespaces", api_version: "v1", kind: "Namespace", namespaced: false },
    Collection { path: "/api/v1/services", api_version: "v1", kind: "Service", namespaced: true },
    Collection { path: "/api/v1/nodes", api_version: "v1", kind: "Node", namespaced: false },
    Collection {
        path: "/apis/discovery.k8s.io/v1/endpointslices",
        api_version: "discovery.k8s.io/v1",
        kind: "EndpointSlice",
        namespaced: true,
    },
    Collection {
        path: "/apis/networking.k8s.io/v1/networkpolicies",
        api_version: "networking.k8s.io/v1",
        kind: "NetworkPolicy",
        namespaced: true,
    },
];

/// Why an object could not be put or deleted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiServerError {
    #[error("the object has no kind the stand-in serves (one of Pod, Namespace, Service, Node, EndpointSlice, NetworkPolicy): {0}")]
    Kind(String),
    #[error("{kind}: apiVersion {got:?} is not {want:?}")]
    ApiVersion { kind: String, got: String, want: String },
    #[error("{kind}: metadata.name is required")]
    Name { kind: String },
    #[error("{kind} {name}: metadata.namespace is required for a namespaced kind")]
    Namespace { kind: String, name: String },
    #[error("{kind} {key} does not exist")]
    NotFound { kind: String, key: String },
    #[error("binding the stand-in: {0}")]
    Bind(String),
}

/// One request the stand-in received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub path: String,
    /// The decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    pub status: u16,
}

impl RecordedRequest {
    /// Whether it was a watch.
    #[must_use]
    pub fn is_watch(&self) -> bool {
        self.param("watch") == Some("true")
    }

    /// A query parameter's value.
    #[must_use]
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// One change in the history.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: &'static str,
    event: &'static str,
    object: Value,
}

/// An open watch.
struct Watch {
    id: u64,
    collection: Collection,
    selector: Vec<FieldRequirement>,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Result<Frame<Bytes>, std::io::Error>>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Every change, oldest first; entries at or below `compacted` are gone.
    history: Vec<Change>,
    compacted: u64,
    watches: Vec<Watch>,
    requests: Vec<RecordedRequest>,
    next_uid: u64,
    next_watch: u64,
}

/// The stand-in API server.
pub struct ApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ApiServer {
    /// Starts on a free `127.0.0.1` port. The first resourceVersion is 1000.
    ///
    /// # Errors
    ///
    /// The port cannot be bound.
    pub async fn start() -> Result<Self, ApiServerError> {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| ApiServerError::Bind(e.to_string()))?;
        let addr = listener.local_addr().map_err(|e| ApiServerError::Bind(e.to_string()))?;
        let state = Arc::new(Mutex::new(State { rv: 1000, compacted: 0, ..State::default() }));
        let served = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = Arc::clone(&served);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(&state, &req)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig (YAML) pointing at the stand-in, without credentials.
    #[must_use]
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\nusers:\n- name: standin\n  user: {{}}\ncurrent-context: standin\n",
            self.url()
        )
    }

    /// The newest resourceVersion.
    #[must_use]
    pub fn resource_version(&self) -> u64 {
        lock(&self.state).rv
    }

    /// Creates or replaces an object (as the API server stores it: its
    /// `apiVersion` and `kind` must be those of a served collection);
    /// returns its new resourceVersion. Watchers get `ADDED` or `MODIFIED`.
    ///
    /// # Errors
    ///
    /// A kind not served, a wrong apiVersion, a missing name or namespace.
    pub fn put(&self, mut object: Value) -> Result<u64, ApiServerError> {
        let collection = collection_of(&object)?;
        let (namespace, name) = object_key(&collection, &object)?;
        let mut state = lock(&self.state);
        let current = current_objects(&state, collection.kind);
        let existing = current.get(&(namespace.clone(), name.clone())).cloned();
        state.rv += 1;
        let rv = state.rv;
        let meta = object
            .as_object_mut()
            .expect("checked by object_key")
            .entry("metadata")
            .or_insert_with(|| json!({}));
        let meta = meta.as_object_mut().expect("checked by object_key");
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        let (uid, created) = match &existing {
            Some(old) => (old["metadata"]["uid"].clone(), old["metadata"]["creationTimestamp"].clone()),
            None => {
                state.next_uid += 1;
                (Value::String(format!("00000000-0000-4000-8000-{:012x}", state.next_uid)), Value::String("2026-01-01T00:00:00Z".into()))
            }
        };
        meta.insert("uid".into(), uid);
        meta.insert("creationTimestamp".into(), created);
        let event = if existing.is_some() { "MODIFIED" } else { "ADDED" };
        record(&mut state, Change { rv, kind: collection.kind, event, object });
        Ok(rv)
    }

    /// Deletes an object (`namespace` empty for cluster-scoped kinds);
    /// watchers get `DELETED` with its last state at the new version.
    ///
    /// # Errors
    ///
    /// No such object.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<u64, ApiServerError> {
        let collection =
            COLLECTIONS.iter().find(|c| c.kind == kind).copied().ok_or_else(|| ApiServerError::Kind(kind.to_owned()))?;
        let mut state = lock(&self.state);
        let current = current_objects(&state, collection.kind);
        let Some(mut object) = current.get(&(namespace.to_owned(), name.to_owned())).cloned() else {
            return Err(ApiServerError::NotFound { kind: kind.to_owned(), key: format!("{namespace}/{name}") });
        };
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        record(&mut state, Change { rv, kind: collection.kind, event: "DELETED", object });
        Ok(rv)
    }

    /// Sends a `BOOKMARK` at the newest version to every watch that asked
    /// for bookmarks.
    pub fn bookmark(&self) {
        let mut state = lock(&self.state);
        let rv = state.rv;
        state.watches.retain(|w| {
            if !w.bookmarks {
                return !w.tx.is_closed();
            }
            let object = json!({
                "apiVersion": w.collection.api_version,
                "kind": w.collection.kind,
                "metadata": {"resourceVersion": rv.to_string()},
            });
            w.tx.send(Ok(event_frame("BOOKMARK", &object))).is_ok()
        });
    }

    /// Compacts the history up to the newest version and ends every watch
    /// with an `ERROR` event carrying a `410 Expired` Status, as the API
    /// server does when a watch falls out of its window: a client can no
    /// longer resume from any version it holds and must list again.
    pub fn expire_watches(&self) {
        let mut state = lock(&self.state);
        state.compacted = state.rv;
        let rv = state.rv;
        // The objects alive stay, at their own versions; what led to them
        // is gone.
        let mut kept: Vec<Change> = COLLECTIONS
            .iter()
            .flat_map(|c| {
                current_objects(&state, c.kind).into_values().map(move |object| Change {
                    rv: object["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0),
                    kind: c.kind,
                    event: "ADDED",
                    object,
                })
            })
            .collect();
        kept.sort_by_key(|c| c.rv);
        state.history = kept;
        for w in state.watches.drain(..) {
            let _ = w.tx.send(Ok(event_frame("ERROR", &expired_status(rv))));
        }
    }

    /// Cuts every open watch connection in the middle of its body (no
    /// terminating chunk): the client sees a broken stream and must resume.
    pub fn drop_connections(&self) {
        let mut state = lock(&self.state);
        for w in state.watches.drain(..) {
            let _ = w.tx.send(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "the stand-in dropped the connection")));
        }
    }

    /// Open watches (of any kind).
    #[must_use]
    pub fn open_watches(&self) -> usize {
        let mut state = lock(&self.state);
        state.watches.retain(|w| !w.tx.is_closed());
        state.watches.len()
    }

    /// Every request so far, in arrival order.
    #[must_use]
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.clone()
    }
}

fn expired_status(rv: u64) -> Value {
    status(410, "Expired", &format!("too old resource version: the history was compacted at {rv}"))
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn event_frame(kind: &str, object: &Value) -> Frame<Bytes> {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("JSON values serialize");
    line.push(b'\n');
    Frame::data(Bytes::from(line))
}

fn collection_of(object: &Value) -> Result<Collection, ApiServerError> {
    let kind = object["kind"].as_str().unwrap_or_default();
    let collection =
        COLLECTIONS.iter().find(|c| c.kind == kind).copied().ok_or_else(|| ApiServerError::Kind(format!("{kind:?}")))?;
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    if api_version != collection.api_version {
        return Err(ApiServerError::ApiVersion {
            kind: kind.to_owned(),
            got: api_version.to_owned(),
            want: collection.api_version.to_owned(),
        });
    }
    Ok(collection)
}

fn object_key(collection: &Collection, object: &Value) -> Result<(String, String), ApiServerError> {
    let kind = collection.kind.to_owned();
    if !object.is_object() || !object.get("metadata").is_none_or(Value::is_object) {
        return Err(ApiServerError::Name { kind });
    }
    let name = object["metadata"]["name"].as_str().filter(|n| !n.is_empty()).ok_or(ApiServerError::Name { kind: kind.clone() })?;
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
    if collection.namespaced && namespace.is_empty() {
        return Err(ApiServerError::Namespace { kind, name: name.to_owned() });
    }
    let namespace = if collection.namespaced { namespace } else { "" };
    Ok((namespace.to_owned(), name.to_owned()))
}

/// The objects of `kind` at the newest version (after every change kept;
/// compaction keeps the state, see [`record`]).
fn current_objects(state: &State, kind: &str) -> BTreeMap<(String, String), Value> {
    objects_at(state, kind, u64::MAX)
}

fn objects_at(state: &State, kind: &str, rv: u64) -> BTreeMap<(String, String), Value> {
    let collection = COLLECTIONS.iter().find(|c| c.kind == kind).expect("served kind");
    let mut objects = BTreeMap::new();
    for change in state.history.iter().filter(|c| c.kind == kind && c.rv <= rv) {
        let key = object_key(collection, &change.object).expect("stored objects have keys");
        if change.event == "DELETED" {
            objects.remove(&key);
        } else {
            objects.insert(key, change.object.clone());
        }
    }
    objects
}

/// Appends a change and sends it to the watches it concerns.
fn record(state: &mut State, change: Change) {
    let selectors_match = |w: &Watch| w.collection.kind == change.kind && w.selector.iter().all(|r| r.matches(&change.object));
    state.watches.retain(|w| {
        if !selectors_match(w) {
            return !w.tx.is_closed();
        }
        w.tx.send(Ok(event_frame(change.event, &change.object))).is_ok()
    });
    state.history.push(change);
}

/// One field selector requirement.
#[derive(Clone, Debug)]
struct FieldRequirement {
    field: String,
    value: String,
    equal: bool,
}

impl FieldRequirement {
    fn matches(&self, object: &Value) -> bool {
        let mut v = object;
        for part in self.field.split('.') {
            v = &v[part];
        }
        let actual = v.as_str().unwrap_or_default();
        (actual == self.value) == self.equal
    }
}

fn parse_field_selector(collection: &Collection, text: &str) -> Result<Vec<FieldRequirement>, String> {
    let mut out = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = part.split_once("==") {
            (f, v, true)
        } else if let Some((f, v)) = part.split_once('=') {
            (f, v, true)
        } else {
            return Err(format!("invalid field selector: {part:?} has no operator (=, ==, !=)"));
        };
        let supported = matches!(field, "metadata.name" | "metadata.namespace")
            || (collection.kind == "Pod" && matches!(field, "spec.nodeName" | "status.podIP"));
        if !supported {
            return Err(format!("field label not supported: {field}"));
        }
        out.push(FieldRequirement { field: field.to_owned(), value: value.to_owned(), equal });
    }
    Ok(out)
}

fn json_response(code: u16, body: &Value) -> Response<ResponseBody> {
    let bytes = serde_json::to_vec(body).expect("JSON values serialize");
    Response::builder()
        .status(StatusCode::from_u16(code).expect("valid status"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)).map_err(|never| match never {}).boxed_unsync())
        .expect("valid response")
}

fn handle(state: &Arc<Mutex<State>>, req: &Request<Incoming>) -> Response<ResponseBody> {
    let path = req.uri().path().to_owned();
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect()
        })
        .unwrap_or_default();
    let response = respond(state, req.method(), &path, &query);
    lock(state).requests.push(RecordedRequest { path, query, status: response.status().as_u16() });
    response
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

const KNOWN_PARAMS: &[&str] =
    &["watch", "resourceVersion", "resourceVersionMatch", "allowWatchBookmarks", "timeoutSeconds", "fieldSelector", "limit", "continue"];

fn respond(state: &Arc<Mutex<State>>, method: &Method, path: &str, query: &[(String, String)]) -> Response<ResponseBody> {
    let bad = |message: String| json_response(400, &status(400, "BadRequest", &message));
    let Some(collection) = COLLECTIONS.iter().find(|c| c.path == path).copied() else {
        return json_response(404, &status(404, "NotFound", &format!("the stand-in serves no {path}")));
    };
    if method != Method::GET {
        return json_response(405, &status(405, "MethodNotAllowed", &format!("{method} is not served by the stand-in")));
    }
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    if let Some((k, _)) = query.iter().find(|(k, _)| !KNOWN_PARAMS.contains(&k.as_str())) {
        return bad(format!("query parameter {k:?} is not supported by the stand-in"));
    }
    let selector = match parse_field_selector(&collection, param("fieldSelector").unwrap_or_default()) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    let rv_param = param("resourceVersion").filter(|v| !v.is_empty());
    let rv = match rv_param.map(str::parse::<u64>) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return bad(format!("invalid resourceVersion {:?}: not a resource version", rv_param.unwrap_or_default())),
    };
    let watch = match param("watch") {
        None | Some("false" | "0") => false,
        Some("true" | "1") => true,
        Some(other) => return bad(format!("invalid value for watch: {other:?}")),
    };
    let rv_match = param("resourceVersionMatch").filter(|v| !v.is_empty());
    if rv_match.is_some() && rv.is_none() {
        return bad("resourceVersionMatch is forbidden unless resourceVersion is provided".into());
    }
    if let Some(m) = rv_match
        && !matches!(m, "NotOlderThan" | "Exact")
    {
        return bad(format!("resourceVersionMatch {m:?}: supported values are NotOlderThan and Exact"));
    }
    if watch {
        if rv_match.is_some() {
            return bad("resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided".into());
        }
        if param("limit").is_some() || param("continue").is_some() {
            return bad("limit and continue are not valid for a watch".into());
        }
        let timeout = match param("timeoutSeconds").map(str::parse::<u64>) {
            None => None,
            Some(Ok(t)) => Some(Duration::from_secs(t)),
            Some(Err(_)) => return bad("invalid timeoutSeconds".into()),
        };
        let bookmarks = match param("allowWatchBookmarks") {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return bad(format!("invalid value for allowWatchBookmarks: {other:?}")),
        };
        return start_watch(state, collection, selector, bookmarks, rv.filter(|v| *v != 0), timeout);
    }
    if param("allowWatchBookmarks").is_some() || param("timeoutSeconds").is_some() {
        // The API server accepts these on a list and ignores them; a client
        // sending them to a list is confused, so the stand-in says so.
        return bad("allowWatchBookmarks and timeoutSeconds belong to watch requests".into());
    }
    list(state, collection, &selector, rv, rv_match, param("limit"), param("continue"))
}

fn list(
    state: &Arc<Mutex<State>>,
    collection: Collection,
    selector: &[FieldRequirement],
    rv: Option<u64>,
    rv_match: Option<&str>,
    limit: Option<&str>,
    continue_token: Option<&str>,
) -> Response<ResponseBody> {
    let st = lock(state);
    let limit = match limit.map(str::parse::<usize>) {
        None | Some(Ok(0)) => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return json_response(400, &status(400, "BadRequest", "invalid limit")),
    };
    // The snapshot and where the page starts.
    let (at, offset) = match continue_token {
        Some(token) => {
            if rv.is_some() {
                return json_response(
                    400,
                    &status(400, "BadRequest", "specifying resource version is not allowed when using continue"),
                );
            }
            let Some((at, offset)) = token.split_once(':').and_then(|(a, o)| Some((a.parse::<u64>().ok()?, o.parse::<usize>().ok()?)))
            else {
                return json_response(400, &status(400, "BadRequest", "continue key is not valid"));
            };
            if at < st.compacted {
                return json_response(
                    410,
                    &status(410, "Expired", "The provided continue parameter is too old to display a consistent list result."),
                );
            }
            (at, offset)
        }
        None => match (rv, rv_match) {
            (Some(v), _) if v > st.rv => {
                return json_response(504, &status(504, "Timeout", &format!("Too large resource version: {v}, current: {}", st.rv)));
            }
            (Some(v), Some("Exact")) if v < st.compacted => {
                return json_response(410, &status(410, "Expired", &format!("too old resource version: {v} ({})", st.compacted)));
            }
            (Some(v), Some("Exact")) => (v, 0),
            // Not older than `v` (or any, with 0): the newest is.
            _ => (st.rv, 0),
        },
    };
    let items: Vec<Value> = objects_at(&st, collection.kind, at)
        .into_values()
        .filter(|o| selector.iter().all(|r| r.matches(o)))
        .map(|mut o| {
            // Typed lists carry no apiVersion/kind on their items.
            if let Some(map) = o.as_object_mut() {
                map.remove("apiVersion");
                map.remove("kind");
            }
            o
        })
        .collect();
    let end = limit.map_or(items.len(), |l| (offset + l).min(items.len()));
    let page: Vec<Value> = items.get(offset.min(items.len())..end).unwrap_or_default().to_vec();
    let mut metadata = json!({"resourceVersion": at.to_string()});
    if end < items.len() {
        metadata["continue"] = Value::String(format!("{at}:{end}"));
        metadata["remainingItemCount"] = json!(items.len() - end);
    }
    json_response(
        200,
        &json!({
            "kind": format!("{}List", collection.kind),
            "apiVersion": collection.api_version,
            "metadata": metadata,
            "items": page,
        }),
    )
}

fn start_watch(
    state: &Arc<Mutex<State>>,
    collection: Collection,
    selector: Vec<FieldRequirement>,
    bookmarks: bool,
    from: Option<u64>,
    timeout: Option<Duration>,
) -> Response<ResponseBody> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut st = lock(state);
    let matches = |o: &Value| selector.iter().all(|r| r.matches(o));
    match from {
        Some(v) if v > st.rv => {
            drop(st);
            return json_response(504, &status(504, "Timeout", &format!("Too large resource version: {v}")));
        }
        Some(v) if v < st.compacted => {
            // As the API server: 200, then one ERROR event, then the end.
            let _ = tx.send(Ok(event_frame("ERROR", &expired_status(st.compacted))));
            drop(tx);
            drop(st);
            return stream_response(rx);
        }
        Some(v) => {
            for change in st.history.iter().filter(|c| c.kind == collection.kind && c.rv > v && matches(&c.object)) {
                let _ = tx.send(Ok(event_frame(change.event, &change.object)));
            }
        }
        None => {
            for object in current_objects(&st, collection.kind).values().filter(|o| matches(o)) {
                let _ = tx.send(Ok(event_frame("ADDED", object)));
            }
        }
    }
    st.next_watch += 1;
    let id = st.next_watch;
    st.watches.push(Watch { id, collection, selector, bookmarks, tx });
    drop(st);
    if let Some(t) = timeout {
        // The stream ends cleanly after timeoutSeconds.
        let state = Arc::clone(state);
        tokio::spawn(async move {
            tokio::time::sleep(t).await;
            lock(&state).watches.retain(|w| w.id != id);
        });
    }
    stream_response(rx)
}

fn stream_response(rx: mpsc::UnboundedReceiver<Result<Frame<Bytes>, std::io::Error>>) -> Response<ResponseBody> {
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(StreamBody::new(stream).boxed_unsync())
        .expect("valid response")
}
