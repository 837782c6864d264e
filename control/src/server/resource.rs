//! The generic verbs on resource URLs: create (admission: decode, defaults, validation, the
//! kinds' own preparation), list, replace, patch and delete. One code path for every
//! resource; objects are JSON. Kinds with their own rules (pods, namespaces, services) are
//! called from here; they reach the store through [`super::objects`], never back here.

use std::sync::Arc;

use axum::body::Bytes;
use axum::response::Response;
use http::StatusCode;
use serde_json::{json, Value};

use super::error::{ApiError, Result};
use super::request::Request;
use super::{
    apply, certificates, escalation, json_response, namespaces, nodes, pods, services, ApiServer,
};
use crate::api::custom::crd;
use crate::api::resources::ResourceInfo;
use crate::api::{object, patch};
use crate::store::{revision_of, ObjectKey};

impl ApiServer {
    pub(super) fn respond_object(
        &self,
        request: &Request,
        code: StatusCode,
        object: &Value,
    ) -> Response {
        if request.wants_table {
            let revision = revision_of(object).unwrap_or(0);
            return json_response(code, &request.resource().table(&[object], revision, false));
        }
        json_response(code, &request.resource().present(object))
    }

    pub(super) async fn create(self: &Arc<Self>, request: &Request) -> Result<Response> {
        let resource = request.resource();
        let object = request.decode_body()?;
        check_type(resource, &object)?;
        let mut object = resource.to_stored(object);
        if resource.custom.is_some() {
            self.check_crd_not_terminating(resource)?;
            prune_unknown_fields(request, resource, &mut object)?;
        }
        let namespace = request.path.namespace.clone().unwrap_or_default();
        if resource.namespaced {
            let in_body = object::namespace(&object);
            if !in_body.is_empty() && in_body != namespace {
                return Err(ApiError::BadRequest(format!(
                    "the namespace of the provided object ({in_body}) does not match the namespace sent on the request ({namespace})"
                )));
            }
            object::metadata_mut(&mut object)
                .insert("namespace".into(), Value::String(namespace.clone()));
            namespaces::check_accepts_content(self, &namespace)?;
        } else {
            object::metadata_mut(&mut object).remove("namespace");
        }
        resource.prepare_for_create(&mut object);
        match resource.builtin_kind() {
            "Pod" => {
                // Ephemeral containers are added to running pods (`kubectl debug`), never
                // created with one, as on Kubernetes.
                let ephemeral = object.pointer("/spec/ephemeralContainers");
                if ephemeral
                    .and_then(Value::as_array)
                    .is_some_and(|l| !l.is_empty())
                {
                    return Err(ApiError::Invalid {
                        kind: resource.kind.into(),
                        name: object::name(&object).into(),
                        causes: vec![crate::api::validation::Cause::forbidden(
                            "spec.ephemeralContainers",
                            "cannot be set on create",
                        )],
                    });
                }
                pods::prepare_create(&mut object);
                pods::admit_service_account(self, &namespace, &mut object);
                self.admit_limit_ranges(&namespace, &mut object)?;
                self.admit_priority(&mut object)?;
            }
            "PriorityClass" => self.check_single_default(&object)?,
            "Node" => nodes::stamp_agent_endpoint(request, None, &mut object),
            "CertificateSigningRequest" => certificates::prepare_create(request, &mut object)?,
            "CustomResourceDefinition" => {
                crd::prepare_create(&mut object);
                crd::set_status(None, &mut object);
            }
            _ => {}
        }
        // Services take addresses and ports from shared ranges: one allocation at a time,
        // held until the Service is stored.
        let _allocating_service = if resource.builtin_kind() == "Service" {
            let guard = self.service_allocation.lock().await;
            if resource.validate(&object).is_empty() {
                services::allocate(self, &mut object)?;
                services::check_target_ports(self, &object)?;
            }
            Some(guard)
        } else {
            None
        };
        // Nodes likewise take a pod CIDR.
        let _allocating_node_cidr = if resource.builtin_kind() == "Node" {
            let mut allocator = self.node_cidr_allocation.lock().await;
            allocator.assign(&mut object, self.options.node_cidr_mask, || {
                let nodes = self.store.list("nodes", None);
                let nodes = nodes.map_err(|e| ApiError::from_store(e, "nodes", ""))?;
                Ok(nodes.objects)
            })?;
            Some(allocator)
        } else {
            None
        };
        let name = object::name(&object).to_string();
        let causes = resource.validate(&object);
        if !causes.is_empty() {
            return Err(ApiError::Invalid {
                kind: resource.kind.into(),
                name,
                causes,
            });
        }
        let applying = request.content_type.contains("apply-patch");
        let manager = apply::manager(request, applying)?;
        if applying {
            apply::record_apply_create(resource, &mut object, &manager);
        } else {
            apply::record_update(resource, None, &mut object, &manager, "");
        }
        escalation::check(self, request, &object)?;
        escalation::node_restriction(request, &object)?;
        let key = ObjectKey::new(&resource.store_name(), &namespace, &name);
        let dry_run = request.query.dry_run();
        let stored = self
            .create_charged(resource, &namespace, key, object, dry_run)
            .await?;
        if dry_run {
            return Ok(self.respond_object(request, StatusCode::CREATED, &stored));
        }
        self.settle(request, &stored).await;
        Ok(self.respond_object(request, StatusCode::CREATED, &stored))
    }

    pub(super) async fn replace(self: &Arc<Self>, request: &Request) -> Result<Response> {
        let new = request.decode_body()?;
        check_type(request.resource(), &new)?;
        let new = request.resource().to_stored(new);
        let body_name = object::name(&new);
        if !body_name.is_empty() && body_name != request.name() {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({})",
                request.name()
            )));
        }
        let precondition = revision_of(&new);
        let current = self.get_object(&request.key())?;
        let merged = prepare_update(request, &current, new)?;
        self.commit_update(request, merged, precondition.or(revision_of(&current)))
            .await
    }

    pub(super) async fn patch(self: &Arc<Self>, request: &Request) -> Result<Response> {
        let patch_body: Value = serde_json::from_slice(&request.body)
            .or_else(|_| serde_yaml::from_slice(&request.body))
            .map_err(|e| {
                ApiError::BadRequest(format!("the patch is not valid JSON or YAML: {e}"))
            })?;
        let server_side_apply = request.content_type.contains("apply-patch");
        for _attempt in 0..16 {
            let current = match self.get_object(&request.key()) {
                Err(ApiError::NotFound { .. })
                    if server_side_apply && request.path.subresource.is_none() =>
                {
                    // The content type stays the apply's (its YAML reader takes the JSON), so
                    // create records an Apply.
                    let create = Request {
                        body: Bytes::from(patch_body.to_string()),
                        content_type: request.content_type.clone(),
                        query: super::query::Query::parse(request.raw_query.as_deref()),
                        raw_query: request.raw_query.clone(),
                        ..request.duplicate()
                    };
                    return self.create(&create).await;
                }
                other => other?,
            };
            // A patch applies to the object as this API shows it.
            let shown = request.resource().present(&current).into_owned();
            let mut patched = shown.clone();
            let content_type = request.content_type.as_str();
            if content_type.contains("json-patch") {
                patch::json_patch(&mut patched, &patch_body)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            } else if server_side_apply {
                let manager = apply::manager(request, true)?;
                let force = request.query.get("force") == Some("true");
                patched = apply::apply(request.resource(), &shown, &patch_body, &manager, force)?;
            } else if content_type.contains("strategic-merge-patch")
                && request.resource().custom.is_some()
            {
                return Err(ApiError::UnsupportedMediaType(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into(),
                ));
            } else if content_type.contains("strategic-merge-patch") {
                patch::strategic_merge_patch(&mut patched, &patch_body);
            } else if content_type.contains("merge-patch") {
                patch::merge_patch(&mut patched, &patch_body);
            } else {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "the body of the request was in an unknown format {content_type:?}; accepted: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
                )));
            }
            let patched = request.resource().to_stored(patched);
            // A resourceVersion the patch sets is a precondition, as on Kubernetes
            // (`kubectl label --resource-version`, a JSON patch's "replace" of it).
            let wanted = object::str_at(&patched, "/metadata/resourceVersion");
            let now = object::str_at(&current, "/metadata/resourceVersion");
            if !wanted.is_empty() && wanted != now {
                return Err(ApiError::Conflict {
                    resource: request.resource().qualified_plural(),
                    name: request.name().into(),
                    why: "the object has been modified; please apply your changes to the latest version and try again".into(),
                });
            }
            let merged = prepare_update(request, &current, patched)?;
            match self
                .commit_update(request, merged, revision_of(&current))
                .await
            {
                Err(ApiError::Conflict { .. }) => continue,
                other => return other,
            }
        }
        Err(ApiError::Conflict {
            resource: request.resource().qualified_plural(),
            name: request.name().into(),
            why: "too many concurrent writers".into(),
        })
    }

    async fn commit_update(
        self: &Arc<Self>,
        request: &Request,
        object: Value,
        precondition: Option<u64>,
    ) -> Result<Response> {
        escalation::check(self, request, &object)?;
        escalation::node_restriction(request, &object)?;
        certificates::check_signer(self, request, &object)?;
        if request.resource().builtin_kind() == "PriorityClass" {
            self.check_single_default(&object)?;
        }
        if request.query.dry_run() {
            return Ok(self.respond_object(request, StatusCode::OK, &object));
        }
        let resource = request.resource();
        let stored = self
            .store
            .update(request.key(), object, precondition)
            .await
            .map_err(|e| ApiError::from_store(e, &resource.qualified_plural(), request.name()))?;
        self.settle(request, &stored).await;
        // An object marked for deletion goes once its last finalizer is removed. Pods are
        // the exception: their node agent finishes their deletion.
        let finalizers = stored
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let marked = stored
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|t| !t.is_null());
        if marked && finalizers == 0 && !matches!(resource.builtin_kind(), "Pod" | "Namespace") {
            let _ = self.store.delete(request.key(), revision_of(&stored)).await;
        }
        Ok(self.respond_object(request, StatusCode::OK, &stored))
    }

    pub(super) async fn delete(self: &Arc<Self>, request: &Request) -> Result<Response> {
        let options: Value = if request.body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(&request.body)
                .map_err(|e| ApiError::BadRequest(format!("invalid DeleteOptions: {e}")))?
        };
        let grace = match options.get("gracePeriodSeconds").and_then(Value::as_i64) {
            Some(g) => Some(g),
            None => request.query.number("gracePeriodSeconds")?,
        };
        let current = self.get_object(&request.key())?;
        if let Some(uid) = options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
        {
            if uid != object::uid(&current) {
                return Err(ApiError::Conflict {
                    resource: request.resource().qualified_plural(),
                    name: request.name().into(),
                    why: format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        object::uid(&current)
                    ),
                });
            }
        }
        let precondition = options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|v| v.parse().ok());
        if request.query.dry_run() {
            return Ok(json_response(StatusCode::OK, &current));
        }
        match request.resource().builtin_kind() {
            "Pod" => return pods::delete(self, request, current, grace, precondition).await,
            "Namespace" => return namespaces::delete(self, request, current).await,
            _ => {}
        }
        let has_finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            let mut marked = current.clone();
            if marked.pointer("/metadata/deletionTimestamp").is_none() {
                object::metadata_mut(&mut marked)
                    .insert("deletionTimestamp".into(), json!(object::now_rfc3339()));
            }
            if request.resource().builtin_kind() == "CustomResourceDefinition" {
                crd::set_status(Some(&current), &mut marked);
            }
            return self
                .commit_update(request, marked, revision_of(&current))
                .await;
        }
        let policy = match options.get("propagationPolicy").and_then(Value::as_str) {
            Some(policy) => Some(policy.to_string()),
            None => request.query.get("propagationPolicy").map(str::to_string),
        };
        if policy.as_deref() == Some("Foreground") {
            // The owner stays, marked, until the garbage collector has deleted its dependents
            // and removed this finalizer (`controllers/gc.rs`).
            let mut marked = current.clone();
            let meta = object::metadata_mut(&mut marked);
            meta.insert("deletionTimestamp".into(), json!(object::now_rfc3339()));
            meta.insert("finalizers".into(), json!([object::FOREGROUND_FINALIZER]));
            return self
                .commit_update(request, marked, precondition.or(revision_of(&current)))
                .await;
        }
        if policy.as_deref() == Some("Orphan") {
            // Mark the owner first: its controller must not adopt the pods being orphaned.
            let mut marked = current.clone();
            object::metadata_mut(&mut marked)
                .insert("deletionTimestamp".into(), json!(object::now_rfc3339()));
            let marked = self
                .store
                .update(
                    request.key(),
                    marked,
                    precondition.or(revision_of(&current)),
                )
                .await
                .map_err(|e| {
                    ApiError::from_store(e, &request.resource().qualified_plural(), request.name())
                })?;
            self.orphan_dependents(request.namespace(), object::uid(&current))
                .await?;
            return self.delete_now(request, revision_of(&marked)).await;
        }
        self.delete_now(request, precondition).await
    }

    /// Removes owner references to `owner_uid` from the pods and ReplicaSets of `namespace`
    /// (orphan propagation: the dependents outlive their owner).
    async fn orphan_dependents(&self, namespace: &str, owner_uid: &str) -> Result<()> {
        for resource in DEPENDENT_RESOURCES {
            let listing = self
                .store
                .list(resource, Some(namespace))
                .map_err(|e| ApiError::from_store(e, resource, ""))?;
            for dependent in listing.objects {
                let refs = dependent
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if !refs.iter().any(|r| r["uid"] == owner_uid) {
                    continue;
                }
                let kept: Vec<Value> = refs.into_iter().filter(|r| r["uid"] != owner_uid).collect();
                let mut updated = dependent.clone();
                object::metadata_mut(&mut updated)
                    .insert("ownerReferences".into(), Value::Array(kept));
                let key = ObjectKey::new(resource, namespace, object::name(&dependent));
                self.store
                    .update(key, updated, revision_of(&dependent))
                    .await
                    .map_err(|e| ApiError::from_store(e, resource, object::name(&dependent)))?;
            }
        }
        Ok(())
    }
}

/// The store names of the resources that have owners (what orphaning must visit).
const DEPENDENT_RESOURCES: [&str; 6] = [
    "pods",
    "replicasets.apps",
    "jobs.batch",
    "controllerrevisions.apps",
    "persistentvolumeclaims",
    "replicationcontrollers",
];

/// Rejects a body whose `apiVersion`/`kind` name another resource than the URL.
fn check_type(resource: &ResourceInfo, object: &Value) -> Result<()> {
    let kind = object::str_at(object, "/kind");
    let api_version = object::str_at(object, "/apiVersion");
    if (!kind.is_empty() && kind != resource.kind)
        || (!api_version.is_empty() && api_version != resource.api_version())
    {
        return Err(ApiError::BadRequest(format!(
            "the API version in the data ({api_version}) and kind ({kind}) do not match the resource {} ({}, {})",
            resource.qualified_plural(),
            resource.api_version(),
            resource.kind
        )));
    }
    Ok(())
}

/// Builds the object an update stores: the main resource takes the new spec and metadata but
/// keeps the status; `/status` takes only the new status, `/approval` only the new
/// conditions. Identity fields never change.
fn prepare_update(request: &Request, current: &Value, new: Value) -> Result<Value> {
    let resource = request.resource();
    let subresource = request.path.subresource.as_deref();
    let mut merged = if subresource == Some("status") {
        let mut merged = current.clone();
        object::set_at(
            &mut merged,
            "/status",
            new.get("status").cloned().unwrap_or(json!({})),
        );
        merged
    } else if subresource == Some("ephemeralcontainers") {
        // A pod's ephemeral containers and nothing else (`kubectl debug`); the pod's update
        // validation checks they are only ever added.
        let mut merged = current.clone();
        object::set_at(
            &mut merged,
            "/spec/ephemeralContainers",
            new.pointer("/spec/ephemeralContainers")
                .cloned()
                .unwrap_or(json!([])),
        );
        merged
    } else if subresource == Some("approval") {
        // A CertificateSigningRequest's approval: its conditions and nothing else.
        let mut merged = current.clone();
        object::set_at(
            &mut merged,
            "/status/conditions",
            new.pointer("/status/conditions")
                .cloned()
                .unwrap_or(json!([])),
        );
        merged
    } else {
        let mut merged = new;
        if resource.has_subresource("ephemeralcontainers")
            && merged.pointer("/spec/ephemeralContainers")
                != current.pointer("/spec/ephemeralContainers")
        {
            return Err(ApiError::Invalid {
                kind: resource.kind.into(),
                name: request.name().into(),
                causes: vec![crate::api::validation::Cause::forbidden(
                    "spec.ephemeralContainers",
                    "ephemeral containers are added through the pod's ephemeralcontainers subresource",
                )],
            });
        }
        if resource.has_subresource("status") {
            match current.get("status") {
                Some(status) => object::set_at(&mut merged, "/status", status.clone()),
                None => {
                    merged.as_object_mut().map(|m| m.remove("status"));
                }
            }
        }
        let spec_changed = merged.get("spec") != current.get("spec");
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let meta = object::metadata_mut(&mut merged);
        meta.insert(
            "generation".into(),
            json!(if spec_changed {
                generation + 1
            } else {
                generation
            }),
        );
        merged
    };
    let meta = object::metadata_mut(&mut merged);
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "name",
        "namespace",
    ] {
        match current.pointer(&format!("/metadata/{field}")) {
            Some(value) => meta.insert(field.into(), value.clone()),
            None => meta.remove(field),
        };
    }
    meta.remove("resourceVersion");
    if let Some(map) = merged.as_object_mut() {
        map.insert("apiVersion".into(), json!(resource.storage_api_version()));
        map.insert("kind".into(), json!(resource.kind));
    }
    if resource.custom.is_some() {
        prune_unknown_fields(request, resource, &mut merged)?;
    }
    if resource.builtin_kind() == "Node" {
        nodes::stamp_agent_endpoint(request, Some(current), &mut merged);
    }
    resource.apply_defaults(&mut merged);
    if resource.builtin_kind() == "CustomResourceDefinition" {
        crd::set_status(Some(current), &mut merged);
    }
    // An apply computed its managed fields already.
    if !request.content_type.contains("apply-patch") {
        let manager = apply::manager(request, false)?;
        apply::record_update(
            resource,
            Some(current),
            &mut merged,
            &manager,
            subresource.unwrap_or(""),
        );
    }
    let causes = resource.validate_update(current, &merged);
    if !causes.is_empty() {
        return Err(ApiError::Invalid {
            kind: resource.kind.into(),
            name: request.name().into(),
            causes,
        });
    }
    Ok(merged)
}

/// Drops the fields a custom resource's schema does not declare. With
/// `fieldValidation=Strict` (kubectl's default) an unknown field is an error naming it, as
/// kube-apiserver's strict decoding; otherwise they are dropped silently.
fn prune_unknown_fields(
    request: &Request,
    resource: &ResourceInfo,
    object: &mut Value,
) -> Result<()> {
    let Some(custom) = resource.custom else {
        return Ok(());
    };
    let unknown = custom.schema.prune(object);
    if unknown.is_empty() || request.query.get("fieldValidation") != Some("Strict") {
        return Ok(());
    }
    let fields: Vec<String> = unknown
        .iter()
        .map(|field| format!("unknown field {:?}", field))
        .collect();
    Err(ApiError::BadRequest(format!(
        "{} in version {:?} cannot be handled as a {}: strict decoding error: {}",
        resource.kind,
        resource.version,
        resource.kind,
        fields.join(", ")
    )))
}
