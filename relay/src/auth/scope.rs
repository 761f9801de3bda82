//! Authorization by namespace: which namespaces' flows a token may read,
//! from its `roles` and `groups` claims and a mapping file
//! (`--auth-namespaces-file`, YAML or JSON):
//!
//! ```yaml
//! roles:                       # app roles (Entra ID) or role names
//!   Sightline.Flows.All: ["*"] # "*": every namespace
//!   Sightline.Flows.Shop: [shop, shop-db]
//! groups:                      # group object ids or names
//!   0b2f…-…: [payments]
//! ```
//!
//! A token may read the union of what its roles and groups map to; one that
//! matches nothing reads nothing. Without the file every valid token reads
//! everything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use sightline_proto::flow::Flow;

use super::jwt::Claims;

/// What a request may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything (no authorization configured, or a `*` mapping).
    All,
    /// Flows with a source or destination in these namespaces, and these
    /// namespaces in GetNamespaces.
    Namespaces(BTreeSet<String>),
}

impl Scope {
    /// Whether a flow may be shown: its source or its destination is in
    /// an allowed namespace.
    #[must_use]
    pub fn allows_flow(&self, flow: &Flow) -> bool {
        match self {
            Self::All => true,
            Self::Namespaces(set) => [&flow.source, &flow.destination]
                .into_iter()
                .flatten()
                .any(|ep| !ep.namespace.is_empty() && set.contains(&ep.namespace)),
        }
    }

    /// Whether a namespace may be listed.
    #[must_use]
    pub fn allows_namespace(&self, namespace: &str) -> bool {
        match self {
            Self::All => true,
            Self::Namespaces(set) => set.contains(namespace),
        }
    }

    /// Whether everything is allowed.
    #[must_use]
    pub fn is_all(&self) -> bool {
        matches!(self, Self::All)
    }
}

/// The mapping file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NamespacePolicy {
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
}

/// Why the mapping file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: std::path::PathBuf, reason: String },
}

impl NamespacePolicy {
    /// Reads and checks the mapping file.
    ///
    /// # Errors
    ///
    /// [`PolicyError`] naming the file and what is wrong in it.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|reason| PolicyError::Parse { path: path.to_owned(), reason })
    }

    /// Parses a mapping (YAML or JSON).
    ///
    /// # Errors
    ///
    /// What is wrong, with its place.
    pub fn parse(text: &str) -> Result<Self, String> {
        let policy: Self = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        for (kind, map) in [("roles", &policy.roles), ("groups", &policy.groups)] {
            for (name, namespaces) in map {
                if let Some(bad) = namespaces.iter().find(|n| n.as_str() != "*" && !valid_namespace(n)) {
                    return Err(format!("{kind}.{name}: {bad:?} is not a namespace name (or \"*\")"));
                }
            }
        }
        Ok(policy)
    }

    /// The scope of a token with these claims.
    #[must_use]
    pub fn scope(&self, claims: &Claims) -> Scope {
        let mut set = BTreeSet::new();
        let granted = claims
            .roles
            .values()
            .into_iter()
            .filter_map(|r| self.roles.get(r))
            .chain(claims.groups.values().into_iter().filter_map(|g| self.groups.get(g)));
        for namespaces in granted {
            for n in namespaces {
                if n == "*" {
                    return Scope::All;
                }
                set.insert(n.clone());
            }
        }
        Scope::Namespaces(set)
    }
}

/// A Kubernetes namespace name (RFC 1123 label).
fn valid_namespace(n: &str) -> bool {
    sightline_flow::k8s_names::is_dns_label(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::OneOrMany;
    use sightline_proto::flow::Endpoint;

    fn flow(src: &str, dst: &str) -> Flow {
        Flow {
            source: Some(Endpoint { namespace: src.into(), ..Endpoint::default() }),
            destination: Some(Endpoint { namespace: dst.into(), ..Endpoint::default() }),
            ..Flow::default()
        }
    }

    const POLICY: &str = "roles:\n  Flows.All: ['*']\n  Flows.Shop: [shop, shop-db]\ngroups:\n  g-payments: [payments]\n";

    #[test]
    fn roles_and_groups_map_to_namespaces() {
        let p = NamespacePolicy::parse(POLICY).expect("parses");
        let claims = |roles: &[&str], groups: &[&str]| Claims {
            roles: OneOrMany::Many(roles.iter().map(|s| (*s).to_owned()).collect()),
            groups: OneOrMany::Many(groups.iter().map(|s| (*s).to_owned()).collect()),
            ..Claims::default()
        };
        assert_eq!(p.scope(&claims(&["Flows.All"], &[])), Scope::All);
        let shop = p.scope(&claims(&["Flows.Shop", "unrelated"], &["g-payments"]));
        assert_eq!(shop, Scope::Namespaces(["payments", "shop", "shop-db"].into_iter().map(str::to_owned).collect()));
        assert_eq!(p.scope(&claims(&[], &[])), Scope::Namespaces(BTreeSet::new()));
        let single = Claims { roles: OneOrMany::One("Flows.Shop".into()), ..Claims::default() };
        assert!(p.scope(&single).allows_namespace("shop"));
    }

    #[test]
    fn flows_are_shown_when_either_end_is_allowed() {
        let scope = Scope::Namespaces(["shop".to_owned()].into());
        assert!(scope.allows_flow(&flow("shop", "db")));
        assert!(scope.allows_flow(&flow("web", "shop")));
        assert!(!scope.allows_flow(&flow("web", "db")));
        assert!(!scope.allows_flow(&flow("", "")), "world and host flows belong to no namespace");
        assert!(!scope.allows_flow(&Flow::default()));
        assert!(Scope::All.allows_flow(&flow("web", "db")));
        assert!(!Scope::Namespaces(BTreeSet::new()).allows_flow(&flow("shop", "shop")));
        assert!(scope.allows_namespace("shop") && !scope.allows_namespace("web"));
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(NamespacePolicy::parse("roles: {a: [Bad_Name]}").is_err());
        assert!(NamespacePolicy::parse("rolez: {}").is_err());
        assert!(NamespacePolicy::parse("roles: [1, 2]").is_err());
        assert_eq!(NamespacePolicy::parse("{}").expect("empty"), NamespacePolicy::default());
        let json = NamespacePolicy::parse(r#"{"groups": {"g": ["x"]}}"#).expect("JSON is YAML");
        assert_eq!(json.groups["g"], ["x"]);
    }
}
