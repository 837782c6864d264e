//! Versioned, paged lists: what a list's `resourceVersion`, `resourceVersionMatch`, `limit` and
//! `continue` ask of a store, in the store's own terms.
//!
//! A page is read at one revision, from the key after the previous page's last, in key order
//! (the namespace, then the name: the order of both backends' keys), and holds at most
//! `limit` objects the filter accepts. The server turns `next` and the revision into an opaque
//! continue token; the store reads the next page at that same revision (redb from a snapshot
//! it keeps for a while, etcd from its history), or answers `Gone` once it cannot.

use std::sync::Arc;

use serde_json::Value;

/// Which state of the store a read must reflect (Kubernetes' resourceVersion semantics for
/// lists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadAt {
    /// Whatever this server has (`resourceVersion=0`): the watch cache as it is.
    Any,
    /// The latest state of the cluster (`resourceVersion` unset): at least every write that
    /// was acknowledged before the read began, by any API server.
    Consistent,
    /// At least this revision (`resourceVersionMatch=NotOlderThan`).
    NotOlderThan(u64),
    /// Exactly this revision (`resourceVersionMatch=Exact`, and a continued list).
    Exact(u64),
}

/// Which objects a page read returns; the filter (label and field selectors) sees each object
/// in key order, and `limit` counts only those it accepts.
pub struct PageRequest<'a> {
    pub resource: &'a str,
    pub namespace: Option<&'a str>,
    pub at: ReadAt,
    /// Start after this key, relative to the list's prefix ([`super::key_prefix`]): `name`
    /// in a namespace, `namespace/name` across namespaces.
    pub after: Option<&'a str>,
    pub limit: Option<usize>,
    pub filter: &'a (dyn Fn(&Value) -> bool + Send + Sync),
}

/// One page of a list.
#[derive(Debug)]
pub struct Page {
    /// Shared with the watch cache where there is one: a list of 10,000 objects copies none.
    pub objects: Vec<Arc<Value>>,
    /// The revision the page was read at (the next page is read at it too).
    pub revision: u64,
    /// The last key examined (relative, as [`PageRequest::after`]) when objects remain
    /// after it.
    pub next: Option<String>,
    /// How many objects remain after the page, before filtering.
    pub remaining: u64,
}

/// Cuts a page from `entries` (relative key, object), which are in key order and start after
/// the previous page.
pub fn cut<K: AsRef<str>>(
    entries: impl Iterator<Item = (K, Arc<Value>)>,
    limit: Option<usize>,
    filter: &(dyn Fn(&Value) -> bool + Send + Sync),
    revision: u64,
) -> Page {
    let mut objects = Vec::new();
    let mut entries = entries.peekable();
    let limit = limit.unwrap_or(usize::MAX);
    while objects.len() < limit {
        let Some((key, object)) = entries.next() else {
            break;
        };
        if filter(&object) {
            objects.push(object);
            if objects.len() == limit && entries.peek().is_some() {
                return Page {
                    objects,
                    revision,
                    next: Some(key.as_ref().to_string()),
                    remaining: entries.count() as u64,
                };
            }
        }
    }
    Page {
        objects,
        revision,
        next: None,
        remaining: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entries(n: usize) -> Vec<(String, Value)> {
        (0..n)
            .map(|i| (format!("ns/p{i:02}"), json!({"n": i})))
            .collect()
    }

    #[test]
    fn pages_stop_at_the_limit_of_accepted_objects_and_count_what_remains() {
        let all = entries(10);
        let even = |o: &Value| o["n"].as_u64().unwrap().is_multiple_of(2);
        let page = cut(
            all.iter().map(|(k, v)| (k, Arc::new(v.clone()))),
            Some(2),
            &even,
            7,
        );
        let objects: Vec<&Value> = page.objects.iter().map(|o| &**o).collect();
        assert_eq!(objects, [&json!({"n": 0}), &json!({"n": 2})]);
        assert_eq!(page.next.as_deref(), Some("ns/p02"));
        assert_eq!((page.remaining, page.revision), (7, 7));
        // The last page: no continuation, even when it is exactly full.
        let page = cut(
            all.iter().skip(8).map(|(k, v)| (k, Arc::new(v.clone()))),
            Some(2),
            &|_| true,
            7,
        );
        assert_eq!((page.objects.len(), page.next), (2, None));
        let page = cut(
            all.iter().map(|(k, v)| (k, Arc::new(v.clone()))),
            None,
            &|_| true,
            7,
        );
        assert_eq!(
            (page.objects.len(), page.next, page.remaining),
            (10, None, 0)
        );
        // A full page whose next entries are all filtered out still says there may be more:
        // the store cannot know without reading them.
        let page = cut(
            all.iter().map(|(k, v)| (k, Arc::new(v.clone()))),
            Some(5),
            &even,
            7,
        );
        assert_eq!(page.next.as_deref(), Some("ns/p08"));
        assert_eq!(page.remaining, 1);
    }
}
