//! Query-string parameters of resource requests, decoded once.

use std::collections::HashMap;

use super::error::{ApiError, Result};
use crate::api::selector::{FieldSelector, LabelSelector};

#[derive(Debug, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        let pairs = url::form_urlencoded::parse(raw.unwrap_or("").as_bytes());
        Self(
            pairs
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    pub fn number(&self, key: &str) -> Result<Option<i64>> {
        self.get(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::BadRequest(format!("query parameter {key}={v:?} must be an integer"))
                })
            })
            .transpose()
    }

    pub fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }

    pub fn label_selector(&self) -> Result<LabelSelector> {
        LabelSelector::parse(self.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::BadRequest(e.to_string()))
    }

    pub fn field_selector(&self) -> Result<FieldSelector> {
        FieldSelector::parse(self.get("fieldSelector").unwrap_or(""))
            .map_err(|e| ApiError::BadRequest(format!("invalid field selector: {e}")))
    }

    /// `resourceVersion` as a revision; empty and "0" mean "any", given as `None`.
    pub fn resource_version(&self) -> Result<Option<u64>> {
        match self.get("resourceVersion") {
            None | Some("") | Some("0") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::BadRequest(format!("invalid resourceVersion {v:?}: must be an integer"))
            }),
        }
    }
}
