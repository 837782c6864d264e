//! Label and field selectors, parsed from their query-string form and matched against objects.
//! Labels: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`.
//! Fields: `path=v`, `path==v`, `path!=v` over the field paths kubectl and controllers use.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unable to parse requirement: {0}")]
pub struct ParseError(pub String);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut requirements = Vec::new();
        for term in split_terms(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_label_term(term)?);
        }
        Ok(Self(requirements))
    }

    /// Whether the selector has no requirements (matches everything).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A label every object this selector matches must carry (its first `k=v` term), for
    /// indexing selectors by label: `None` when it has no such term.
    pub fn required_label(&self) -> Option<(&str, &str)> {
        self.0.iter().find_map(|r| match &r.op {
            Op::Equals(value) => Some((r.key.as_str(), value.as_str())),
            _ => None,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| {
            let value = labels.get(&r.key);
            match &r.op {
                Op::Equals(v) => value == Some(v),
                Op::NotEquals(v) => value != Some(v),
                Op::In(vs) => value.is_some_and(|x| vs.contains(x)),
                Op::NotIn(vs) => value.is_none_or(|x| !vs.contains(x)),
                Op::Exists => value.is_some(),
                Op::DoesNotExist => value.is_none(),
            }
        })
    }

    /// Matches an object's `metadata.labels`.
    pub fn matches_object(&self, object: &Value) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let labels = object
            .pointer("/metadata/labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        self.matches(&labels)
    }
}

/// A structured label selector in its query-string form (`app=web,tier in (a,b),!canary`).
pub fn query_of(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> String {
    let mut terms: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for expression in selector.match_expressions.iter().flatten() {
        let values = expression.values.clone().unwrap_or_default().join(",");
        terms.push(match expression.operator.as_str() {
            "In" => format!("{} in ({values})", expression.key),
            "NotIn" => format!("{} notin ({values})", expression.key),
            "Exists" => expression.key.clone(),
            _ => format!("!{}", expression.key),
        });
    }
    terms.join(",")
}

/// A workload's `spec.selector.matchLabels` as selector text (`app=web,tier=be`), as
/// `kubectl get -o wide` and the Scale subresource show it.
pub fn match_labels_of(workload: &Value) -> String {
    // A ReplicationController's selector is the label map itself.
    let labels = match workload.pointer("/spec/selector/matchLabels") {
        Some(labels) => labels.as_object(),
        None if workload["kind"] == "ReplicationController" => workload
            .pointer("/spec/selector")
            .and_then(Value::as_object),
        None => None,
    };
    let terms: Vec<String> = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    terms.join(",")
}

/// Splits on commas that are not inside parentheses.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn parse_label_term(term: &str) -> Result<Requirement, ParseError> {
    let bad = || ParseError(term.to_string());
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement {
            key: valid_key(key.trim(), term)?,
            op: Op::DoesNotExist,
        });
    }
    for (sep, make) in [
        ("!=", Op::NotEquals as fn(String) -> Op),
        ("==", Op::Equals),
        ("=", Op::Equals),
    ] {
        if let Some((key, value)) = term.split_once(sep) {
            return Ok(Requirement {
                key: valid_key(key.trim(), term)?,
                op: make(value.trim().to_string()),
            });
        }
    }
    for (word, set) in [(" notin ", true), (" in ", false)] {
        if let Some((key, values)) = term.split_once(word) {
            let values = values.trim();
            let inner = values
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .ok_or_else(bad)?;
            let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
            let op = if set {
                Op::NotIn(values)
            } else {
                Op::In(values)
            };
            return Ok(Requirement {
                key: valid_key(key.trim(), term)?,
                op,
            });
        }
    }
    Ok(Requirement {
        key: valid_key(term, term)?,
        op: Op::Exists,
    })
}

fn valid_key(key: &str, term: &str) -> Result<String, ParseError> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(key.to_string())
    } else {
        Err(ParseError(term.to_string()))
    }
}

/// A parsed field selector: a conjunction of equalities and inequalities on field paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(ParseError(term.to_string()));
            };
            terms.push((field.trim().to_string(), equal, value.trim().to_string()));
        }
        Ok(Self(terms))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value this selector requires for `field`, if it has an equality on it.
    pub fn required(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, eq, _)| f == field && *eq)
            .map(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let actual = match object.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_required_label_is_the_first_equality() {
        let selector = LabelSelector::parse("tier!=db,app in (a),app=web,team=x").unwrap();
        assert_eq!(selector.required_label(), Some(("app", "web")));
        let none = LabelSelector::parse("tier!=db,app").unwrap();
        assert_eq!(none.required_label(), None);
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check(selector: &str, pairs: &[(&str, &str)], expected: bool) {
        let parsed = LabelSelector::parse(selector).unwrap();
        assert_eq!(
            parsed.matches(&labels(pairs)),
            expected,
            "{selector} on {pairs:?}"
        );
    }

    #[test]
    fn label_operators() {
        check("", &[], true);
        check("app=web", &[("app", "web")], true);
        check("app==web", &[("app", "db")], false);
        check("app!=web", &[], true);
        check("app!=web", &[("app", "web")], false);
        check(
            "app in (web,demo),tier!=fe,!missing",
            &[("app", "demo"), ("tier", "be")],
            true,
        );
        check("app in (web, demo)", &[("app", "db")], false);
        check("app notin (web)", &[], true);
        check("app notin (web)", &[("app", "web")], false);
        check("app", &[("app", "x")], true);
        check("!app", &[("app", "x")], false);
        check("example.com/tier=be", &[("example.com/tier", "be")], true);
    }

    #[test]
    fn label_errors_name_the_term() {
        assert_eq!(
            LabelSelector::parse("app in web").unwrap_err().0,
            "app in web"
        );
        assert!(LabelSelector::parse("a b").is_err());
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let check = |s: &str| FieldSelector::parse(s).unwrap().matches(&pod);
        assert!(check("metadata.name=p,metadata.namespace=ns"));
        assert!(check(
            "spec.nodeName=n1,status.phase!=Succeeded,status.phase!=Failed"
        ));
        assert!(!check("spec.nodeName="));
        assert!(check("spec.schedulerName="));
        assert_eq!(
            FieldSelector::parse("spec.nodeName=n1")
                .unwrap()
                .required("spec.nodeName"),
            Some("n1")
        );
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
