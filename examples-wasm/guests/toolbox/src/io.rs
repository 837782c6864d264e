//! Where a command reads and writes: the process' stdio, a file, or the in-memory buffer
//! between two stages of a pipeline. Sinks are shared handles, so `2>&1` writes both streams
//! into one place.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufRead, Cursor, Read, Write};
use std::rc::Rc;

/// A command's input.
pub enum Input {
    /// The process' stdin (shared with the shell reading its commands from it).
    Stdin,
    Bytes(Cursor<Vec<u8>>),
    File(io::BufReader<File>),
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Input::Stdin => io::stdin().read(buf),
            Input::Bytes(bytes) => bytes.read(buf),
            Input::File(file) => file.read(buf),
        }
    }
}

impl Input {
    /// Reads one line (with its newline, if any) into `line`; 0 at the end.
    pub fn read_line(&mut self, line: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Input::Stdin => io::stdin().lock().read_until(b'\n', line),
            Input::Bytes(bytes) => bytes.read_until(b'\n', line),
            Input::File(file) => file.read_until(b'\n', line),
        }
    }
}

/// A command's output.
#[derive(Clone)]
pub enum Sink {
    Stdout,
    Stderr,
    File(Rc<RefCell<File>>),
    Buffer(Rc<RefCell<Vec<u8>>>),
    /// `/dev/null`.
    Null,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Stdout => io::stdout().write(buf),
            Sink::Stderr => io::stderr().write(buf),
            Sink::File(file) => file.borrow_mut().write(buf),
            Sink::Buffer(buffer) => buffer.borrow_mut().write(buf),
            Sink::Null => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout => io::stdout().flush(),
            Sink::Stderr => io::stderr().flush(),
            Sink::File(file) => file.borrow_mut().flush(),
            Sink::Buffer(_) | Sink::Null => Ok(()),
        }
    }
}

/// The three streams of one command.
pub struct Io {
    pub stdin: Input,
    pub stdout: Sink,
    pub stderr: Sink,
}

impl Io {
    pub fn standard() -> Self {
        Io {
            stdin: Input::Stdin,
            stdout: Sink::Stdout,
            stderr: Sink::Stderr,
        }
    }

    /// Writes `message` and a newline to stderr.
    pub fn error(&mut self, message: &str) {
        let _ = writeln!(self.stderr, "{message}");
    }

    pub fn flush(&mut self) {
        let _ = self.stdout.flush();
        let _ = self.stderr.flush();
    }
}

/// An I/O error as coreutils print it: `No such file or directory`, without Rust's
/// `(os error 44)`.
pub fn describe(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// The first path component of every preopened directory: what `/` holds for this guest.
pub fn preopen_roots() -> Vec<String> {
    let mut roots: Vec<String> = wasip2::filesystem::preopens::get_directories()
        .into_iter()
        .filter_map(|(_, path)| {
            path.trim_start_matches('/')
                .split('/')
                .next()
                .filter(|p| !p.is_empty() && *p != ".")
                .map(str::to_string)
        })
        .collect();
    roots.sort();
    roots.dedup();
    roots
}
