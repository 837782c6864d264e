//! RBAC (`rbac.authorization.k8s.io/v1`): an in-memory policy of Roles, ClusterRoles and
//! their bindings, indexed by subject so a decision reads only the bindings of the asking user
//! and its groups; the authorizer, the rules a user holds (for SelfSubjectRulesReview) and
//! Kubernetes' escalation check (a user may grant only rules it holds).
//!
//! [`PolicyCache`] is fed from the store by a watch ([`PolicyCache::sync`]), the way
//! kube-apiserver's RBAC authorizer reads informers; a writer waits for its own write to be in
//! the cache ([`PolicyCache::wait_for`]) so a binding takes effect before its create returns.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use super::request_info::RequestInfo;
use super::{tokens, UserInfo};
use crate::store::{EventType, Store};

pub const GROUP: &str = "rbac.authorization.k8s.io";

/// One rule of a role, with every list as written (`*` included).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub verbs: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    #[serde(rename = "nonResourceURLs", skip_serializing_if = "Vec::is_empty")]
    pub non_resource_urls: Vec<String>,
}

fn strings(value: &Value, key: &str) -> Vec<String> {
    value[key]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn has(list: &[String], item: &str) -> bool {
    list.iter().any(|x| x == item)
}

impl Rule {
    pub fn from_json(rule: &Value) -> Self {
        Self {
            verbs: strings(rule, "verbs"),
            api_groups: strings(rule, "apiGroups"),
            resources: strings(rule, "resources"),
            resource_names: strings(rule, "resourceNames"),
            non_resource_urls: strings(rule, "nonResourceURLs"),
        }
    }

    /// The rules of a Role or ClusterRole object.
    pub fn of_role(role: &Value) -> Vec<Rule> {
        role["rules"]
            .as_array()
            .map(|rules| rules.iter().map(Rule::from_json).collect())
            .unwrap_or_default()
    }

    /// Whether this rule allows the request (Kubernetes' `RuleAllows`).
    pub fn allows(&self, request: &RequestInfo) -> bool {
        if !(has(&self.verbs, "*") || has(&self.verbs, &request.verb)) {
            return false;
        }
        if !request.resource_request {
            return self.non_resource_urls.iter().any(|url| {
                url == "*"
                    || *url == request.path
                    || url
                        .strip_suffix('*')
                        .is_some_and(|prefix| request.path.starts_with(prefix))
            });
        }
        let group = has(&self.api_groups, "*") || has(&self.api_groups, &request.api_group);
        let combined = request.resource_and_subresource();
        let resource = self.resources.iter().any(|r| {
            r == "*"
                || *r == combined
                || (!request.subresource.is_empty()
                    && r.strip_prefix("*/") == Some(request.subresource.as_str()))
        });
        let name = self.resource_names.is_empty()
            || (!request.name.is_empty() && has(&self.resource_names, &request.name));
        group && resource && name
    }
}

/// The decision on a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// No rule allows it (the reason, if any, says why beyond that).
    Deny,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum RoleRef {
    Role(String),
    ClusterRole(String),
}

#[derive(Clone, Debug)]
struct Binding {
    role: RoleRef,
    users: Vec<String>,
    groups: Vec<String>,
}

impl Binding {
    /// Reads a RoleBinding (in `namespace`) or ClusterRoleBinding (namespace empty).
    fn from_json(binding: &Value, namespace: &str) -> Option<Self> {
        let name = binding.pointer("/roleRef/name")?.as_str()?.to_string();
        let role = match binding.pointer("/roleRef/kind")?.as_str()? {
            "Role" if !namespace.is_empty() => RoleRef::Role(name),
            "ClusterRole" => RoleRef::ClusterRole(name),
            _ => return None,
        };
        let (mut users, mut groups) = (Vec::new(), Vec::new());
        for subject in binding["subjects"].as_array().into_iter().flatten() {
            let name = subject["name"].as_str().unwrap_or("").to_string();
            match subject["kind"].as_str().unwrap_or("") {
                "User" => users.push(name),
                "Group" => groups.push(name),
                "ServiceAccount" => {
                    let ns = subject["namespace"]
                        .as_str()
                        .filter(|ns| !ns.is_empty())
                        .unwrap_or(namespace);
                    users.push(tokens::service_account_username(ns, &name));
                }
                _ => {}
            }
        }
        Some(Self {
            role,
            users,
            groups,
        })
    }
}

/// Binding names by the user and group names they bind.
#[derive(Default)]
struct SubjectIndex {
    users: HashMap<String, BTreeSet<String>>,
    groups: HashMap<String, BTreeSet<String>>,
}

impl SubjectIndex {
    fn add(&mut self, name: &str, binding: &Binding) {
        for user in &binding.users {
            self.users
                .entry(user.clone())
                .or_default()
                .insert(name.to_string());
        }
        for group in &binding.groups {
            self.groups
                .entry(group.clone())
                .or_default()
                .insert(name.to_string());
        }
    }

    fn remove(&mut self, name: &str, binding: &Binding) {
        for (map, keys) in [
            (&mut self.users, &binding.users),
            (&mut self.groups, &binding.groups),
        ] {
            for key in keys {
                if let Some(names) = map.get_mut(key) {
                    names.remove(name);
                    if names.is_empty() {
                        map.remove(key);
                    }
                }
            }
        }
    }

    /// Names of the bindings naming `user` or one of its groups.
    fn bindings_of<'a>(&'a self, user: &'a UserInfo) -> impl Iterator<Item = &'a String> + 'a {
        let by_user = self.users.get(&user.username).into_iter().flatten();
        let by_group = user
            .groups
            .iter()
            .filter_map(|g| self.groups.get(g))
            .flatten();
        by_user.chain(by_group)
    }
}

/// Roles and bindings, indexed.
#[derive(Default)]
pub struct Policy {
    roles: HashMap<(String, String), Arc<[Rule]>>,
    cluster_roles: HashMap<String, Arc<[Rule]>>,
    role_bindings: HashMap<(String, String), Binding>,
    cluster_role_bindings: HashMap<String, Binding>,
    namespace_index: HashMap<String, SubjectIndex>,
    cluster_index: SubjectIndex,
}

/// The store resources the policy is made of.
pub const ROLES: &str = "roles.rbac.authorization.k8s.io";
pub const CLUSTER_ROLES: &str = "clusterroles.rbac.authorization.k8s.io";
pub const ROLE_BINDINGS: &str = "rolebindings.rbac.authorization.k8s.io";
pub const CLUSTER_ROLE_BINDINGS: &str = "clusterrolebindings.rbac.authorization.k8s.io";
const RESOURCES: [&str; 4] = [ROLES, CLUSTER_ROLES, ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS];

impl Policy {
    /// Applies one object of `resource` (`deleted`: remove it).
    pub fn apply(&mut self, resource: &str, object: &Value, deleted: bool) {
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match resource {
            ROLES => {
                let key = (namespace, name);
                if deleted {
                    self.roles.remove(&key);
                } else {
                    self.roles.insert(key, Rule::of_role(object).into());
                }
            }
            CLUSTER_ROLES => {
                if deleted {
                    self.cluster_roles.remove(&name);
                } else {
                    self.cluster_roles
                        .insert(name, Rule::of_role(object).into());
                }
            }
            ROLE_BINDINGS => {
                let key = (namespace.clone(), name.clone());
                let index = self.namespace_index.entry(namespace.clone()).or_default();
                if let Some(old) = self.role_bindings.remove(&key) {
                    index.remove(&name, &old);
                }
                if !deleted {
                    if let Some(binding) = Binding::from_json(object, &namespace) {
                        index.add(&name, &binding);
                        self.role_bindings.insert(key, binding);
                    }
                }
            }
            CLUSTER_ROLE_BINDINGS => {
                if let Some(old) = self.cluster_role_bindings.remove(&name) {
                    self.cluster_index.remove(&name, &old);
                }
                if !deleted {
                    if let Some(binding) = Binding::from_json(object, "") {
                        self.cluster_index.add(&name, &binding);
                        self.cluster_role_bindings.insert(name, binding);
                    }
                }
            }
            _ => {}
        }
    }

    fn rules_of(&self, role: &RoleRef, namespace: &str) -> Option<&Arc<[Rule]>> {
        match role {
            RoleRef::Role(name) => self.roles.get(&(namespace.to_string(), name.clone())),
            RoleRef::ClusterRole(name) => self.cluster_roles.get(name),
        }
    }

    /// Calls `visit` with each rule `user` holds in `namespace` (cluster-wide rules first;
    /// empty namespace: cluster-wide only) until it returns true.
    fn any_rule(
        &self,
        user: &UserInfo,
        namespace: &str,
        mut visit: impl FnMut(&Rule) -> bool,
    ) -> bool {
        for name in self.cluster_index.bindings_of(user) {
            let rules = self
                .cluster_role_bindings
                .get(name)
                .and_then(|b| self.rules_of(&b.role, ""));
            if rules.is_some_and(|rules| rules.iter().any(&mut visit)) {
                return true;
            }
        }
        if namespace.is_empty() {
            return false;
        }
        let Some(index) = self.namespace_index.get(namespace) else {
            return false;
        };
        for name in index.bindings_of(user) {
            let binding = self
                .role_bindings
                .get(&(namespace.to_string(), name.clone()));
            let rules = binding.and_then(|b| self.rules_of(&b.role, namespace));
            // Non-resource rules mean nothing inside a namespace.
            let mut resource_rules = |rule: &Rule| rule.non_resource_urls.is_empty() && visit(rule);
            if rules.is_some_and(|rules| rules.iter().any(&mut resource_rules)) {
                return true;
            }
        }
        false
    }

    /// Whether RBAC allows `request` by `user` (members of `system:masters` always may).
    pub fn authorize(&self, user: &UserInfo, request: &RequestInfo) -> Decision {
        let namespace = if request.resource_request {
            request.namespace.as_str()
        } else {
            ""
        };
        if user.is_superuser() || self.any_rule(user, namespace, |rule| rule.allows(request)) {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }

    /// Every rule `user` holds in `namespace` (cluster-wide ones included).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<Rule> {
        let mut rules = Vec::new();
        self.any_rule(user, namespace, |rule| {
            if !rules.contains(rule) {
                rules.push(rule.clone());
            }
            false
        });
        rules
    }

    /// The rules of the role a binding in `namespace` refers to (`kind` Role or ClusterRole).
    pub fn role_rules(&self, kind: &str, name: &str, namespace: &str) -> Option<Vec<Rule>> {
        let role = match kind {
            "Role" => RoleRef::Role(name.to_string()),
            "ClusterRole" => RoleRef::ClusterRole(name.to_string()),
            _ => return None,
        };
        self.rules_of(&role, namespace).map(|rules| rules.to_vec())
    }
}

/// Splits rules into single-verb, single-resource (and single-name) rules, as Kubernetes'
/// `BreakdownRule`.
fn breakdown(rule: &Rule) -> Vec<Rule> {
    let mut atoms = Vec::new();
    for verb in &rule.verbs {
        for group in &rule.api_groups {
            for resource in &rule.resources {
                if rule.resource_names.is_empty() {
                    atoms.push(Rule {
                        verbs: vec![verb.clone()],
                        api_groups: vec![group.clone()],
                        resources: vec![resource.clone()],
                        ..Rule::default()
                    });
                }
                for name in &rule.resource_names {
                    atoms.push(Rule {
                        verbs: vec![verb.clone()],
                        api_groups: vec![group.clone()],
                        resources: vec![resource.clone()],
                        resource_names: vec![name.clone()],
                        ..Rule::default()
                    });
                }
            }
        }
        for url in &rule.non_resource_urls {
            atoms.push(Rule {
                verbs: vec![verb.clone()],
                non_resource_urls: vec![url.clone()],
                ..Rule::default()
            });
        }
    }
    atoms
}

/// Whether `owner` covers the single rule `atom` (Kubernetes' `ruleCovers`).
fn covers(owner: &Rule, atom: &Rule) -> bool {
    let all = |owner: &[String], wanted: &[String]| wanted.iter().all(|w| has(owner, w));
    let verbs = has(&owner.verbs, "*") || all(&owner.verbs, &atom.verbs);
    let groups = has(&owner.api_groups, "*") || all(&owner.api_groups, &atom.api_groups);
    let resources = has(&owner.resources, "*")
        || atom.resources.iter().all(|wanted| {
            has(&owner.resources, wanted)
                || wanted.split_once('/').is_some_and(|(_, sub)| {
                    owner
                        .resources
                        .iter()
                        .any(|r| r.strip_prefix("*/") == Some(sub))
                })
        });
    let urls = atom.non_resource_urls.iter().all(|wanted| {
        owner.non_resource_urls.iter().any(|url| {
            url == wanted
                || url
                    .strip_suffix('*')
                    .is_some_and(|prefix| wanted.starts_with(prefix))
        })
    });
    let names = if atom.resource_names.is_empty() {
        owner.resource_names.is_empty()
    } else {
        owner.resource_names.is_empty() || all(&owner.resource_names, &atom.resource_names)
    };
    verbs && groups && resources && urls && names
}

/// The parts of `requested` that `owner` does not cover (empty: no escalation).
pub fn uncovered(owner: &[Rule], requested: &[Rule]) -> Vec<Rule> {
    requested
        .iter()
        .flat_map(breakdown)
        .filter(|atom| !owner.iter().any(|o| covers(o, atom)))
        .collect()
}

/// The policy of one API server, kept from the store.
pub struct PolicyCache {
    policy: RwLock<Policy>,
    /// The store revision each of [`RESOURCES`] is known up to.
    seen: [tokio::sync::watch::Sender<u64>; 4],
}

impl Default for PolicyCache {
    fn default() -> Self {
        Self {
            policy: RwLock::default(),
            seen: std::array::from_fn(|_| tokio::sync::watch::Sender::new(0)),
        }
    }
}

impl PolicyCache {
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Policy> {
        self.policy
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Policy> {
        self.policy
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits (at most 2 s) until the cache holds `resource` as of `revision`: a client that
    /// just wrote a role or binding is authorized by it on its next request.
    pub async fn wait_for(&self, resource: &str, revision: u64) {
        let Some(i) = RESOURCES.iter().position(|r| *r == resource) else {
            return;
        };
        let mut seen = self.seen[i].subscribe();
        let _ =
            tokio::time::timeout(Duration::from_secs(2), seen.wait_for(|&r| r >= revision)).await;
    }

    /// Loads the policy from `store` and keeps it current until the watch ends; relists when
    /// the watch falls behind the store's event log.
    pub async fn sync(&self, store: &dyn Store) {
        loop {
            let mut streams = Vec::new();
            let mut fresh = Policy::default();
            let mut revisions = [0; 4];
            let mut complete = true;
            for (i, resource) in RESOURCES.iter().enumerate() {
                let watched = store.list(resource, None).and_then(|listing| {
                    let stream = store.watch(resource, None, listing.revision)?;
                    Ok((listing, stream))
                });
                let (listing, stream) = match watched {
                    Ok(watched) => watched,
                    Err(e) => {
                        // Every part of the policy is watched, or the load starts over.
                        tracing::warn!("RBAC: loading {resource}: {e}");
                        complete = false;
                        break;
                    }
                };
                for object in &listing.objects {
                    fresh.apply(resource, object, false);
                }
                revisions[i] = listing.revision;
                streams.push(stream.map(move |event| (i, event)).boxed());
            }
            if !complete {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            *self.write() = fresh;
            for (i, revision) in revisions.into_iter().enumerate() {
                self.seen[i].send_replace(revision);
            }
            let mut events = futures::stream::select_all(streams);
            while let Some((i, event)) = events.next().await {
                match event {
                    Ok(event) if event.event_type == EventType::Bookmark => {
                        self.seen[i].send_replace(event.revision);
                    }
                    Ok(event) => {
                        let deleted = event.event_type == EventType::Deleted;
                        self.write().apply(RESOURCES[i], &event.object, deleted);
                        self.seen[i].send_replace(event.revision);
                    }
                    Err(e) => {
                        tracing::info!("RBAC: the policy watch ended ({e}); relisting");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(
        verb: &str,
        group: &str,
        namespace: &str,
        resource: &str,
        name: &str,
    ) -> RequestInfo {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        RequestInfo {
            resource_request: true,
            verb: verb.into(),
            api_group: group.into(),
            namespace: namespace.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            name: name.into(),
            ..RequestInfo::default()
        }
    }

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo::authenticated(name, groups.iter().map(|g| g.to_string()).collect())
    }

    fn policy() -> Policy {
        let mut policy = Policy::default();
        policy.apply(CLUSTER_ROLES, &json!({"metadata": {"name": "view"}, "rules": [
            {"apiGroups": ["", "apps"], "resources": ["pods", "pods/log", "deployments"], "verbs": ["get", "list", "watch"]}
        ]}), false);
        policy.apply(
            CLUSTER_ROLES,
            &json!({"metadata": {"name": "health"}, "rules": [
                {"nonResourceURLs": ["/healthz", "/apis/*"], "verbs": ["get"]}
            ]}),
            false,
        );
        policy.apply(ROLES, &json!({"metadata": {"name": "cm-one", "namespace": "a"}, "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["one"], "verbs": ["get", "update"]}
        ]}), false);
        policy.apply(ROLE_BINDINGS, &json!({"metadata": {"name": "alice-view", "namespace": "a"},
            "roleRef": {"kind": "ClusterRole", "name": "view", "apiGroup": GROUP},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "robot"}]}), false);
        policy.apply(
            ROLE_BINDINGS,
            &json!({"metadata": {"name": "devs-cm", "namespace": "a"},
            "roleRef": {"kind": "Role", "name": "cm-one", "apiGroup": GROUP},
            "subjects": [{"kind": "Group", "name": "devs"}]}),
            false,
        );
        policy.apply(
            CLUSTER_ROLE_BINDINGS,
            &json!({"metadata": {"name": "health"},
            "roleRef": {"kind": "ClusterRole", "name": "health", "apiGroup": GROUP},
            "subjects": [{"kind": "Group", "name": "system:authenticated"}]}),
            false,
        );
        policy
    }

    #[test]
    fn bindings_grant_their_roles_rules_in_their_namespace_only() {
        let policy = policy();
        let alice = user("alice", &[]);
        let allowed = |u: &UserInfo, r: RequestInfo| policy.authorize(u, &r) == Decision::Allow;
        assert!(allowed(&alice, request("list", "", "a", "pods", "")));
        assert!(allowed(&alice, request("get", "", "a", "pods/log", "p")));
        assert!(allowed(
            &alice,
            request("watch", "apps", "a", "deployments", "")
        ));
        assert!(!allowed(&alice, request("create", "", "a", "pods", "")));
        assert!(!allowed(&alice, request("list", "", "b", "pods", "")));
        assert!(
            !allowed(&alice, request("list", "", "", "pods", "")),
            "cluster-wide list"
        );
        assert!(!allowed(&alice, request("get", "", "a", "pods/exec", "p")));
        assert!(
            !allowed(&alice, request("list", "batch", "a", "pods", "")),
            "wrong group"
        );
        // A ServiceAccount subject without a namespace is the binding's namespace's.
        let robot = user("system:serviceaccount:a:robot", &[]);
        assert!(allowed(&robot, request("get", "", "a", "pods", "p")));
        let other_robot = user("system:serviceaccount:b:robot", &[]);
        assert!(!allowed(&other_robot, request("get", "", "a", "pods", "p")));
        // Resource names restrict.
        let dev = user("bob", &["devs"]);
        assert!(allowed(&dev, request("get", "", "a", "configmaps", "one")));
        assert!(!allowed(&dev, request("get", "", "a", "configmaps", "two")));
        assert!(!allowed(&dev, request("list", "", "a", "configmaps", "")));
        // Non-resource URLs, exact and by prefix, through cluster bindings only.
        let path = |p: &str| RequestInfo {
            path: p.into(),
            verb: "get".into(),
            ..RequestInfo::default()
        };
        assert!(allowed(&dev, path("/healthz")));
        assert!(allowed(&dev, path("/apis/apps/v1")));
        assert!(!allowed(&dev, path("/metrics")));
        assert!(!allowed(&UserInfo::anonymous(), path("/healthz")));
        assert!(allowed(
            &UserInfo::in_process(),
            request("delete", "", "z", "secrets", "s")
        ));
    }

    #[test]
    fn bindings_and_roles_can_change_and_go() {
        let mut policy = policy();
        let alice = user("alice", &[]);
        let list_pods = request("list", "", "a", "pods", "");
        policy.apply(ROLE_BINDINGS, &json!({"metadata": {"name": "alice-view", "namespace": "a"},
            "roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "User", "name": "carol"}]}), false);
        assert_eq!(policy.authorize(&alice, &list_pods), Decision::Deny);
        assert_eq!(
            policy.authorize(&user("carol", &[]), &list_pods),
            Decision::Allow
        );
        policy.apply(CLUSTER_ROLES, &json!({"metadata": {"name": "view"}}), true);
        assert_eq!(
            policy.authorize(&user("carol", &[]), &list_pods),
            Decision::Deny
        );
    }

    #[test]
    fn escalation_is_what_the_owner_does_not_cover() {
        let owner = vec![Rule {
            verbs: vec!["get".into(), "list".into()],
            api_groups: vec!["".into()],
            resources: vec!["pods".into(), "*/status".into()],
            ..Rule::default()
        }];
        let asked = |verbs: &[&str], resources: &[&str], names: &[&str]| Rule {
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            api_groups: vec!["".into()],
            resources: resources.iter().map(|s| s.to_string()).collect(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Rule::default()
        };
        assert!(uncovered(&owner, &[asked(&["get"], &["pods"], &[])]).is_empty());
        assert!(uncovered(&owner, &[asked(&["list"], &["pods"], &["x"])]).is_empty());
        assert!(uncovered(&owner, &[asked(&["get"], &["services/status"], &[])]).is_empty());
        assert_eq!(
            uncovered(&owner, &[asked(&["get", "delete"], &["pods"], &[])]).len(),
            1
        );
        assert_eq!(uncovered(&owner, &[asked(&["get"], &["*"], &[])]).len(), 1);
        assert_eq!(uncovered(&owner, &[asked(&["*"], &["pods"], &[])]).len(), 1);
        let admin = vec![Rule {
            verbs: vec!["*".into()],
            api_groups: vec!["*".into()],
            resources: vec!["*".into()],
            ..Rule::default()
        }];
        assert!(uncovered(&admin, &[asked(&["*"], &["*"], &[])]).is_empty());
        let url = Rule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/metrics".into()],
            ..Rule::default()
        };
        assert_eq!(
            uncovered(&admin, std::slice::from_ref(&url)).len(),
            1,
            "resource rules grant no URLs"
        );
    }

    #[test]
    fn rules_for_lists_what_a_user_holds() {
        let policy = policy();
        let rules = policy.rules_for(&user("bob", &["devs"]), "a");
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert!(rules
            .iter()
            .any(|r| r.resource_names == vec!["one".to_string()]));
        assert!(rules.iter().any(|r| !r.non_resource_urls.is_empty()));
    }
}
