//! Parsing manifests: YAML documents into raw structs mirroring the
//! Kubernetes fields (serde reports wrong types and unknown fields with
//! their path, which k8s-openapi's types, tolerant of unknown fields, would
//! not), then handed to `validate`, which makes the API's objects.

use super::*;
use super::validate::*;


// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Parses multi-document YAML (as `kubectl apply -f` takes it) into validated objects, in
/// document order. `source` names the text in errors (usually the file path). Empty documents
/// are skipped. The first problem found is returned.
pub fn parse_manifests(source: &str, text: &str) -> Result<Vec<Document>, ManifestError> {
    // Pass 1: well-formedness, and what each document says it is.
    let mut values = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match serde_yaml::Value::deserialize(document) {
            Ok(value) => values.push(value),
            // Stop at the first error: the parser does not recover from one.
            Err(err) => return Err(yaml_error(source, index + 1, &err)),
        }
    }
    // Pass 2: the typed reading of each document.
    let mut objects = Vec::new();
    let documents = serde_yaml::Deserializer::from_str(text).take(values.len());
    for ((index, document), value) in documents.enumerate().zip(&values) {
        let origin = Origin {
            source: source.to_owned(),
            document: index + 1,
        };
        if let Some(object) = parse_document(origin, value, document)? {
            objects.push(object);
        }
    }
    Ok(objects)
}

pub(super) fn yaml_error(source: &str, document: usize, err: &serde_yaml::Error) -> ManifestError {
    let location = err.location();
    ManifestError::Yaml {
        source_name: source.to_owned(),
        document,
        message: err.to_string(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
    }
}

/// The kinds the lab takes: (kind, apiVersion, namespaced).
pub(super) const KINDS: &[(&str, &str, bool)] = &[
    ("Namespace", "v1", false),
    ("Pod", "v1", true),
    ("Service", "v1", true),
    ("NetworkPolicy", "networking.k8s.io/v1", true),
];

pub(super) fn parse_document(
    origin: Origin,
    value: &serde_yaml::Value,
    document: serde_yaml::Deserializer<'_>,
) -> Result<Option<Document>, ManifestError> {
    use serde_yaml::Value;

    let map = match value {
        Value::Null => return Ok(None),
        Value::Mapping(map) => map,
        other => {
            let what = match other {
                Value::Sequence(_) => "a sequence",
                Value::Tagged(_) => "a tagged value",
                _ => "a scalar",
            };
            return Err(ManifestError::Invalid {
                at: Location::new(Some(&origin), None),
                field: String::new(),
                message: format!(
                    "a manifest document must be a mapping with apiVersion, kind and metadata, \
                     not {what}"
                ),
            });
        }
    };

    // What the document says it is, for error messages.
    let kind_value = map.get("kind");
    let kind = kind_value.and_then(Value::as_str);
    let metadata = map.get("metadata");
    let name = metadata.and_then(|m| m.get("name")).and_then(Value::as_str);
    let namespace = metadata
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty());
    let known = kind.and_then(|k| KINDS.iter().find(|(known, _, _)| *known == k));
    let object = match (kind, name, known) {
        (None, _, _) => None,
        (Some(kind), None, _) => Some(kind.to_owned()),
        (Some(kind), Some(name), Some((_, _, true))) => Some(format!(
            "{kind} {}/{name}",
            namespace.unwrap_or(DEFAULT_NAMESPACE)
        )),
        (Some(kind), Some(name), _) => Some(match namespace {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        }),
    };
    let ck = Checker {
        at: Location::new(Some(&origin), object),
    };

    let kind = match (kind_value, kind) {
        (None, _) => return Err(ck.fail("kind", "Required value: every document needs a kind")),
        (Some(_), None) => return Err(ck.fail("kind", "must be a string")),
        (Some(_), Some(kind)) => kind,
    };
    let Some(&(kind, expected_api, _)) = known else {
        let message = if kind == "List" || kind.ends_with("List") {
            format!(
                "{kind} is not supported: write its items as separate documents separated by `---`"
            )
        } else {
            format!(
                "{kind} is not supported: the lab takes Namespace, Pod, Service and NetworkPolicy"
            )
        };
        return Err(ck.fail("kind", message));
    };
    match map.get("apiVersion") {
        None => return Err(ck.fail("apiVersion", "Required value")),
        Some(v) if v.as_str() == Some(expected_api) => {}
        Some(v) => {
            let got = v
                .as_str()
                .map_or_else(|| "a non-string".to_owned(), |s| format!("{s:?}"));
            return Err(ck.fail(
                "apiVersion",
                format!("{kind} must have apiVersion {expected_api}, not {got}"),
            ));
        }
    }

    let object = match kind {
        "Namespace" => {
            let raw =
                RawDocument::<IgnoredAny>::deserialize(document).map_err(|e| ck.schema(&e))?;
            Object::Namespace(convert_namespace(&ck, raw)?)
        }
        "Pod" => {
            let raw =
                RawDocument::<RawPodSpec>::deserialize(document).map_err(|e| ck.schema(&e))?;
            Object::Pod(convert_pod(&ck, raw)?)
        }
        "Service" => {
            let raw =
                RawDocument::<RawServiceSpec>::deserialize(document).map_err(|e| ck.schema(&e))?;
            Object::Service(convert_service(&ck, raw)?)
        }
        _ => {
            let raw =
                RawDocument::<RawPolicySpec>::deserialize(document).map_err(|e| ck.schema(&e))?;
            Object::NetworkPolicy(convert_policy(&ck, raw)?)
        }
    };
    Ok(Some(Document { object, origin: Some(origin) }))
}

/// Builds errors for one document.
pub(super) struct Checker {
    pub(super) at: Location,
}

impl Checker {
    pub(super) fn fail(&self, field: impl Into<String>, message: impl Into<String>) -> ManifestError {
        ManifestError::Invalid {
            at: self.at.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// Turns a typed-deserialization error into an `Invalid` one, splitting off the field path
    /// serde_yaml puts in front of the message (`spec.ingress[0]: unknown field ...`).
    pub(super) fn schema(&self, err: &serde_yaml::Error) -> ManifestError {
        let text = err.to_string();
        if let Some((path, rest)) = text.split_once(": ") {
            let path_like = !path.is_empty()
                && !path.contains(char::is_whitespace)
                && !path.contains(['`', '"', '\'']);
            if path_like {
                return self.fail(path, rest);
            }
        }
        self.fail("", text)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw structs, mirroring the Kubernetes fields
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDocument<S> {
    #[serde(rename = "apiVersion")]
    pub(super) _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    pub(super) _kind: IgnoredAny,
    pub(super) metadata: Option<RawMeta>,
    pub(super) spec: Option<S>,
    #[serde(rename = "status")]
    pub(super) _status: Option<IgnoredAny>,
}

/// A struct read key by key: fields the lab uses, fields it ignores, and errors for the rest.
/// This keeps serde_yaml's field paths in nested errors (which `#[serde(flatten)]` would lose).
pub(super) trait FieldReader: Default {
    const IGNORED: &'static [&'static str];
    const WHAT: &'static str;
    /// Reads the value of `key` if the lab uses it; `Ok(false)` if it does not.
    fn take<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error>;
}

pub(super) struct FieldVisitor<T>(PhantomData<T>);

impl<'de, T: FieldReader> Visitor<'de> for FieldVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a mapping of {} fields", T::WHAT)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut out = T::default();
        while let Some(key) = map.next_key::<String>()? {
            if out.take(&key, &mut map)? {
                continue;
            }
            if T::IGNORED.contains(&key.as_str()) {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            return Err(de::Error::custom(format_args!(
                "unknown field `{key}` (not a {} field)",
                T::WHAT
            )));
        }
        Ok(out)
    }
}

pub(super) fn read_fields<'de, D: Deserializer<'de>, T: FieldReader>(d: D) -> Result<T, D::Error> {
    d.deserialize_map(FieldVisitor(PhantomData))
}

#[derive(Default)]
pub(super) struct RawMeta {
    pub(super) name: Option<StrictString>,
    pub(super) generate_name: Option<StrictString>,
    pub(super) namespace: Option<StrictString>,
    pub(super) labels: Option<BTreeMap<String, StrictString>>,
}

impl FieldReader for RawMeta {
    const IGNORED: &'static [&'static str] = META_IGNORED;
    const WHAT: &'static str = "metadata";
    fn take<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "name" => self.name = map.next_value()?,
            "generateName" => self.generate_name = map.next_value()?,
            "namespace" => self.namespace = map.next_value()?,
            "labels" => self.labels = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl<'de> Deserialize<'de> for RawMeta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read_fields(d)
    }
}

#[derive(Default)]
pub(super) struct RawPodSpec {
    pub(super) containers: Option<Vec<RawContainer>>,
    pub(super) node_name: Option<String>,
    pub(super) host_network: Option<bool>,
}

impl FieldReader for RawPodSpec {
    const IGNORED: &'static [&'static str] = POD_SPEC_IGNORED;
    const WHAT: &'static str = "Pod spec";
    fn take<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "containers" => self.containers = map.next_value()?,
            "nodeName" => self.node_name = map.next_value()?,
            "hostNetwork" => self.host_network = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl<'de> Deserialize<'de> for RawPodSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read_fields(d)
    }
}

#[derive(Default)]
pub(super) struct RawContainer {
    pub(super) name: Option<StrictString>,
    pub(super) ports: Option<Vec<RawContainerPort>>,
}

impl FieldReader for RawContainer {
    const IGNORED: &'static [&'static str] = CONTAINER_IGNORED;
    const WHAT: &'static str = "container";
    fn take<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "name" => self.name = map.next_value()?,
            "ports" => self.ports = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl<'de> Deserialize<'de> for RawContainer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read_fields(d)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawContainerPort {
    pub(super) container_port: i64,
    pub(super) protocol: Option<Protocol>,
    pub(super) name: Option<String>,
    pub(super) host_port: Option<i64>,
    #[serde(rename = "hostIP")]
    pub(super) host_ip: Option<String>,
}

#[derive(Default)]
pub(super) struct RawServiceSpec {
    pub(super) ports: Option<Vec<RawServicePort>>,
    pub(super) selector: Option<BTreeMap<String, StrictString>>,
    pub(super) type_: Option<String>,
    pub(super) cluster_ip: Option<String>,
    pub(super) cluster_ips: Option<Vec<String>>,
    pub(super) external_ips: Option<Vec<String>>,
    pub(super) external_name: Option<String>,
    pub(super) session_affinity: Option<String>,
    pub(super) internal_traffic_policy: Option<String>,
    pub(super) ip_families: Option<Vec<String>>,
    pub(super) ip_family_policy: Option<String>,
    /// NodePort/LoadBalancer-only fields that were set.
    pub(super) other_type_fields: Vec<&'static str>,
}

impl FieldReader for RawServiceSpec {
    const IGNORED: &'static [&'static str] = SERVICE_SPEC_IGNORED;
    const WHAT: &'static str = "Service spec";
    fn take<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "ports" => self.ports = map.next_value()?,
            "selector" => self.selector = map.next_value()?,
            "type" => self.type_ = map.next_value()?,
            "clusterIP" => self.cluster_ip = map.next_value()?,
            "clusterIPs" => self.cluster_ips = map.next_value()?,
            "externalIPs" => self.external_ips = map.next_value()?,
            "externalName" => self.external_name = map.next_value()?,
            "sessionAffinity" => self.session_affinity = map.next_value()?,
            "internalTrafficPolicy" => self.internal_traffic_policy = map.next_value()?,
            "ipFamilies" => self.ip_families = map.next_value()?,
            "ipFamilyPolicy" => self.ip_family_policy = map.next_value()?,
            other => match SERVICE_OTHER_TYPE_FIELDS.iter().find(|f| **f == other) {
                Some(field) => {
                    if map.next_value::<Option<IgnoredAny>>()?.is_some() {
                        self.other_type_fields.push(field);
                    }
                }
                None => return Ok(false),
            },
        }
        Ok(true)
    }
}

impl<'de> Deserialize<'de> for RawServiceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read_fields(d)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawServicePort {
    pub(super) name: Option<String>,
    pub(super) protocol: Option<Protocol>,
    pub(super) port: i64,
    pub(super) target_port: Option<IntOrString>,
    pub(super) node_port: Option<i64>,
    #[serde(rename = "appProtocol")]
    pub(super) _app_protocol: Option<IgnoredAny>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPolicySpec {
    pub(super) pod_selector: Option<RawSelector>,
    pub(super) policy_types: Option<Vec<String>>,
    pub(super) ingress: Option<Vec<RawIngressRule>>,
    pub(super) egress: Option<Vec<RawEgressRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIngressRule {
    pub(super) from: Option<Vec<RawPeer>>,
    pub(super) ports: Option<Vec<RawPolicyPort>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEgressRule {
    pub(super) to: Option<Vec<RawPeer>>,
    pub(super) ports: Option<Vec<RawPolicyPort>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPeer {
    pub(super) pod_selector: Option<RawSelector>,
    pub(super) namespace_selector: Option<RawSelector>,
    pub(super) ip_block: Option<RawIpBlock>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIpBlock {
    pub(super) cidr: String,
    pub(super) except: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPolicyPort {
    pub(super) protocol: Option<Protocol>,
    pub(super) port: Option<IntOrString>,
    pub(super) end_port: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawSelector {
    pub(super) match_labels: Option<BTreeMap<String, StrictString>>,
    pub(super) match_expressions: Option<Vec<RawRequirement>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRequirement {
    pub(super) key: String,
    pub(super) operator: String,
    pub(super) values: Option<Vec<StrictString>>,
}

/// A string field that must be written as a YAML string. serde_yaml would turn `1`, `1.10`
/// or `true` into text (`"1.1"`!); the API server rejects a number or boolean where a string is
/// due, and so do we for names, labels and selectors, where such a silent change would alter
/// what matches.
pub(super) struct StrictString(pub(super) String);

impl<'de> Deserialize<'de> for StrictString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StrictString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string (quote numbers and booleans, e.g. \"1\")")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrictString, E> {
                Ok(StrictString(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) fn strings(map: Option<BTreeMap<String, StrictString>>) -> BTreeMap<String, String> {
    map.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// Kubernetes' IntOrString.
pub(super) enum IntOrString {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a port name")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::Str(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}
