//! Kubernetes' rules for names and labels (apimachinery's validation):
//! the one implementation the lab's manifests, the relay's namespace
//! policy and the lab's own names use.

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?` without a length limit.
fn is_label_part(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty() && b.first().is_some_and(ok) && b.last().is_some_and(ok) && b.iter().all(|c| ok(c) || *c == b'-')
}

/// An RFC 1123 label (namespaces, most object names): at most 63
/// characters, lowercase letters, digits and '-', starting and ending with
/// a letter or digit.
#[must_use]
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_label_part(s)
}

/// An RFC 1123 subdomain (pods, nodes, policies): RFC 1123 labels joined
/// by '.', at most 253 characters.
#[must_use]
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label_part)
}

/// An RFC 1035 label (services): an RFC 1123 label starting with a letter.
#[must_use]
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns_label(s) && s.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters.
fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_alphanumeric();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(ok)
        && b.last().is_some_and(ok)
        && b.iter().all(|c| ok(c) || matches!(c, b'-' | b'_' | b'.'))
}

/// A label key: an optional DNS subdomain prefix and '/', then a name of at
/// most 63 characters (letters, digits, '-', '_', '.') starting and ending
/// with a letter or digit.
#[must_use]
pub fn is_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_name_part(name),
        None => is_name_part(key),
    }
}

/// A label value: empty, or a name part (as in a key).
#[must_use]
pub fn is_label_value(value: &str) -> bool {
    value.is_empty() || is_name_part(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kubernetes_rules() {
        assert!(is_dns_label("kube-system") && is_dns_label("a") && is_dns_label(&"a".repeat(63)));
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
        assert!(is_dns_subdomain("web-1.example") && !is_dns_subdomain("a..b") && !is_dns_subdomain(&"a.".repeat(127)));
        assert!(is_dns1035_label("web") && !is_dns1035_label("1web"));
        assert!(is_label_key("app") && is_label_key("app.kubernetes.io/name") && is_label_key("A_b.c"));
        for bad in ["", "/x", "a/", "-a", "a/b/c", "Ex.com/x"] {
            assert!(!is_label_key(bad), "{bad:?}");
        }
        assert!(is_label_value("") && is_label_value("v1.2_x") && !is_label_value("-v") && !is_label_value(&"v".repeat(64)));
    }
}
