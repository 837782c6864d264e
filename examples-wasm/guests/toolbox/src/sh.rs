//! `sh`: a small POSIX-flavoured shell. Pipelines (`|`), lists (`;`, newlines, `&&`, `||`),
//! redirections (`<`, `>`, `>>`, `2>`, `2>&1`, `>&2`, `&>`), single and double quotes,
//! backslash escapes, variables (`NAME=value`, `export`, `unset`, `$NAME`, `${NAME}`, `$?`,
//! `$0`..`$9`), `*`/`?` in the last path component, comments, and the built-ins `cd`,
//! `exit`, `export`, `read` and `unset`. There are no processes in a Wasm instance: the commands are
//! the toolbox's own, and a pipeline runs its stages one after another, each reading what
//! the one before wrote (the first reads the shell's stdin, the last writes its stdout).
//! Every variable is exported. No control flow (`if`, `for`) and no background jobs.
//!
//! `sh -c SCRIPT [NAME ARGS…]` runs a script, `sh FILE` a file, `sh` alone reads commands
//! from stdin, with a `$ ` prompt when `TERM` is set (a terminal, as `kubectl exec -it`).

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Cursor, Write};
use std::rc::Rc;

use crate::io::{describe, Input, Io, Sink};

pub fn main(args: &[String], io: &mut Io) -> i32 {
    let mut shell = Shell::default();
    match args.first().map(String::as_str) {
        Some("-c") => {
            let Some(script) = args.get(1) else {
                io.error("sh: -c: option requires an argument");
                return 2;
            };
            shell.positional = args[2..].to_vec();
            if shell.positional.is_empty() {
                shell.positional.push("sh".into());
            }
            shell.run_script(script, io)
        }
        Some(file) if !file.starts_with('-') => match std::fs::read_to_string(file) {
            Ok(script) => {
                shell.positional = args.to_vec();
                shell.run_script(&script, io)
            }
            Err(e) => {
                io.error(&format!("sh: {file}: {}", describe(&e)));
                127
            }
        },
        Some(other) if other != "-s" && other != "-i" => {
            io.error(&format!("sh: {other}: unknown option"));
            2
        }
        _ => {
            shell.positional = vec!["sh".into()];
            shell.interactive(io)
        }
    }
}

#[derive(Default)]
struct Shell {
    last: i32,
    exit: Option<i32>,
    positional: Vec<String>,
}

impl Shell {
    fn run_script(&mut self, script: &str, io: &mut Io) -> i32 {
        match parse(script) {
            Ok(list) => {
                let status = self.run_list(&list, io);
                self.exit.unwrap_or(status)
            }
            Err(e) => {
                io.error(&format!("sh: {e}"));
                2
            }
        }
    }

    /// Reads and runs one line at a time from stdin.
    fn interactive(&mut self, io: &mut Io) -> i32 {
        let prompt = std::env::var_os("TERM").is_some();
        loop {
            if prompt {
                let _ = write!(io.stdout, "$ ");
                io.flush();
            }
            let mut line = Vec::new();
            match io.stdin.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    io.error(&format!("sh: reading stdin: {}", describe(&e)));
                    return 2;
                }
            }
            let line = String::from_utf8_lossy(&line);
            match parse(&line) {
                Ok(list) => {
                    self.last = self.run_list(&list, io);
                }
                Err(e) => {
                    io.error(&format!("sh: {e}"));
                    self.last = 2;
                }
            }
            io.flush();
            if let Some(code) = self.exit {
                return code;
            }
        }
        if prompt {
            let _ = writeln!(io.stdout, "exit");
        }
        self.last
    }

    fn run_list(&mut self, list: &[(Connector, Vec<Command>)], io: &mut Io) -> i32 {
        for (connector, pipeline) in list {
            let run = match connector {
                Connector::Always => true,
                Connector::IfSuccess => self.last == 0,
                Connector::IfFailure => self.last != 0,
            };
            if run {
                self.last = self.run_pipeline(pipeline, io);
            }
            if self.exit.is_some() {
                break;
            }
        }
        self.last
    }

    fn run_pipeline(&mut self, stages: &[Command], io: &mut Io) -> i32 {
        let mut input = None;
        let mut status = 0;
        for (index, command) in stages.iter().enumerate() {
            let last = index + 1 == stages.len();
            let stdin = match input.take() {
                Some(bytes) => Input::Bytes(Cursor::new(bytes)),
                None => std::mem::replace(&mut io.stdin, Input::Bytes(Cursor::default())),
            };
            let buffer = Rc::new(RefCell::new(Vec::new()));
            let mut stage = Io {
                stdin,
                stdout: if last {
                    io.stdout.clone()
                } else {
                    Sink::Buffer(buffer.clone())
                },
                stderr: io.stderr.clone(),
            };
            status = self.run_command(command, &mut stage);
            let Io { stdin, .. } = stage;
            if index == 0 {
                io.stdin = stdin;
            }
            if !last {
                input = Some(std::mem::take(&mut *buffer.borrow_mut()));
            }
            if self.exit.is_some() {
                break;
            }
        }
        status
    }

    fn run_command(&mut self, command: &Command, io: &mut Io) -> i32 {
        let mut words = Vec::new();
        for word in &command.words {
            words.extend(self.expand_glob(word));
        }
        for (name, value) in &command.assigns {
            let value = self.expand(value);
            // Every variable is exported; with a command it is set for the rest of the
            // script too (simpler than POSIX, which scopes it to that command).
            std::env::set_var(name, value);
        }
        // Redirections first (a file is created even when there is no command, as `> f`).
        let saved_stdin = std::mem::replace(&mut io.stdin, Input::Bytes(Cursor::default()));
        let mut redirected = Io {
            stdin: saved_stdin,
            stdout: io.stdout.clone(),
            stderr: io.stderr.clone(),
        };
        // The shell's own stdin, while a command reads a file instead (`< file`).
        let mut shell_stdin = None;
        for redirect in &command.redirects {
            match self.redirect(redirect, &mut redirected) {
                Ok(Some(file)) => {
                    let before = std::mem::replace(&mut redirected.stdin, file);
                    shell_stdin.get_or_insert(before);
                }
                Ok(None) => {}
                Err(message) => {
                    io.stdin = shell_stdin.unwrap_or(redirected.stdin);
                    io.error(&format!("sh: {message}"));
                    return 1;
                }
            }
        }
        let status = match words.first().map(String::as_str) {
            None => 0,
            Some("exit") => {
                let code = match words.get(1) {
                    None => self.last,
                    Some(n) => n.parse::<i32>().map(|n| n & 0xff).unwrap_or_else(|_| {
                        redirected.error(&format!("sh: exit: {n}: numeric argument required"));
                        2
                    }),
                };
                self.exit = Some(code);
                code
            }
            Some("cd") => {
                let to = words.get(1).cloned().unwrap_or_else(|| "/".into());
                match std::env::set_current_dir(&to) {
                    Ok(()) => 0,
                    Err(e) => {
                        redirected.error(&format!("sh: cd: {to}: {}", describe(&e)));
                        1
                    }
                }
            }
            Some("export") => {
                for assignment in &words[1..] {
                    if let Some((name, value)) = assignment.split_once('=') {
                        std::env::set_var(name, value);
                    }
                }
                0
            }
            Some("read") => read_line(&words[1..], &mut redirected),
            Some("unset") => {
                for name in &words[1..] {
                    std::env::remove_var(name);
                }
                0
            }
            Some(name) => match crate::commands::run(name, &words[1..], &mut redirected) {
                Some(code) => code,
                None => {
                    redirected.error(&format!("sh: {name}: command not found"));
                    127
                }
            },
        };
        redirected.flush();
        io.stdin = shell_stdin.unwrap_or(redirected.stdin);
        status
    }

    /// Applies a redirection to `io`; a file to read from is returned for the caller to put
    /// in place of stdin.
    fn redirect(&self, redirect: &Redirect, io: &mut Io) -> Result<Option<Input>, String> {
        let target = match &redirect.target {
            Target::Fd(1) => Some(io.stdout.clone()),
            Target::Fd(2) => Some(io.stderr.clone()),
            Target::Fd(n) => return Err(format!("{n}: bad file descriptor")),
            Target::File(_) => None,
        };
        let path = match &redirect.target {
            Target::File(word) => self.expand(word),
            Target::Fd(_) => String::new(),
        };
        let open_error = |e: std::io::Error| format!("{path}: {}", describe(&e));
        // There is no /dev in a Wasm guest; the shell knows the one device scripts use.
        if path == "/dev/null" {
            return match redirect.kind {
                Kind::Read => Ok(Some(Input::Bytes(Cursor::default()))),
                Kind::Write | Kind::Append => {
                    self.point(redirect.fd, Sink::Null, io)?;
                    Ok(None)
                }
            };
        }
        match redirect.kind {
            Kind::Read => {
                let file = File::open(&path).map_err(open_error)?;
                return Ok(Some(Input::File(BufReader::new(file))));
            }
            Kind::Write | Kind::Append => {}
        }
        let sink = match target {
            Some(sink) => sink,
            None => {
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .append(matches!(redirect.kind, Kind::Append))
                    .truncate(matches!(redirect.kind, Kind::Write))
                    .open(&path)
                    .map_err(open_error)?;
                Sink::File(Rc::new(RefCell::new(file)))
            }
        };
        self.point(redirect.fd, sink, io)?;
        Ok(None)
    }

    /// Points stream `fd` (3: both, as `&>`) at `sink`.
    fn point(&self, fd: u8, sink: Sink, io: &mut Io) -> Result<(), String> {
        match fd {
            1 => io.stdout = sink,
            2 => io.stderr = sink,
            3 => {
                io.stdout = sink.clone();
                io.stderr = sink;
            }
            n => return Err(format!("{n}: bad file descriptor")),
        }
        Ok(())
    }

    fn expand(&self, word: &Word) -> String {
        let mut text = String::new();
        for segment in &word.0 {
            match segment {
                Segment::Literal(s, _) => text.push_str(s),
                Segment::Variable(name) => text.push_str(&self.variable(name)),
            }
        }
        text
    }

    fn variable(&self, name: &str) -> String {
        if name == "?" {
            return self.last.to_string();
        }
        if let Ok(index) = name.parse::<usize>() {
            return self.positional.get(index).cloned().unwrap_or_default();
        }
        std::env::var(name).unwrap_or_default()
    }

    /// A word, with `*` and `?` of its unquoted parts matched against the directory named
    /// before the last `/`; a pattern that matches nothing stays as written.
    fn expand_glob(&self, word: &Word) -> Vec<String> {
        let text = self.expand(word);
        let pattern = word
            .0
            .iter()
            .any(|s| matches!(s, Segment::Literal(t, false) if t.contains(['*', '?'])));
        if !pattern {
            return vec![text];
        }
        let (dir, name) = match text.rsplit_once('/') {
            Some((dir, name)) => (Some(if dir.is_empty() { "/" } else { dir }), name),
            None => (None, text.as_str()),
        };
        if name.is_empty() || dir.is_some_and(|d| d.contains(['*', '?'])) {
            return vec![text];
        }
        let Ok(entries) = std::fs::read_dir(dir.unwrap_or(".")) else {
            return vec![text];
        };
        let mut matches: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.') || name.starts_with('.'))
            .filter(|n| wildcard(name.as_bytes(), n.as_bytes()))
            .map(|n| match dir {
                Some("/") => format!("/{n}"),
                Some(dir) => format!("{dir}/{n}"),
                None => n,
            })
            .collect();
        if matches.is_empty() {
            return vec![text];
        }
        matches.sort();
        matches
    }
}

/// `read NAME…`: one line of stdin split on blanks into the variables (the last takes the
/// rest; `REPLY` without names); 1 at the end of input.
fn read_line(names: &[String], io: &mut Io) -> i32 {
    let mut line = Vec::new();
    match io.stdin.read_line(&mut line) {
        Ok(0) | Err(_) => return 1,
        Ok(_) => {}
    }
    let line = String::from_utf8_lossy(&line);
    let line = line.trim_end_matches(['\n', '\r']);
    let reply = [String::from("REPLY")];
    let names = if names.is_empty() { &reply[..] } else { names };
    let mut rest = line.trim_start();
    for (index, name) in names.iter().enumerate() {
        let value = if index + 1 == names.len() {
            std::mem::take(&mut rest).trim_end()
        } else {
            let end = rest.find([' ', '\t']).unwrap_or(rest.len());
            let (word, tail) = rest.split_at(end);
            rest = tail.trim_start();
            word
        };
        std::env::set_var(name, value);
    }
    0
}

/// Whether `name` matches `pattern` (`*` any run, `?` one character).
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            wildcard(&pattern[1..], name) || (!name.is_empty() && wildcard(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => wildcard(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => wildcard(&pattern[1..], &name[1..]),
        _ => false,
    }
}

// ---- syntax ----

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    /// Text, and whether it was quoted (quoted text is never a pattern).
    Literal(String, bool),
    Variable(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Word(Vec<Segment>);

impl Word {
    fn push_char(&mut self, c: char, quoted: bool) {
        match self.0.last_mut() {
            Some(Segment::Literal(text, q)) if *q == quoted => text.push(c),
            _ => self.0.push(Segment::Literal(c.to_string(), quoted)),
        }
    }

    /// The word as written, when it is plain unquoted text.
    fn plain(&self) -> Option<&str> {
        match self.0.as_slice() {
            [Segment::Literal(text, false)] => Some(text),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Read,
    Write,
    Append,
}

#[derive(Debug, Clone, PartialEq)]
enum Target {
    File(Word),
    Fd(u8),
}

#[derive(Debug, Clone, PartialEq)]
struct Redirect {
    /// 0 stdin, 1 stdout, 2 stderr, 3 both (`&>`).
    fd: u8,
    kind: Kind,
    target: Target,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(Word),
    Pipe,
    And,
    Or,
    Separator,
    Redirect(Redirect),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Connector {
    Always,
    IfSuccess,
    IfFailure,
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Command {
    assigns: Vec<(String, Word)>,
    words: Vec<Word>,
    redirects: Vec<Redirect>,
}

struct Lexer {
    chars: Vec<char>,
    at: usize,
}

impl Lexer {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn next_if(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn tokens(mut self) -> Result<Vec<Token>, String> {
        let mut tokens = Vec::new();
        loop {
            while matches!(self.peek(), Some(' ' | '\t' | '\r')) {
                self.at += 1;
            }
            let Some(c) = self.peek() else { break };
            match c {
                '\n' | ';' => {
                    self.at += 1;
                    tokens.push(Token::Separator);
                }
                '#' => {
                    while !matches!(self.peek(), None | Some('\n')) {
                        self.at += 1;
                    }
                }
                '|' => {
                    self.at += 1;
                    tokens.push(if self.next_if('|') {
                        Token::Or
                    } else {
                        Token::Pipe
                    });
                }
                '&' => {
                    self.at += 1;
                    if self.next_if('&') {
                        tokens.push(Token::And);
                    } else if self.next_if('>') {
                        tokens.push(Token::Redirect(self.redirect(3, '>')?));
                    } else {
                        return Err("background jobs (&) are not supported".into());
                    }
                }
                '<' | '>' => {
                    self.at += 1;
                    let fd = if c == '<' { 0 } else { 1 };
                    tokens.push(Token::Redirect(self.redirect(fd, c)?));
                }
                _ => {
                    let word = self.word()?;
                    // `2>file`: a lone digit right before the operator names the stream.
                    if let (Some(digits), Some(op @ ('<' | '>'))) = (word.plain(), self.peek()) {
                        if let Ok(fd @ 0..=2) = digits.parse::<u8>() {
                            self.at += 1;
                            tokens.push(Token::Redirect(self.redirect(fd, op)?));
                            continue;
                        }
                    }
                    tokens.push(Token::Word(word));
                }
            }
        }
        Ok(tokens)
    }

    /// The rest of a redirection whose operator `op` (`<` or `>`) was just read.
    fn redirect(&mut self, fd: u8, op: char) -> Result<Redirect, String> {
        let kind = if op == '<' {
            Kind::Read
        } else if self.next_if('>') {
            Kind::Append
        } else {
            Kind::Write
        };
        if op == '>' && self.next_if('&') {
            return match self.peek() {
                Some(d @ ('1' | '2')) => {
                    self.at += 1;
                    Ok(Redirect {
                        fd,
                        kind,
                        target: Target::Fd(d as u8 - b'0'),
                    })
                }
                _ => Err("syntax error: >& needs 1 or 2".into()),
            };
        }
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.at += 1;
        }
        match self.peek() {
            None | Some('\n' | ';' | '|' | '&' | '<' | '>') => {
                Err("syntax error near unexpected token after redirection".into())
            }
            _ => Ok(Redirect {
                fd,
                kind,
                target: Target::File(self.word()?),
            }),
        }
    }

    fn word(&mut self) -> Result<Word, String> {
        let mut word = Word::default();
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | '\r' | '\n' | ';' | '|' | '&' | '<' | '>' => break,
                '\'' => {
                    self.at += 1;
                    // An empty '' is still a word.
                    word.0.push(Segment::Literal(String::new(), true));
                    loop {
                        match self.peek() {
                            None => return Err("unterminated quote '".into()),
                            Some('\'') => {
                                self.at += 1;
                                break;
                            }
                            Some(c) => {
                                self.at += 1;
                                word.push_char(c, true);
                            }
                        }
                    }
                }
                '"' => {
                    self.at += 1;
                    word.0.push(Segment::Literal(String::new(), true));
                    loop {
                        match self.peek() {
                            None => return Err("unterminated quote \"".into()),
                            Some('"') => {
                                self.at += 1;
                                break;
                            }
                            Some('\\') => {
                                self.at += 1;
                                match self.peek() {
                                    Some(c @ ('"' | '\\' | '$' | '`')) => {
                                        self.at += 1;
                                        word.push_char(c, true);
                                    }
                                    _ => word.push_char('\\', true),
                                }
                            }
                            Some('$') => self.variable(&mut word, true),
                            Some(c) => {
                                self.at += 1;
                                word.push_char(c, true);
                            }
                        }
                    }
                }
                '\\' => {
                    self.at += 1;
                    match self.peek() {
                        Some('\n') => self.at += 1,
                        Some(c) => {
                            self.at += 1;
                            word.push_char(c, true);
                        }
                        None => word.push_char('\\', true),
                    }
                }
                '$' => self.variable(&mut word, false),
                c => {
                    self.at += 1;
                    word.push_char(c, false);
                }
            }
        }
        Ok(word)
    }

    /// `$NAME`, `${NAME}`, `$?`, `$0`..`$9`; a `$` before anything else is itself.
    fn variable(&mut self, word: &mut Word, quoted: bool) {
        self.at += 1;
        let name = match self.peek() {
            Some('{') => {
                let start = self.at + 1;
                let Some(end) = self.chars[start..].iter().position(|&c| c == '}') else {
                    word.push_char('$', quoted);
                    return;
                };
                self.at = start + end + 1;
                self.chars[start..start + end].iter().collect()
            }
            Some(c @ ('?' | '0'..='9')) => {
                self.at += 1;
                c.to_string()
            }
            Some(c) if c == '_' || c.is_ascii_alphabetic() => {
                let start = self.at;
                while self
                    .peek()
                    .is_some_and(|c| c == '_' || c.is_ascii_alphanumeric())
                {
                    self.at += 1;
                }
                self.chars[start..self.at].iter().collect()
            }
            _ => {
                word.push_char('$', quoted);
                return;
            }
        };
        word.0.push(Segment::Variable(name));
    }
}

/// A script as a list of pipelines, each with how it depends on the one before.
fn parse(script: &str) -> Result<Vec<(Connector, Vec<Command>)>, String> {
    let tokens = Lexer {
        chars: script.chars().collect(),
        at: 0,
    }
    .tokens()?;
    let mut list = Vec::new();
    let mut pipeline: Vec<Command> = Vec::new();
    let mut command = Command::default();
    let mut connector = Connector::Always;
    let unexpected = |t: &str| Err(format!("syntax error near unexpected token `{t}'"));
    let empty = |c: &Command| c.words.is_empty() && c.assigns.is_empty() && c.redirects.is_empty();
    for token in tokens {
        match token {
            Token::Word(word) => {
                let assignment = match word.0.first() {
                    Some(Segment::Literal(text, false)) if command.words.is_empty() => {
                        text.split_once('=').filter(|(name, _)| is_name(name))
                    }
                    _ => None,
                };
                match assignment {
                    Some((name, value)) => {
                        let mut rest = word.0.clone();
                        rest[0] = Segment::Literal(value.to_string(), false);
                        command.assigns.push((name.to_string(), Word(rest)));
                    }
                    None => command.words.push(word),
                }
            }
            Token::Redirect(redirect) => command.redirects.push(redirect),
            Token::Pipe => {
                if empty(&command) {
                    return unexpected("|");
                }
                pipeline.push(std::mem::take(&mut command));
            }
            Token::And | Token::Or | Token::Separator => {
                let (text, next) = match token {
                    Token::And => ("&&", Connector::IfSuccess),
                    Token::Or => ("||", Connector::IfFailure),
                    _ => (";", Connector::Always),
                };
                if empty(&command) {
                    if !pipeline.is_empty() || next != Connector::Always {
                        return unexpected(text);
                    }
                    continue;
                }
                pipeline.push(std::mem::take(&mut command));
                list.push((connector, std::mem::take(&mut pipeline)));
                connector = next;
            }
        }
    }
    if empty(&command) {
        if !pipeline.is_empty() || connector != Connector::Always {
            return Err("syntax error: unexpected end of script".into());
        }
    } else {
        pipeline.push(command);
        list.push((connector, pipeline));
    }
    Ok(list)
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}
