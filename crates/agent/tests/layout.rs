//! The agent's modules import each other in one direction only: no two files (or longer rings
//! of files) name each other through `crate::` or `super::` paths. A ring means neither side
//! can be understood, tested or moved into the deterministic core without the other.
//!
//! The check reads the sources: every `crate::a::b` or `super::c` path outside comments and
//! `#[cfg(test)]` modules is resolved to the longest module it names, and the graph of those
//! edges must have no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`p2p/download`) -> source text without comments and test modules.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.insert(module_of(src, &path), code_of(&path));
            }
        }
    }
    out
}

fn module_of(src: &Path, file: &Path) -> String {
    let rel: PathBuf = file.strip_prefix(src).unwrap().with_extension("");
    let name = rel.to_string_lossy().replace('\\', "/");
    name.strip_suffix("/mod").unwrap_or(&name).to_string()
}

fn code_of(file: &Path) -> String {
    strip(&std::fs::read_to_string(file).unwrap())
}

/// The code before the test module, without line comments (doc links name modules too).
fn strip(text: &str) -> String {
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or("");
    before_tests
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `::`-separated identifiers of every path starting with `root::` in `code`.
fn paths<'a>(code: &'a str, root: &'a str) -> impl Iterator<Item = Vec<&'a str>> + 'a {
    code.match_indices(root).filter_map(move |(at, _)| {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        let rest = &code[at..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let segments: Vec<&str> = rest[..end].split("::").filter(|s| !s.is_empty()).collect();
        Some(segments)
    })
}

/// The longest known module named by `segments` (already absolute, without `crate`).
fn longest(known: &BTreeSet<String>, segments: &[&str]) -> Option<String> {
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("/"))
        .find(|m| known.contains(m))
}

fn edges(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (m, code) in mods {
        let mut to = BTreeSet::new();
        for segs in paths(code, "crate::") {
            to.extend(longest(&known, &segs[1..]));
        }
        // `super` in a/b.rs is module a; in a/mod.rs (module a itself) it is a's parent.
        let mut parent: Vec<&str> = m.split('/').collect();
        parent.pop();
        for segs in paths(code, "super::") {
            let mut base = parent.clone();
            let mut rest = &segs[1..];
            while rest.first() == Some(&"super") {
                base.pop();
                rest = &rest[1..];
            }
            base.extend_from_slice(rest);
            to.extend(longest(&known, &base));
        }
        // A module naming its own parent or child is the tree, not a ring.
        to.retain(|t| {
            t != m && !m.starts_with(&format!("{t}/")) && !t.starts_with(&format!("{m}/"))
        });
        graph.insert(m.clone(), to);
    }
    graph
}

/// A cycle in `graph`, if there is one (depth-first search with colours).
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut ring = stack[at..].to_vec();
            ring.push(n.to_string());
            return Some(ring);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for next in graph.get(n).into_iter().flatten() {
            if let Some(ring) = visit(next, graph, done, stack) {
                return Some(ring);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut done, &mut Vec::new()))
}

#[test]
fn no_two_agent_modules_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    assert!(mods.contains_key("fetch") && mods.contains_key("p2p/download"));
    let graph = edges(&mods);
    assert!(
        graph["fetch"].contains("sink"),
        "the check sees fetch -> sink"
    );
    if let Some(ring) = cycle(&graph) {
        panic!("modules import each other: {}", ring.join(" -> "));
    }
}

/// The same rule in every crate of the workspace.
#[test]
fn no_two_modules_of_any_crate_import_each_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut srcs: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    srcs.push(root.join("proto/src"));
    assert!(srcs.len() > 5, "found the crates: {srcs:?}");
    for src in srcs {
        if let Some(ring) = cycle(&edges(&modules(&src))) {
            panic!(
                "{}: modules import each other: {}",
                src.display(),
                ring.join(" -> ")
            );
        }
    }
}

#[test]
fn the_check_sees_a_ring() {
    let mods: BTreeMap<String, String> = [
        ("a".to_string(), "use crate::b::Thing;".to_string()),
        ("b".to_string(), "fn f() { super::a::g() }".to_string()),
        (
            "c/d".to_string(),
            "use super::e::X; use crate::a;".to_string(),
        ),
        ("c/e".to_string(), "// use super::d::Y;".to_string()),
    ]
    .into_iter()
    .map(|(m, code)| (m, strip(&code)))
    .collect();
    let graph = edges(&mods);
    assert_eq!(
        graph["c/d"],
        ["a", "c/e"].iter().map(|s| s.to_string()).collect()
    );
    let ring = cycle(&graph).expect("a and b name each other");
    assert!(ring.contains(&"a".to_string()) && ring.contains(&"b".to_string()));
}
