//! What a request asks to do, as RBAC sees it: Kubernetes' `RequestInfo` (verb, API group,
//! namespace, resource, subresource, name), or a non-resource path. Parsed from the URL alone,
//! the way kube-apiserver's `RequestInfoFactory` does, so unknown resources are authorized
//! (and then answered 404) like known ones.

use http::Method;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// Whether this is a request on an API resource (else a non-resource URL).
    pub resource_request: bool,
    pub path: String,
    pub verb: String,
    pub api_group: String,
    pub api_version: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

impl RequestInfo {
    /// `resource/subresource`, or the resource alone.
    pub fn resource_and_subresource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// Subresources of a namespace that stay on the namespace (not a resource inside it).
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

pub fn parse(method: &Method, path: &str, query: Option<&str>) -> RequestInfo {
    let non_resource = || RequestInfo {
        resource_request: false,
        path: path.to_string(),
        verb: method.as_str().to_ascii_lowercase(),
        ..RequestInfo::default()
    };
    let mut parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if parts.len() < 3 {
        return non_resource();
    }
    let prefix = parts.remove(0);
    let mut info = RequestInfo {
        resource_request: true,
        path: path.to_string(),
        ..RequestInfo::default()
    };
    match prefix {
        "api" => {}
        "apis" => {
            if parts.len() < 3 {
                return non_resource();
            }
            info.api_group = parts.remove(0).to_string();
        }
        _ => return non_resource(),
    }
    info.api_version = parts.remove(0).to_string();
    if parts.first() == Some(&"watch") || parts.first() == Some(&"proxy") {
        if parts.len() < 2 {
            return non_resource();
        }
        info.verb = parts.remove(0).to_string();
    } else {
        info.verb = match *method {
            Method::POST => "create",
            Method::GET | Method::HEAD => "get",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "",
        }
        .to_string();
    }
    if parts.first() == Some(&"namespaces") {
        if let Some(namespace) = parts.get(1) {
            info.namespace = namespace.to_string();
            if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2]) {
                parts.drain(..2);
            }
        }
    }
    if parts.len() >= 3 && info.verb != "proxy" {
        info.subresource = parts[2].to_string();
    }
    if parts.len() >= 2 {
        info.name = parts[1].to_string();
    }
    if let Some(resource) = parts.first() {
        info.resource = resource.to_string();
    }
    if info.name.is_empty() && info.verb == "get" {
        let pairs = || url::form_urlencoded::parse(query.unwrap_or("").as_bytes());
        let watch = pairs().any(|(k, v)| k == "watch" && (v == "true" || v == "1"));
        info.verb = if watch { "watch" } else { "list" }.to_string();
        // A list or watch of one name by field selector is authorized on that name.
        if let Some((_, selector)) = pairs().find(|(k, _)| k == "fieldSelector") {
            if let Some(name) = selector.strip_prefix("metadata.name=") {
                if !name.is_empty() && !name.contains([',', '/', '=', '!']) {
                    info.name = name.to_string();
                }
            }
        }
    }
    if info.name.is_empty() && info.verb == "delete" {
        info.verb = "deletecollection".to_string();
    }
    // A WebSocket into a pod opens with a GET, yet it runs a command or reaches a port: it
    // needs `create` on the subresource, as with Kubernetes'
    // AuthorizePodWebsocketUpgradeCreatePermission (`get` alone must not open a shell).
    let connects = matches!(info.subresource.as_str(), "exec" | "attach" | "portforward");
    if info.resource == "pods" && connects && info.verb == "get" {
        info.verb = "create".to_string();
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(
        method: Method,
        path: &str,
        query: Option<&str>,
    ) -> (String, String, String, String, String, String) {
        let i = parse(&method, path, query);
        assert!(i.resource_request, "{path}");
        (
            i.verb,
            i.api_group,
            i.namespace,
            i.resource,
            i.subresource,
            i.name,
        )
    }

    fn t(parts: [&str; 6]) -> (String, String, String, String, String, String) {
        let [a, b, c, d, e, f] = parts.map(str::to_string);
        (a, b, c, d, e, f)
    }

    #[test]
    fn resource_requests_as_kube_apiserver_reads_them() {
        let cases = [
            (
                Method::GET,
                "/api/v1/pods",
                None,
                ["list", "", "", "pods", "", ""],
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a/pods",
                Some("watch=true"),
                ["watch", "", "a", "pods", "", ""],
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a/pods",
                Some("fieldSelector=metadata.name%3Dx"),
                ["list", "", "a", "pods", "", "x"],
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a/pods/x/log",
                None,
                ["get", "", "a", "pods", "log", "x"],
            ),
            (
                Method::POST,
                "/api/v1/namespaces/a/pods",
                None,
                ["create", "", "a", "pods", "", ""],
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/a/pods",
                None,
                ["deletecollection", "", "a", "pods", "", ""],
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/a/pods/x",
                None,
                ["delete", "", "a", "pods", "", "x"],
            ),
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/a/deployments/d/scale",
                None,
                ["patch", "apps", "a", "deployments", "scale", "d"],
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a",
                None,
                ["get", "", "a", "namespaces", "", "a"],
            ),
            (
                Method::PUT,
                "/api/v1/namespaces/a/finalize",
                None,
                ["update", "", "a", "namespaces", "finalize", "a"],
            ),
            (
                Method::GET,
                "/api/v1/namespaces",
                None,
                ["list", "", "", "namespaces", "", ""],
            ),
            (
                Method::GET,
                "/api/v1/nodes/n",
                None,
                ["get", "", "", "nodes", "", "n"],
            ),
            (
                Method::GET,
                "/api/v1/watch/namespaces/a/pods",
                None,
                ["watch", "", "a", "pods", "", ""],
            ),
            (
                Method::POST,
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                None,
                [
                    "create",
                    "authorization.k8s.io",
                    "",
                    "selfsubjectaccessreviews",
                    "",
                    "",
                ],
            ),
            (
                Method::GET,
                "/apis/example.com/v1/namespaces/a/widgets/w",
                None,
                ["get", "example.com", "a", "widgets", "", "w"],
            ),
        ];
        for (method, path, query, expected) in cases {
            assert_eq!(info(method, path, query), t(expected), "{path}");
        }
    }

    #[test]
    fn other_paths_are_non_resource_urls() {
        for path in [
            "/version",
            "/healthz",
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/openapi/v3",
            "/shoal/v1/modules/x",
            "/",
        ] {
            let i = parse(&Method::GET, path, None);
            assert!(!i.resource_request, "{path}");
            assert_eq!(i.verb, "get");
            assert_eq!(i.path, path);
        }
        assert_eq!(parse(&Method::POST, "/shoal/v1/modules", None).verb, "post");
        // Opening a WebSocket into a pod is a create of the subresource.
        let forward = parse(
            &Method::GET,
            "/api/v1/namespaces/a/pods/p/portforward",
            Some("ports=80"),
        );
        assert_eq!(
            (forward.verb.as_str(), forward.resource_and_subresource()),
            ("create", "pods/portforward".to_string())
        );
    }
}
