//! The toolbox's commands, coreutils-style: each takes its arguments and the three streams
//! and returns an exit code (0 success, 1 failure, 2 bad usage, as coreutils).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::io::{describe, Io};

type Command = fn(&[String], &mut Io) -> i32;

const COMMANDS: &[(&str, Command)] = &[
    ("[", test),
    ("basename", basename),
    ("cat", cat),
    ("cp", cp),
    ("curl", crate::http::curl),
    ("dirname", dirname),
    ("echo", echo),
    ("env", env),
    ("false", |_, _| 1),
    ("get", crate::http::get),
    ("grep", grep),
    ("head", head),
    ("help", help),
    ("ls", ls),
    ("mkdir", mkdir),
    ("mv", mv),
    ("printenv", printenv),
    ("pwd", pwd),
    ("rm", rm),
    ("sh", crate::sh::main),
    ("sleep", sleep),
    ("tail", tail),
    ("tar", crate::archive::tar),
    ("test", test),
    ("touch", touch),
    ("true", |_, _| 0),
    ("wc", wc),
];

/// Runs the command `name`; `None` if there is no such command.
pub fn run(name: &str, args: &[String], io: &mut Io) -> Option<i32> {
    let (_, command) = COMMANDS.iter().find(|(n, _)| *n == name)?;
    let code = command(args, io);
    io.flush();
    Some(code)
}

/// Splits `-abc` style flags (until `--` or the first operand) from operands.
fn flags(args: &[String]) -> (Vec<char>, Vec<String>) {
    let mut flags = Vec::new();
    let mut operands = Vec::new();
    let mut only_operands = false;
    for arg in args {
        if only_operands || arg == "-" || !arg.starts_with('-') {
            operands.push(arg.clone());
        } else if arg == "--" {
            only_operands = true;
        } else {
            flags.extend(arg.chars().skip(1));
        }
    }
    (flags, operands)
}

fn fail(io: &mut Io, command: &str, what: &str, error: &std::io::Error) -> i32 {
    io.error(&format!("{command}: {what}: {}", describe(error)));
    1
}

fn help(_: &[String], io: &mut Io) -> i32 {
    let names: Vec<&str> = COMMANDS.iter().map(|(n, _)| *n).collect();
    let _ = writeln!(
        io.stdout,
        "Shoal toolbox: a shell and commands inside a Wasm pod.\ncommands: {}",
        names.join(" ")
    );
    0
}

fn echo(args: &[String], io: &mut Io) -> i32 {
    let mut newline = true;
    let mut escapes = false;
    let mut words = args;
    while let Some(flag) = words.first() {
        match flag.as_str() {
            "-n" => newline = false,
            "-e" => escapes = true,
            "-ne" | "-en" => {
                newline = false;
                escapes = true;
            }
            _ => break,
        }
        words = &words[1..];
    }
    let mut text = words.join(" ");
    if escapes {
        text = text
            .replace("\\n", "\n")
            .replace("\\t", "\t")
            .replace("\\\\", "\\");
    }
    if newline {
        text.push('\n');
    }
    let _ = io.stdout.write_all(text.as_bytes());
    0
}

/// Copies each file (or stdin for `-` or none) to stdout.
fn cat(args: &[String], io: &mut Io) -> i32 {
    let (_, files) = flags(args);
    let mut status = 0;
    for_each_input("cat", &files, io, &mut status, |input, io| {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = input.read(&mut buffer)?;
            if n == 0 {
                return Ok(());
            }
            io.stdout.write_all(&buffer[..n])?;
        }
    });
    status
}

/// Calls `each` with every named file (stdin for `-` or no names), reporting failures.
fn for_each_input(
    command: &str,
    files: &[String],
    io: &mut Io,
    status: &mut i32,
    mut each: impl FnMut(&mut dyn Read, &mut Io) -> std::io::Result<()>,
) {
    let stdin_only = [String::from("-")];
    let files = if files.is_empty() {
        &stdin_only[..]
    } else {
        files
    };
    for file in files {
        let result = if file == "-" {
            let mut stdin =
                std::mem::replace(&mut io.stdin, crate::io::Input::Bytes(Default::default()));
            let result = each(&mut stdin, io);
            io.stdin = stdin;
            result
        } else {
            match fs::File::open(file) {
                Ok(mut f) => each(&mut f, io),
                Err(e) => Err(e),
            }
        };
        if let Err(e) = result {
            *status = fail(io, command, file, &e);
        }
    }
}

fn read_all(input: &mut dyn Read) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn wc(args: &[String], io: &mut Io) -> i32 {
    let (mut which, files) = flags(args);
    which.retain(|f| matches!(f, 'l' | 'w' | 'c'));
    if which.is_empty() {
        which = vec!['l', 'w', 'c'];
    }
    let mut status = 0;
    let mut rows = Vec::new();
    for_each_input("wc", &files, io, &mut status, |input, _| {
        let bytes = read_all(input)?;
        let text = String::from_utf8_lossy(&bytes);
        let counts = [
            ('l', bytes.iter().filter(|&&b| b == b'\n').count()),
            ('w', text.split_whitespace().count()),
            ('c', bytes.len()),
        ];
        rows.push(
            counts
                .iter()
                .filter(|(f, _)| which.contains(f))
                .map(|(_, n)| *n)
                .collect::<Vec<_>>(),
        );
        Ok(())
    });
    let columns = rows.first().map_or(0, Vec::len);
    for (index, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .map(|n| {
                if columns == 1 && files.is_empty() {
                    n.to_string()
                } else {
                    format!("{n:>7}")
                }
            })
            .collect();
        let name = files
            .get(index)
            .map(|f| format!(" {f}"))
            .unwrap_or_default();
        let _ = writeln!(io.stdout, "{}{name}", cells.join(" "));
    }
    status
}

fn grep(args: &[String], io: &mut Io) -> i32 {
    let (flags, mut operands) = flags(args);
    if operands.is_empty() {
        io.error("usage: grep [-vicnqF] PATTERN [FILE...]");
        return 2;
    }
    let pattern = operands.remove(0);
    let pattern = if flags.contains(&'F') {
        regex_lite::escape(&pattern)
    } else {
        pattern
    };
    let pattern = if flags.contains(&'i') {
        format!("(?i){pattern}")
    } else {
        pattern
    };
    let regex = match regex_lite::Regex::new(&pattern) {
        Ok(regex) => regex,
        Err(e) => {
            io.error(&format!("grep: {e}"));
            return 2;
        }
    };
    let (invert, count, numbers, quiet) = (
        flags.contains(&'v'),
        flags.contains(&'c'),
        flags.contains(&'n'),
        flags.contains(&'q'),
    );
    let several = operands.len() > 1;
    let mut matched = false;
    let mut status = 0;
    let names = operands.clone();
    let mut file_index = 0;
    for_each_input("grep", &operands, io, &mut status, |input, io| {
        let name = names.get(file_index).cloned().unwrap_or_default();
        file_index += 1;
        let bytes = read_all(input)?;
        let text = String::from_utf8_lossy(&bytes);
        let mut hits = 0;
        for (number, line) in text.lines().enumerate() {
            if regex.is_match(line) != invert {
                hits += 1;
                if !count && !quiet {
                    let prefix = if several {
                        format!("{name}:")
                    } else {
                        String::new()
                    };
                    let number = if numbers {
                        format!("{}:", number + 1)
                    } else {
                        String::new()
                    };
                    writeln!(io.stdout, "{prefix}{number}{line}")?;
                }
            }
        }
        if count && !quiet {
            let prefix = if several {
                format!("{name}:")
            } else {
                String::new()
            };
            writeln!(io.stdout, "{prefix}{hits}")?;
        }
        matched |= hits > 0;
        Ok(())
    });
    if status != 0 {
        2
    } else if matched {
        0
    } else {
        1
    }
}

/// `-n N` / `-c N` (also `-nN`, `-cN`, `-c+N` for tail), and the operands.
fn count_option(args: &[String], default: &str) -> Result<(char, String, Vec<String>), String> {
    let mut unit = 'n';
    let mut amount = default.to_string();
    let mut operands = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if let Some(option) = arg.strip_prefix('-').filter(|o| o.starts_with(['n', 'c'])) {
            unit = option.chars().next().unwrap_or('n');
            amount = if option.len() > 1 {
                option[1..].to_string()
            } else {
                rest.next()
                    .cloned()
                    .ok_or(format!("option -{unit} needs a number"))?
            };
        } else if let Some(number) = arg.strip_prefix('-').filter(|n| n.parse::<u64>().is_ok()) {
            amount = number.to_string();
        } else {
            operands.push(arg.clone());
        }
    }
    Ok((unit, amount, operands))
}

fn head(args: &[String], io: &mut Io) -> i32 {
    head_or_tail("head", args, io)
}

fn tail(args: &[String], io: &mut Io) -> i32 {
    head_or_tail("tail", args, io)
}

fn head_or_tail(command: &str, args: &[String], io: &mut Io) -> i32 {
    let (unit, amount, files) = match count_option(args, "10") {
        Ok(parsed) => parsed,
        Err(e) => {
            io.error(&format!("{command}: {e}"));
            return 2;
        }
    };
    let from_start = amount.starts_with('+');
    let Ok(n) = amount.trim_start_matches('+').parse::<usize>() else {
        io.error(&format!("{command}: invalid number: {amount:?}"));
        return 2;
    };
    let mut status = 0;
    for_each_input(command, &files, io, &mut status, |input, io| {
        let bytes = read_all(input)?;
        let pieces: Vec<&[u8]> = if unit == 'c' {
            bytes.chunks(1).collect()
        } else {
            bytes.split_inclusive(|&b| b == b'\n').collect()
        };
        let range = match (command, from_start) {
            ("head", _) => 0..n.min(pieces.len()),
            // `tail -c +N`: from the Nth on (1-based), as kubectl cp's resumed copy asks.
            (_, true) => n.saturating_sub(1).min(pieces.len())..pieces.len(),
            _ => pieces.len().saturating_sub(n)..pieces.len(),
        };
        for piece in &pieces[range] {
            io.stdout.write_all(piece)?;
        }
        Ok(())
    });
    status
}

fn env(args: &[String], io: &mut Io) -> i32 {
    if let Some(first) = args.first() {
        io.error(&format!(
            "env: running {first:?} is not supported; env only prints"
        ));
        return 2;
    }
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.sort();
    for (key, value) in vars {
        let _ = writeln!(io.stdout, "{key}={value}");
    }
    0
}

fn printenv(args: &[String], io: &mut Io) -> i32 {
    if args.is_empty() {
        return env(args, io);
    }
    let mut status = 0;
    for name in args {
        match std::env::var(name) {
            Ok(value) => {
                let _ = writeln!(io.stdout, "{value}");
            }
            Err(_) => status = 1,
        }
    }
    status
}

fn pwd(_: &[String], io: &mut Io) -> i32 {
    let dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let _ = writeln!(io.stdout, "{}", dir.display());
    0
}

fn basename(args: &[String], io: &mut Io) -> i32 {
    let Some(path) = args.first() else {
        io.error("basename: missing operand");
        return 2;
    };
    let trimmed = path.trim_end_matches('/');
    let mut name = trimmed.rsplit('/').next().unwrap_or("").to_string();
    if let Some(suffix) = args.get(1) {
        if name.len() > suffix.len() {
            if let Some(stripped) = name.strip_suffix(suffix.as_str()) {
                name = stripped.to_string();
            }
        }
    }
    let _ = writeln!(
        io.stdout,
        "{}",
        if trimmed.is_empty() { "/" } else { &name }
    );
    0
}

fn dirname(args: &[String], io: &mut Io) -> i32 {
    let Some(path) = args.first() else {
        io.error("dirname: missing operand");
        return 2;
    };
    let trimmed = path.trim_end_matches('/');
    let dir = match trimmed.rsplit_once('/') {
        Some(("", _)) => "/",
        Some((dir, _)) => dir,
        None if trimmed.is_empty() && path.starts_with('/') => "/",
        None => ".",
    };
    let _ = writeln!(io.stdout, "{dir}");
    0
}

fn sleep(args: &[String], io: &mut Io) -> i32 {
    let Some(Ok(seconds)) = args.first().map(|s| s.trim_end_matches('s').parse::<f64>()) else {
        io.error("sleep: usage: sleep SECONDS");
        return 2;
    };
    if !(0.0..=1e7).contains(&seconds) {
        io.error(&format!("sleep: invalid time interval {seconds}"));
        return 2;
    }
    std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
    0
}

/// `test` / `[`: -e -f -d -s -z -n, = != , -eq -ne -lt -le -gt -ge, and `!`.
fn test(args: &[String], io: &mut Io) -> i32 {
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    if args.last() == Some(&"]") {
        args.pop();
    }
    let mut negate = false;
    while args.first() == Some(&"!") {
        negate = !negate;
        args.remove(0);
    }
    let result = match args.as_slice() {
        [] => Ok(false),
        [s] => Ok(!s.is_empty()),
        [op, operand] => match *op {
            "-e" => Ok(Path::new(operand).exists()),
            "-f" => Ok(Path::new(operand).is_file()),
            "-d" => Ok(Path::new(operand).is_dir()),
            "-s" => Ok(fs::metadata(operand).is_ok_and(|m| m.len() > 0)),
            "-z" => Ok(operand.is_empty()),
            "-n" => Ok(!operand.is_empty()),
            other => Err(format!("test: {other}: unary operator expected")),
        },
        [left, op, right] => match *op {
            "=" | "==" => Ok(left == right),
            "!=" => Ok(left != right),
            "-eq" | "-ne" | "-lt" | "-le" | "-gt" | "-ge" => {
                match (left.parse::<i64>(), right.parse::<i64>()) {
                    (Ok(l), Ok(r)) => Ok(match *op {
                        "-eq" => l == r,
                        "-ne" => l != r,
                        "-lt" => l < r,
                        "-le" => l <= r,
                        "-gt" => l > r,
                        _ => l >= r,
                    }),
                    _ => Err("test: integer expression expected".into()),
                }
            }
            other => Err(format!("test: {other}: binary operator expected")),
        },
        _ => Err("test: too many arguments".into()),
    };
    match result {
        Ok(truth) => i32::from(truth == negate),
        Err(message) => {
            io.error(&message);
            2
        }
    }
}

fn mkdir(args: &[String], io: &mut Io) -> i32 {
    let (flags, dirs) = flags(args);
    let parents = flags.contains(&'p');
    let mut status = 0;
    for dir in &dirs {
        let result = if parents {
            fs::create_dir_all(dir)
        } else {
            fs::create_dir(dir)
        };
        if let Err(e) = result {
            status = fail(io, "mkdir", &format!("cannot create directory '{dir}'"), &e);
        }
    }
    status
}

fn touch(args: &[String], io: &mut Io) -> i32 {
    let mut status = 0;
    for file in args {
        if let Err(e) = fs::OpenOptions::new().create(true).append(true).open(file) {
            status = fail(io, "touch", file, &e);
        }
    }
    status
}

fn rm(args: &[String], io: &mut Io) -> i32 {
    let (flags, paths) = flags(args);
    let recursive = flags.iter().any(|f| matches!(f, 'r' | 'R'));
    let force = flags.contains(&'f');
    let mut status = 0;
    for path in &paths {
        let result = match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() && recursive => fs::remove_dir_all(path),
            Ok(meta) if meta.is_dir() => {
                io.error(&format!("rm: cannot remove '{path}': Is a directory"));
                status = 1;
                continue;
            }
            Ok(_) => fs::remove_file(path),
            Err(_) if force => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            status = fail(io, "rm", &format!("cannot remove '{path}'"), &e);
        }
    }
    status
}

/// Where `source` goes for `cp`/`mv`: into `target` when it is a directory.
fn destination(source: &str, target: &str) -> PathBuf {
    let target = Path::new(target);
    if target.is_dir() {
        let name = Path::new(source.trim_end_matches('/'))
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        target.join(name)
    } else {
        target.to_path_buf()
    }
}

fn mv(args: &[String], io: &mut Io) -> i32 {
    let (_, mut operands) = flags(args);
    if operands.len() < 2 {
        io.error("mv: missing destination operand");
        return 2;
    }
    let target = operands.pop().unwrap_or_default();
    let mut status = 0;
    for source in &operands {
        let to = destination(source, &target);
        // Across preopens a rename fails: copy, then remove.
        let result = fs::rename(source, &to).or_else(|_| {
            copy_tree(Path::new(source), &to)?;
            if Path::new(source).is_dir() {
                fs::remove_dir_all(source)
            } else {
                fs::remove_file(source)
            }
        });
        if let Err(e) = result {
            status = fail(io, "mv", &format!("cannot move '{source}'"), &e);
        }
    }
    status
}

fn cp(args: &[String], io: &mut Io) -> i32 {
    let (flags, mut operands) = flags(args);
    let recursive = flags.iter().any(|f| matches!(f, 'r' | 'R' | 'a'));
    if operands.len() < 2 {
        io.error("cp: missing destination operand");
        return 2;
    }
    let target = operands.pop().unwrap_or_default();
    let mut status = 0;
    for source in &operands {
        if Path::new(source).is_dir() && !recursive {
            io.error(&format!(
                "cp: -r not specified; omitting directory '{source}'"
            ));
            status = 1;
            continue;
        }
        if let Err(e) = copy_tree(Path::new(source), &destination(source, &target)) {
            status = fail(io, "cp", &format!("cannot copy '{source}'"), &e);
        }
    }
    status
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    if from.is_dir() {
        fs::create_dir_all(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        fs::copy(from, to).map(|_| ())
    }
}

fn ls(args: &[String], io: &mut Io) -> i32 {
    let (flags, mut paths) = flags(args);
    let (long, all) = (flags.contains(&'l'), flags.contains(&'a'));
    if paths.is_empty() {
        paths.push(".".into());
    }
    let several = paths.len() > 1;
    let mut status = 0;
    for (index, path) in paths.iter().enumerate() {
        let mut names: Vec<(String, Option<fs::Metadata>)> = if path == "/" {
            // The guest's root holds only its preopened directories.
            crate::io::preopen_roots()
                .into_iter()
                .map(|name| {
                    let meta = fs::metadata(format!("/{name}")).ok();
                    (name, meta)
                })
                .collect()
        } else {
            match fs::metadata(path) {
                Ok(meta) if !meta.is_dir() => vec![(path.clone(), Some(meta))],
                Ok(_) => match fs::read_dir(path) {
                    Ok(entries) => entries
                        .flatten()
                        .map(|e| {
                            (
                                e.file_name().to_string_lossy().into_owned(),
                                e.metadata().ok(),
                            )
                        })
                        .filter(|(n, _)| all || !n.starts_with('.'))
                        .collect(),
                    Err(e) => {
                        status = fail(io, "ls", &format!("cannot open directory '{path}'"), &e);
                        continue;
                    }
                },
                Err(e) => {
                    status = fail(io, "ls", &format!("cannot access '{path}'"), &e);
                    continue;
                }
            }
        };
        names.sort_by(|a, b| a.0.cmp(&b.0));
        if several {
            let gap = if index > 0 { "\n" } else { "" };
            let _ = writeln!(io.stdout, "{gap}{path}:");
        }
        for (name, meta) in names {
            if long {
                let _ = writeln!(io.stdout, "{} {name}", long_format(meta.as_ref()));
            } else {
                let _ = writeln!(io.stdout, "{name}");
            }
        }
    }
    status
}

/// `ls -l`'s columns before the name: type and the conventional permissions (WASI has no
/// modes, and the read-only flag it reports says nothing about a preopen's rights; these
/// are the modes `tar` here writes), size, modification time (UTC).
fn long_format(meta: Option<&fs::Metadata>) -> String {
    let Some(meta) = meta else {
        return format!("?????????? {:>9} {:>16}", "?", "?");
    };
    let mode = if meta.is_dir() {
        "drwxr-xr-x"
    } else if meta.file_type().is_symlink() {
        "lrwxrwxrwx"
    } else {
        "-rw-r--r--"
    };
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(|| "?".to_string(), |d| civil(d.as_secs()));
    format!("{mode} {:>9} {modified}", meta.len())
}

/// `YYYY-MM-DD HH:MM` of a Unix time (UTC), by Howard Hinnant's days-from-civil inverse.
fn civil(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let (hour, minute) = ((seconds % 86_400) / 3600, (seconds % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}")
}
