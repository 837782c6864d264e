//! `tar` as `kubectl cp` runs it: `tar cf - PATH…` (leading `/` removed from member names,
//! as GNU tar) and `tar -xmf - -C DIR`; also `t` (list), `v`, `-C`, `--directory`, and the
//! GNU options kubectl passes (`--no-same-permissions`, `--no-same-owner`). Archives are
//! ustar/GNU through the `tar` crate. Extraction is done entry by entry here: the crate's
//! own `unpack` canonicalizes paths, which WASI cannot; a member naming `..` or an absolute
//! path is refused instead (and the preopens bound the guest anyway).

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use crate::io::{describe, Input, Io};

#[derive(PartialEq, Clone, Copy)]
enum Mode {
    Create,
    Extract,
    List,
}

pub fn tar(args: &[String], io: &mut Io) -> i32 {
    match run(args, io) {
        Ok(code) => code,
        Err(message) => {
            io.error(&format!("tar: {message}"));
            2
        }
    }
}

fn run(args: &[String], io: &mut Io) -> Result<i32, String> {
    let mut mode = None;
    let (mut verbose, mut keep_mtime) = (false, true);
    let (mut file, mut directory) = (None::<String>, None::<String>);
    let mut operands = Vec::new();
    let mut rest = args.iter().enumerate();
    while let Some((index, arg)) = rest.next() {
        let bundled = if let Some(long) = arg.strip_prefix("--") {
            match long.split_once('=') {
                Some(("directory", dir)) => directory = Some(dir.to_string()),
                Some(("file", f)) => file = Some(f.to_string()),
                _ if matches!(long, "no-same-permissions" | "no-same-owner" | "touch") => {
                    keep_mtime &= long != "touch";
                }
                _ => return Err(format!("unrecognized option '--{long}'")),
            }
            continue;
        } else if let Some(flags) = arg.strip_prefix('-').filter(|f| !f.is_empty()) {
            flags
        } else if index == 0 {
            // `tar cf …`: the first word is flags even without a dash.
            arg.as_str()
        } else {
            operands.push(arg.clone());
            continue;
        };
        for flag in bundled.chars() {
            match flag {
                'c' => mode = Some(Mode::Create),
                'x' => mode = Some(Mode::Extract),
                't' => mode = Some(Mode::List),
                'v' => verbose = true,
                'm' => keep_mtime = false,
                'o' | 'p' => {}
                'f' | 'C' => {
                    let value = rest
                        .next()
                        .map(|(_, v)| v.clone())
                        .ok_or(format!("option requires an argument -- '{flag}'"))?;
                    if flag == 'f' {
                        file = Some(value);
                    } else {
                        directory = Some(value);
                    }
                }
                'z' | 'j' | 'J' => return Err(format!("-{flag}: compression is not supported")),
                other => return Err(format!("invalid option -- '{other}'")),
            }
        }
    }
    let base = PathBuf::from(directory.unwrap_or_else(|| ".".into()));
    let file = file.filter(|f| f != "-");
    match mode {
        Some(Mode::Create) => {
            if operands.is_empty() {
                return Err("cowardly refusing to create an empty archive".into());
            }
            match file {
                Some(f) => {
                    let out = File::create(&f).map_err(|e| format!("{f}: {}", describe(&e)))?;
                    create(out, &base, &operands, verbose, io)
                }
                None => {
                    let out = io.stdout.clone();
                    create(out, &base, &operands, verbose, io)
                }
            }
        }
        Some(mode) => {
            let input = match file {
                Some(f) => Input::File(BufReader::new(
                    File::open(&f).map_err(|e| format!("{f}: {}", describe(&e)))?,
                )),
                None => std::mem::replace(&mut io.stdin, Input::Bytes(Default::default())),
            };
            read(input, mode, &base, keep_mtime, verbose, io)
        }
        None => Err("you must specify one of the '-ctx' options".into()),
    }
}

fn create(
    out: impl Write,
    base: &Path,
    paths: &[String],
    verbose: bool,
    io: &mut Io,
) -> Result<i32, String> {
    let mut builder = tar::Builder::new(out);
    let mut status = 0;
    let mut warned = false;
    for path in paths {
        let name = path.trim_start_matches('/');
        if name.len() != path.len() && !warned {
            io.error("tar: Removing leading `/' from member names");
            warned = true;
        }
        let source = base.join(path);
        let name = if name.is_empty() { "." } else { name };
        if let Err(e) = append(&mut builder, &source, name, verbose, io) {
            io.error(&format!("tar: {path}: {}", describe(&e)));
            status = 2;
        }
    }
    let mut out = builder.into_inner().map_err(|e| describe(&e))?;
    out.flush().map_err(|e| describe(&e))?;
    Ok(status)
}

/// Appends `source` as `name`, directories with everything below them. Headers are made
/// here: the crate's `append_path` reads Unix metadata that WASI does not have (modes are
/// 0644 and 0755, owners 0).
fn append(
    builder: &mut tar::Builder<impl Write>,
    source: &Path,
    name: &str,
    verbose: bool,
    io: &mut Io,
) -> std::io::Result<()> {
    let meta = std::fs::metadata(source)?;
    let mut header = tar::Header::new_gnu();
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    if verbose {
        io.error(name);
    }
    if meta.is_dir() {
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        builder.append_data(&mut header, format!("{name}/"), std::io::empty())?;
        let mut entries: Vec<_> = std::fs::read_dir(source)?.collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child = entry.file_name();
            let child = child.to_string_lossy();
            let child_name = if name == "." {
                child.to_string()
            } else {
                format!("{name}/{child}")
            };
            append(builder, &entry.path(), &child_name, verbose, io)?;
        }
        Ok(())
    } else {
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(meta.len());
        builder.append_data(&mut header, name, File::open(source)?)
    }
}

fn read(
    input: impl Read,
    mode: Mode,
    base: &Path,
    keep_mtime: bool,
    verbose: bool,
    io: &mut Io,
) -> Result<i32, String> {
    let mut archive = tar::Archive::new(input);
    let entries = archive.entries().map_err(|e| describe(&e))?;
    let mut status = 0;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("reading the archive: {}", describe(&e)))?;
        let name = entry
            .path()
            .map_err(|e| describe(&e))?
            .to_string_lossy()
            .into_owned();
        if mode == Mode::List || verbose {
            let _ = writeln!(
                if mode == Mode::List {
                    &mut io.stdout
                } else {
                    &mut io.stderr
                },
                "{name}"
            );
        }
        if mode == Mode::List {
            continue;
        }
        let Some(relative) = inside(&name) else {
            io.error(&format!(
                "tar: {name}: member name points outside the destination; skipped"
            ));
            status = 2;
            continue;
        };
        let target = base.join(relative);
        let kind = entry.header().entry_type();
        let result = if kind.is_dir() {
            std::fs::create_dir_all(&target)
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
                let _ = std::fs::create_dir_all(parent);
            }
            // Written here: the crate's `unpack` sets Unix modes, which fails on WASI.
            File::create(&target).and_then(|mut file| {
                std::io::copy(&mut entry, &mut file)?;
                let mtime = entry.header().mtime().unwrap_or(0);
                if keep_mtime {
                    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                    file.set_modified(at)?;
                }
                Ok(())
            })
        } else {
            io.error(&format!(
                "tar: {name}: only files and directories are extracted; skipped"
            ));
            continue;
        };
        if let Err(e) = result {
            io.error(&format!("tar: {name}: {}", describe(&e)));
            status = 2;
        }
    }
    Ok(status)
}

/// A member's path below the destination, or `None` if it leaves it (`..`, absolute).
fn inside(name: &str) -> Option<PathBuf> {
    let mut path = PathBuf::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(path)
}
