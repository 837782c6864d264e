//! The module layering ARCHITECTURE.md promises, checked on the source: no cycles between
//! modules of a crate (at every level: `server/pods.rs` and `server/resource.rs`, or `pod`
//! and `proxy`), and the stated layers (`runtime`: agent -> {pod, proxy} -> engine, never
//! back; `control`: `server`, `controllers` and `scheduler` never use each other).
//!
//! A module's dependencies are the `crate::…` and `super::…` paths its code names (comments,
//! doc comments and `#[cfg(test)]` modules are not code that ships). A module may always use
//! its ancestors' own items (`super::ApiServer` from `server/pods.rs`): that is not a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`["server", "pods"]`) of every source file under `src`.
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut found = BTreeMap::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut module: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            found.insert(module, path);
        }
    }
    found
}

/// The code of a file without comments and without its `#[cfg(test)]` module (kept last in
/// every file of this project).
fn shipped_code(text: &str) -> String {
    let code = match text.find("#[cfg(test)]\nmod ") {
        Some(at) => &text[..at],
        None => text,
    };
    code.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths named at `from` (`crate::a::b::C` -> `[a, b, C]`; a group
/// `a::{b, c::D}` -> `[a, b]` and `[a, c, D]`).
fn paths_at(code: &str, from: usize) -> Vec<Vec<String>> {
    let mut prefix = Vec::new();
    let mut rest = &code[from..];
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        prefix.push(rest[..end].to_string());
        rest = &rest[end..];
        match rest.strip_prefix("::") {
            Some(next) => rest = next,
            None => return vec![prefix],
        }
    }
    let Some(group) = rest.strip_prefix('{') else {
        return vec![prefix];
    };
    // The group's top-level items, each a path of its own.
    let (mut depth, mut start, mut items) = (0usize, 0usize, Vec::new());
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..at]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    let mut paths = Vec::new();
    for item in items {
        let item = item.trim_start();
        for tail in paths_at(item, 0) {
            let mut path = prefix.clone();
            path.extend(tail);
            paths.push(path);
        }
    }
    paths
}

/// The longest known module a path names.
fn resolve(path: &[String], known: &BTreeMap<Vec<String>, PathBuf>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|candidate| known.contains_key(candidate))
}

/// Edges between modules of one crate, with each edge also lifted to every level where the
/// two sides differ (`pod/network -> proxy` is also `pod -> proxy`).
fn dependencies(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let known = modules(src);
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, file) in &known {
        let code = shipped_code(&std::fs::read_to_string(file).unwrap());
        let is_mod_file = file
            .file_name()
            .is_some_and(|n| n == "mod.rs" || n == "lib.rs" || n == "main.rs");
        // `super::` of `a/b.rs` is `a`; of `a/b/mod.rs` it is `a` too.
        let parent: Vec<String> = if is_mod_file || !module.is_empty() {
            module[..module.len().saturating_sub(1)].to_vec()
        } else {
            Vec::new()
        };
        let mut targets = Vec::new();
        for (at, _) in code.match_indices("crate::") {
            targets.extend(paths_at(&code, at + "crate::".len()));
        }
        for (at, _) in code.match_indices("super::") {
            // `super::super::x` is resolved from the grandparent.
            let mut base = parent.clone();
            let mut start = at + "super::".len();
            while code[start..].starts_with("super::") {
                base.pop();
                start += "super::".len();
            }
            for tail in paths_at(&code, start) {
                let mut path = base.clone();
                path.extend(tail);
                targets.push(path);
            }
        }
        for target in targets {
            let Some(target) = resolve(&target, &known) else {
                continue;
            };
            // Lift to the first level where the two differ: siblings under a common parent.
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.len() || common == target.len() {
                continue; // an ancestor's or a descendant's item
            }
            for depth in common + 1..=module.len() {
                for target_depth in common + 1..=target.len() {
                    edges
                        .entry(module[..depth].to_vec())
                        .or_default()
                        .insert(target[..target_depth].to_vec());
                }
            }
        }
    }
    edges
}

/// A cycle through `start`, if any (depth-first over the edges).
fn cycle_through(
    start: &Vec<String>,
    edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
) -> Option<Vec<Vec<String>>> {
    let mut stack = vec![(start.clone(), vec![start.clone()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in edges.get(&node).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start.clone());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

fn source_of(krate: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src")
}

fn describe(cycle: &[Vec<String>]) -> String {
    cycle
        .iter()
        .map(|m| m.join("::"))
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[test]
fn no_module_of_any_crate_is_in_a_cycle() {
    let mut cycles = Vec::new();
    for krate in ["api", "control", "runtime", "cli"] {
        let edges = dependencies(&source_of(krate));
        for module in edges.keys() {
            if let Some(cycle) = cycle_through(module, &edges) {
                cycles.push(format!("{krate}: {}", describe(&cycle)));
            }
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn layers_are_used_only_downwards() {
    let forbidden = [
        ("runtime", "engine", &["pod", "proxy", "agent"][..]),
        ("runtime", "pod", &["proxy", "agent"][..]),
        ("runtime", "proxy", &["agent"][..]),
        ("control", "server", &["controllers", "scheduler"][..]),
        ("control", "controllers", &["server", "scheduler"][..]),
        ("control", "scheduler", &["server", "controllers"][..]),
    ];
    let mut broken = Vec::new();
    for (krate, lower, uppers) in forbidden {
        let edges = dependencies(&source_of(krate));
        let used = edges.get(&vec![lower.to_string()]);
        for upper in uppers {
            if used.is_some_and(|u| u.contains(&vec![upper.to_string()])) {
                broken.push(format!("{krate}: {lower} uses {upper}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "layers used upwards:\n{}",
        broken.join("\n")
    );
}

/// The checker itself finds what it is meant to find.
#[test]
fn the_checker_sees_a_cycle_between_sibling_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;").unwrap();
    std::fs::write(src.join("a/mod.rs"), "mod x; mod y; pub struct Root;").unwrap();
    std::fs::write(src.join("a/x.rs"), "use super::{y::Y, Root};").unwrap();
    std::fs::write(
        src.join("a/y.rs"),
        "// crate::a::x in a comment is not a use\npub struct Y; fn f() { crate::a::x::g() }",
    )
    .unwrap();
    let edges = dependencies(src);
    let x = vec!["a".to_string(), "x".to_string()];
    assert!(cycle_through(&x, &edges).is_some(), "{edges:?}");
    std::fs::write(src.join("a/y.rs"), "// crate::a::x::g()\npub struct Y;").unwrap();
    let edges = dependencies(src);
    assert!(cycle_through(&x, &edges).is_none(), "{edges:?}");
}
