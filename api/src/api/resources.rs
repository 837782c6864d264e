//! The resources this API server serves: names, scope, kinds and subresources, as discovery,
//! OpenAPI, routing and the store key all need them. Adding a resource starts here.

/// One served resource type.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group, empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// Plural, lower-case name used in URLs (`pods`).
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources as (name, kind of their response, verbs).
    pub subresources: &'static [(&'static str, &'static str, &'static [&'static str])],
}

impl ResourceInfo {
    /// `v1` for core, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store's resource name: plural, qualified by the group outside core.
    pub fn store_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// How Kubernetes names this resource in messages: `pods`, `deployments.apps`.
    pub fn qualified_plural(&self) -> String {
        self.store_name()
    }

    /// The URL prefix of the group-version: `/api/v1` or `/apis/group/version`.
    pub fn group_version_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// The URL of one object: `/api/v1/namespaces/ns/pods/name`, `/api/v1/nodes/name`.
    pub fn item_path(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!(
                "{}/namespaces/{ns}/{}/{name}",
                self.group_version_path(),
                self.plural
            ),
            None => format!("{}/{}/{name}", self.group_version_path(), self.plural),
        }
    }

    pub fn has_subresource(&self, name: &str) -> bool {
        self.subresources.iter().any(|(sub, _, _)| *sub == name)
    }
}

pub const VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

pub static RESOURCES: &[ResourceInfo] = &[
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        subresources: &[
            ("status", "Namespace", &["get", "patch", "update"]),
            ("finalize", "Namespace", &["update"]),
        ],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        categories: &[],
        subresources: &[("status", "Node", &["get", "patch", "update"])],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        subresources: &[
            ("status", "Pod", &["get", "patch", "update"]),
            ("binding", "Binding", &["create"]),
            ("log", "Pod", &["get"]),
            (
                "proxy",
                "PodProxyOptions",
                &["create", "delete", "get", "patch", "update"],
            ),
            ("eviction", "Eviction", &["create"]),
        ],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        namespaced: true,
        short_names: &["cm"],
        categories: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "PersistentVolumeClaim",
        plural: "persistentvolumeclaims",
        singular: "persistentvolumeclaim",
        namespaced: true,
        short_names: &["pvc"],
        categories: &[],
        subresources: &[(
            "status",
            "PersistentVolumeClaim",
            &["get", "patch", "update"],
        )],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        singular: "service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        subresources: &[("status", "Service", &["get", "patch", "update"])],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        namespaced: true,
        short_names: &["ep"],
        categories: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "networking.k8s.io",
        version: "v1",
        kind: "Ingress",
        plural: "ingresses",
        singular: "ingress",
        namespaced: true,
        short_names: &["ing"],
        categories: &[],
        subresources: &[("status", "Ingress", &["get", "patch", "update"])],
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        namespaced: true,
        short_names: &["deploy"],
        categories: &["all"],
        subresources: &[
            ("status", "Deployment", &["get", "patch", "update"]),
            ("scale", "Scale", &["get", "patch", "update"]),
        ],
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        kind: "DaemonSet",
        plural: "daemonsets",
        singular: "daemonset",
        namespaced: true,
        short_names: &["ds"],
        categories: &["all"],
        subresources: &[("status", "DaemonSet", &["get", "patch", "update"])],
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        kind: "ReplicaSet",
        plural: "replicasets",
        singular: "replicaset",
        namespaced: true,
        short_names: &["rs"],
        categories: &["all"],
        subresources: &[
            ("status", "ReplicaSet", &["get", "patch", "update"]),
            ("scale", "Scale", &["get", "patch", "update"]),
        ],
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        kind: "StatefulSet",
        plural: "statefulsets",
        singular: "statefulset",
        namespaced: true,
        short_names: &["sts"],
        categories: &["all"],
        subresources: &[
            ("status", "StatefulSet", &["get", "patch", "update"]),
            ("scale", "Scale", &["get", "patch", "update"]),
        ],
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        kind: "ControllerRevision",
        plural: "controllerrevisions",
        singular: "controllerrevision",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "ReplicationController",
        plural: "replicationcontrollers",
        singular: "replicationcontroller",
        namespaced: true,
        short_names: &["rc"],
        categories: &["all"],
        subresources: &[
            (
                "status",
                "ReplicationController",
                &["get", "patch", "update"],
            ),
            ("scale", "Scale", &["get", "patch", "update"]),
        ],
    },
    ResourceInfo {
        group: "batch",
        version: "v1",
        kind: "CronJob",
        plural: "cronjobs",
        singular: "cronjob",
        namespaced: true,
        short_names: &["cj"],
        categories: &["all"],
        subresources: &[("status", "CronJob", &["get", "patch", "update"])],
    },
    ResourceInfo {
        group: "batch",
        version: "v1",
        kind: "Job",
        plural: "jobs",
        singular: "job",
        namespaced: true,
        short_names: &[],
        categories: &["all"],
        subresources: &[("status", "Job", &["get", "patch", "update"])],
    },
    ResourceInfo {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
];

/// Finds the resource served at `group`/`version` under the URL name `plural`.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds the resource for an object's `apiVersion` and `kind`.
pub fn lookup_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

/// Finds a resource by any name a user may type (`pods`, `pod`, `po`, `Pod`, `leases.coordination.k8s.io`).
pub fn lookup_name(name: &str) -> Option<&'static ResourceInfo> {
    let name = name.to_ascii_lowercase();
    let (base, group) = match name.split_once('.') {
        Some((base, group)) => (base.to_string(), Some(group.to_string())),
        None => (name.clone(), None),
    };
    RESOURCES.iter().find(|r| {
        group.as_deref().is_none_or(|g| g == r.group)
            && (r.plural == base
                || r.singular == base
                || r.kind.eq_ignore_ascii_case(&base)
                || r.short_names.contains(&base.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(lookup("", "v1", "pods").unwrap().kind, "Pod");
        assert_eq!(
            lookup_kind("coordination.k8s.io/v1", "Lease")
                .unwrap()
                .plural,
            "leases"
        );
        assert!(lookup_kind("v1", "Lease").is_none());
        for name in ["po", "pod", "Pods", "Pod"] {
            assert_eq!(lookup_name(name).unwrap().kind, "Pod", "{name}");
        }
        assert_eq!(
            lookup_name("leases.coordination.k8s.io").unwrap().kind,
            "Lease"
        );
        assert_eq!(lookup_name("deploy").unwrap().kind, "Deployment");
        assert!(lookup_name("widgets").is_none());
        assert_eq!(
            lookup("coordination.k8s.io", "v1", "leases")
                .unwrap()
                .store_name(),
            "leases.coordination.k8s.io"
        );
    }
}
