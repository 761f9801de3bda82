//! The `--export-config` file: YAML, checked as a whole before anything is
//! used, every error naming the line and the field
//! (`line 7: exporters[0].sink.file.maxSizeMB: invalid type: string "ten", expected u64`).
//!
//! The schema is the export contract (`docs/EXPORT.md`): a list of
//! exporters, each with optional FlowFilters (`include`, `exclude`, in YAML
//! or as Hubble's JSON strings), a field mask, an aggregation window, an end
//! time, a spool, and exactly one sink (`file`, `azureMonitor`, `otlp`).
//!
//! The YAML is read with the position of every node (saphyr), turned into a
//! JSON value with a map from field path to line, and deserialised into the
//! typed structures below with `serde_path_to_error`, so that a type error
//! or an unknown field names its path and line; then every value is checked
//! (filters compiled, field-mask paths, names, files that must exist), and
//! the first failure is reported the same way.
//!
//! This module must not start anything: it only reads and checks.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use saphyr::{LoadableYamlNode as _, MarkedYamlOwned, ScalarOwned, YamlDataOwned};
use serde::Deserialize;
use sightline_flow::{FieldMask, FlowFilters};
use sightline_proto::flow::FlowFilter;

/// Default size of an exporter's spool (`spool.maxSizeMB`).
pub const DEFAULT_SPOOL_MB: u64 = 512;
/// Size of the in-memory queue of an exporter configured without a spool
/// (file sinks): the same bound and counting, nothing kept across restarts.
pub const MEMORY_SPOOL_MB: u64 = 64;
/// Default file rotation size (`sink.file.maxSizeMB`).
pub const DEFAULT_FILE_MB: u64 = 10;
/// Default number of rotated files kept (`sink.file.maxBackups`).
pub const DEFAULT_FILE_BACKUPS: usize = 5;
/// Entra ID's public-cloud authority.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// Azure's instance metadata token endpoint (managed identity).
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// Longest aggregation window accepted.
const MAX_AGGREGATE: Duration = Duration::from_secs(24 * 3600);

/// A checked export configuration.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ExportConfig {
    pub exporters: Vec<ExporterConfig>,
}

/// One exporter, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ExporterConfig {
    pub name: String,
    pub include: Vec<FlowFilter>,
    pub exclude: Vec<FlowFilter>,
    pub field_mask: Vec<String>,
    pub aggregate: Option<Duration>,
    pub end: Option<SystemTime>,
    /// `None`: an in-memory queue (nothing survives a restart).
    pub spool: Option<SpoolConfig>,
    pub sink: SinkConfig,
}

/// Where an exporter's spool lives and how large it may grow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolConfig {
    pub path: PathBuf,
    pub max_bytes: u64,
}

/// The one sink of an exporter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkConfig {
    File(FileConfig),
    AzureMonitor(AzureConfig),
    Otlp(OtlpConfig),
}

impl SinkConfig {
    /// The sink's kind, as the configuration names it.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::File(_) => "file",
            SinkConfig::AzureMonitor(_) => "azureMonitor",
            SinkConfig::Otlp(_) => "otlp",
        }
    }
}

/// `sink.file`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileConfig {
    /// `None`: standard output.
    pub path: Option<PathBuf>,
    pub max_bytes: u64,
    pub max_backups: usize,
    pub compress: bool,
}

/// `sink.azureMonitor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureConfig {
    pub endpoint: String,
    pub dcr_immutable_id: String,
    pub stream: String,
    pub ca_file: Option<PathBuf>,
    pub auth: AzureAuthConfig,
}

/// `sink.azureMonitor.auth`, resolved (environment variables read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AzureAuthConfig {
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret_file: PathBuf,
        authority_host: String,
    },
    WorkloadIdentity {
        tenant_id: String,
        client_id: String,
        token_file: PathBuf,
        authority_host: String,
    },
    ManagedIdentity {
        client_id: Option<String>,
        endpoint: String,
    },
}

/// `sink.otlp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    pub endpoint: String,
    pub protocol: OtlpProtocolConfig,
    pub headers: BTreeMap<String, String>,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

/// `sink.otlp.protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocolConfig {
    Grpc,
    HttpProtobuf,
}

/// Why a configuration was refused: where, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, when the configuration came from one.
    pub file: Option<PathBuf>,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The field's path (`exporters[0].sink.file.path`), empty for the
    /// document as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// What the configuration may take from its surroundings.
#[derive(Clone, Debug)]
pub struct Context {
    /// Folder under which exporters without a `spool.path` keep their spool
    /// (`<dir>/<exporter name>`).
    pub spool_dir: PathBuf,
    /// Environment lookups (`AZURE_TENANT_ID`, …); a map in tests.
    pub env: HashMap<String, String>,
}

impl Context {
    /// The process environment and `spool_dir`.
    #[must_use]
    pub fn from_env(spool_dir: PathBuf) -> Self {
        Self {
            spool_dir,
            env: std::env::vars().collect(),
        }
    }

    fn env(&self, key: &str) -> Option<&str> {
        self.env
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Reads and checks the configuration in `path`.
///
/// # Errors
///
/// A [`ConfigError`] naming the file, the line and the field of the first
/// problem.
pub fn load(path: &Path, ctx: &Context) -> Result<ExportConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: Some(path.to_owned()),
        line: None,
        field: String::new(),
        message: format!("cannot read it: {e}"),
    })?;
    parse(&text, ctx).map_err(|e| ConfigError {
        file: Some(path.to_owned()),
        ..e
    })
}

/// Checks a configuration given as text.
///
/// # Errors
///
/// A [`ConfigError`] naming the line and the field of the first problem.
pub fn parse(text: &str, ctx: &Context) -> Result<ExportConfig, ConfigError> {
    let (value, lines) = to_json(text)?;
    let locate = |field: &str, message: String| ConfigError {
        file: None,
        line: lines.line_of(field),
        field: field.to_owned(),
        message,
    };
    let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        let message = e.inner().to_string();
        locate(&field, message)
    })?;
    check(raw, ctx, &locate)
}

// ---------------------------------------------------------------------------
// YAML → JSON, with lines.

/// Field path → line, for every node of the document.
#[derive(Debug, Default)]
struct Lines(HashMap<String, usize>);

impl Lines {
    /// The line of `field`, or of its closest ancestor that has one.
    fn line_of(&self, field: &str) -> Option<usize> {
        let mut f = field;
        loop {
            if let Some(line) = self.0.get(f) {
                return Some(*line);
            }
            let cut = f.rfind(['.', '['])?;
            f = &f[..cut];
        }
    }
}

fn to_json(text: &str) -> Result<(serde_json::Value, Lines), ConfigError> {
    let docs = MarkedYamlOwned::load_from_str(text).map_err(|e| ConfigError {
        file: None,
        line: Some(e.marker().line()),
        field: String::new(),
        message: format!("not YAML: {}", e.info()),
    })?;
    let mut lines = Lines::default();
    match docs.len() {
        0 => Ok((serde_json::json!({}), lines)),
        1 => {
            let value = node_to_json(&docs[0], "", &mut lines)?;
            Ok((
                if value.is_null() {
                    serde_json::json!({})
                } else {
                    value
                },
                lines,
            ))
        }
        _ => Err(ConfigError {
            file: None,
            line: Some(docs[1].span.start.line()),
            field: String::new(),
            message: "more than one YAML document; the export configuration is one document"
                .to_owned(),
        }),
    }
}

fn scalar_to_json(s: &ScalarOwned) -> serde_json::Value {
    match s {
        ScalarOwned::Null => serde_json::Value::Null,
        ScalarOwned::Boolean(b) => serde_json::Value::Bool(*b),
        ScalarOwned::Integer(i) => serde_json::Value::from(*i),
        ScalarOwned::FloatingPoint(f) => serde_json::Number::from_f64(f.into_inner())
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        ScalarOwned::String(s) => serde_json::Value::String(s.clone()),
    }
}

fn node_to_json(
    node: &MarkedYamlOwned,
    path: &str,
    lines: &mut Lines,
) -> Result<serde_json::Value, ConfigError> {
    lines.0.insert(path.to_owned(), node.span.start.line());
    let err = |message: &str| ConfigError {
        file: None,
        line: Some(node.span.start.line()),
        field: path.to_owned(),
        message: message.to_owned(),
    };
    Ok(match &node.data {
        YamlDataOwned::Value(s) => scalar_to_json(s),
        YamlDataOwned::Representation(text, style, tag) => {
            match ScalarOwned::parse_from_cow_and_metadata(
                text.as_str().into(),
                *style,
                tag.as_ref().map(std::borrow::Cow::Borrowed).as_ref(),
            ) {
                Some(s) => scalar_to_json(&s),
                None => return Err(err(&format!("{text:?} does not match its tag"))),
            }
        }
        YamlDataOwned::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(node_to_json(item, &format!("{path}[{i}]"), lines)?);
            }
            serde_json::Value::Array(out)
        }
        YamlDataOwned::Mapping(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let key = match &k.data {
                    YamlDataOwned::Value(ScalarOwned::String(s)) => s.clone(),
                    YamlDataOwned::Value(s) => match scalar_to_json(s) {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    },
                    YamlDataOwned::Representation(text, _, _) => text.clone(),
                    _ => return Err(err("a mapping key must be a plain name")),
                };
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                lines.0.insert(child.clone(), k.span.start.line());
                let value = node_to_json(v, &child, lines)?;
                // The key's line is the one a user looks for.
                lines.0.insert(child, k.span.start.line());
                out.insert(key, value);
            }
            serde_json::Value::Object(out)
        }
        YamlDataOwned::Tagged(_, inner) => node_to_json(inner, path, lines)?,
        YamlDataOwned::Alias(_) => return Err(err("YAML aliases are not supported here")),
        YamlDataOwned::BadValue => return Err(err("not a valid YAML value")),
    })
}

// ---------------------------------------------------------------------------
// The raw schema, as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    exporters: Vec<RawExporter>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawExporter {
    name: String,
    #[serde(default)]
    include: Vec<serde_json::Value>,
    #[serde(default)]
    exclude: Vec<serde_json::Value>,
    #[serde(default)]
    field_mask: Vec<String>,
    aggregate: Option<String>,
    end: Option<String>,
    spool: Option<RawSpool>,
    sink: RawSink,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSpool {
    path: Option<PathBuf>,
    #[serde(rename = "maxSizeMB")]
    max_size_mb: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSink {
    file: Option<RawFile>,
    azure_monitor: Option<RawAzure>,
    otlp: Option<RawOtlp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFile {
    path: String,
    #[serde(rename = "maxSizeMB")]
    max_size_mb: Option<u64>,
    max_backups: Option<usize>,
    #[serde(default)]
    compress: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAzure {
    endpoint: String,
    dcr_immutable_id: String,
    stream: String,
    ca_file: Option<PathBuf>,
    auth: RawAuth,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAuth {
    client_secret: Option<RawClientSecret>,
    workload_identity: Option<RawWorkloadIdentity>,
    managed_identity: Option<RawManagedIdentity>,
    authority_host: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawClientSecret {
    tenant_id: String,
    client_id: String,
    secret_file: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawWorkloadIdentity {
    tenant_id: Option<String>,
    client_id: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawManagedIdentity {
    client_id: Option<String>,
    endpoint: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawOtlp {
    endpoint: String,
    protocol: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    ca_file: Option<PathBuf>,
    timeout: Option<String>,
}

// ---------------------------------------------------------------------------
// Checks.

fn check(
    raw: RawConfig,
    ctx: &Context,
    locate: &impl Fn(&str, String) -> ConfigError,
) -> Result<ExportConfig, ConfigError> {
    let mut exporters = Vec::with_capacity(raw.exporters.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, e) in raw.exporters.into_iter().enumerate() {
        let at = |field: &str| {
            format!(
                "exporters[{i}]{}{field}",
                if field.is_empty() { "" } else { "." }
            )
        };
        let fail = |field: &str, message: String| locate(&at(field), message);

        if !valid_name(&e.name) {
            return Err(fail(
                "name",
                format!(
                    "{:?} is not a valid exporter name ([a-z0-9-], 1 to 40 characters)",
                    e.name
                ),
            ));
        }
        if let Some(first) = seen.insert(e.name.clone(), i) {
            return Err(fail(
                "name",
                format!(
                    "{:?} is also the name of exporters[{first}]; names must be unique",
                    e.name
                ),
            ));
        }
        let include = filters(&e.include, &at("include"), locate)?;
        let exclude = filters(&e.exclude, &at("exclude"), locate)?;
        if let Err(err) = FlowFilters::new(&include, &exclude) {
            // Name the list as the configuration does.
            let (list, index, field, message) = match &err {
                sightline_flow::FilterError::Ip { at, .. }
                | sightline_flow::FilterError::Port { at, .. }
                | sightline_flow::FilterError::Protocol { at, .. }
                | sightline_flow::FilterError::EmptyName { at }
                | sightline_flow::FilterError::EmptyClusterName { at }
                | sightline_flow::FilterError::Selector { at, .. }
                | sightline_flow::FilterError::NodeName { at, .. }
                | sightline_flow::FilterError::Fqdn { at, .. }
                | sightline_flow::FilterError::Regex { at, .. }
                | sightline_flow::FilterError::HttpStatusCode { at, .. }
                | sightline_flow::FilterError::HttpEventType { at }
                | sightline_flow::FilterError::Cel { at } => {
                    let full = err.to_string();
                    let prefix = at.to_string();
                    let message = full
                        .strip_prefix(&prefix)
                        .map_or(full.clone(), |m| m.trim_start_matches(": ").to_owned());
                    (
                        if at.list == "whitelist" {
                            "include"
                        } else {
                            "exclude"
                        },
                        at.index,
                        at.field,
                        message,
                    )
                }
            };
            return Err(locate(
                &format!("{}.{field}", at(&format!("{list}[{index}]"))),
                message,
            ));
        }
        if let Err(message) = FieldMask::new(&e.field_mask) {
            let index = e
                .field_mask
                .iter()
                .position(|p| FieldMask::new([p]).is_err())
                .unwrap_or(0);
            return Err(fail(&format!("fieldMask[{index}]"), message));
        }
        let aggregate = match &e.aggregate {
            None => None,
            Some(s) => match sightline_flow::duration::parse(s) {
                Some(d) if d >= Duration::from_secs(1) && d <= MAX_AGGREGATE => Some(d),
                Some(_) => {
                    return Err(fail(
                        "aggregate",
                        format!("{s:?} must be between 1s and 24h"),
                    ));
                }
                None => {
                    return Err(fail(
                        "aggregate",
                        format!("{s:?} is not a duration (such as 30s or 5m)"),
                    ));
                }
            },
        };
        let end = match &e.end {
            None => None,
            Some(s) => Some(parse_time(s).ok_or_else(|| {
                fail(
                    "end",
                    format!("{s:?} is not an RFC 3339 time (such as 2026-12-31T00:00:00Z)"),
                )
            })?),
        };
        let (sink, default_spool) = sink(&e.sink, &at("sink"), ctx, locate)?;
        let spool = match (e.spool, default_spool) {
            (Some(s), _) => {
                let mb = s.max_size_mb.unwrap_or(DEFAULT_SPOOL_MB);
                if mb == 0 {
                    return Err(fail("spool.maxSizeMB", "must be at least 1".to_owned()));
                }
                Some(SpoolConfig {
                    path: s.path.unwrap_or_else(|| ctx.spool_dir.join(&e.name)),
                    max_bytes: mb.saturating_mul(1 << 20),
                })
            }
            (None, true) => Some(SpoolConfig {
                path: ctx.spool_dir.join(&e.name),
                max_bytes: DEFAULT_SPOOL_MB << 20,
            }),
            (None, false) => None,
        };
        if let Some(s) = &spool
            && s.path.as_os_str().is_empty()
        {
            return Err(fail("spool.path", "must not be empty".to_owned()));
        }
        exporters.push(ExporterConfig {
            name: e.name,
            include,
            exclude,
            field_mask: e.field_mask,
            aggregate,
            end,
            spool,
            sink,
        });
    }
    // Two exporters must not share a spool or write the same file.
    let mut spools: HashMap<&Path, &str> = HashMap::new();
    let mut files: HashMap<&Path, &str> = HashMap::new();
    for (i, e) in exporters.iter().enumerate() {
        if let Some(s) = &e.spool
            && let Some(other) = spools.insert(&s.path, &e.name)
        {
            return Err(locate(
                &format!("exporters[{i}].spool.path"),
                format!(
                    "{} is also the spool of exporter {other:?}",
                    s.path.display()
                ),
            ));
        }
        if let SinkConfig::File(FileConfig { path: Some(p), .. }) = &e.sink
            && let Some(other) = files.insert(p, &e.name)
        {
            return Err(locate(
                &format!("exporters[{i}].sink.file.path"),
                format!("{} is also written by exporter {other:?}", p.display()),
            ));
        }
    }
    Ok(ExportConfig { exporters })
}

fn valid_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// FlowFilters from their YAML form (a mapping with Hubble's field names)
/// or Hubble's JSON form (a string, as `hubble observe --print-raw-filters`
/// prints them).
fn filters(
    values: &[serde_json::Value],
    at: &str,
    locate: &impl Fn(&str, String) -> ConfigError,
) -> Result<Vec<FlowFilter>, ConfigError> {
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let field = format!("{at}[{i}]");
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(_) => v.to_string(),
            _ => {
                return Err(locate(
                    &field,
                    "a FlowFilter is a mapping (or a JSON string)".to_owned(),
                ));
            }
        };
        let parsed =
            sightline_flow::json::flow_filters_from_json(&text).map_err(|e| locate(&field, e))?;
        if parsed.len() != 1 {
            return Err(locate(&field, "one FlowFilter per list item".to_owned()));
        }
        out.extend(parsed);
    }
    Ok(out)
}

/// The sink, and whether it gets a spool when none is configured.
fn sink(
    raw: &RawSink,
    at: &str,
    ctx: &Context,
    locate: &impl Fn(&str, String) -> ConfigError,
) -> Result<(SinkConfig, bool), ConfigError> {
    let set = usize::from(raw.file.is_some())
        + usize::from(raw.azure_monitor.is_some())
        + usize::from(raw.otlp.is_some());
    if set != 1 {
        return Err(locate(
            at,
            format!("exactly one of file, azureMonitor, otlp must be set ({set} are)"),
        ));
    }
    if let Some(f) = &raw.file {
        let at = format!("{at}.file");
        let path = match f.path.as_str() {
            "" => {
                return Err(locate(
                    &format!("{at}.path"),
                    "must not be empty (use \"stdout\" for standard output)".to_owned(),
                ));
            }
            "stdout" => None,
            p => Some(PathBuf::from(p)),
        };
        let mb = f.max_size_mb.unwrap_or(DEFAULT_FILE_MB);
        if mb == 0 {
            return Err(locate(
                &format!("{at}.maxSizeMB"),
                "must be at least 1".to_owned(),
            ));
        }
        return Ok((
            SinkConfig::File(FileConfig {
                path,
                max_bytes: mb.saturating_mul(1 << 20),
                max_backups: f.max_backups.unwrap_or(DEFAULT_FILE_BACKUPS),
                compress: f.compress,
            }),
            false,
        ));
    }
    if let Some(a) = &raw.azure_monitor {
        let at = format!("{at}.azureMonitor");
        check_url(&a.endpoint, &["https"], &format!("{at}.endpoint"), locate)?;
        for (value, field) in [
            (&a.dcr_immutable_id, "dcrImmutableId"),
            (&a.stream, "stream"),
        ] {
            if value.is_empty() || value.contains(['/', '?', '#', ' ']) {
                return Err(locate(
                    &format!("{at}.{field}"),
                    format!("{value:?} is not a valid {field}"),
                ));
            }
        }
        if let Some(ca) = &a.ca_file {
            must_be_file(ca, &format!("{at}.caFile"), locate)?;
        }
        let auth = auth(&a.auth, &format!("{at}.auth"), ctx, locate)?;
        return Ok((
            SinkConfig::AzureMonitor(AzureConfig {
                endpoint: a.endpoint.trim_end_matches('/').to_owned(),
                dcr_immutable_id: a.dcr_immutable_id.clone(),
                stream: a.stream.clone(),
                ca_file: a.ca_file.clone(),
                auth,
            }),
            true,
        ));
    }
    let Some(o) = &raw.otlp else {
        return Err(locate(
            at,
            "exactly one of file, azureMonitor, otlp must be set".to_owned(),
        ));
    };
    let at = format!("{at}.otlp");
    check_url(
        &o.endpoint,
        &["http", "https"],
        &format!("{at}.endpoint"),
        locate,
    )?;
    let protocol = match o.protocol.as_deref() {
        None | Some("grpc") => OtlpProtocolConfig::Grpc,
        Some("http/protobuf") => OtlpProtocolConfig::HttpProtobuf,
        Some(other) => {
            return Err(locate(
                &format!("{at}.protocol"),
                format!("{other:?} is not a protocol (grpc or http/protobuf)"),
            ));
        }
    };
    for (k, v) in &o.headers {
        let bad_name = k.is_empty()
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if bad_name || v.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return Err(locate(
                &format!("{at}.headers.{k}"),
                "not a valid header name or value".to_owned(),
            ));
        }
    }
    if let Some(ca) = &o.ca_file {
        must_be_file(ca, &format!("{at}.caFile"), locate)?;
    }
    let timeout = match &o.timeout {
        None => Duration::from_secs(10),
        Some(s) => match sightline_flow::duration::parse(s) {
            Some(d) if d >= Duration::from_millis(100) && d <= Duration::from_secs(600) => d,
            _ => {
                return Err(locate(
                    &format!("{at}.timeout"),
                    format!("{s:?} must be a duration between 100ms and 10m"),
                ));
            }
        },
    };
    Ok((
        SinkConfig::Otlp(OtlpConfig {
            endpoint: o.endpoint.clone(),
            protocol,
            headers: o.headers.clone(),
            ca_file: o.ca_file.clone(),
            timeout,
        }),
        true,
    ))
}

fn auth(
    raw: &RawAuth,
    at: &str,
    ctx: &Context,
    locate: &impl Fn(&str, String) -> ConfigError,
) -> Result<AzureAuthConfig, ConfigError> {
    let set = usize::from(raw.client_secret.is_some())
        + usize::from(raw.workload_identity.is_some())
        + usize::from(raw.managed_identity.is_some());
    if set != 1 {
        return Err(locate(
            at,
            format!(
                "exactly one of clientSecret, workloadIdentity, managedIdentity must be set ({set} are)"
            ),
        ));
    }
    let authority_host = match (&raw.authority_host, ctx.env("AZURE_AUTHORITY_HOST")) {
        (Some(h), _) => h.clone(),
        (None, Some(h)) => h.to_owned(),
        (None, None) => DEFAULT_AUTHORITY_HOST.to_owned(),
    };
    if raw.managed_identity.is_none() {
        check_url(
            &authority_host,
            &["https"],
            &format!("{at}.authorityHost"),
            locate,
        )?;
    }
    let authority_host = authority_host.trim_end_matches('/').to_owned();
    let non_empty = |value: &str, field: &str| {
        if value.is_empty() {
            Err(locate(
                &format!("{at}.{field}"),
                "must not be empty".to_owned(),
            ))
        } else {
            Ok(())
        }
    };
    if let Some(c) = &raw.client_secret {
        non_empty(&c.tenant_id, "clientSecret.tenantId")?;
        non_empty(&c.client_id, "clientSecret.clientId")?;
        must_be_file(
            &c.secret_file,
            &format!("{at}.clientSecret.secretFile"),
            locate,
        )?;
        return Ok(AzureAuthConfig::ClientSecret {
            tenant_id: c.tenant_id.clone(),
            client_id: c.client_id.clone(),
            secret_file: c.secret_file.clone(),
            authority_host,
        });
    }
    if let Some(w) = &raw.workload_identity {
        let pick =
            |given: &Option<String>, var: &str, field: &str| -> Result<String, ConfigError> {
                given
                    .clone()
                    .filter(|v| !v.is_empty())
                    .or_else(|| ctx.env(var).map(str::to_owned))
                    .ok_or_else(|| {
                        locate(
                            &format!("{at}.workloadIdentity.{field}"),
                            format!("not set, and {var} is not in the environment"),
                        )
                    })
            };
        let tenant_id = pick(&w.tenant_id, "AZURE_TENANT_ID", "tenantId")?;
        let client_id = pick(&w.client_id, "AZURE_CLIENT_ID", "clientId")?;
        let token_file = PathBuf::from(pick(
            &w.token_file.as_ref().map(|p| p.display().to_string()),
            "AZURE_FEDERATED_TOKEN_FILE",
            "tokenFile",
        )?);
        must_be_file(
            &token_file,
            &format!("{at}.workloadIdentity.tokenFile"),
            locate,
        )?;
        return Ok(AzureAuthConfig::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file,
            authority_host,
        });
    }
    let m = raw
        .managed_identity
        .as_ref()
        .map_or_else(RawManagedIdentity::default, |m| RawManagedIdentity {
            client_id: m.client_id.clone(),
            endpoint: m.endpoint.clone(),
        });
    let endpoint = m.endpoint.unwrap_or_else(|| IMDS_ENDPOINT.to_owned());
    check_url(
        &endpoint,
        &["http", "https"],
        &format!("{at}.managedIdentity.endpoint"),
        locate,
    )?;
    Ok(AzureAuthConfig::ManagedIdentity {
        client_id: m.client_id.filter(|c| !c.is_empty()),
        endpoint,
    })
}

fn check_url(
    url: &str,
    schemes: &[&str],
    field: &str,
    locate: &impl Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let ok = url.split_once("://").is_some_and(|(scheme, rest)| {
        schemes.contains(&scheme)
            && !rest.is_empty()
            && !rest.starts_with('/')
            && !rest.contains(char::is_whitespace)
    });
    if ok {
        Ok(())
    } else {
        Err(locate(
            field,
            format!(
                "{url:?} is not a URL ({})",
                schemes
                    .iter()
                    .map(|s| format!("{s}://…"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        ))
    }
}

fn must_be_file(
    path: &Path,
    field: &str,
    locate: &impl Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(locate(field, format!("{} is not a file", path.display()))),
        Err(e) => Err(locate(field, format!("{}: {e}", path.display()))),
    }
}

/// An RFC 3339 time (`2026-12-31T00:00:00Z`, `…+01:00`, fractions allowed),
/// read by jiff; nothing without an offset, no time zone annotations.
fn parse_time(s: &str) -> Option<SystemTime> {
    if s.contains('[') {
        return None;
    }
    s.parse::<jiff::Timestamp>().ok().map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn ctx() -> Context {
        Context {
            spool_dir: PathBuf::from("/var/lib/sightline/spool"),
            env: HashMap::new(),
        }
    }

    fn err(text: &str) -> ConfigError {
        parse(text, &ctx()).expect_err("refused")
    }

    #[test]
    fn a_full_configuration_reads() {
        let dir = std::env::temp_dir().join(format!("sightline-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let text = format!(
            r#"
exporters:
  - name: drops
    include:
      - verdict: [DROPPED]
      - '{{"source_pod":["x/"]}}'
    exclude:
      - destination_port: ["53"]
    fieldMask: [time, verdict, source.pod_name]
    aggregate: 30s
    end: 2026-12-31T00:00:00Z
    spool:
      path: /tmp/spool/drops
      maxSizeMB: 5
    sink:
      file:
        path: /var/log/sightline/flows.log
        maxSizeMB: 10
        maxBackups: 3
        compress: true
  - name: azure
    sink:
      azureMonitor:
        endpoint: https://my-dce.eastus-1.ingest.monitor.azure.com/
        dcrImmutableId: dcr-0000000000000000000000000000000a
        stream: Custom-SightlineFlows
        auth:
          clientSecret: {{tenantId: T, clientId: C, secretFile: {secret}}}
  - name: otel
    sink:
      otlp:
        endpoint: http://127.0.0.1:4318
        protocol: http/protobuf
        headers: {{x-api-key: k}}
"#,
            secret = secret.display()
        );
        let cfg = parse(&text, &ctx()).expect("valid");
        assert_eq!(cfg.exporters.len(), 3);
        let drops = &cfg.exporters[0];
        assert_eq!(drops.include.len(), 2);
        assert_eq!(drops.include[0].verdict, vec![2]);
        assert_eq!(drops.include[1].source_pod, vec!["x/".to_owned()]);
        assert_eq!(drops.exclude[0].destination_port, vec!["53".to_owned()]);
        assert_eq!(drops.aggregate, Some(Duration::from_secs(30)));
        assert_eq!(
            drops.end,
            Some(UNIX_EPOCH + Duration::from_secs(1_798_675_200))
        );
        assert_eq!(
            drops.spool,
            Some(SpoolConfig {
                path: "/tmp/spool/drops".into(),
                max_bytes: 5 << 20
            })
        );
        assert_eq!(
            drops.sink,
            SinkConfig::File(FileConfig {
                path: Some("/var/log/sightline/flows.log".into()),
                max_bytes: 10 << 20,
                max_backups: 3,
                compress: true
            })
        );
        let azure = &cfg.exporters[1];
        assert_eq!(
            azure.spool.as_ref().map(|s| s.path.clone()),
            Some(PathBuf::from("/var/lib/sightline/spool/azure"))
        );
        let SinkConfig::AzureMonitor(a) = &azure.sink else {
            panic!("azure")
        };
        assert_eq!(
            a.endpoint,
            "https://my-dce.eastus-1.ingest.monitor.azure.com"
        );
        assert!(
            matches!(&a.auth, AzureAuthConfig::ClientSecret { authority_host, .. } if authority_host == DEFAULT_AUTHORITY_HOST)
        );
        let SinkConfig::Otlp(o) = &cfg.exporters[2].sink else {
            panic!("otlp")
        };
        assert_eq!(o.protocol, OtlpProtocolConfig::HttpProtobuf);
        assert_eq!(o.headers.get("x-api-key").map(String::as_str), Some("k"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let cases: &[(&str, usize, &str, &str)] = &[
            (
                "exporters:\n  - name: a\n    sink:\n      fil: {path: x}\n",
                4,
                "exporters[0].sink.fil",
                "unknown field",
            ),
            (
                "exporters:\n  - name: a\n    sink: {}\n",
                3,
                "exporters[0].sink",
                "exactly one of",
            ),
            (
                "exporters:\n  - name: a\n    sink:\n      file:\n        path: x\n        maxSizeMB: ten\n",
                6,
                "exporters[0].sink.file.maxSizeMB",
                "invalid type",
            ),
            (
                "exporters:\n  - name: a\n    include:\n      - source_ip: [\"10.0.0.0/33\"]\n    sink: {file: {path: x}}\n",
                4,
                "exporters[0].include[0].source_ip",
                "not an IP address or CIDR",
            ),
            (
                "exporters:\n  - name: a\n    exclude:\n      - {verdict: [NOPE]}\n    sink: {file: {path: x}}\n",
                4,
                "exporters[0].exclude[0]",
                "FlowFilter",
            ),
            (
                "exporters:\n  - name: a\n    fieldMask: [time, source.podname]\n    sink: {file: {path: x}}\n",
                3,
                "exporters[0].fieldMask[1]",
                "podname",
            ),
            (
                "exporters:\n  - name: A_b\n    sink: {file: {path: x}}\n",
                2,
                "exporters[0].name",
                "not a valid exporter name",
            ),
            (
                "exporters:\n  - name: a\n    sink: {file: {path: x}}\n  - name: a\n    sink: {file: {path: y}}\n",
                4,
                "exporters[1].name",
                "unique",
            ),
            (
                "exporters:\n  - name: a\n    aggregate: soon\n    sink: {file: {path: x}}\n",
                3,
                "exporters[0].aggregate",
                "not a duration",
            ),
            (
                "exporters:\n  - name: a\n    sink:\n      azureMonitor:\n        endpoint: https://x\n        dcrImmutableId: d\n        stream: s\n        auth:\n          clientSecret: {tenantId: t, clientId: c, secretFile: /nonexistent/secret}\n",
                9,
                "exporters[0].sink.azureMonitor.auth.clientSecret.secretFile",
                "/nonexistent/secret",
            ),
            (
                "exporters:\n  - name: a\n    sink:\n      otlp: {endpoint: \"localhost:4317\"}\n",
                4,
                "exporters[0].sink.otlp.endpoint",
                "not a URL",
            ),
            (
                "exporters:\n  - name: a\n    sink: {file: {path: x}}\n    extra: 1\n",
                4,
                "exporters[0].extra",
                "unknown field",
            ),
            ("exporters: [\n", 2, "", "not YAML"),
            ("a: 1\n---\nb: 2\n", 3, "", "more than one"),
        ];
        for (text, line, field, needle) in cases {
            let e = err(text);
            assert_eq!(
                (e.line, e.field.as_str()),
                (Some(*line), *field),
                "{text}: {e}"
            );
            assert!(e.to_string().contains(needle), "{text}: {e}");
            assert!(e.to_string().starts_with(&format!("line {line}: ")), "{e}");
        }
    }

    #[test]
    fn workload_identity_reads_the_environment() {
        let dir = std::env::temp_dir().join(format!("sightline-config-wi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "jwt").unwrap();
        let text = "exporters:\n  - name: a\n    sink:\n      azureMonitor:\n        endpoint: https://x\n        dcrImmutableId: d\n        stream: s\n        auth:\n          workloadIdentity: {}\n";
        let e = parse(text, &ctx()).expect_err("no environment");
        assert_eq!(
            e.field,
            "exporters[0].sink.azureMonitor.auth.workloadIdentity.tenantId"
        );
        let mut c = ctx();
        c.env.insert("AZURE_TENANT_ID".into(), "t".into());
        c.env.insert("AZURE_CLIENT_ID".into(), "c".into());
        c.env.insert(
            "AZURE_FEDERATED_TOKEN_FILE".into(),
            token.display().to_string(),
        );
        c.env.insert(
            "AZURE_AUTHORITY_HOST".into(),
            "https://login.microsoftonline.us/".into(),
        );
        let cfg = parse(text, &c).expect("from the environment");
        let SinkConfig::AzureMonitor(a) = &cfg.exporters[0].sink else {
            panic!()
        };
        assert_eq!(
            a.auth,
            AzureAuthConfig::WorkloadIdentity {
                tenant_id: "t".into(),
                client_id: "c".into(),
                token_file: token,
                authority_host: "https://login.microsoftonline.us".into()
            }
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn empty_documents_have_no_exporters() {
        assert_eq!(parse("", &ctx()).unwrap(), ExportConfig::default());
        assert_eq!(
            parse("exporters: []\n", &ctx()).unwrap(),
            ExportConfig::default()
        );
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert_eq!(parse_time("1970-01-01T01:00:00+01:00"), Some(UNIX_EPOCH));
        assert_eq!(
            parse_time("2000-03-01T00:00:00.5Z"),
            Some(UNIX_EPOCH + Duration::new(951_868_800, 500_000_000))
        );
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-01-01",
            "2026-01-01T00:00:00",
            "x",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
