//! The lab's object store: applies or deletes a batch of objects
//! all-or-nothing.

use super::*;


// ---------------------------------------------------------------------------------------------
// The object store
// ---------------------------------------------------------------------------------------------

/// The lab's objects. Serializes (serde_json) with `namespaces` as a map by name and the
/// namespaced kinds as lists, and round-trips exactly. Stored objects have `origin: None`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectStore {
    /// By name; always contains `default`.
    pub namespaces: BTreeMap<String, Namespace>,
    /// By (namespace, name).
    #[serde(with = "keyed")]
    pub pods: BTreeMap<(String, String), Pod>,
    /// By (namespace, name).
    #[serde(with = "keyed")]
    pub services: BTreeMap<(String, String), Service>,
    /// NetworkPolicies by (namespace, name).
    #[serde(with = "keyed")]
    pub policies: BTreeMap<(String, String), NetworkPolicy>,
}

impl Default for ObjectStore {
    /// The same as [`ObjectStore::new`]: `default` exists.
    fn default() -> Self {
        Self::new()
    }
}

/// Maps keyed by (namespace, name) serialize as the list of their values.
mod keyed {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) trait Keyed {
        fn key(&self) -> (String, String);
    }

    pub(super) fn serialize<S: Serializer, T: Serialize>(
        map: &BTreeMap<(String, String), T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.values())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de> + Keyed>(
        deserializer: D,
    ) -> Result<BTreeMap<(String, String), T>, D::Error> {
        let items = Vec::<T>::deserialize(deserializer)?;
        Ok(items.into_iter().map(|item| (item.key(), item)).collect())
    }
}

impl keyed::Keyed for Pod {
    fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }
}

impl keyed::Keyed for Service {
    fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }
}

impl keyed::Keyed for NetworkPolicy {
    fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }
}

/// What happened to one object in an apply.
pub(super) enum Change {
    Created,
    Updated,
    Unchanged,
}

/// Inserts `value` under `key`, telling whether it was new, different or the same.
pub(super) fn upsert<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, key: K, value: V) -> Change {
    match map.get_mut(&key) {
        None => {
            map.insert(key, value);
            Change::Created
        }
        Some(old) if *old == value => Change::Unchanged,
        Some(old) => {
            *old = value;
            Change::Updated
        }
    }
}

impl ObjectStore {
    /// An empty lab: only the namespace `default`.
    pub fn new() -> Self {
        let mut labels = BTreeMap::new();
        labels.insert(
            NAMESPACE_NAME_LABEL.to_owned(),
            DEFAULT_NAMESPACE.to_owned(),
        );
        let mut namespaces = BTreeMap::new();
        namespaces.insert(
            DEFAULT_NAMESPACE.to_owned(),
            Namespace {
                name: DEFAULT_NAMESPACE.to_owned(),
                labels,
                origin: None,
            },
        );
        Self {
            namespaces,
            pods: BTreeMap::new(),
            services: BTreeMap::new(),
            policies: BTreeMap::new(),
        }
    }

    /// Creates or updates objects (as `kubectl apply`); reports each as created, updated or
    /// unchanged, in input order.
    ///
    /// The combined result is validated: a pod, service or policy in a namespace that neither
    /// exists nor is created by the same apply (anywhere in `objects`) is an error naming the
    /// document; the same (kind, namespace, name) twice in `objects` is an error naming both
    /// documents; changing an existing pod's `spec.nodeName` is an error, as is changing a
    /// service's requested clusterIP; two services requesting the same clusterIP is an error.
    /// Cluster IPs the lab allocates itself (for `cluster_ip: None`) are not known here.
    /// All-or-nothing: on error `self` is unchanged.
    pub fn apply(&mut self, objects: Vec<Object>) -> Result<ApplyReport, ManifestError> {
        check_duplicates(&objects)?;
        let created_namespaces: BTreeSet<String> = objects
            .iter()
            .filter_map(|o| match o {
                Object::Namespace(ns) => Some(ns.name.clone()),
                _ => None,
            })
            .collect();

        let mut next = self.clone();
        let mut report = ApplyReport::default();
        // Services with a requested cluster IP, for the collision check on the final state.
        let mut requested_ips: Vec<((String, String), Ipv4Addr, Location)> = Vec::new();

        for object in objects {
            let at = object.location();
            let entry = object.entry();
            let missing = object.namespace().filter(|ns| {
                !self.namespaces.contains_key(*ns) && !created_namespaces.contains(*ns)
            });
            if let Some(ns) = missing {
                return Err(ManifestError::Invalid {
                    at,
                    field: "metadata.namespace".to_owned(),
                    message: format!(
                        "namespace {ns:?} does not exist and is not created by this apply"
                    ),
                });
            }
            let change = match object {
                Object::Namespace(mut ns) => {
                    ns.origin = None;
                    ns.labels
                        .insert(NAMESPACE_NAME_LABEL.to_owned(), ns.name.clone());
                    upsert(&mut next.namespaces, ns.name.clone(), ns)
                }
                Object::Pod(mut pod) => {
                    pod.origin = None;
                    let key = (pod.namespace.clone(), pod.name.clone());
                    let moved = next
                        .pods
                        .get(&key)
                        .filter(|old| old.node_name != pod.node_name);
                    if let Some(old) = moved {
                        let show = |n: &Option<String>| {
                            n.as_deref()
                                .map_or_else(|| "unset".to_owned(), |n| format!("{n:?}"))
                        };
                        return Err(ManifestError::Invalid {
                            at,
                            field: "spec.nodeName".to_owned(),
                            message: format!(
                                "cannot change from {} to {}: delete the pod and create it again \
                                 to move it",
                                show(&old.node_name),
                                show(&pod.node_name)
                            ),
                        });
                    }
                    // Like Kubernetes, a pod's containers are immutable: only
                    // its labels (and other metadata) may change in place.
                    let reported = next.pods.get(&key).filter(|old| old.ports != pod.ports);
                    if reported.is_some() {
                        return Err(ManifestError::Invalid {
                            at,
                            field: "spec.containers[].ports".to_owned(),
                            message: "a pod's containers cannot change: delete the pod and create it \
                                      again"
                                .to_owned(),
                        });
                    }
                    upsert(&mut next.pods, key, pod)
                }
                Object::Service(mut svc) => {
                    svc.origin = None;
                    let key = (svc.namespace.clone(), svc.name.clone());
                    let old_ip = next.services.get(&key).and_then(|s| s.cluster_ip);
                    match (old_ip, svc.cluster_ip) {
                        (Some(old), Some(new)) if old != new => {
                            return Err(ManifestError::Invalid {
                                at,
                                field: "spec.clusterIP".to_owned(),
                                message: format!(
                                    "field is immutable: cannot change from {old} to {new}"
                                ),
                            });
                        }
                        _ => {}
                    }
                    if let Some(ip) = svc.cluster_ip {
                        requested_ips.push((key.clone(), ip, at));
                    }
                    upsert(&mut next.services, key, svc)
                }
                Object::NetworkPolicy(mut policy) => {
                    policy.origin = None;
                    let key = (policy.namespace.clone(), policy.name.clone());
                    upsert(&mut next.policies, key, policy)
                }
            };
            match change {
                Change::Created => report.created.push(entry),
                Change::Updated => report.updated.push(entry),
                Change::Unchanged => report.unchanged.push(entry),
            }
        }

        for (key, ip, at) in &requested_ips {
            let clash = next
                .services
                .iter()
                .find(|(other, svc)| *other != key && svc.cluster_ip == Some(*ip));
            if let Some(((ns, name), _)) = clash {
                let other_place = requested_ips
                    .iter()
                    .find(|(k, _, _)| k.0 == *ns && k.1 == *name)
                    .map(|(_, _, loc)| format!(" ({})", loc.place()))
                    .unwrap_or_default();
                return Err(ManifestError::Invalid {
                    at: at.clone(),
                    field: "spec.clusterIP".to_owned(),
                    message: format!(
                        "{ip} is already the cluster IP of Service {ns}/{name}{other_place}"
                    ),
                });
            }
        }

        *self = next;
        Ok(report)
    }

    /// Removes the named objects, matching kind, namespace and name (the rest of each object is
    /// ignored), as `kubectl delete -f`. Deleting a namespace deletes everything in it (reported
    /// after the objects named). Deleting `default` is an error; so is deleting an object the
    /// lab does not have (like kubectl without `--ignore-not-found`) — an object that is present
    /// may be named together with its namespace. All-or-nothing: on error `self` is unchanged.
    pub fn delete(&mut self, objects: &[Object]) -> Result<ApplyReport, ManifestError> {
        check_duplicates(objects)?;
        for object in objects {
            let exists = match object {
                Object::Namespace(ns) => {
                    if ns.name == DEFAULT_NAMESPACE {
                        return Err(ManifestError::Invalid {
                            at: object.location(),
                            field: "metadata.name".to_owned(),
                            message: "the namespace default cannot be deleted".to_owned(),
                        });
                    }
                    self.namespaces.contains_key(&ns.name)
                }
                Object::Pod(p) => self
                    .pods
                    .contains_key(&(p.namespace.clone(), p.name.clone())),
                Object::Service(s) => self
                    .services
                    .contains_key(&(s.namespace.clone(), s.name.clone())),
                Object::NetworkPolicy(p) => self
                    .policies
                    .contains_key(&(p.namespace.clone(), p.name.clone())),
            };
            if !exists {
                return Err(ManifestError::NotFound {
                    at: object.location(),
                });
            }
        }

        let mut next = self.clone();
        let mut report = ApplyReport::default();
        let mut gone_namespaces = Vec::new();
        for object in objects {
            match object {
                Object::Namespace(ns) => {
                    next.namespaces.remove(&ns.name);
                    gone_namespaces.push(ns.name.clone());
                }
                Object::Pod(p) => {
                    next.pods.remove(&(p.namespace.clone(), p.name.clone()));
                }
                Object::Service(s) => {
                    next.services.remove(&(s.namespace.clone(), s.name.clone()));
                }
                Object::NetworkPolicy(p) => {
                    next.policies.remove(&(p.namespace.clone(), p.name.clone()));
                }
            }
            report.deleted.push(object.entry());
        }
        for ns in &gone_namespaces {
            for (namespace, name) in remove_namespace(&mut next.pods, ns) {
                report.deleted.push(format!("pod/{namespace}/{name}"));
            }
            for (namespace, name) in remove_namespace(&mut next.services, ns) {
                report.deleted.push(format!("service/{namespace}/{name}"));
            }
            for (namespace, name) in remove_namespace(&mut next.policies, ns) {
                report
                    .deleted
                    .push(format!("networkpolicy/{namespace}/{name}"));
            }
        }

        *self = next;
        Ok(report)
    }
}

/// Removes every entry of namespace `ns`, returning their keys in order.
pub(super) fn remove_namespace<V>(map: &mut BTreeMap<(String, String), V>, ns: &str) -> Vec<(String, String)> {
    let keys: Vec<(String, String)> = map.keys().filter(|k| k.0 == ns).cloned().collect();
    for key in &keys {
        map.remove(key);
    }
    keys
}

/// The same (kind, namespace, name) twice in one batch is an error naming both places.
pub(super) fn check_duplicates(objects: &[Object]) -> Result<(), ManifestError> {
    let mut seen: BTreeMap<(&'static str, String, String), &Object> = BTreeMap::new();
    for object in objects {
        if let Some(first) = seen.insert(object.key(), object) {
            return Err(ManifestError::Duplicate {
                at: object.location(),
                first: Box::new(first.location()),
            });
        }
    }
    Ok(())
}
