//! Conversion with validation: raw structs into the API's objects
//! (k8s-openapi), with the API server's defaults and its refusals, and the
//! field formats apimachinery defines.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

use super::*;
use super::parse::*;


// ---------------------------------------------------------------------------------------------
// Conversion with validation
// ---------------------------------------------------------------------------------------------

/// Which name format a kind requires.
#[derive(Clone, Copy)]
pub(super) enum NameRule {
    /// RFC 1123 label (Namespace).
    Label,
    /// RFC 1123 subdomain (Pod, NetworkPolicy).
    Subdomain,
    /// RFC 1035 label (Service).
    Label1035,
}

pub(super) struct Meta {
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) labels: BTreeMap<String, String>,
}

pub(super) fn convert_meta(ck: &Checker, raw: Option<RawMeta>, rule: NameRule) -> Result<Meta, ManifestError> {
    let raw = raw.unwrap_or_default();
    let name = match raw.name.map(|n| n.0).filter(|n| !n.is_empty()) {
        Some(name) => name,
        None if raw.generate_name.is_some() => {
            return Err(ck.fail(
                "metadata.name",
                "Required value: the lab does not support generateName; give the object a name",
            ));
        }
        None => return Err(ck.fail("metadata.name", "Required value")),
    };
    let problem = match rule {
        NameRule::Label => (!is_dns_label(&name)).then_some(DNS_LABEL_RULE),
        NameRule::Subdomain => (!is_dns_subdomain(&name)).then_some(DNS_SUBDOMAIN_RULE),
        NameRule::Label1035 => (!is_dns1035_label(&name)).then_some(DNS_1035_RULE),
    };
    if let Some(rule) = problem {
        return Err(ck.fail(
            "metadata.name",
            format!("{name:?} is not a valid name: {rule}"),
        ));
    }
    let namespace = match raw.namespace.map(|ns| ns.0).filter(|ns| !ns.is_empty()) {
        None => DEFAULT_NAMESPACE.to_owned(),
        Some(ns) if is_dns_label(&ns) => ns,
        Some(ns) => {
            return Err(ck.fail(
                "metadata.namespace",
                format!("{ns:?} is not a valid namespace name: {DNS_LABEL_RULE}"),
            ));
        }
    };
    let labels = strings(raw.labels);
    check_labels(ck, "metadata.labels", &labels)?;
    Ok(Meta {
        namespace,
        name,
        labels,
    })
}

impl Meta {
    /// The object's metadata; `namespaced` sets its namespace.
    fn object_meta(self, namespaced: bool) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name),
            namespace: namespaced.then_some(self.namespace),
            labels: (!self.labels.is_empty()).then_some(self.labels),
            ..ObjectMeta::default()
        }
    }
}

pub(super) fn check_labels(
    ck: &Checker,
    path: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), ManifestError> {
    for (key, value) in labels {
        if let Err(message) = check_label_key(key) {
            return Err(ck.fail(path, message));
        }
        if let Err(message) = check_label_value(value) {
            return Err(ck.fail(format!("{path}.{key}"), message));
        }
    }
    Ok(())
}

pub(super) fn convert_namespace(
    ck: &Checker,
    raw: RawDocument<IgnoredAny>,
) -> Result<Namespace, ManifestError> {
    // metadata.namespace means nothing on a cluster-scoped object; the API server ignores it.
    let mut meta = convert_meta(ck, raw.metadata, NameRule::Label)?;
    meta.labels.insert(NAMESPACE_NAME_LABEL.to_owned(), meta.name.clone());
    Ok(Namespace {
        metadata: meta.object_meta(false),
        ..Namespace::default()
    })
}

pub(super) fn convert_pod(
    ck: &Checker,
    raw: RawDocument<RawPodSpec>,
) -> Result<Pod, ManifestError> {
    let meta = convert_meta(ck, raw.metadata, NameRule::Subdomain)?;
    let spec = raw.spec.unwrap_or_default();
    if spec.host_network == Some(true) {
        return Err(ck.fail(
            "spec.hostNetwork",
            "the lab cannot honour hostNetwork: every lab pod has its own network namespace",
        ));
    }
    let node_name = match spec.node_name.filter(|n| !n.is_empty()) {
        Some(node) if !is_dns_subdomain(&node) => {
            return Err(ck.fail(
                "spec.nodeName",
                format!("{node:?} is not a valid node name: {DNS_SUBDOMAIN_RULE}"),
            ));
        }
        other => other,
    };
    let mut containers = Vec::new();
    for (c, container) in spec.containers.unwrap_or_default().into_iter().enumerate() {
        let mut ports = Vec::new();
        let mut names = BTreeSet::new();
        for (p, raw_port) in container.ports.unwrap_or_default().into_iter().enumerate() {
            let path = format!("spec.containers[{c}].ports[{p}]");
            let port = port_number(raw_port.container_port)
                .map_err(|m| ck.fail(format!("{path}.containerPort"), m))?;
            if raw_port.host_port.is_some_and(|h| h != 0) {
                return Err(ck.fail(
                    format!("{path}.hostPort"),
                    "the lab cannot honour hostPort: pods are reached at their own address",
                ));
            }
            if raw_port.host_ip.as_deref().is_some_and(|h| !h.is_empty()) {
                return Err(ck.fail(
                    format!("{path}.hostIP"),
                    "the lab cannot honour hostIP: pods are reached at their own address",
                ));
            }
            let name = raw_port.name.filter(|n| !n.is_empty());
            if let Some(name) = &name {
                check_port_name(name).map_err(|m| ck.fail(format!("{path}.name"), m))?;
                if !names.insert(name.clone()) {
                    return Err(ck.fail(
                        format!("{path}.name"),
                        format!("Duplicate value: {name:?} names another port of this container"),
                    ));
                }
            }
            ports.push(core::ContainerPort {
                container_port: i32::from(port),
                protocol: Some(raw_port.protocol.unwrap_or(Protocol::Tcp).to_string()),
                name,
                ..core::ContainerPort::default()
            });
        }
        // The API server requires a name; the lab names a nameless container by its place.
        let name = container.name.map(|n| n.0).filter(|n| !n.is_empty()).unwrap_or_else(|| format!("container-{c}"));
        containers.push(core::Container {
            name,
            ports: (!ports.is_empty()).then_some(ports),
            ..core::Container::default()
        });
    }
    Ok(Pod {
        metadata: meta.object_meta(true),
        spec: Some(core::PodSpec { node_name, containers, ..core::PodSpec::default() }),
        status: None,
    })
}

pub(super) fn convert_service(
    ck: &Checker,
    raw: RawDocument<RawServiceSpec>,
) -> Result<Service, ManifestError> {
    const CLUSTER_IP_ONLY: &str = "the lab supports only ClusterIP services";
    let meta = convert_meta(ck, raw.metadata, NameRule::Label1035)?;
    let spec = raw.spec.unwrap_or_default();

    match spec.type_.as_deref() {
        None | Some("ClusterIP") => {}
        Some(t @ ("NodePort" | "LoadBalancer" | "ExternalName")) => {
            return Err(ck.fail(
                "spec.type",
                format!("{t} is not supported: {CLUSTER_IP_ONLY}"),
            ));
        }
        Some(t) => {
            return Err(ck.fail(
                "spec.type",
                format!("{t:?} is not a service type: {CLUSTER_IP_ONLY}"),
            ));
        }
    }
    if let Some(field) = spec.other_type_fields.first() {
        return Err(ck.fail(
            format!("spec.{field}"),
            format!("only applies to NodePort or LoadBalancer services: {CLUSTER_IP_ONLY}"),
        ));
    }
    if spec.external_name.as_deref().is_some_and(|n| !n.is_empty()) {
        return Err(ck.fail(
            "spec.externalName",
            format!("only applies to ExternalName services: {CLUSTER_IP_ONLY}"),
        ));
    }
    if spec
        .external_ips
        .as_ref()
        .is_some_and(|ips| !ips.is_empty())
    {
        return Err(ck.fail("spec.externalIPs", "the lab cannot honour externalIPs"));
    }
    match spec.session_affinity.as_deref() {
        None | Some("" | "None") => {}
        Some("ClientIP") => {
            return Err(ck.fail(
                "spec.sessionAffinity",
                "the lab cannot honour sessionAffinity ClientIP (only None)",
            ));
        }
        Some(other) => {
            return Err(ck.fail(
                "spec.sessionAffinity",
                format!("Unsupported value {other:?}: supported values are None and ClientIP"),
            ));
        }
    }
    match spec.internal_traffic_policy.as_deref() {
        None | Some("" | "Cluster") => {}
        Some("Local") => {
            return Err(ck.fail(
                "spec.internalTrafficPolicy",
                "the lab cannot honour internalTrafficPolicy Local (only Cluster)",
            ));
        }
        Some(other) => {
            return Err(ck.fail(
                "spec.internalTrafficPolicy",
                format!("Unsupported value {other:?}: supported values are Cluster and Local"),
            ));
        }
    }
    match spec.ip_family_policy.as_deref() {
        None | Some("" | "SingleStack" | "PreferDualStack") => {}
        Some("RequireDualStack") => {
            return Err(ck.fail(
                "spec.ipFamilyPolicy",
                "the lab cannot honour RequireDualStack: it is IPv4 only",
            ));
        }
        Some(other) => {
            return Err(ck.fail(
                "spec.ipFamilyPolicy",
                format!(
                    "Unsupported value {other:?}: supported values are SingleStack, \
                     PreferDualStack and RequireDualStack"
                ),
            ));
        }
    }
    for (i, family) in spec.ip_families.iter().flatten().enumerate() {
        let path = format!("spec.ipFamilies[{i}]");
        match family.as_str() {
            "IPv4" if i == 0 => {}
            "IPv4" | "IPv6" => {
                return Err(ck.fail(
                    path,
                    format!("the lab cannot honour {family}: it is IPv4 only"),
                ));
            }
            other => {
                return Err(ck.fail(
                    path,
                    format!("Unsupported value {other:?}: supported values are IPv4 and IPv6"),
                ));
            }
        }
    }

    // clusterIP, possibly repeated as clusterIPs[0].
    let mut cluster_ip_text = spec
        .cluster_ip
        .filter(|s| !s.is_empty())
        .map(|s| ("spec.clusterIP", s));
    if let Some(ips) = spec.cluster_ips.filter(|ips| !ips.is_empty()) {
        if ips.len() > 1 {
            return Err(ck.fail(
                "spec.clusterIPs",
                "the lab cannot honour dual-stack cluster IPs: it is IPv4 only",
            ));
        }
        let first = &ips[0];
        match &cluster_ip_text {
            Some((_, ip)) if ip != first => {
                return Err(ck.fail(
                    "spec.clusterIPs[0]",
                    format!("{first:?} must be the same as spec.clusterIP {ip:?}"),
                ));
            }
            Some(_) => {}
            None if first.is_empty() => {}
            None => cluster_ip_text = Some(("spec.clusterIPs[0]", first.clone())),
        }
    }
    let cluster_ip = match cluster_ip_text {
        None => None,
        Some((path, text)) if text == "None" => {
            return Err(ck.fail(
                path,
                "headless services (clusterIP: None) are not supported: the lab gives every \
                 service a virtual IP",
            ));
        }
        Some((path, text)) => match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => Some(ip),
            Ok(IpAddr::V6(_)) => {
                return Err(ck.fail(path, format!("{text} is IPv6: the lab is IPv4 only")));
            }
            Err(_) => {
                return Err(ck.fail(path, format!("{text:?} is not a valid IP address")));
            }
        },
    };

    let selector = strings(spec.selector);
    check_labels(ck, "spec.selector", &selector)?;

    let raw_ports = spec.ports.unwrap_or_default();
    if raw_ports.is_empty() {
        return Err(ck.fail(
            "spec.ports",
            "Required value: a ClusterIP service needs a port",
        ));
    }
    let several = raw_ports.len() > 1;
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut ports = Vec::new();
    for (i, raw_port) in raw_ports.into_iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let name = raw_port.name.filter(|n| !n.is_empty());
        match &name {
            None if several => {
                return Err(ck.fail(
                    format!("{path}.name"),
                    "Required value: every port needs a name when a service has several",
                ));
            }
            None => {}
            Some(n) if !is_dns_label(n) => {
                return Err(ck.fail(
                    format!("{path}.name"),
                    format!("{n:?} is not a valid port name: {DNS_LABEL_RULE}"),
                ));
            }
            Some(n) if !names.insert(n.clone()) => {
                return Err(ck.fail(format!("{path}.name"), format!("Duplicate value: {n:?}")));
            }
            Some(_) => {}
        }
        let port = port_number(raw_port.port).map_err(|m| ck.fail(format!("{path}.port"), m))?;
        let protocol = raw_port.protocol.unwrap_or(Protocol::Tcp);
        if !seen.insert((port, protocol)) {
            return Err(ck.fail(
                path,
                format!("Duplicate value: port {port}/{protocol} is declared twice"),
            ));
        }
        if protocol == Protocol::Sctp {
            return Err(ck.fail(
                format!("{path}.protocol"),
                "Unsupported value: \"SCTP\": the lab load-balances TCP and UDP services only".to_owned(),
            ));
        }
        if raw_port.node_port.is_some_and(|n| n != 0) {
            return Err(ck.fail(
                format!("{path}.nodePort"),
                format!("may not be used when type is ClusterIP: {CLUSTER_IP_ONLY}"),
            ));
        }
        // The defaulting (absent, 0 or "": the service port) is the Kubernetes source's.
        let target = match raw_port.target_port {
            None => None,
            Some(IntOrString::Int(n)) => Some(K8sIntOrString::Int(
                i32::try_from(n).map_err(|_| ck.fail(format!("{path}.targetPort"), port_number(n).unwrap_err()))?,
            )),
            Some(IntOrString::Str(s)) => {
                if !s.is_empty() {
                    check_port_name(&s).map_err(|m| ck.fail(format!("{path}.targetPort"), m))?;
                }
                Some(K8sIntOrString::String(s))
            }
        };
        // The API server's defaulting: targetPort is the port when absent, 0 or "".
        let target_port = match translate::target_port(port, target.as_ref())
            .map_err(|m| ck.fail(format!("{path}.targetPort"), m))?
        {
            state::TargetPort::Number(n) => K8sIntOrString::Int(i32::from(n)),
            state::TargetPort::Name(n) => K8sIntOrString::String(n),
        };
        ports.push(core::ServicePort {
            name,
            port: i32::from(port),
            target_port: Some(target_port),
            protocol: Some(protocol.to_string()),
            ..core::ServicePort::default()
        });
    }

    Ok(Service {
        metadata: meta.object_meta(true),
        spec: Some(core::ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            cluster_ip: cluster_ip.map(|ip| ip.to_string()),
            selector: (!selector.is_empty()).then_some(selector),
            ports: Some(ports),
            ..core::ServiceSpec::default()
        }),
        status: None,
    })
}

pub(super) fn convert_policy(
    ck: &Checker,
    raw: RawDocument<RawPolicySpec>,
) -> Result<NetworkPolicy, ManifestError> {
    let meta = convert_meta(ck, raw.metadata, NameRule::Subdomain)?;
    let spec = raw.spec.unwrap_or_default();

    let pod_selector = match spec.pod_selector {
        Some(sel) => convert_selector(ck, "spec.podSelector", sel)?,
        None => LabelSelector::default(),
    };

    let mut ingress = Vec::new();
    for (i, rule) in spec.ingress.unwrap_or_default().into_iter().enumerate() {
        let path = format!("spec.ingress[{i}]");
        ingress.push(convert_rule(ck, &path, "from", rule.from, rule.ports)?);
    }
    let mut egress = Vec::new();
    for (i, rule) in spec.egress.unwrap_or_default().into_iter().enumerate() {
        let path = format!("spec.egress[{i}]");
        egress.push(convert_rule(ck, &path, "to", rule.to, rule.ports)?);
    }

    let given = spec.policy_types.unwrap_or_default();
    if given.len() > 2 {
        return Err(ck.fail(
            "spec.policyTypes",
            "may not specify more than two policyTypes",
        ));
    }
    let mut policy_types = Vec::new();
    for (i, text) in given.iter().enumerate() {
        policy_types.push(match text.as_str() {
            "Ingress" => PolicyType::Ingress,
            "Egress" => PolicyType::Egress,
            other => {
                return Err(ck.fail(
                    format!("spec.policyTypes[{i}]"),
                    format!("Unsupported value {other:?}: supported values are Ingress and Egress"),
                ));
            }
        });
    }
    // The API server's defaulting (Ingress always, Egress when there are egress rules), as the
    // Kubernetes source decides it.
    let policy_types = translate::default_policy_types(&policy_types, !egress.is_empty());

    let validated = model::NetworkPolicy {
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        pod_selector,
        policy_types,
        ingress,
        egress,
        origin: None,
    };
    let object = policy_object(meta.object_meta(true), &validated);
    // The object is what the lab stores and what the collector's translation reads: it must
    // read back as exactly what was validated here.
    match translate::network_policy(&object) {
        Ok(read) if read == validated => Ok(object),
        Ok(read) => Err(ck.fail("spec", format!("reads back as {read:?}, not as validated ({validated:?})"))),
        Err(e) => Err(ck.fail(e.field, e.message)),
    }
}

/// The API's object for a validated policy (policy types defaulted, as the API server stores
/// them).
fn policy_object(metadata: ObjectMeta, p: &model::NetworkPolicy) -> NetworkPolicy {
    let selector = |s: &LabelSelector| meta::LabelSelector {
        match_labels: (!s.match_labels.is_empty()).then(|| s.match_labels.clone()),
        match_expressions: (!s.match_expressions.is_empty()).then(|| {
            s.match_expressions
                .iter()
                .map(|r| meta::LabelSelectorRequirement {
                    key: r.key.clone(),
                    operator: r.operator.as_str().to_owned(),
                    values: (!r.values.is_empty()).then(|| r.values.clone()),
                })
                .collect()
        }),
    };
    let peers = |r: &Rule| -> Option<Vec<net::NetworkPolicyPeer>> {
        (!r.peers.is_empty()).then(|| {
            r.peers
                .iter()
                .map(|p| net::NetworkPolicyPeer {
                    pod_selector: p.pod_selector.as_ref().map(selector),
                    namespace_selector: p.namespace_selector.as_ref().map(selector),
                    ip_block: p.ip_block.as_ref().map(|b| net::IPBlock {
                        cidr: b.cidr.clone(),
                        except: (!b.except.is_empty()).then(|| b.except.clone()),
                    }),
                })
                .collect()
        })
    };
    let ports = |r: &Rule| -> Option<Vec<net::NetworkPolicyPort>> {
        (!r.ports.is_empty()).then(|| {
            r.ports
                .iter()
                .map(|p| net::NetworkPolicyPort {
                    protocol: Some(p.protocol.to_string()),
                    port: p.port.as_ref().map(|port| match port {
                        PortRef::Number(n) => K8sIntOrString::Int(i32::from(*n)),
                        PortRef::Name(n) => K8sIntOrString::String(n.clone()),
                    }),
                    end_port: p.end_port.map(i32::from),
                })
                .collect()
        })
    };
    NetworkPolicy {
        metadata,
        spec: Some(net::NetworkPolicySpec {
            pod_selector: Some(selector(&p.pod_selector)),
            policy_types: Some(p.policy_types.iter().map(|t| t.as_str().to_owned()).collect()),
            ingress: (!p.ingress.is_empty()).then(|| {
                p.ingress.iter().map(|r| net::NetworkPolicyIngressRule { from: peers(r), ports: ports(r) }).collect()
            }),
            egress: (!p.egress.is_empty()).then(|| {
                p.egress.iter().map(|r| net::NetworkPolicyEgressRule { to: peers(r), ports: ports(r) }).collect()
            }),
        }),
    }
}

pub(super) fn convert_rule(
    ck: &Checker,
    path: &str,
    peers_field: &str,
    raw_peers: Option<Vec<RawPeer>>,
    raw_ports: Option<Vec<RawPolicyPort>>,
) -> Result<Rule, ManifestError> {
    let mut peers = Vec::new();
    for (j, raw) in raw_peers.unwrap_or_default().into_iter().enumerate() {
        let peer_path = format!("{path}.{peers_field}[{j}]");
        peers.push(convert_peer(ck, &peer_path, raw)?);
    }
    let mut ports = Vec::new();
    for (j, raw) in raw_ports.unwrap_or_default().into_iter().enumerate() {
        let port_path = format!("{path}.ports[{j}]");
        ports.push(convert_policy_port(ck, &port_path, raw)?);
    }
    Ok(Rule { peers, ports })
}

pub(super) fn convert_peer(ck: &Checker, path: &str, raw: RawPeer) -> Result<Peer, ManifestError> {
    let pod_selector = raw
        .pod_selector
        .map(|s| convert_selector(ck, &format!("{path}.podSelector"), s))
        .transpose()?;
    let namespace_selector = raw
        .namespace_selector
        .map(|s| convert_selector(ck, &format!("{path}.namespaceSelector"), s))
        .transpose()?;
    let ip_block = raw
        .ip_block
        .map(|b| convert_ip_block(ck, &format!("{path}.ipBlock"), b))
        .transpose()?;
    let has_selector = pod_selector.is_some() || namespace_selector.is_some();
    if !has_selector && ip_block.is_none() {
        return Err(ck.fail(
            path,
            "Required value: a peer must have a podSelector, a namespaceSelector or an ipBlock \
             (omit `from`/`to` altogether to match everything)",
        ));
    }
    if has_selector && ip_block.is_some() {
        return Err(ck.fail(
            path,
            "Forbidden: a peer may not combine ipBlock with podSelector or namespaceSelector \
             (make them separate peers)",
        ));
    }
    Ok(Peer {
        pod_selector,
        namespace_selector,
        ip_block,
    })
}

pub(super) fn convert_ip_block(ck: &Checker, path: &str, raw: RawIpBlock) -> Result<IpBlock, ManifestError> {
    if raw.cidr.is_empty() {
        return Err(ck.fail(format!("{path}.cidr"), "Required value"));
    }
    let net = parse_cidr(&raw.cidr).map_err(|m| ck.fail(format!("{path}.cidr"), m))?;
    let mut except = Vec::new();
    for (k, text) in raw.except.unwrap_or_default().iter().enumerate() {
        let except_path = format!("{path}.except[{k}]");
        let inner = parse_cidr(text).map_err(|m| ck.fail(&except_path, m))?;
        let cidr = &raw.cidr;
        if inner.0.is_ipv4() != net.0.is_ipv4() {
            return Err(ck.fail(
                except_path,
                format!("{text} is not inside {cidr} (a different address family)"),
            ));
        }
        if !cidr_contains(net, inner.0) {
            return Err(ck.fail(except_path, format!("{text} is not inside {cidr}")));
        }
        if inner.1 <= net.1 {
            return Err(ck.fail(
                except_path,
                format!(
                    "{text} is not strictly inside {cidr}: an except must be smaller than the cidr"
                ),
            ));
        }
        except.push(format!("{}/{}", inner.0, inner.1));
    }
    Ok(IpBlock {
        cidr: format!("{}/{}", net.0, net.1),
        except,
    })
}

pub(super) fn convert_policy_port(
    ck: &Checker,
    path: &str,
    raw: RawPolicyPort,
) -> Result<PolicyPort, ManifestError> {
    let port = match raw.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(PortRef::Number(
            port_number(n).map_err(|m| ck.fail(format!("{path}.port"), m))?,
        )),
        Some(IntOrString::Str(s)) => {
            check_port_name(&s).map_err(|m| ck.fail(format!("{path}.port"), m))?;
            Some(PortRef::Name(s))
        }
    };
    let end_port = match (raw.end_port, &port) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(ck.fail(
                format!("{path}.endPort"),
                "may not be specified when port is not specified",
            ));
        }
        (Some(_), Some(PortRef::Name(name))) => {
            return Err(ck.fail(
                format!("{path}.endPort"),
                format!("may not be specified when port is a named port ({name:?})"),
            ));
        }
        (Some(end), Some(PortRef::Number(start))) => {
            let end16 = port_number(end).map_err(|m| ck.fail(format!("{path}.endPort"), m))?;
            if end16 < *start {
                return Err(ck.fail(
                    format!("{path}.endPort"),
                    format!(
                        "{end} is below port {start}: endPort must be greater than or equal to port"
                    ),
                ));
            }
            Some(end16)
        }
    };
    Ok(PolicyPort {
        protocol: raw.protocol.unwrap_or(Protocol::Tcp),
        port,
        end_port,
    })
}

pub(super) fn convert_selector(
    ck: &Checker,
    path: &str,
    raw: RawSelector,
) -> Result<LabelSelector, ManifestError> {
    let match_labels = strings(raw.match_labels);
    check_labels(ck, &format!("{path}.matchLabels"), &match_labels)?;
    let mut match_expressions = Vec::new();
    for (i, req) in raw
        .match_expressions
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let req_path = format!("{path}.matchExpressions[{i}]");
        check_label_key(&req.key).map_err(|m| ck.fail(format!("{req_path}.key"), m))?;
        let operator = match req.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return Err(ck.fail(
                    format!("{req_path}.operator"),
                    format!(
                        "{other:?} is not a valid selector operator: expected In, NotIn, Exists \
                         or DoesNotExist"
                    ),
                ));
            }
        };
        let values: Vec<String> = req
            .values
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.0)
            .collect();
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(ck.fail(
                    format!("{req_path}.values"),
                    format!(
                        "Required value: must be non-empty when operator is {}",
                        operator.as_str()
                    ),
                ));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(ck.fail(
                    format!("{req_path}.values"),
                    format!(
                        "Forbidden: must be empty when operator is {}",
                        operator.as_str()
                    ),
                ));
            }
            _ => {}
        }
        for (j, value) in values.iter().enumerate() {
            check_label_value(value).map_err(|m| ck.fail(format!("{req_path}.values[{j}]"), m))?;
        }
        match_expressions.push(Requirement {
            key: req.key,
            operator,
            values,
        });
    }
    Ok(LabelSelector {
        match_labels,
        match_expressions,
    })
}

// ---------------------------------------------------------------------------------------------
// Field formats (as Kubernetes' apimachinery validation defines them)
// ---------------------------------------------------------------------------------------------

pub(super) const DNS_LABEL_RULE: &str = "a lowercase RFC 1123 label: at most 63 characters, lowercase \
     letters, digits and '-', starting and ending with a letter or digit";
pub(super) const DNS_SUBDOMAIN_RULE: &str = "a lowercase RFC 1123 subdomain: at most 253 characters, \
     dot-separated parts of lowercase letters, digits and '-', each starting and ending with a \
     letter or digit";
pub(super) const DNS_1035_RULE: &str = "an RFC 1035 label: at most 63 characters, lowercase letters, \
     digits and '-', starting with a letter and ending with a letter or digit";

pub(super) fn check_label_key(key: &str) -> Result<(), String> {
    if sightline_flow::k8s_names::is_label_key(key) {
        Ok(())
    } else {
        Err(format!(
            "{key:?} is not a valid label key: an optional DNS subdomain prefix and '/', then a \
             name of at most 63 characters (letters, digits, '-', '_', '.') starting and ending \
             with a letter or digit"
        ))
    }
}

pub(super) fn check_label_value(value: &str) -> Result<(), String> {
    if sightline_flow::k8s_names::is_label_value(value) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid label value: empty, or at most 63 characters (letters, \
             digits, '-', '_', '.') starting and ending with a letter or digit"
        ))
    }
}

/// An IANA_SVC_NAME: at most 15 characters, `[-a-z0-9]`, at least one letter, no leading,
/// trailing or double '-'.
pub(super) fn check_port_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let valid = !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid port name: at most 15 characters of lowercase letters, \
             digits and '-', with at least one letter and no leading, trailing or double '-'"
        ))
    }
}

pub(super) fn port_number(n: i64) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!(
            "{n} is not a valid port number: must be between 1 and 65535"
        )),
    }
}
