//! networking.k8s.io/v1 Ingress rules: which Service backend a request's host and path
//! choose. Pure functions over the Ingresses the table holds; the ingress listener asks.
//!
//! Precedence, as Kubernetes ingress controllers share it: an exact host beats a wildcard
//! host (`*.example.com`, one label deep), which beats a rule without host; then the longest
//! matching path wins, Exact before Prefix at equal length. A Prefix matches whole path
//! elements (`/app` matches `/app` and `/app/x`, not `/apple`); ImplementationSpecific is
//! read as Prefix. When no rule matches, an Ingress's `defaultBackend` serves.
//! `ingressClassName` is not looked at: Shoal's ingress serves every Ingress.

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};

/// The Service an Ingress chose, and which of its ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressTarget {
    pub namespace: String,
    pub service: String,
    pub port: ServicePort,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServicePort {
    Number(u16),
    Name(String),
}

/// The backend for a request to `host` (without port) and `path` (without query).
pub fn choose<'a>(
    ingresses: impl IntoIterator<Item = &'a Ingress>,
    host: &str,
    path: &str,
) -> Option<IngressTarget> {
    // (host rank, path length, exact) of the best match so far.
    let mut best: Option<((u8, usize, bool), IngressTarget)> = None;
    let mut default = None;
    for ingress in ingresses {
        let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
        let Some(spec) = ingress.spec.as_ref() else {
            continue;
        };
        for rule in spec.rules.iter().flatten() {
            let Some(host_rank) = host_rank(rule.host.as_deref(), host) else {
                continue;
            };
            for candidate in rule.http.iter().flat_map(|h| &h.paths) {
                let wanted = candidate.path.as_deref().unwrap_or("/");
                let exact = candidate.path_type == "Exact";
                let matches = if exact {
                    wanted == path
                } else {
                    prefix_matches(wanted, path)
                };
                let rank = (host_rank, wanted.len(), exact);
                if matches && best.as_ref().is_none_or(|(r, _)| rank > *r) {
                    if let Some(target) = target(&namespace, &candidate.backend) {
                        best = Some((rank, target));
                    }
                }
            }
        }
        if default.is_none() {
            default = spec
                .default_backend
                .as_ref()
                .and_then(|b| target(&namespace, b));
        }
    }
    best.map(|(_, target)| target).or(default)
}

/// 2 for an exact host, 1 for a matching wildcard, 0 for a rule without host; `None` when
/// the rule's host does not match.
fn host_rank(rule: Option<&str>, host: &str) -> Option<u8> {
    match rule {
        None | Some("") => Some(0),
        Some(rule) if rule.eq_ignore_ascii_case(host) => Some(2),
        Some(rule) => {
            let suffix = rule.strip_prefix("*.")?;
            let (first, rest) = host.split_once('.')?;
            (!first.is_empty() && rest.eq_ignore_ascii_case(suffix)).then_some(1)
        }
    }
}

/// Whether `path` starts with the elements of `prefix` (a trailing `/` is ignored).
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn target(namespace: &str, backend: &IngressBackend) -> Option<IngressTarget> {
    let service = backend.service.as_ref()?;
    let port = service.port.as_ref()?;
    let port = match (port.number, &port.name) {
        (Some(n), _) => ServicePort::Number(u16::try_from(n).ok()?),
        (None, Some(name)) => ServicePort::Name(name.clone()),
        (None, None) => return None,
    };
    Some(IngressTarget {
        namespace: namespace.to_string(),
        service: service.name.clone(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(namespace: &str, spec: serde_json::Value) -> Ingress {
        serde_json::from_value(
            json!({"metadata": {"name": "i", "namespace": namespace}, "spec": spec}),
        )
        .unwrap()
    }

    fn path(path: &str, kind: &str, service: &str) -> serde_json::Value {
        json!({"path": path, "pathType": kind,
            "backend": {"service": {"name": service, "port": {"number": 80}}}})
    }

    #[test]
    fn hosts_and_paths_choose_backends() {
        let ingresses = [
            ingress(
                "shop",
                json!({"rules": [
                    {"host": "shop.example.com", "http": {"paths": [
                        path("/", "Prefix", "front"),
                        path("/api", "Prefix", "api"),
                        path("/api/health", "Exact", "health"),
                    ]}},
                    {"host": "*.example.com", "http": {"paths": [path("/", "Prefix", "wild")]}},
                ]}),
            ),
            ingress(
                "other",
                json!({"defaultBackend": {"service": {"name": "fallback", "port": {"name": "http"}}},
                    "rules": [{"http": {"paths": [path("/static", "ImplementationSpecific", "files")]}}]}),
            ),
        ];
        let check = |host: &str, path: &str, expected: Option<(&str, &str)>| {
            let chosen = choose(&ingresses, host, path);
            let got = chosen
                .as_ref()
                .map(|t| (t.namespace.as_str(), t.service.as_str()));
            assert_eq!(got, expected, "{host}{path}");
        };
        check("shop.example.com", "/", Some(("shop", "front")));
        check("shop.example.com", "/cart", Some(("shop", "front")));
        check("shop.example.com", "/api", Some(("shop", "api")));
        check("shop.example.com", "/api/orders", Some(("shop", "api")));
        check("shop.example.com", "/apiary", Some(("shop", "front")));
        check("shop.example.com", "/api/health", Some(("shop", "health")));
        check("shop.example.com", "/api/health/x", Some(("shop", "api")));
        check("SHOP.example.com", "/api", Some(("shop", "api")));
        check("blog.example.com", "/", Some(("shop", "wild")));
        check("a.b.example.com", "/", Some(("other", "fallback")));
        check("anything", "/static/app.js", Some(("other", "files")));
        check("anything", "/", Some(("other", "fallback")));
        assert_eq!(
            choose(&ingresses, "x", "/").unwrap().port,
            ServicePort::Name("http".into())
        );
        assert_eq!(choose(&ingresses[..1], "nowhere.org", "/"), None);
    }
}
