//! The live feed of committed events, and how a watch follows it: what the store backends
//! share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, mpsc};

use super::{EventType, ObjectKey, Result, WatchEvent, WatchStream};

/// How often an idle watch gets a bookmark (kube-apiserver sends them about once a minute).
pub(crate) const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

/// The live feed of committed events, one broadcast channel per resource: a watcher wakes
/// only for changes of the resource it watches (a flood of pod updates does not make every
/// Lease or Service watcher filter it, and fall behind, and replay the log).
#[derive(Default)]
pub(crate) struct LiveFeeds {
    by_resource: std::sync::Mutex<std::collections::HashMap<String, broadcast::Sender<WatchEvent>>>,
    /// The revision of the last event published, of any resource: set after the event is in
    /// its channel, and events are published in revision order, so a watcher that has
    /// drained its channel after reading it has been sent everything up to it.
    published: Arc<AtomicU64>,
}

impl LiveFeeds {
    /// How many events a watcher may fall behind before it catches up from the log. A
    /// broadcast channel allocates all its slots up front, one channel per watched resource:
    /// at 8,192 slots the feeds were 26 MiB of an idle `shoal dev`'s 36 MiB heap, and kept
    /// the last 8,192 objects of each resource alive (docs/performance.md).
    pub(crate) const CAPACITY: usize = 1024;

    pub(crate) fn subscribe(&self, resource: &str) -> broadcast::Receiver<WatchEvent> {
        let mut feeds = self.by_resource.lock().unwrap_or_else(|p| p.into_inner());
        feeds
            .entry(resource.to_string())
            .or_insert_with(|| broadcast::channel(Self::CAPACITY).0)
            .subscribe()
    }

    pub(crate) fn publish(&self, event: &WatchEvent) {
        let feeds = self.by_resource.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(feed) = feeds.get(&event.key.resource) {
            // No receivers is fine: nobody is watching.
            let _ = feed.send(event.clone());
        }
        self.published.fetch_max(event.revision, Ordering::SeqCst);
    }

    /// Notes a revision reached with no event (etcd's progress notification).
    pub(crate) fn note(&self, revision: u64) {
        self.published.fetch_max(revision, Ordering::SeqCst);
    }

    /// What watches read their bookmarks' revision from.
    pub(crate) fn published(&self) -> Arc<AtomicU64> {
        self.published.clone()
    }
}

/// A bookmark: nothing of `resource` changed between the last event sent and `revision`.
fn bookmark(resource: &str, revision: u64) -> WatchEvent {
    WatchEvent::new(
        EventType::Bookmark,
        ObjectKey::new(resource, "", ""),
        revision,
        Arc::new(Value::Null),
    )
}

/// A watch of `resource` (in `namespace`, if given) from revision `since`: first `backlog`
/// (the logged events after `since`), then the `live` feed (subscribed before the backlog was
/// read, so nothing committed in between is missed; revisions already sent are skipped).
/// A watcher that falls behind the live feed catches up with `catch_up(last revision sent)`;
/// its error (say, `Gone`) ends the watch. The watch also ends when the feed closes.
///
/// Every `bookmark_every` the watch also gets a bookmark ([`EventType::Bookmark`]) at the
/// last revision published (`published`), once it has forwarded every event before it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn follow(
    mut live: broadcast::Receiver<WatchEvent>,
    backlog: Vec<WatchEvent>,
    since: u64,
    catch_up: impl Fn(u64) -> Result<Vec<WatchEvent>> + Send + 'static,
    resource: &str,
    namespace: Option<&str>,
    published: Arc<AtomicU64>,
    bookmark_every: Duration,
) -> WatchStream {
    let (tx, rx) = mpsc::channel::<Result<WatchEvent>>(1024);
    let (resource, namespace) = (resource.to_string(), namespace.map(str::to_string));
    tokio::spawn(async move {
        let mut last = since;
        for event in backlog {
            last = event.revision;
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + bookmark_every, bookmark_every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set at a tick: the revision to bookmark once the channel is drained.
        let mut pending_bookmark: Option<u64> = None;
        loop {
            // An idle watch whose reader is gone ends now, not at the next commit: it holds
            // the store open.
            let received = if let Some(revision) = pending_bookmark {
                match live.try_recv() {
                    Err(broadcast::error::TryRecvError::Empty) => {
                        pending_bookmark = None;
                        // Never behind what was sent: the revision of a bookmark only grows.
                        let revision = revision.max(last);
                        last = revision;
                        if tx.send(Ok(bookmark(&resource, revision))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(broadcast::error::TryRecvError::Closed) => return,
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Err(broadcast::error::RecvError::Lagged(n))
                    }
                    Ok(event) => Ok(event),
                }
            } else {
                tokio::select! {
                    received = live.recv() => received,
                    _ = ticks.tick() => {
                        // Everything up to this revision is in the channel now.
                        pending_bookmark = Some(published.load(Ordering::SeqCst));
                        continue;
                    }
                    _ = tx.closed() => return,
                }
            };
            let event = match received {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Closed) => return,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // This watcher fell behind the live feed: catch up from the log.
                    match catch_up(last) {
                        Ok(events) => {
                            for event in events {
                                last = event.revision;
                                if tx.send(Ok(event)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                    continue;
                }
            };
            // Every watcher sees every commit: this check must not allocate.
            if event.revision <= last || !event.key.in_scope(&resource, namespace.as_deref()) {
                continue;
            }
            last = event.revision;
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn event(resource: &str, revision: u64) -> WatchEvent {
        WatchEvent::new(
            EventType::Added,
            ObjectKey::new(resource, "ns", &format!("o{revision}")),
            revision,
            Arc::new(serde_json::json!({})),
        )
    }

    /// Every watcher of the feed gets the same event, whose object is encoded once.
    #[tokio::test]
    async fn watchers_of_one_event_share_its_encoding() {
        let feeds = LiveFeeds::default();
        let (mut first, mut second) = (feeds.subscribe("pods"), feeds.subscribe("pods"));
        let mut published = event("pods", 3);
        published.object = Arc::new(serde_json::json!({"metadata": {"name": "o3"}}));
        feeds.publish(&published);
        let (a, b) = (first.recv().await.unwrap(), second.recv().await.unwrap());
        let (a, b) = (a.object_json(), b.object_json());
        assert_eq!(&a[..], br#"{"metadata":{"name":"o3"}}"#);
        assert_eq!(a.as_ptr(), b.as_ptr(), "one encoding, shared");
    }

    #[tokio::test]
    async fn an_idle_watch_gets_bookmarks_at_the_revision_everything_before_was_sent() {
        let feeds = LiveFeeds::default();
        let live = feeds.subscribe("pods");
        let mut watch = follow(
            live,
            Vec::new(),
            4,
            |_| Ok(Vec::new()),
            "pods",
            None,
            feeds.published(),
            Duration::from_millis(50),
        );
        feeds.publish(&event("pods", 5));
        // Another resource's commit moves the revision this watch may bookmark.
        feeds.subscribe("nodes");
        feeds.publish(&event("nodes", 6));
        let next = async |watch: &mut WatchStream| {
            tokio::time::timeout(Duration::from_secs(5), watch.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
        };
        let first = next(&mut watch).await;
        assert_eq!((first.event_type, first.revision), (EventType::Added, 5));
        let bookmark = next(&mut watch).await;
        assert_eq!(
            (bookmark.event_type, bookmark.revision),
            (EventType::Bookmark, 6)
        );
        feeds.publish(&event("pods", 7));
        let after = next(&mut watch).await;
        assert_eq!((after.event_type, after.revision), (EventType::Added, 7));
        // Bookmarks never go back, and come again while idle.
        let again = next(&mut watch).await;
        assert_eq!((again.event_type, again.revision), (EventType::Bookmark, 7));
    }
}
