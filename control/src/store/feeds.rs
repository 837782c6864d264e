//! The live feed of committed events, and how a watch follows it: what the store backends
//! share.

use tokio::sync::{broadcast, mpsc};

use super::{Result, WatchEvent, WatchStream};

/// The live feed of committed events, one broadcast channel per resource: a watcher wakes
/// only for changes of the resource it watches (a flood of pod updates does not make every
/// Lease or Service watcher filter it, and fall behind, and replay the log).
#[derive(Default)]
pub(crate) struct LiveFeeds {
    by_resource: std::sync::Mutex<std::collections::HashMap<String, broadcast::Sender<WatchEvent>>>,
}

impl LiveFeeds {
    /// How many events a watcher may fall behind before it catches up from the log.
    pub(crate) const CAPACITY: usize = 8192;

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
    }
}

/// A watch of `resource` (in `namespace`, if given) from revision `since`: first `backlog`
/// (the logged events after `since`), then the `live` feed (subscribed before the backlog was
/// read, so nothing committed in between is missed; revisions already sent are skipped).
/// A watcher that falls behind the live feed catches up with `catch_up(last revision sent)`;
/// its error (say, `Gone`) ends the watch. The watch also ends when the feed closes.
pub(crate) fn follow(
    mut live: broadcast::Receiver<WatchEvent>,
    backlog: Vec<WatchEvent>,
    since: u64,
    catch_up: impl Fn(u64) -> Result<Vec<WatchEvent>> + Send + 'static,
    resource: &str,
    namespace: Option<&str>,
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
        loop {
            // An idle watch whose reader is gone ends now, not at the next commit: it holds
            // the store open.
            let received = tokio::select! {
                received = live.recv() => received,
                _ = tx.closed() => return,
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
