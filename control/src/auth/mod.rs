//! Who is asking, and may they: the cluster PKI ([`pki`]), TLS serving with client
//! certificates ([`tls`]), authentication of a request ([`authn`]: x509, bearer tokens,
//! anonymous, in Kubernetes' order), ServiceAccount and bootstrap tokens ([`tokens`]), the
//! attributes a request is authorized on ([`request_info`]), the Node authorizer ([`node`]),
//! RBAC ([`rbac`]) and the roles every cluster starts with ([`policy`]).
//!
//! The API server's middleware (`server::guard`) puts these together; nothing here knows the
//! server.

pub mod authn;
pub mod node;
pub mod pki;
pub mod policy;
pub mod rbac;
pub mod request_info;
pub mod tls;
pub mod tokens;

use std::collections::BTreeMap;

/// The user a request is made as (Kubernetes' `user.Info`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UserInfo {
    pub username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Members of this group may do anything (Kubernetes' privileged group).
pub const SUPERUSER_GROUP: &str = "system:masters";
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
pub const ANONYMOUS_USER: &str = "system:anonymous";

impl UserInfo {
    /// An authenticated user: `groups` plus `system:authenticated`.
    pub fn authenticated(username: impl Into<String>, groups: Vec<String>) -> Self {
        let mut groups = groups;
        if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            groups.push(AUTHENTICATED_GROUP.to_string());
        }
        Self {
            username: username.into(),
            groups,
            ..Self::default()
        }
    }

    pub fn anonymous() -> Self {
        Self {
            username: ANONYMOUS_USER.to_string(),
            groups: vec![UNAUTHENTICATED_GROUP.to_string()],
            ..Self::default()
        }
    }

    /// The control plane's own parts in this process (controllers, scheduler, in-process
    /// agents): they call the API without a socket and act as a superuser.
    pub fn in_process() -> Self {
        Self::authenticated("system:apiserver", vec![SUPERUSER_GROUP.to_string()])
    }

    pub fn is_superuser(&self) -> bool {
        self.groups.iter().any(|g| g == SUPERUSER_GROUP)
    }

    pub fn is_anonymous(&self) -> bool {
        self.username == ANONYMOUS_USER
    }
}
