//! The kinds this API server serves, described once: names, scope and subresources (as
//! discovery, OpenAPI, routing, GC and the store key need them) and each kind's strategy
//! (defaults, validation, table printer: Kubernetes' `PrepareForCreate`, `Validate`,
//! `ValidateUpdate` and `TableConvertor`). Group, version, kind and plural come from
//! k8s-openapi's `Resource` constants. Adding a kind touches this table only (plus the
//! strategy functions it names).

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{
    LocalSubjectAccessReview, SelfSubjectAccessReview, SelfSubjectRulesReview, SubjectAccessReview,
};
use k8s_openapi::api::autoscaling::{v1 as autoscaling_v1, v2 as autoscaling_v2};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, LimitRange, Namespace, Node, PersistentVolume,
    PersistentVolumeClaim, Pod, ReplicationController, ResourceQuota, Secret, Service,
    ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

use std::borrow::Cow;

use super::autoscaling;
use super::custom::{crd, CustomKind};
use super::defaults;
use super::disruption;
use super::events;
use super::limits;
use super::priority;
use super::quota;
use super::table::{self, TableConvertor};
use super::validation::{self, Cause, NameError};

/// One served resource type.
#[derive(Debug)]
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
    /// What may be done with it: [`VERBS`], or only `create` for the reviews (answered, never
    /// stored).
    pub verbs: &'static [&'static str],
    /// What the API server does with this kind's objects.
    pub strategy: Strategy,
    /// The CRD version this row serves, for custom resources (schema, scale paths, storage
    /// version); `None` for built-in kinds.
    pub custom: Option<&'static CustomKind>,
    /// For a kind that is another API of a stored kind (events.k8s.io/v1 Events are core/v1
    /// Events): how its objects are stored and shown.
    pub view: Option<&'static View>,
}

/// Another API of a stored kind: objects are converted to the stored form on the way in and
/// back on the way out, so both APIs read and write the same objects.
pub struct View {
    /// The store name of the kind stored (`events`).
    pub stored_as: &'static str,
    /// The `apiVersion` stored objects have (`v1`).
    pub stored_api_version: &'static str,
    pub to_stored: fn(Value) -> Value,
    pub from_stored: fn(&Value) -> Value,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("stored_as", &self.stored_as)
            .finish_non_exhaustive()
    }
}

/// events.k8s.io/v1 Events, stored as core/v1 Events.
static EVENTS_V1: View = View {
    stored_as: "events",
    stored_api_version: "v1",
    to_stored: events::to_core,
    from_stored: events::to_events_v1,
};

/// autoscaling/v1 HorizontalPodAutoscalers, stored as autoscaling/v2 ones.
static HPA_V1: View = View {
    stored_as: "horizontalpodautoscalers.autoscaling",
    stored_api_version: "autoscaling/v2",
    to_stored: autoscaling::to_v2,
    from_stored: autoscaling::to_v1,
};

/// The rules of HorizontalPodAutoscalers, in either version (they run on the stored v2 form).
const HPA_STRATEGY: Strategy = Strategy {
    defaults: autoscaling::defaults,
    validate: autoscaling::validate,
    table: &table::HORIZONTAL_POD_AUTOSCALER,
    ..PLAIN
};

/// Rows are one per group, version and kind.
impl PartialEq for ResourceInfo {
    fn eq(&self, other: &Self) -> bool {
        (self.group, self.version, self.kind) == (other.group, other.version, other.kind)
    }
}

impl Eq for ResourceInfo {}

/// A kind's rules, as Kubernetes' REST strategy for it.
pub struct Strategy {
    /// Defaults of the kind's own fields, on create and on update.
    pub defaults: fn(&mut Value),
    /// The rule names of this kind follow (DNS subdomain for most, DNS label for some).
    pub name: fn(&str) -> Result<(), NameError>,
    /// The kind's own validation, after the shared metadata checks.
    pub validate: fn(&Value, &mut Vec<Cause>),
    /// What an update may not change, on top of `validate` of the new object.
    pub validate_update: fn(&Value, &Value, &mut Vec<Cause>),
    /// How `kubectl get` prints it.
    pub table: &'static dyn TableConvertor,
}

impl Strategy {
    /// A custom kind's strategy: its schema does the defaults and validation (through
    /// [`ResourceInfo::custom`]); names are DNS subdomains; tables print its columns.
    pub fn custom(kind: &'static CustomKind) -> Strategy {
        Strategy {
            table: kind,
            ..PLAIN
        }
    }
}

impl std::fmt::Debug for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Strategy").finish_non_exhaustive()
    }
}

/// The strategy of a kind with no rules of its own: no defaults, the shared metadata checks,
/// name and age in tables.
const PLAIN: Strategy = Strategy {
    defaults: |_| {},
    name: validation::dns1123_subdomain,
    validate: |_, _| {},
    validate_update: |_, _, _| {},
    table: &table::NAME_AGE,
};

/// Whether a k8s-openapi scope is a namespace's.
trait Scope {
    const NAMESPACED: bool;
}

impl Scope for k8s_openapi::NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl Scope for k8s_openapi::ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// A row of the table for the k8s-openapi type `K`: group, version, kind, plural and scope
/// from its constants; the rest as Kubernetes' discovery lists them.
const fn kind<K>(
    singular: &'static str,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [(&'static str, &'static str, &'static [&'static str])],
    strategy: Strategy,
) -> ResourceInfo
where
    K: k8s_openapi::Resource,
    K::Scope: Scope,
{
    ResourceInfo {
        group: K::GROUP,
        version: K::VERSION,
        kind: K::KIND,
        plural: K::URL_PATH_SEGMENT,
        singular,
        namespaced: <K::Scope as Scope>::NAMESPACED,
        short_names,
        categories,
        subresources,
        verbs: VERBS,
        strategy,
        custom: None,
        view: None,
    }
}

/// A row for a kind that is only ever created, answered and not stored (access reviews).
const fn review<K>(singular: &'static str) -> ResourceInfo
where
    K: k8s_openapi::Resource,
    K::Scope: Scope,
{
    let mut row = kind::<K>(singular, &[], &[], &[], PLAIN);
    row.verbs = &["create"];
    row
}

impl ResourceInfo {
    /// The row of a custom kind (one served version of a CRD), leaked: see
    /// [`crate::api::custom`] for why and how often.
    pub fn of_custom(kind: CustomKind) -> &'static ResourceInfo {
        let custom = kind.leak();
        Box::leak(Box::new(ResourceInfo {
            group: &custom.group,
            version: &custom.version,
            kind: &custom.kind,
            plural: &custom.plural,
            singular: &custom.singular,
            namespaced: custom.namespaced,
            short_names: custom.short_name_list(),
            categories: custom.category_list(),
            subresources: custom.subresource_list(),
            verbs: VERBS,
            strategy: Strategy::custom(custom),
            custom: Some(custom),
            view: None,
        }))
    }

    /// Whether this kind is answered, never stored (the access reviews).
    pub fn is_review(&self) -> bool {
        self.verbs == ["create"]
    }

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
        if let Some(view) = self.view {
            return view.stored_as.to_string();
        }
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

    /// The kind, for code with rules of a built-in kind (`"Pod"`, `"Node"`...); empty for a
    /// custom kind, which may well be called `Pod` in its own group and has none of them.
    pub fn builtin_kind(&self) -> &'static str {
        if self.custom.is_some() {
            ""
        } else {
            self.kind
        }
    }

    pub fn has_subresource(&self, name: &str) -> bool {
        self.subresources.iter().any(|(sub, _, _)| *sub == name)
    }

    /// Prepares a new object for the store: generated name, uid, timestamps, `apiVersion`
    /// and `kind`, then the kind's defaults.
    pub fn prepare_for_create(&self, object: &mut Value) {
        defaults::metadata_on_create(object, self.storage_api_version(), self.kind);
        self.apply_defaults(object);
    }

    /// The `apiVersion` objects of this kind are stored with: the row's own, except for a
    /// custom resource served at several versions (the CRD's storage version).
    pub fn storage_api_version(&self) -> String {
        match (self.custom, self.view) {
            (Some(custom), _) => custom.storage_api_version(),
            (None, Some(view)) => view.stored_api_version.to_string(),
            (None, None) => self.api_version(),
        }
    }

    /// A stored object as this API shows it: a custom resource stored at another version of
    /// its CRD gets this row's `apiVersion` (conversion strategy `None`); a view converts it.
    pub fn present<'a>(&self, object: &'a Value) -> Cow<'a, Value> {
        if let Some(view) = self.view {
            return Cow::Owned((view.from_stored)(object));
        }
        if self.custom.is_none() {
            return Cow::Borrowed(object);
        }
        let wanted = self.api_version();
        if object.get("apiVersion").and_then(Value::as_str) == Some(wanted.as_str()) {
            return Cow::Borrowed(object);
        }
        let mut converted = object.clone();
        if let Some(map) = converted.as_object_mut() {
            map.insert("apiVersion".into(), Value::String(wanted));
        }
        Cow::Owned(converted)
    }

    /// An object written through this API in its stored form (the inverse of
    /// [`ResourceInfo::present`] for views; other kinds are stored as written).
    pub fn to_stored(&self, object: Value) -> Value {
        match self.view {
            Some(view) => (view.to_stored)(object),
            None => object,
        }
    }

    /// The kind's own defaults (on create and on update): a custom resource's from its schema.
    pub fn apply_defaults(&self, object: &mut Value) {
        (self.strategy.defaults)(object);
        if let Some(custom) = self.custom {
            custom.schema.apply_defaults(object);
        }
    }

    /// Why an object about to be created or replaced is invalid; empty when it is valid.
    pub fn validate(&self, object: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        validation::object_meta(object, self.strategy.name, &mut causes);
        (self.strategy.validate)(object, &mut causes);
        if let Some(custom) = self.custom {
            causes.extend(custom.schema.validate(object));
        }
        causes
    }

    /// Why `new` may not replace `old`; empty when it may.
    pub fn validate_update(&self, old: &Value, new: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        (self.strategy.validate_update)(old, new, &mut causes);
        causes
    }

    /// Objects of this kind as a `meta.k8s.io/v1` Table.
    pub fn table(&self, objects: &[&Value], revision: u64, include_object: bool) -> Value {
        table::render(self.strategy.table, objects, revision, include_object)
    }
}

pub const VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

pub static RESOURCES: &[ResourceInfo] = &[
    kind::<Namespace>(
        "namespace",
        &["ns"],
        &[],
        &[
            ("status", "Namespace", &["get", "patch", "update"]),
            ("finalize", "Namespace", &["update"]),
        ],
        Strategy {
            defaults: defaults::namespace,
            name: validation::dns1123_label,
            table: &table::NAMESPACE,
            ..PLAIN
        },
    ),
    kind::<Node>(
        "node",
        &["no"],
        &[],
        &[
            ("status", "Node", &["get", "patch", "update"]),
            ("proxy", "NodeProxyOptions", &["get"]),
        ],
        Strategy {
            table: &table::NODE,
            ..PLAIN
        },
    ),
    kind::<Pod>(
        "pod",
        &["po"],
        &["all"],
        &[
            ("status", "Pod", &["get", "patch", "update"]),
            ("binding", "Binding", &["create"]),
            ("log", "Pod", &["get"]),
            (
                "proxy",
                "PodProxyOptions",
                &["create", "delete", "get", "patch", "update"],
            ),
            ("eviction", "Eviction", &["create"]),
            ("portforward", "PodPortForwardOptions", &["create", "get"]),
            ("exec", "PodExecOptions", &["create", "get"]),
            ("attach", "PodAttachOptions", &["create", "get"]),
            ("ephemeralcontainers", "Pod", &["get", "patch", "update"]),
        ],
        Strategy {
            defaults: defaults::pod,
            validate: validation::pod,
            validate_update: validation::pod_update,
            table: &table::POD,
            ..PLAIN
        },
    ),
    kind::<Event>(
        "event",
        &["ev"],
        &[],
        &[],
        Strategy {
            table: &table::EVENT,
            ..PLAIN
        },
    ),
    ResourceInfo {
        view: Some(&EVENTS_V1),
        ..kind::<k8s_openapi::api::events::v1::Event>(
            "event",
            &["ev"],
            &[],
            &[],
            Strategy {
                table: &table::EVENT,
                ..PLAIN
            },
        )
    },
    kind::<ConfigMap>(
        "configmap",
        &["cm"],
        &[],
        &[],
        Strategy {
            table: &table::CONFIG_MAP,
            ..PLAIN
        },
    ),
    kind::<Secret>(
        "secret",
        &[],
        &[],
        &[],
        Strategy {
            defaults: defaults::secret,
            ..PLAIN
        },
    ),
    kind::<PersistentVolumeClaim>(
        "persistentvolumeclaim",
        &["pvc"],
        &[],
        &[(
            "status",
            "PersistentVolumeClaim",
            &["get", "patch", "update"],
        )],
        PLAIN,
    ),
    kind::<PersistentVolume>(
        "persistentvolume",
        &["pv"],
        &[],
        &[("status", "PersistentVolume", &["get", "patch", "update"])],
        Strategy {
            table: &table::PERSISTENT_VOLUME,
            ..PLAIN
        },
    ),
    kind::<ResourceQuota>(
        "resourcequota",
        &["quota"],
        &[],
        &[("status", "ResourceQuota", &["get", "patch", "update"])],
        Strategy {
            validate: quota::validate,
            table: &table::RESOURCE_QUOTA,
            ..PLAIN
        },
    ),
    kind::<LimitRange>(
        "limitrange",
        &["limits"],
        &[],
        &[],
        Strategy {
            validate: limits::validate,
            ..PLAIN
        },
    ),
    kind::<Service>(
        "service",
        &["svc"],
        &["all"],
        &[("status", "Service", &["get", "patch", "update"])],
        Strategy {
            defaults: defaults::service,
            validate: validation::service,
            table: &table::SERVICE,
            ..PLAIN
        },
    ),
    kind::<Endpoints>(
        "endpoints",
        &["ep"],
        &[],
        &[],
        Strategy {
            table: &table::ENDPOINTS,
            ..PLAIN
        },
    ),
    kind::<EndpointSlice>(
        "endpointslice",
        &[],
        &[],
        &[],
        Strategy {
            table: &table::ENDPOINT_SLICE,
            ..PLAIN
        },
    ),
    kind::<Ingress>(
        "ingress",
        &["ing"],
        &[],
        &[("status", "Ingress", &["get", "patch", "update"])],
        Strategy {
            validate: validation::ingress,
            table: &table::INGRESS,
            ..PLAIN
        },
    ),
    kind::<NetworkPolicy>(
        "networkpolicy",
        &["netpol"],
        &[],
        &[],
        Strategy {
            validate: validation::network_policy,
            table: &table::NETWORK_POLICY,
            ..PLAIN
        },
    ),
    kind::<Deployment>(
        "deployment",
        &["deploy"],
        &["all"],
        &[
            ("status", "Deployment", &["get", "patch", "update"]),
            ("scale", "Scale", &["get", "patch", "update"]),
        ],
        Strategy {
            defaults: defaults::deployment,
            validate: validation::replica_set,
            table: &table::DEPLOYMENT,
            ..PLAIN
        },
    ),
    kind::<DaemonSet>(
        "daemonset",
        &["ds"],
        &["all"],
        &[("status", "DaemonSet", &["get", "patch", "update"])],
        Strategy {
            defaults: defaults::daemon_set,
            validate: validation::replica_set,
            table: &table::DAEMON_SET,
            ..PLAIN
        },
    ),
    kind::<ReplicaSet>(
        "replicaset",
        &["rs"],
        &["all"],
        &[
            ("status", "ReplicaSet", &["get", "patch", "update"]),
            ("scale", "Scale", &["get", "patch", "update"]),
        ],
        Strategy {
            defaults: defaults::replica_set,
            validate: validation::replica_set,
            table: &table::REPLICA_SET,
            ..PLAIN
        },
    ),
    kind::<StatefulSet>(
        "statefulset",
        &["sts"],
        &["all"],
        &[
            ("status", "StatefulSet", &["get", "patch", "update"]),
            ("scale", "Scale", &["get", "patch", "update"]),
        ],
        Strategy {
            defaults: defaults::stateful_set,
            validate: validation::replica_set,
            table: &table::STATEFUL_SET,
            ..PLAIN
        },
    ),
    kind::<ControllerRevision>(
        "controllerrevision",
        &[],
        &[],
        &[],
        Strategy {
            table: &table::CONTROLLER_REVISION,
            ..PLAIN
        },
    ),
    kind::<ReplicationController>(
        "replicationcontroller",
        &["rc"],
        &["all"],
        &[
            (
                "status",
                "ReplicationController",
                &["get", "patch", "update"],
            ),
            ("scale", "Scale", &["get", "patch", "update"]),
        ],
        Strategy {
            defaults: defaults::replication_controller,
            validate: validation::replication_controller,
            table: &table::REPLICA_SET,
            ..PLAIN
        },
    ),
    kind::<autoscaling_v2::HorizontalPodAutoscaler>(
        "horizontalpodautoscaler",
        &["hpa"],
        &["all"],
        &[(
            "status",
            "HorizontalPodAutoscaler",
            &["get", "patch", "update"],
        )],
        HPA_STRATEGY,
    ),
    ResourceInfo {
        view: Some(&HPA_V1),
        ..kind::<autoscaling_v1::HorizontalPodAutoscaler>(
            "horizontalpodautoscaler",
            &["hpa"],
            &["all"],
            &[(
                "status",
                "HorizontalPodAutoscaler",
                &["get", "patch", "update"],
            )],
            HPA_STRATEGY,
        )
    },
    kind::<CronJob>(
        "cronjob",
        &["cj"],
        &["all"],
        &[("status", "CronJob", &["get", "patch", "update"])],
        Strategy {
            validate: validation::cron_job,
            ..PLAIN
        },
    ),
    kind::<Job>(
        "job",
        &[],
        &["all"],
        &[("status", "Job", &["get", "patch", "update"])],
        Strategy {
            defaults: defaults::job,
            validate: validation::job,
            table: &table::JOB,
            ..PLAIN
        },
    ),
    kind::<CustomResourceDefinition>(
        "customresourcedefinition",
        &["crd", "crds"],
        &["api-extensions"],
        &[(
            "status",
            "CustomResourceDefinition",
            &["get", "patch", "update"],
        )],
        Strategy {
            defaults: crd::defaults,
            validate: validate_crd,
            validate_update: crd::validate_update,
            ..PLAIN
        },
    ),
    kind::<PodDisruptionBudget>(
        "poddisruptionbudget",
        &["pdb"],
        &[],
        &[("status", "PodDisruptionBudget", &["get", "patch", "update"])],
        Strategy {
            validate: disruption::validate,
            table: &table::POD_DISRUPTION_BUDGET,
            ..PLAIN
        },
    ),
    kind::<PriorityClass>(
        "priorityclass",
        &["pc"],
        &[],
        &[],
        Strategy {
            defaults: priority::defaults,
            validate: priority::validate_class,
            validate_update: priority::validate_class_update,
            table: &table::PRIORITY_CLASS,
            ..PLAIN
        },
    ),
    kind::<Lease>(
        "lease",
        &[],
        &[],
        &[],
        Strategy {
            table: &table::LEASE,
            ..PLAIN
        },
    ),
    kind::<ServiceAccount>(
        "serviceaccount",
        &["sa"],
        &[],
        &[("token", "TokenRequest", &["create"])],
        PLAIN,
    ),
    kind::<Role>(
        "role",
        &[],
        &[],
        &[],
        Strategy {
            name: validation::rbac_name,
            validate: validation::role,
            ..PLAIN
        },
    ),
    kind::<ClusterRole>(
        "clusterrole",
        &[],
        &[],
        &[],
        Strategy {
            name: validation::rbac_name,
            validate: validation::cluster_role,
            ..PLAIN
        },
    ),
    kind::<RoleBinding>(
        "rolebinding",
        &[],
        &[],
        &[],
        Strategy {
            name: validation::rbac_name,
            validate: validation::role_binding,
            validate_update: validation::role_binding_update,
            table: &table::ROLE_BINDING,
            ..PLAIN
        },
    ),
    kind::<ClusterRoleBinding>(
        "clusterrolebinding",
        &[],
        &[],
        &[],
        Strategy {
            name: validation::rbac_name,
            validate: validation::cluster_role_binding,
            validate_update: validation::role_binding_update,
            table: &table::ROLE_BINDING,
            ..PLAIN
        },
    ),
    kind::<CertificateSigningRequest>(
        "certificatesigningrequest",
        &["csr"],
        &[],
        &[
            (
                "approval",
                "CertificateSigningRequest",
                &["get", "patch", "update"],
            ),
            (
                "status",
                "CertificateSigningRequest",
                &["get", "patch", "update"],
            ),
        ],
        Strategy {
            validate: validation::certificate_signing_request,
            validate_update: validation::certificate_signing_request_update,
            table: &table::CERTIFICATE_SIGNING_REQUEST,
            ..PLAIN
        },
    ),
    review::<SelfSubjectAccessReview>("selfsubjectaccessreview"),
    review::<SelfSubjectRulesReview>("selfsubjectrulesreview"),
    review::<SubjectAccessReview>("subjectaccessreview"),
    review::<LocalSubjectAccessReview>("localsubjectaccessreview"),
    review::<SelfSubjectReview>("selfsubjectreview"),
];

/// Finds the resource served at `group`/`version` under the URL name `plural`.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The API groups served by built-in kinds (no CRD may take one).
pub fn builtin_groups() -> Vec<&'static str> {
    let mut groups: Vec<&str> = RESOURCES.iter().map(|r| r.group).collect();
    groups.dedup();
    groups
}

fn validate_crd(object: &Value, causes: &mut Vec<Cause>) {
    crd::validate_with_builtin_groups(object, &builtin_groups(), causes);
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
    use serde_json::json;

    /// The GVK, plural and scope of each row are k8s-openapi's, and names are unique (views
    /// share the store name of what they view).
    #[test]
    fn rows_agree_with_k8s_openapi_and_are_unique() {
        let row = |kind: &str| RESOURCES.iter().find(|r| r.kind == kind).unwrap();
        assert_eq!(row("Pod").plural, "pods");
        assert!(row("Pod").namespaced);
        assert!(!row("Node").namespaced && !row("Namespace").namespaced);
        assert_eq!(row("Deployment").api_version(), "apps/v1");
        assert_eq!(row("Lease").group, "coordination.k8s.io");
        for (i, a) in RESOURCES.iter().enumerate() {
            for b in &RESOURCES[i + 1..] {
                let shared_store = a.store_name() == b.store_name() && b.view.is_some();
                assert!(
                    (a.store_name() != b.store_name() || shared_store)
                        && a.api_version() + a.kind != b.api_version() + b.kind,
                    "{} and {} collide",
                    a.kind,
                    b.kind
                );
            }
        }
    }

    /// Every kind's strategy runs through the row: its defaults, validation and printer.
    #[test]
    fn each_row_carries_its_kinds_strategy() {
        let pod = lookup_name("pod").unwrap();
        let mut object = json!({"metadata": {"generateName": "web-"}, "spec": {"containers": [{"name": "c", "image": "x.wasm", "ports": [{"containerPort": 80}]}]}});
        pod.prepare_for_create(&mut object);
        let name = object["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        assert_eq!(object["spec"]["restartPolicy"], "Always");
        assert_eq!(
            object["spec"]["containers"][0]["ports"][0]["protocol"],
            "TCP"
        );
        assert_eq!(object["status"]["phase"], "Pending");
        assert_eq!(object["kind"], "Pod");
        assert_eq!(object["apiVersion"], "v1");
        assert!(!object["metadata"]["uid"].as_str().unwrap().is_empty());
        assert!(pod.validate(&object).is_empty());
        let table = pod.table(&[&object], 1, false);
        assert_eq!(table["columnDefinitions"][2]["name"], "Status");
        assert_eq!(table["rows"][0]["cells"][2], "Pending");

        // Namespaces' names are DNS labels, other kinds' subdomains.
        let dotted = json!({"metadata": {"name": "a.b"}});
        assert_eq!(lookup_name("ns").unwrap().validate(&dotted).len(), 1);
        assert!(lookup_name("cm").unwrap().validate(&dotted).is_empty());

        // A kind without a printer of its own prints name and age.
        let cron = lookup_name("cronjob").unwrap().table(&[&dotted], 1, false);
        assert_eq!(cron["rows"][0]["cells"][0], "a.b");
        assert_eq!(cron["columnDefinitions"].as_array().unwrap().len(), 2);

        // A Job without completions or parallelism runs one pod.
        let mut job = json!({"metadata": {"name": "j"}});
        lookup_name("job").unwrap().apply_defaults(&mut job);
        assert_eq!(job["spec"]["completions"], 1);
    }

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

    fn widget_crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}},
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size"}},
                     "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                                                  {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]},
                    {"name": "v1beta1", "served": true, "storage": false,
                     "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                    {"name": "v1alpha1", "served": false, "storage": false,
                     "schema": {"openAPIV3Schema": {"type": "object"}}},
                ],
            },
        })
    }

    #[test]
    fn each_served_version_becomes_a_row() {
        let kinds = crate::api::custom::CustomKind::all_of(&widget_crd());
        assert_eq!(kinds.len(), 2);
        let row = ResourceInfo::of_custom(kinds.into_iter().next().unwrap());
        assert_eq!(
            (row.group, row.version, row.kind, row.plural),
            ("example.com", "v1", "Widget", "widgets")
        );
        assert_eq!(row.singular, "widget");
        assert!(row.namespaced && row.has_subresource("status") && row.has_subresource("scale"));
        assert_eq!(row.short_names, ["wd"]);
        let object = json!({"metadata": {"name": "w", "creationTimestamp": "2020-01-01T00:00:00Z"}, "spec": {"size": 3}});
        let table = row.table(&[&object], 5, false);
        assert_eq!(table["columnDefinitions"][1]["name"], "Size");
        assert_eq!(table["rows"][0]["cells"][0], "w");
        assert_eq!(table["rows"][0]["cells"][1], 3);
        assert_eq!(
            table["rows"][0]["cells"][2],
            crate::api::object::human_age("2020-01-01T00:00:00Z")
        );
        assert_eq!(crate::api::custom::pointer_of(".spec.size"), "/spec/size");
    }
}
