//! Where objects live in etcd: Kubernetes' key layout under a prefix (`/registry` by
//! default, kube-apiserver's `--etcd-prefix`).
//!
//! `<prefix>/<resource>/<namespace>/<name>` for the core group, and
//! `<prefix>/<group>/<resource>/<namespace>/<name>` for the others; a cluster-scoped object
//! has no namespace segment (`/registry/nodes/node-0`,
//! `/registry/rbac.authorization.k8s.io/clusterroles/admin`). Module blobs live beside the
//! objects, under `<prefix>-blobs/`, outside the range the watch cache follows.
//!
//! The layout alone is ambiguous (`/registry/a/b/c` is a core namespaced object or a grouped
//! cluster-scoped one), so a key is read back with the object's own `metadata.name` and
//! `metadata.namespace`: whatever precedes them is the resource.

use serde_json::Value;

use crate::store::ObjectKey;

/// The key layout under one prefix.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The prefix without a trailing `/`.
    prefix: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// The range every object lives in (what the watch cache follows).
    pub fn objects(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// The etcd key of an object.
    pub fn key(&self, key: &ObjectKey) -> String {
        let mut path = self.resource_path(&key.resource);
        if !key.namespace.is_empty() {
            path.push_str(&key.namespace);
            path.push('/');
        }
        path.push_str(&key.name);
        path
    }

    /// The range a list of `resource` (in `namespace`) reads: every key starts with it.
    pub fn list_prefix(&self, resource: &str, namespace: Option<&str>) -> String {
        let mut path = self.resource_path(resource);
        if let Some(namespace) = namespace {
            path.push_str(namespace);
            path.push('/');
        }
        path
    }

    /// `<prefix>/[<group>/]<plural>/` for a store resource name (`pods`, `deployments.apps`).
    fn resource_path(&self, resource: &str) -> String {
        match resource.split_once('.') {
            Some((plural, group)) => format!("{}/{group}/{plural}/", self.prefix),
            None => format!("{}/{resource}/", self.prefix),
        }
    }

    /// Which object an etcd key holds, read with the object's own name and namespace; `None`
    /// when the key and the object do not agree (a value some other program wrote).
    pub fn object_key(&self, etcd_key: &str, object: &Value) -> Option<ObjectKey> {
        let meta = object.get("metadata")?;
        let name = meta.get("name")?.as_str()?;
        let namespace = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
        let rest = etcd_key.strip_prefix(&self.objects())?;
        let rest = rest.strip_suffix(name)?.strip_suffix('/')?;
        let resource_path = if namespace.is_empty() {
            rest
        } else {
            rest.strip_suffix(namespace)?.strip_suffix('/')?
        };
        let resource = match resource_path.split_once('/') {
            Some((group, plural)) if !plural.contains('/') => format!("{plural}.{group}"),
            Some(_) => return None,
            None => resource_path.to_string(),
        };
        (!resource.is_empty()).then(|| ObjectKey::new(&resource, namespace, name))
    }

    /// The objects an etcd key may hold, from the key alone (a deleted key has no object to
    /// read it with): `<r>/<a>/<b>` is a core object `b` in namespace `a`, or a cluster-scoped
    /// one of resource `a` in group `r`.
    pub fn candidates(&self, etcd_key: &str) -> Vec<ObjectKey> {
        let Some(rest) = etcd_key.strip_prefix(&self.objects()) else {
            return Vec::new();
        };
        match rest.split('/').collect::<Vec<_>>()[..] {
            [plural, name] => vec![ObjectKey::new(plural, "", name)],
            [first, second, name] => vec![
                ObjectKey::new(first, second, name),
                ObjectKey::new(&format!("{second}.{first}"), "", name),
            ],
            [group, plural, namespace, name] => {
                vec![ObjectKey::new(
                    &format!("{plural}.{group}"),
                    namespace,
                    name,
                )]
            }
            _ => Vec::new(),
        }
    }

    /// The key of a blob's manifest (its chunk count); chunks follow it as `<key>/<index>`.
    pub fn blob(&self, digest: &str) -> String {
        format!("{}-blobs/{digest}", self.prefix)
    }

    /// The key of a blob's chunk `index` (zero-padded, so chunks sort in order).
    pub fn blob_chunk(&self, digest: &str, index: usize) -> String {
        format!("{}/{index:08}", self.blob(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(namespace: Option<&str>, name: &str) -> Value {
        match namespace {
            Some(ns) => json!({"metadata": {"name": name, "namespace": ns}}),
            None => json!({"metadata": {"name": name}}),
        }
    }

    #[test]
    fn keys_follow_kubernetes_and_read_back() {
        let layout = Layout::new("/registry");
        for (key, etcd_key, namespace) in [
            (
                ObjectKey::new("pods", "default", "web"),
                "/registry/pods/default/web",
                Some("default"),
            ),
            (
                ObjectKey::new("nodes", "", "node-0"),
                "/registry/nodes/node-0",
                None,
            ),
            (
                ObjectKey::new("deployments.apps", "team", "api"),
                "/registry/apps/deployments/team/api",
                Some("team"),
            ),
            (
                ObjectKey::new("clusterroles.rbac.authorization.k8s.io", "", "admin"),
                "/registry/rbac.authorization.k8s.io/clusterroles/admin",
                None,
            ),
        ] {
            assert_eq!(layout.key(&key), etcd_key);
            assert!(layout.candidates(etcd_key).contains(&key), "{etcd_key}");
            let read = layout.object_key(etcd_key, &object(namespace, &key.name));
            assert_eq!(read, Some(key));
        }
    }

    #[test]
    fn keys_that_do_not_match_their_object_are_not_read() {
        let layout = Layout::new("/registry/");
        // Another name, another namespace, no metadata, another prefix, too many segments.
        for (etcd_key, object) in [
            ("/registry/pods/default/web", object(Some("default"), "api")),
            ("/registry/pods/default/web", object(Some("other"), "web")),
            ("/registry/pods/default/web", json!({"spec": {}})),
            (
                "/elsewhere/pods/default/web",
                object(Some("default"), "web"),
            ),
            (
                "/registry/a/b/c/default/web",
                object(Some("default"), "web"),
            ),
            ("/registry/web", object(None, "web")),
        ] {
            assert_eq!(layout.object_key(etcd_key, &object), None, "{etcd_key}");
        }
    }
}
