//! Which handler serves a request on a resource URL: the generic verbs, watch, or a
//! subresource (pod and node proxy, log, portforward, exec, attach, ephemeralcontainers, scale, binding, eviction, finalize, status, approval), or
//! an access review.

use std::sync::Arc;

use axum::response::Response;
use http::{Method, StatusCode};

use super::error::{ApiError, Result};
use super::request::Request;
use super::{connect, namespaces, nodes, pods, reviews, scale, serviceaccounts, ApiServer};

impl ApiServer {
    pub(super) async fn serve(self: &Arc<Self>, request: Request) -> Result<Response> {
        let has_name = request.path.name.is_some();
        let sub = request.path.subresource.clone();
        if request.resource().is_review() {
            return match (&request.method, has_name) {
                (&Method::POST, false) => reviews::create(self, &request).await,
                (method, _) => Err(ApiError::MethodNotAllowed(format!(
                    "{method} {}",
                    request.resource().plural
                ))),
            };
        }
        match sub.as_deref() {
            Some("portforward") if has_name => return connect::port_forward(self, request).await,
            Some("exec") if has_name => return connect::exec(self, request).await,
            Some("attach") if has_name => return connect::attach(self, request).await,
            _ => {}
        }
        match (&request.method, has_name, sub.as_deref()) {
            (&Method::GET, false, _) if request.query.flag("watch") => self.watch(&request).await,
            (&Method::GET, false, _) => self.list(&request).await,
            (_, true, Some("proxy")) if request.resource().plural == "nodes" => {
                nodes::proxy(self, &request).await
            }
            (_, true, Some("proxy")) => pods::proxy(self, &request).await,
            (&Method::GET, true, Some("log")) => pods::log(self, &request).await,
            (&Method::GET, true, Some("scale")) => scale::get(self, &request),
            (&Method::GET, true, _) => {
                let object = self.get_object(&request.key())?;
                Ok(self.respond_object(&request, StatusCode::OK, &object))
            }
            (&Method::POST, false, _) => self.create(&request).await,
            (&Method::POST, true, Some("binding")) => pods::bind(self, &request).await,
            (&Method::POST, true, Some("eviction")) => pods::evict(self, &request).await,
            (&Method::POST, true, Some("token")) => serviceaccounts::token(self, &request).await,
            (&Method::PUT, true, Some("finalize")) => namespaces::finalize(self, &request).await,
            (&Method::PUT | &Method::PATCH, true, Some("scale")) => {
                scale::update(self, &request).await
            }
            (&Method::PUT, true, None | Some("status" | "approval" | "ephemeralcontainers")) => {
                self.replace(&request).await
            }
            (&Method::PATCH, true, None | Some("status" | "approval" | "ephemeralcontainers")) => {
                self.patch(&request).await
            }
            (&Method::DELETE, true, None) => self.delete(&request).await,
            (method, _, _) => Err(ApiError::MethodNotAllowed(format!(
                "{method} {}",
                request.resource().plural
            ))),
        }
    }
}
