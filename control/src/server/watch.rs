//! `?watch=true`: one JSON event per line over a chunked response (kubectl-wire.md §4).
//! Without a resourceVersion (or with "0") the current objects come first as ADDED events;
//! with one, only changes after it. A compacted revision answers with an ERROR event (410).
//! `sendInitialEvents=true` (a streaming list) sends the state as ADDED events, then a
//! BOOKMARK annotated `k8s.io/initial-events-end`, then the changes. With
//! `allowWatchBookmarks=true` an idle watch gets a BOOKMARK about once a minute, at a revision
//! up to which it has been sent every change (the store's feeds order them with events).

use std::borrow::Cow;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use futures::{stream, StreamExt};
use http::header::CONTENT_TYPE;
use serde_json::{json, Value};

use super::error::{ApiError, Result};
use super::query::Query;
use super::request::Request;
use super::ApiServer;
use crate::store::{self, EventType, PageRequest, ReadAt};

impl ApiServer {
    pub(super) async fn watch(&self, request: &Request) -> Result<Response> {
        if self.stopping.is_cancelled() {
            // An empty watch would be retried at once; an error makes clients back off.
            return Err(ApiError::ServiceUnavailable(
                "the API server is shutting down".into(),
            ));
        }
        let resource = request.resource();
        let labels = request.query.label_selector()?;
        let fields = request.query.field_selector()?;
        let namespace = request.path.namespace.as_deref();
        let wants_table = request.wants_table;
        // An object as this watch shows it: a table row, or the object as its API presents it.
        let encode = move |event_type: &str, object: &Value| -> Bytes {
            let json = if wants_table {
                let revision = store::revision_of(object).unwrap_or(0);
                serde_json::to_vec(&resource.table(&[object], revision, false))
            } else {
                serde_json::to_vec(&*resource.present(object))
            };
            watch_line(event_type, &json.expect("JSON always serializes"))
        };
        // A live event's object shown as stored is encoded once for every watch it goes to.
        let encode_event = move |event_type: &str, event: &store::WatchEvent| -> Bytes {
            match resource.present(&event.object) {
                Cow::Borrowed(_) if !wants_table => watch_line(event_type, &event.object_json()),
                _ => encode(event_type, &event.object),
            }
        };

        let initial_at = initial_read(&request.query)?;
        let (initial, since) = match initial_at {
            None => (Vec::new(), request.query.resource_version()?.unwrap_or(0)),
            Some((at, end_bookmark)) => {
                let filter =
                    |object: &Value| labels.matches_object(object) && fields.matches(object);
                let page = self
                    .store
                    .list_page(PageRequest {
                        resource: &resource.store_name(),
                        namespace,
                        at,
                        after: None,
                        limit: None,
                        filter: &filter,
                    })
                    .await
                    .map_err(|e| ApiError::from_store(e, &resource.qualified_plural(), ""))?;
                let mut initial: Vec<Bytes> =
                    page.objects.iter().map(|o| encode("ADDED", o)).collect();
                if end_bookmark {
                    // The end of the initial events (a streaming list, KEP-3157): a bookmark
                    // at the revision they were read at.
                    initial.push(bookmark_line(resource, page.revision, true));
                }
                (initial, page.revision)
            }
        };
        let live = match self.store.watch(&resource.store_name(), namespace, since) {
            Ok(live) => live,
            Err(e @ store::Error::Gone { .. }) => {
                let status = ApiError::from_store(e, &resource.qualified_plural(), "").status();
                let line = format!("{}\n", json!({"type": "ERROR", "object": status}));
                return Ok(stream_response(stream::iter([Bytes::from(line)]).boxed()));
            }
            Err(e) => return Err(ApiError::from_store(e, &resource.qualified_plural(), "")),
        };
        let plural = resource.qualified_plural();
        let bookmarks = request.query.flag("allowWatchBookmarks");
        let live = live.filter_map(move |event| {
            let line = match event {
                Ok(event) if event.event_type == EventType::Bookmark => {
                    bookmarks.then(|| bookmark_line(resource, event.revision, false))
                }
                Ok(event)
                    if labels.matches_object(&event.object) && fields.matches(&event.object) =>
                {
                    let event_type = match event.event_type {
                        EventType::Added => "ADDED",
                        EventType::Modified => "MODIFIED",
                        EventType::Deleted => "DELETED",
                        EventType::Bookmark => "BOOKMARK",
                    };
                    Some(encode_event(event_type, &event))
                }
                Ok(_) => None,
                Err(e) => {
                    let status = ApiError::from_store(e, &plural, "").status();
                    Some(Bytes::from(format!(
                        "{}\n",
                        json!({"type": "ERROR", "object": status})
                    )))
                }
            };
            futures::future::ready(line)
        });
        // A stopping server ends its watches, as kube-apiserver does on shutdown: clients
        // resume from their last revision elsewhere.
        let events = stream::iter(initial)
            .chain(live)
            .take_until(self.stopping.clone().cancelled_owned());
        let events = match request.query.number("timeoutSeconds")? {
            Some(seconds) if seconds > 0 => events
                .take_until(tokio::time::sleep(Duration::from_secs(seconds as u64)))
                .boxed(),
            _ => events.boxed(),
        };
        Ok(stream_response(events))
    }
}

/// One line of a watch: `{"type": …, "object": …}` around an object already encoded.
fn watch_line(event_type: &str, object_json: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object_json.len() + event_type.len() + 24);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(event_type.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object_json);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

/// A BOOKMARK event at `revision` (kube-apiserver's form: an object of the kind with only
/// its `resourceVersion`), marking the end of the initial events when `initial_end`.
fn bookmark_line(
    resource: &crate::api::resources::ResourceInfo,
    revision: u64,
    initial_end: bool,
) -> Bytes {
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let object = json!({
        "kind": resource.kind,
        "apiVersion": resource.api_version(),
        "metadata": metadata,
    });
    let mut line = serde_json::to_vec(&json!({"type": "BOOKMARK", "object": object}))
        .expect("JSON always serializes");
    line.push(b'\n');
    Bytes::from(line)
}

/// Which state a watch first sends as ADDED events, if any, and whether a bookmark ends them:
/// with `sendInitialEvents=true` (which needs `resourceVersionMatch=NotOlderThan` and
/// bookmarks, as on Kubernetes) the state at least as new as `resourceVersion`; without it,
/// the current state when no `resourceVersion` (or "0") is given, else nothing.
fn initial_read(query: &Query) -> Result<Option<(ReadAt, bool)>> {
    let version = query.resource_version()?;
    if !query.flag("sendInitialEvents") {
        return Ok(match (query.get("resourceVersion"), version) {
            (_, Some(_)) => None,
            (Some("0"), None) => Some((ReadAt::Any, false)),
            (_, None) => Some((ReadAt::Consistent, false)),
        });
    }
    if query.get("resourceVersionMatch") != Some("NotOlderThan") {
        return Err(ApiError::BadRequest(
            "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan".into(),
        ));
    }
    if !query.flag("allowWatchBookmarks") {
        return Err(ApiError::BadRequest(
            "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true".into(),
        ));
    }
    let at = match (query.get("resourceVersion"), version) {
        (_, Some(revision)) => ReadAt::NotOlderThan(revision),
        (Some("0"), None) => ReadAt::Any,
        (_, None) => ReadAt::Consistent,
    };
    Ok(Some((at, true)))
}

fn stream_response(events: futures::stream::BoxStream<'static, Bytes>) -> Response {
    let body = Body::from_stream(events.map(Ok::<_, Infallible>));
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}
