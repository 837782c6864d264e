//! Parses resource URLs: `/api/v1/...` and `/apis/{group}/{version}/...`, optionally under
//! `namespaces/{ns}/`, naming a collection, an object, or an object's subresource.

use super::custom::CustomResources;
use crate::api::resources::{lookup, ResourceInfo};

#[derive(Debug, PartialEq, Eq)]
pub struct ResourcePath {
    pub resource: &'static ResourceInfo,
    /// The namespace in the URL, if the URL has one.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// What follows `proxy/` in a proxy URL (`pods/{name}/proxy/{rest}`).
    pub rest: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not a resource URL at all, or an unknown resource.
    NoRoute,
}

/// Parses `path`, looking resources up in the built-in table, then among `custom`'s.
pub fn parse(path: &str, custom: &CustomResources) -> Result<ResourcePath, PathError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(PathError::NoRoute),
    };
    // `namespaces/{ns}/{resource}...` names a namespaced resource, unless what follows the
    // namespace name is one of the Namespace's own subresources.
    let (namespace, rest) = match rest {
        ["namespaces", ns, resource, tail @ ..] if !matches!(*resource, "status" | "finalize") => {
            (Some(ns.to_string()), [&[*resource][..], tail].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let mut proxied = None;
    let (plural, name, subresource) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        [plural, name, "proxy", tail @ ..] => {
            proxied = Some(tail.join("/"));
            (*plural, Some(name.to_string()), Some("proxy".to_string()))
        }
        _ => return Err(PathError::NoRoute),
    };
    let resource = lookup(group, version, plural)
        .or_else(|| custom.lookup(group, version, plural))
        .ok_or(PathError::NoRoute)?;
    if namespace.is_some() && !resource.namespaced {
        return Err(PathError::NoRoute);
    }
    if let Some(sub) = &subresource {
        if !resource.has_subresource(sub) {
            return Err(PathError::NoRoute);
        }
    }
    let rest = match &subresource {
        Some(sub) if sub == "proxy" => Some(proxied.unwrap_or_default()),
        _ => None,
    };
    Ok(ResourcePath {
        resource,
        namespace,
        name,
        subresource,
        rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resource plural, namespace, name and subresource.
    type Parts<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>);

    fn check(path: &str, expected: Option<Parts>) {
        let parsed = parse(path, &CustomResources::default())
            .ok()
            .map(|p| (p.resource.plural, p.namespace, p.name, p.subresource));
        let expected = expected.map(|(r, ns, n, s)| {
            (
                r,
                ns.map(String::from),
                n.map(String::from),
                s.map(String::from),
            )
        });
        assert_eq!(parsed, expected, "{path}");
    }

    #[test]
    fn resource_paths() {
        check("/api/v1/pods", Some(("pods", None, None, None)));
        check("/api/v1/namespaces", Some(("namespaces", None, None, None)));
        check(
            "/api/v1/namespaces/default",
            Some(("namespaces", None, Some("default"), None)),
        );
        check(
            "/api/v1/namespaces/default/status",
            Some(("namespaces", None, Some("default"), Some("status"))),
        );
        check(
            "/api/v1/namespaces/default/pods",
            Some(("pods", Some("default"), None, None)),
        );
        check(
            "/api/v1/namespaces/default/pods/p1/log",
            Some(("pods", Some("default"), Some("p1"), Some("log"))),
        );
        check(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1",
            Some(("leases", Some("kube-node-lease"), Some("n1"), None)),
        );
        check(
            "/api/v1/namespaces/default/pods/p1:8080/proxy",
            Some(("pods", Some("default"), Some("p1:8080"), Some("proxy"))),
        );
        check(
            "/api/v1/namespaces/default/pods/p1/proxy/a/b",
            Some(("pods", Some("default"), Some("p1"), Some("proxy"))),
        );
        assert_eq!(
            parse(
                "/api/v1/namespaces/default/pods/p1/proxy/a/b",
                &CustomResources::default()
            )
            .unwrap()
            .rest
            .as_deref(),
            Some("a/b")
        );
        check("/api/v1/namespaces/default/nodes/n1", None);
        check("/api/v1/namespaces/default/pods/p1/nosuch", None);
        check("/api/v1/widgets", None);
        check("/healthz", None);
    }
}
