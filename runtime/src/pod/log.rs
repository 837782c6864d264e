//! A container's log: the guest's stdout and stderr, split into timestamped lines and kept in
//! a bounded buffer (the oldest lines go first), with followers woken on every new line.
//! Writing never blocks and never fails, so a guest that floods its output only loses old
//! lines; it cannot stall or exhaust the agent.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};
use tokio::io::AsyncWrite;
use tokio::sync::watch;

/// Bytes of log kept per container run.
pub const DEFAULT_LOG_CAPACITY: usize = 1 << 20;
/// A line longer than this is cut (the rest starts a new line).
const MAX_LINE: usize = 16 * 1024;

pub struct ContainerLog {
    inner: Mutex<Inner>,
    /// Sequence number of the next line; bumped (and `closed` set) to wake followers.
    progress: watch::Sender<(u64, bool)>,
}

struct Inner {
    lines: VecDeque<(DateTime<Utc>, String)>,
    /// Sequence number of `lines[0]`.
    first: u64,
    bytes: usize,
    capacity: usize,
    partial: Vec<u8>,
    closed: bool,
}

/// One line read from a log, with its sequence number.
pub struct LogLine {
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub text: String,
}

impl ContainerLog {
    pub fn new(capacity: usize) -> Arc<Self> {
        let inner = Inner {
            lines: VecDeque::new(),
            first: 0,
            bytes: 0,
            capacity,
            partial: Vec::new(),
            closed: false,
        };
        Arc::new(Self {
            inner: Mutex::new(inner),
            progress: watch::channel((0, false)).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock would only lose log lines; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn write(&self, bytes: &[u8]) {
        let mut inner = self.lock();
        if inner.closed {
            return;
        }
        for &b in bytes {
            if b == b'\n' {
                inner.push_partial();
            } else {
                inner.partial.push(b);
                if inner.partial.len() >= MAX_LINE {
                    inner.push_partial();
                }
            }
        }
        let next = inner.first + inner.lines.len() as u64;
        drop(inner);
        self.progress.send_replace((next, false));
    }

    /// Ends the log: a trailing partial line is kept, and followers finish.
    pub fn close(&self) {
        let mut inner = self.lock();
        if !inner.partial.is_empty() {
            inner.push_partial();
        }
        inner.closed = true;
        let next = inner.first + inner.lines.len() as u64;
        drop(inner);
        self.progress.send_replace((next, true));
    }

    /// Lines with a sequence number of at least `from`, and whether the log is closed.
    pub fn read_from(&self, from: u64) -> (Vec<LogLine>, bool) {
        let inner = self.lock();
        let start = from.max(inner.first);
        let skip = (start - inner.first) as usize;
        let lines = inner
            .lines
            .iter()
            .skip(skip)
            .enumerate()
            .map(|(i, (time, text))| LogLine {
                seq: start + i as u64,
                time: *time,
                text: text.clone(),
            })
            .collect();
        (lines, inner.closed)
    }

    /// The sequence number where the last `n` lines start.
    pub fn tail_start(&self, n: u64) -> u64 {
        let inner = self.lock();
        let end = inner.first + inner.lines.len() as u64;
        end.saturating_sub(n).max(inner.first)
    }

    /// Waits until lines at or after `from` exist or the log closes.
    pub async fn wait_past(&self, from: u64) {
        let mut progress = self.progress.subscribe();
        let _ = progress
            .wait_for(|(next, closed)| *next > from || *closed)
            .await;
    }

    /// The whole log as text (tests and `describe`).
    pub fn text(&self) -> String {
        let (lines, _) = self.read_from(0);
        lines.into_iter().map(|l| l.text + "\n").collect()
    }

    /// An `AsyncWrite` handle for the guest's stdout or stderr.
    pub fn writer(self: &Arc<Self>) -> LogWriter {
        LogWriter(self.clone())
    }
}

impl Inner {
    fn push_partial(&mut self) {
        let text = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        self.bytes += text.len() + 1;
        self.lines.push_back((Utc::now(), text));
        while self.bytes > self.capacity && self.lines.len() > 1 {
            if let Some((_, old)) = self.lines.pop_front() {
                self.bytes -= old.len() + 1;
                self.first += 1;
            }
        }
    }
}

#[derive(Clone)]
pub struct LogWriter(Arc<ContainerLog>);

impl AsyncWrite for LogWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl wasmtime_wasi::cli::IsTerminal for LogWriter {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogWriter {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_keeps_partial_until_close() {
        let log = ContainerLog::new(1024);
        log.write(b"one\ntw");
        log.write(b"o\nthree");
        assert_eq!(log.text(), "one\ntwo\n");
        log.close();
        assert_eq!(log.text(), "one\ntwo\nthree\n");
        log.write(b"after close\n");
        assert_eq!(log.read_from(0).0.len(), 3);
    }

    #[test]
    fn bounded_drops_oldest() {
        let log = ContainerLog::new(64);
        for i in 0..100 {
            log.write(format!("line {i}\n").as_bytes());
        }
        let (lines, _) = log.read_from(0);
        assert!(lines.len() < 10, "{}", lines.len());
        assert_eq!(lines.last().unwrap().text, "line 99");
        assert_eq!(lines.last().unwrap().seq, 99);
        assert_eq!(log.tail_start(2), 98);
    }

    #[tokio::test]
    async fn followers_wake_on_new_lines_and_close() {
        let log = ContainerLog::new(1024);
        let waiter = tokio::spawn({
            let log = log.clone();
            async move {
                log.wait_past(0).await;
                log.read_from(0).0.len()
            }
        });
        tokio::task::yield_now().await;
        log.write(b"hi\n");
        assert_eq!(waiter.await.unwrap(), 1);
        log.close();
        log.wait_past(5).await;
    }
}
