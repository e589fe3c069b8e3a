//! The house's rules, checked on the source tree: no source file over 600 lines, no two
//! sibling modules importing each other, and every file and item the docs name exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates' source roots; each is one module tree.
const CRATE_ROOTS: [&str; 4] = ["src", "actors/src", "load/src", "tests/harness/src"];
const MAX_LINES: usize = 600;
/// Written by diesel's CLI, not by hand.
const GENERATED: [&str; 1] = ["src/db/schema.rs"];
/// Where a file the docs name may live.
const NAMED_ROOTS: [&str; 9] = [
    "src/",
    "actors/",
    "load/",
    "tests/",
    "migrations/",
    "templates/",
    "scripts/",
    ".ci/",
    "docs/",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn no_source_file_is_over_600_lines() {
    let mut files = Vec::new();
    for root in CRATE_ROOTS.iter().chain(&["tests"]) {
        rust_files(&repo().join(root), &mut files);
    }
    assert!(files.len() > 50, "found only {} files", files.len());
    let mut long: Vec<String> = files
        .iter()
        .filter(|f| !GENERATED.contains(&relative(f).as_str()))
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", relative(f)))
        })
        .collect();
    long.sort();
    long.dedup();
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

/// A file's module path within its crate: `store/intake.rs` is `store::intake`,
/// `kitchen/mod.rs` is `kitchen`, `lib.rs` and `main.rs` the root.
fn module_path(root: &Path, file: &Path) -> Vec<String> {
    let mut parts: Vec<String> = file
        .strip_prefix(root)
        .unwrap()
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The paths a `use` tree names after `crate::` or `super::`, braces expanded:
/// `a::{b, c::{d, self}}` gives `a::b`, `a::c::d` and `a::c`.
fn use_paths(text: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let bytes = text.as_bytes();
    let mut at = 0;
    let mut path = prefix;
    loop {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        if bytes.get(at) == Some(&b'{') {
            at += 1;
            loop {
                at += use_paths(&text[at..], path.clone(), out);
                while at < bytes.len() && bytes[at].is_ascii_whitespace() {
                    at += 1;
                }
                match bytes.get(at) {
                    Some(b',') => at += 1,
                    Some(b'}') => return at + 1,
                    _ => return at,
                }
                while at < bytes.len() && bytes[at].is_ascii_whitespace() {
                    at += 1;
                }
                if bytes.get(at) == Some(&b'}') {
                    return at + 1;
                }
            }
        }
        let start = at;
        while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
            at += 1;
        }
        let segment = &text[start..at];
        if !segment.is_empty() && segment != "self" {
            path.push(segment.to_string());
        }
        if text[at..].starts_with("::") {
            at += 2;
            continue;
        }
        out.push(path);
        // Skip a rename (`as x`) up to the end of this tree.
        while at < bytes.len() && !matches!(bytes[at], b',' | b'}' | b';' | b'(' | b')') {
            if bytes[at] == b'\n' {
                break;
            }
            at += 1;
        }
        return at;
    }
}

/// What a file names of its crate, as module paths.
fn references(module: &[String], text: &str) -> Vec<Vec<String>> {
    // Test code counts too; comments don't.
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let code = code.as_str();
    let mut out = Vec::new();
    for (marker, base) in [
        ("crate::", Vec::new()),
        ("super::", module[..module.len().saturating_sub(1)].to_vec()),
    ] {
        let mut rest = code;
        while let Some(found) = rest.find(marker) {
            let preceded_by_path = rest[..found].ends_with("::");
            rest = &rest[found + marker.len()..];
            if !preceded_by_path {
                use_paths(rest, base.clone(), &mut out);
            }
        }
    }
    out
}

/// The loops among the children of one module: each set of children that reach one another
/// (Tarjan's strongly connected components, those of more than one).
fn loops(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, node: &'a str) {
            let at = self.index.len();
            self.index.insert(node, at);
            self.low.insert(node, at);
            self.stack.push(node);
            for next in self.edges.get(node).into_iter().flatten() {
                if !self.index.contains_key(next.as_str()) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next.as_str()]);
                    self.low.insert(node, low);
                } else if self.stack.contains(&next.as_str()) {
                    let low = self.low[node].min(self.index[next.as_str()]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let from = self.stack.iter().rposition(|n| *n == node).unwrap();
                let mut component: Vec<String> =
                    self.stack.drain(from..).map(str::to_string).collect();
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for node in edges.keys() {
        if !walk.index.contains_key(node.as_str()) {
            walk.visit(node);
        }
    }
    walk.found
}

fn import_cycles(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(root, f)).collect();
    // parent module -> child -> children it uses
    let mut graph: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let from = module_path(root, file);
        let text = std::fs::read_to_string(file).unwrap();
        for to in references(&from, &text) {
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common >= from.len() || common >= to.len() {
                continue; // a module using its own children, or its ancestors
            }
            if !modules.contains(&to[..=common]) {
                continue; // an item of the common parent, not a sibling module
            }
            graph
                .entry(from[..common].to_vec())
                .or_default()
                .entry(from[common].clone())
                .or_default()
                .insert(to[common].clone());
        }
    }
    let shown = root.strip_prefix(repo()).unwrap_or(root);
    graph
        .iter()
        .flat_map(|(parent, edges)| {
            loops(edges)
                .into_iter()
                .map(move |modules| format!("{}: in {parent:?}: {modules:?}", shown.display()))
        })
        .collect()
}

#[test]
fn no_two_sibling_modules_use_each_other() {
    let cycles: Vec<String> = CRATE_ROOTS
        .iter()
        .flat_map(|root| import_cycles(&repo().join(root)))
        .collect();
    assert!(cycles.is_empty(), "import loops: {cycles:#?}");
}

#[test]
fn the_loop_finder_finds_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "mod a; mod b; mod c;");
    write("a.rs", "use crate::{c, b::{self, Thing as Other}};");
    write("b.rs", "use crate::c::x;");
    write("c/mod.rs", "pub mod d; pub mod e; use crate::store::X;");
    write("c/d.rs", "use super::e::f; pub fn g() {}");
    write(
        "c/e.rs",
        "pub fn f() {}\n// calls super::d::g, in a comment",
    );
    assert_eq!(import_cycles(dir.path()), Vec::<String>::new());

    write("c/e.rs", "pub fn f() { super::d::g() }");
    write("b.rs", "pub fn x() { crate::a::y() }");
    let cycles = import_cycles(dir.path());
    assert_eq!(cycles.len(), 2, "{cycles:#?}");
    assert!(
        cycles.iter().any(|c| c.contains(r#"["a", "b"]"#)),
        "{cycles:#?}"
    );
    assert!(
        cycles.iter().any(|c| c.contains(r#"["d", "e"]"#)),
        "{cycles:#?}"
    );
}

/// Every source file's text, for looking names up.
fn sources() -> Vec<(String, String)> {
    let mut files = Vec::new();
    for root in ["src", "actors/src", "load/src", "tests"] {
        rust_files(&repo().join(root), &mut files);
    }
    files
        .iter()
        .map(|f| (relative(f), std::fs::read_to_string(f).unwrap()))
        .collect()
}

/// Whether `name` is defined somewhere: an item, a module (inline or a file), a macro, or an
/// enum variant (a line that starts with it).
fn defined(name: &str, sources: &[(String, String)]) -> bool {
    let keywords = [
        "fn ", "mod ", "struct ", "enum ", "trait ", "type ", "const ", "static ",
    ];
    sources.iter().any(|(path, text)| {
        let file = Path::new(path);
        file.file_stem().is_some_and(|s| s == name)
            || file.parent().is_some_and(|p| p.ends_with(name))
            || text.contains(&format!("macro_rules! {name}"))
            || text.lines().any(|line| {
                let line = line.trim_start();
                let line = line.strip_prefix("pub(crate) ").unwrap_or(line);
                let line = line.strip_prefix("pub(super) ").unwrap_or(line);
                let line = line.strip_prefix("pub ").unwrap_or(line);
                let line = line.strip_prefix("async ").unwrap_or(line);
                let named = |rest: &str| {
                    rest.strip_prefix(name).is_some_and(|after| {
                        !after.starts_with(|c: char| c.is_alphanumeric() || c == '_')
                    })
                };
                keywords
                    .iter()
                    .any(|k| line.strip_prefix(k).is_some_and(named))
                    || (name.starts_with(char::is_uppercase) && named(line))
            })
    })
}

/// What a doc names in backticks that the tree must have: files under the project's folders
/// (or bare `*.rs` names) and, with `items`, paths of items (`a::b`), macros (`m!`) and
/// constants (`UPPER`).
fn missing_names(doc: &str, items: bool, sources: &[(String, String)]) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join(doc)).unwrap();
    let mut missing = BTreeSet::new();
    for (i, span) in text.split('`').enumerate() {
        if i % 2 == 0 || span.contains(char::is_whitespace) || span.is_empty() {
            continue;
        }
        let found = if NAMED_ROOTS.iter().any(|r| span.starts_with(r)) {
            match span.split_once('*') {
                // a pattern: its folder exists
                Some((head, _)) if head.ends_with('/') => repo().join(head).exists(),
                Some((head, _)) => repo().join(head).parent().is_some_and(Path::exists),
                None => repo().join(span).exists(),
            }
        } else if span.ends_with(".rs") && !span.contains('/') {
            sources
                .iter()
                .any(|(path, _)| path.ends_with(&format!("/{span}")))
        } else if !items {
            true
        } else if span.contains("::") && !span.contains(['<', '"', '=', '(', '{', '.']) {
            let last = span.trim_end_matches("!").rsplit("::").next().unwrap_or("");
            last.is_empty() || defined(last, sources)
        } else if let Some(name) = span.strip_suffix('!') {
            !name.chars().all(|c| c.is_alphanumeric() || c == '_')
                || sources
                    .iter()
                    .any(|(_, t)| t.contains(&format!("macro_rules! {name}")))
        } else if span.len() > 3
            && span
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            && span.contains('_')
        {
            defined(span, sources)
        } else {
            true
        };
        if !found {
            missing.insert(span.to_string());
        }
    }
    missing.into_iter().collect()
}

#[test]
fn the_docs_name_files_and_items_that_exist() {
    let sources = sources();
    let mut missing = BTreeMap::new();
    for (doc, items) in [
        ("ARCHITECTURE.md", true),
        ("README.md", false),
        ("BENCHMARKS.md", false),
    ] {
        let names = missing_names(doc, items, &sources);
        if !names.is_empty() {
            missing.insert(doc, names);
        }
    }
    assert!(missing.is_empty(), "named but not found: {missing:#?}");
    assert!(!defined("no_such_function_anywhere", &sources));
    assert!(defined("claim_scan", &sources) && defined("DieselStore", &sources));
}
