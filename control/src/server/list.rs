//! Lists: `resourceVersion` and `resourceVersionMatch` (which state to read), `limit` and
//! `continue` (pages), label and field selectors, as kube-apiserver answers them.
//!
//! A continue token is kube-apiserver's own form: base64 (URL-safe, unpadded) of
//! `{"v":"meta.k8s.io/v1","rv":<revision>,"start":"<last key>\u0000"}`, the key relative to
//! the list's prefix. Every page is read at the first page's revision; when the store can no
//! longer read it, the answer is 410 with a token (`rv: -1`) that continues from the same key
//! at the latest state, as kube-apiserver does.

use axum::response::IntoResponse;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::{ApiError, Result};
use super::query::Query;
use super::request::Request;
use super::{json_response, ApiServer};
use crate::store::{self, PageRequest, ReadAt};

/// What a list request asks for, decoded from its query.
#[derive(Debug, PartialEq)]
struct ListOptions {
    at: ReadAt,
    after: Option<String>,
    limit: Option<usize>,
    /// Whether this continues an earlier list (a gone revision then answers with a token).
    continued: bool,
}

#[derive(Serialize, Deserialize)]
struct ContinueToken {
    v: String,
    rv: i64,
    start: String,
}

const TOKEN_VERSION: &str = "meta.k8s.io/v1";

/// The token that continues a list after `after`, at `revision` (`-1`: at the latest).
fn encode_continue(revision: i64, after: &str) -> String {
    let token = ContinueToken {
        v: TOKEN_VERSION.into(),
        rv: revision,
        start: format!("{after}\0"),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).expect("a token always serializes"))
}

/// The revision (`None`: the latest) and key a continue token holds.
fn decode_continue(token: &str) -> Result<(Option<u64>, String)> {
    let invalid = |why: &str| ApiError::BadRequest(format!("continue key is not valid: {why}"));
    let bytes = URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| invalid("not base64"))?;
    let token: ContinueToken =
        serde_json::from_slice(&bytes).map_err(|_| invalid("not a continue token"))?;
    if token.v != TOKEN_VERSION {
        return Err(invalid(&format!("unsupported version {:?}", token.v)));
    }
    let after = token
        .start
        .strip_suffix('\0')
        .filter(|after| !after.is_empty())
        .ok_or_else(|| invalid("no start key"))?;
    let revision = match token.rv {
        -1 => None,
        rv if rv > 0 => Some(rv as u64),
        _ => return Err(invalid("incorrect encoded start resourceVersion")),
    };
    Ok((revision, after.to_string()))
}

fn options(query: &Query) -> Result<ListOptions> {
    let version = query.get("resourceVersion").unwrap_or("");
    let version_match = query.get("resourceVersionMatch").unwrap_or("");
    // `limit` of zero or less means no limit, as on Kubernetes.
    let limit = query
        .number("limit")?
        .filter(|&limit| limit > 0)
        .map(|limit| usize::try_from(limit).unwrap_or(usize::MAX));
    if let Some(token) = query.get("continue").filter(|token| !token.is_empty()) {
        if !version.is_empty() && version != "0" {
            return Err(ApiError::BadRequest(
                "specifying resource version is not allowed when using continue".into(),
            ));
        }
        if !version_match.is_empty() {
            return Err(ApiError::BadRequest(
                "resourceVersionMatch is forbidden when continue is provided".into(),
            ));
        }
        let (revision, after) = decode_continue(token)?;
        return Ok(ListOptions {
            at: revision.map_or(ReadAt::Consistent, ReadAt::Exact),
            after: Some(after),
            limit,
            continued: true,
        });
    }
    let revision = match version {
        "" => None,
        v => Some(v.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!("invalid resourceVersion {v:?}: must be an integer"))
        })?),
    };
    let at = match (version_match, revision) {
        (_, None) if !version_match.is_empty() => {
            return Err(ApiError::BadRequest(
                "resourceVersionMatch is forbidden unless resourceVersion is provided".into(),
            ))
        }
        (_, None) => ReadAt::Consistent,
        ("" | "NotOlderThan", Some(0)) => ReadAt::Any,
        ("Exact", Some(0)) => {
            return Err(ApiError::BadRequest(
                "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"".into(),
            ))
        }
        // Before resourceVersionMatch, a version with a limit meant exactly that version.
        ("", Some(n)) if limit.is_some() => ReadAt::Exact(n),
        ("", Some(n)) | ("NotOlderThan", Some(n)) => ReadAt::NotOlderThan(n),
        ("Exact", Some(n)) => ReadAt::Exact(n),
        (other, Some(_)) => {
            return Err(ApiError::BadRequest(format!(
                "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
            )))
        }
    };
    Ok(ListOptions {
        at,
        after: None,
        limit,
        continued: false,
    })
}

impl ApiServer {
    pub(super) async fn list(&self, request: &Request) -> Result<axum::response::Response> {
        let resource = request.resource();
        let labels = request.query.label_selector()?;
        let fields = request.query.field_selector()?;
        let options = options(&request.query)?;
        let filter = |object: &Value| labels.matches_object(object) && fields.matches(object);
        let page = self
            .store
            .list_page(PageRequest {
                resource: &resource.store_name(),
                namespace: request.path.namespace.as_deref(),
                at: options.at,
                after: options.after.as_deref(),
                limit: options.limit,
                filter: &filter,
            })
            .await;
        let page = match (page, &options.after) {
            (Err(store::Error::Gone { .. }), Some(after)) if options.continued => {
                return Err(ApiError::ContinueExpired {
                    continue_token: encode_continue(-1, after),
                })
            }
            (page, _) => {
                page.map_err(|e| ApiError::from_store(e, &resource.qualified_plural(), ""))?
            }
        };
        let mut metadata = json!({"resourceVersion": page.revision.to_string()});
        if let Some(next) = &page.next {
            metadata["continue"] = json!(encode_continue(page.revision as i64, next));
            // As on Kubernetes, only an unfiltered list knows how many items remain.
            if labels.is_empty() && fields.is_empty() {
                metadata["remainingItemCount"] = json!(page.remaining);
            }
        }
        if request.wants_table {
            let include_object = request.query.get("includeObject") == Some("Object");
            let objects: Vec<&Value> = page.objects.iter().map(|o| &**o).collect();
            let mut table = resource.table(&objects, page.revision, include_object);
            table["metadata"] = metadata;
            return Ok(json_response(StatusCode::OK, &table));
        }
        // Serialized straight from the shared objects: no copy of the list is built (but
        // for custom resources read at a version they are not stored at).
        #[derive(Serialize)]
        struct List<'a> {
            kind: String,
            #[serde(rename = "apiVersion")]
            api_version: String,
            metadata: Value,
            items: Vec<std::borrow::Cow<'a, Value>>,
        }
        let list = List {
            kind: format!("{}List", resource.kind),
            api_version: resource.api_version(),
            metadata,
            items: page.objects.iter().map(|o| resource.present(o)).collect(),
        };
        let bytes = serde_json::to_vec(&list).expect("a list always serializes");
        Ok((
            StatusCode::OK,
            [(http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<ListOptions> {
        options(&Query::parse(Some(query)))
    }

    #[test]
    fn resource_versions_mean_what_they_mean_on_kubernetes() {
        let at = |query: &str| parse(query).unwrap().at;
        assert_eq!(at(""), ReadAt::Consistent);
        assert_eq!(at("resourceVersion=0"), ReadAt::Any);
        assert_eq!(at("resourceVersion=0&limit=5"), ReadAt::Any);
        assert_eq!(at("resourceVersion=7"), ReadAt::NotOlderThan(7));
        assert_eq!(at("resourceVersion=7&limit=5"), ReadAt::Exact(7));
        assert_eq!(
            at("resourceVersion=7&resourceVersionMatch=NotOlderThan&limit=5"),
            ReadAt::NotOlderThan(7)
        );
        assert_eq!(
            at("resourceVersion=7&resourceVersionMatch=Exact"),
            ReadAt::Exact(7)
        );
        for bad in [
            "resourceVersionMatch=Exact",
            "resourceVersion=0&resourceVersionMatch=Exact",
            "resourceVersion=7&resourceVersionMatch=Newest",
            "resourceVersion=seven",
            "limit=many",
        ] {
            assert!(matches!(parse(bad), Err(ApiError::BadRequest(_))), "{bad}");
        }
    }

    #[test]
    fn continue_tokens_round_trip_and_bad_ones_are_refused() {
        let token = encode_continue(42, "default/web-1");
        let options = parse(&format!("limit=2&continue={token}")).unwrap();
        assert_eq!(
            options,
            ListOptions {
                at: ReadAt::Exact(42),
                after: Some("default/web-1".into()),
                limit: Some(2),
                continued: true,
            }
        );
        let latest = parse(&format!("continue={}", encode_continue(-1, "a"))).unwrap();
        assert_eq!(latest.at, ReadAt::Consistent);
        for bad in [
            "continue=%%%".to_string(),
            format!("continue={}", URL_SAFE_NO_PAD.encode("{}")),
            format!(
                "continue={}",
                URL_SAFE_NO_PAD.encode(r#"{"v":"meta.k8s.io/v1","rv":0,"start":"a\u0000"}"#)
            ),
            format!(
                "continue={}",
                URL_SAFE_NO_PAD.encode(r#"{"v":"meta.k8s.io/v1","rv":3,"start":""}"#)
            ),
            format!("continue={token}&resourceVersion=42"),
            format!("continue={token}&resourceVersionMatch=Exact"),
        ] {
            assert!(matches!(parse(&bad), Err(ApiError::BadRequest(_))), "{bad}");
        }
    }
}
