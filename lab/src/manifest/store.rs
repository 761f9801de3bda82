//! The lab's object store: applies or deletes a batch of objects
//! all-or-nothing.

use super::*;


// ---------------------------------------------------------------------------------------------
// The object store
// ---------------------------------------------------------------------------------------------

/// The lab's objects, as the API's types. Serializes (serde_json) with `namespaces` as a map by
/// name and the namespaced kinds as lists, and round-trips exactly.
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

impl<T: Named> keyed::Keyed for T {
    fn key(&self) -> (String, String) {
        (self.namespace().to_owned(), self.name().to_owned())
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
                metadata: ObjectMeta {
                    name: Some(DEFAULT_NAMESPACE.to_owned()),
                    labels: Some(labels),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
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
    /// Cluster IPs the lab allocates itself (for no `spec.clusterIP`) are not known here.
    /// All-or-nothing: on error `self` is unchanged.
    pub fn apply(&mut self, objects: Vec<Document>) -> Result<ApplyReport, ManifestError> {
        check_duplicates(&objects)?;
        let created_namespaces: BTreeSet<String> = objects
            .iter()
            .filter_map(|d| match &d.object {
                Object::Namespace(ns) => Some(ns.name().to_owned()),
                _ => None,
            })
            .collect();

        let mut next = self.clone();
        let mut report = ApplyReport::default();
        // Services with a requested cluster IP, for the collision check on the final state.
        let mut requested_ips: Vec<((String, String), Ipv4Addr, Location)> = Vec::new();

        for document in objects {
            let at = document.location();
            let object = document.object;
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
                    let name = ns.name().to_owned();
                    ns.metadata.labels.get_or_insert_default().insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
                    upsert(&mut next.namespaces, name, ns)
                }
                Object::Pod(pod) => {
                    let key = (pod.namespace().to_owned(), pod.name().to_owned());
                    let moved = next
                        .pods
                        .get(&key)
                        .filter(|old| node_name(old) != node_name(&pod));
                    if let Some(old) = moved {
                        let show = |n: Option<&str>| {
                            n.map_or_else(|| "unset".to_owned(), |n| format!("{n:?}"))
                        };
                        return Err(ManifestError::Invalid {
                            at,
                            field: "spec.nodeName".to_owned(),
                            message: format!(
                                "cannot change from {} to {}: delete the pod and create it again \
                                 to move it",
                                show(node_name(old)),
                                show(node_name(&pod))
                            ),
                        });
                    }
                    // Like Kubernetes, a pod's containers are immutable: only
                    // its labels (and other metadata) may change in place.
                    let reported = next.pods.get(&key).filter(|old| container_ports(old) != container_ports(&pod));
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
                Object::Service(svc) => {
                    let key = (svc.namespace().to_owned(), svc.name().to_owned());
                    let old_ip = next.services.get(&key).and_then(requested_cluster_ip);
                    match (old_ip, requested_cluster_ip(&svc)) {
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
                    if let Some(ip) = requested_cluster_ip(&svc) {
                        requested_ips.push((key.clone(), ip, at));
                    }
                    upsert(&mut next.services, key, svc)
                }
                Object::NetworkPolicy(policy) => {
                    let key = (policy.namespace().to_owned(), policy.name().to_owned());
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
                .find(|(other, svc)| *other != key && requested_cluster_ip(svc) == Some(*ip));
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
    pub fn delete(&mut self, objects: &[Document]) -> Result<ApplyReport, ManifestError> {
        check_duplicates(objects)?;
        for document in objects {
            let key = |o: &dyn Named| (o.namespace().to_owned(), o.name().to_owned());
            let exists = match &document.object {
                Object::Namespace(ns) => {
                    if ns.name() == DEFAULT_NAMESPACE {
                        return Err(ManifestError::Invalid {
                            at: document.location(),
                            field: "metadata.name".to_owned(),
                            message: "the namespace default cannot be deleted".to_owned(),
                        });
                    }
                    self.namespaces.contains_key(ns.name())
                }
                Object::Pod(p) => self.pods.contains_key(&key(p)),
                Object::Service(s) => self.services.contains_key(&key(s)),
                Object::NetworkPolicy(p) => self.policies.contains_key(&key(p)),
            };
            if !exists {
                return Err(ManifestError::NotFound {
                    at: document.location(),
                });
            }
        }

        let mut next = self.clone();
        let mut report = ApplyReport::default();
        let mut gone_namespaces = Vec::new();
        for document in objects {
            let object = &document.object;
            let key = (object.namespace().unwrap_or_default().to_owned(), object.name().to_owned());
            match object {
                Object::Namespace(ns) => {
                    next.namespaces.remove(ns.name());
                    gone_namespaces.push(ns.name().to_owned());
                }
                Object::Pod(_) => {
                    next.pods.remove(&key);
                }
                Object::Service(_) => {
                    next.services.remove(&key);
                }
                Object::NetworkPolicy(_) => {
                    next.policies.remove(&key);
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
pub(super) fn check_duplicates(objects: &[Document]) -> Result<(), ManifestError> {
    let mut seen: BTreeMap<(&'static str, String, String), &Document> = BTreeMap::new();
    for object in objects {
        if let Some(first) = seen.insert(object.object.key(), object) {
            return Err(ManifestError::Duplicate {
                at: object.location(),
                first: Box::new(first.location()),
            });
        }
    }
    Ok(())
}
