//! The console of a running ephemeral container (`kubectl debug`), which attach sessions
//! share: one way into its stdin, its output to every session attached (the last 64 KiB
//! replayed to one that attaches late, so the shell's first prompt is not lost), and
//! whether it has ended.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, watch};

/// Output replayed to a session that attaches late.
const BACKLOG_BYTES: usize = 64 * 1024;

/// A running ephemeral container's console.
pub struct Attachable {
    pub tty: bool,
    stdin: Option<mpsc::Sender<Bytes>>,
    output: broadcast::Sender<Bytes>,
    backlog: Mutex<VecDeque<u8>>,
    exited: watch::Receiver<bool>,
}

impl Attachable {
    /// The output so far (its last 64 KiB) and what follows, with nothing lost between.
    pub fn subscribe(&self) -> (Vec<u8>, broadcast::Receiver<Bytes>) {
        let backlog = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        (backlog.iter().copied().collect(), self.output.subscribe())
    }

    /// The way into the container's stdin (`None` if it has none).
    pub fn stdin(&self) -> Option<mpsc::Sender<Bytes>> {
        self.stdin.clone()
    }

    /// Becomes true once the container has ended and all its output was sent.
    pub fn exited(&self) -> watch::Receiver<bool> {
        self.exited.clone()
    }

    pub fn new(
        tty: bool,
        stdin: Option<mpsc::Sender<Bytes>>,
        exited: watch::Receiver<bool>,
    ) -> Self {
        Attachable {
            tty,
            stdin,
            output: broadcast::channel(256).0,
            backlog: Mutex::default(),
            exited,
        }
    }

    /// Sends the container's output to the attached sessions (and keeps it for later ones).
    pub fn publish(&self, bytes: &[u8]) {
        let mut backlog = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        backlog.extend(bytes);
        let excess = backlog.len().saturating_sub(BACKLOG_BYTES);
        backlog.drain(..excess);
        // Under the lock: a subscriber gets each chunk in its backlog or its receiver.
        let _ = self.output.send(Bytes::copy_from_slice(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_subscribers_get_the_backlog_then_the_rest() {
        let (_exited, exited) = watch::channel(false);
        let attachable = Attachable::new(true, None, exited);
        attachable.publish(b"$ ");
        let (backlog, mut rest) = attachable.subscribe();
        assert_eq!(backlog, b"$ ");
        attachable.publish(b"hi\n");
        assert_eq!(rest.try_recv().unwrap(), Bytes::from_static(b"hi\n"));
        let big = vec![b'x'; 100_000];
        attachable.publish(&big);
        let (backlog, _) = attachable.subscribe();
        assert_eq!(backlog.len(), BACKLOG_BYTES, "the backlog is bounded");
    }
}
