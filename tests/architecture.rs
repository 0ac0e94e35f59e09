//! The module structure stays a layered graph: no import cycles between
//! top-level modules or between the files of one folder, and the client-free
//! core (`crd/`, `resources/`, `backup/`, `quantity`, `duration`) never sees a
//! Kubernetes client. (docs/ARCHITECTURE.md draws the graph.)
//!
//! Imports are read from the source (`crate::…` and `super::…` paths, grouped
//! `{…}` imports expanded; comments and unit-test modules skipped) and resolved
//! to the longest known module path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/controller/tenant/mod.rs` → `[controller, tenant]`.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Module = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The paths a piece of code names after `prefix` (`crate::`, `super::`),
/// with `{a, b::{c}}` groups expanded.
fn expand(rest: &str) -> Vec<String> {
    let ident = |s: &str| -> usize {
        s.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(s.len())
    };
    let head_len = ident(rest);
    let raw = &rest[..head_len];
    let head = raw.trim_end_matches(':').to_string();
    let after = &rest[head_len..];
    if !after.starts_with('{') || !(raw.is_empty() || raw.ends_with("::")) {
        return vec![head];
    }
    // A group: split at top-level commas up to the matching brace.
    let mut depth = 0;
    let mut items = Vec::new();
    let mut start = 1;
    for (i, c) in after.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    items.push(&after[start..i]);
                    break;
                }
            }
            ',' if depth == 1 => {
                items.push(&after[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
        .into_iter()
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .flat_map(|i| {
            expand(i).into_iter().map(|p| match head.as_str() {
                "" => p,
                h => format!("{h}::{p}"),
            })
        })
        .collect()
}

/// The production code of a file: comments and the trailing `#[cfg(test)]`
/// module left out (a test may check one layer against another).
fn code_without_comments(text: &str) -> String {
    let text = [
        "#[cfg(test)]\nmod tests",
        "#[cfg(test)]\npub(crate) mod tests",
    ]
    .iter()
    .fold(text, |t, m| t.split(m).next().unwrap_or(t));
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module each module imports.
fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let modules: BTreeMap<Module, String> = all
        .iter()
        .filter(|f| !f.ends_with("main.rs"))
        .map(|f| {
            let text = std::fs::read_to_string(f).expect("read");
            (module_of(&src, f), code_without_comments(&text))
        })
        .collect();
    let known: BTreeSet<&Module> = modules.keys().collect();
    let mut graph = BTreeMap::new();
    for (module, code) in &modules {
        let mut deps = BTreeSet::new();
        for (i, _) in code
            .match_indices("crate::")
            .chain(code.match_indices("super::"))
        {
            if i > 0 && code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // `…::super::`, handled from its start
            }
            let text = &code[i..];
            let (base, rest): (Module, &str) = if let Some(r) = text.strip_prefix("crate::") {
                (Vec::new(), r)
            } else {
                let mut base = module.clone();
                let mut r = text;
                while let Some(next) = r.strip_prefix("super::") {
                    base.pop();
                    r = next;
                }
                (base, r)
            };
            for path in expand(rest) {
                let mut target = base.clone();
                target.extend(path.split("::").filter(|s| !s.is_empty()).map(String::from));
                while !target.is_empty() && !known.contains(&target) {
                    target.pop();
                }
                if !target.is_empty() && &target != module && !module.starts_with(&target) {
                    deps.insert(target);
                }
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

/// Edges between the children of `parent` (each module mapped to its ancestor
/// directly under `parent`).
fn level(
    graph: &BTreeMap<Module, BTreeSet<Module>>,
    parent: &[String],
) -> BTreeMap<String, BTreeSet<String>> {
    let child = |m: &Module| -> Option<String> {
        (m.len() > parent.len() && m.starts_with(parent)).then(|| m[parent.len()].clone())
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, deps) in graph {
        let Some(a) = child(from) else { continue };
        for to in deps {
            if let Some(b) = child(to).filter(|b| *b != a) {
                edges.entry(a.clone()).or_default().insert(b);
            }
        }
    }
    edges
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_import_cycles_at_any_level() {
    let graph = graph();
    let parents: BTreeSet<Module> = graph
        .keys()
        .flat_map(|m| (0..m.len()).map(|i| m[..i].to_vec()))
        .collect();
    let mut cycles = Vec::new();
    for parent in &parents {
        if let Some(c) = find_cycle(&level(&graph, parent)) {
            cycles.push(format!(
                "in crate::{}: {}",
                parent.join("::"),
                c.join(" -> ")
            ));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_core_never_sees_a_client_or_the_layers_above() {
    let graph = graph();
    let core = ["crd", "resources", "backup", "quantity", "duration"];
    let above = ["controller", "runtime", "apply", "diff", "render", "main"];
    let mut wrong = Vec::new();
    for (module, deps) in &graph {
        if !module.first().is_some_and(|m| core.contains(&m.as_str())) {
            continue;
        }
        for d in deps {
            if above.contains(&d[0].as_str()) {
                wrong.push(format!("{} imports {}", module.join("::"), d.join("::")));
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for dir in ["crd", "resources", "backup"] {
        let mut all = Vec::new();
        files(&src.join(dir), &mut all);
        for f in all {
            let code = code_without_comments(&std::fs::read_to_string(&f).expect("read"));
            if code.contains("kube::Client") || code.contains("Api<") {
                wrong.push(format!("{} uses a Kubernetes client", f.display()));
            }
        }
    }
    // The controllers are below the runtime that runs them and the CLI tools.
    for (module, deps) in &graph {
        if module.first().map(String::as_str) == Some("controller") {
            for d in deps {
                if ["runtime", "diff", "render"].contains(&d[0].as_str()) {
                    wrong.push(format!("{} imports {}", module.join("::"), d.join("::")));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "layering:\n{}", wrong.join("\n"));
}

#[test]
fn the_reader_resolves_grouped_and_relative_imports() {
    assert_eq!(
        expand("controller::{ChildCache, gc, tenant::{self, Context}};"),
        vec![
            "controller::ChildCache",
            "controller::gc",
            "controller::tenant::self",
            "controller::tenant::Context"
        ]
    );
    let g = graph();
    let status: Module = vec!["controller".into(), "tenant".into(), "status".into()];
    assert!(
        g[&status].contains(&vec![
            "controller".to_string(),
            "tenant".into(),
            "children".into()
        ]),
        "{:?}",
        g[&status]
    );
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    edges.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(
        find_cycle(&edges),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
}

/// docs/ARCHITECTURE.md, read once.
fn architecture_md() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ARCHITECTURE.md");
    std::fs::read_to_string(path).expect("docs/ARCHITECTURE.md")
}

/// The rows of the first markdown table after `heading`: its cells, header
/// and separator left out.
fn table_after(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("{heading} in ARCHITECTURE.md"));
    doc[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// The layer table of docs/ARCHITECTURE.md is the import graph: every
/// top-level module sits in exactly one row, and every import between
/// top-level modules points to the same row or one below.
#[test]
fn the_layer_table_matches_the_imports() {
    let doc = architecture_md();
    let mut row_of: BTreeMap<String, usize> = BTreeMap::new();
    for (i, row) in table_after(&doc, "## Layers").iter().enumerate() {
        for m in row[1].split(',').map(|m| m.trim().trim_matches('`')) {
            let m = m.trim_end_matches('/').trim_end_matches(".rs");
            assert!(row_of.insert(m.to_string(), i).is_none(), "{m} in two rows");
        }
    }
    let graph = graph();
    let mut wrong = Vec::new();
    let top: BTreeSet<String> = graph.keys().filter_map(|m| m.first().cloned()).collect();
    for m in &top {
        if !row_of.contains_key(m) {
            wrong.push(format!("{m} is in no row of the layer table"));
        }
    }
    for (module, deps) in &graph {
        let Some(from) = module.first() else { continue };
        for d in deps {
            let to = &d[0];
            if let (Some(a), Some(b)) = (row_of.get(from), row_of.get(to))
                && a > b
            {
                wrong.push(format!(
                    "{} (row {a}) imports {} (row {b}): an arrow up",
                    module.join("::"),
                    d.join("::")
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/ARCHITECTURE.md layers:\n{}",
        wrong.join("\n")
    );
}

/// Every function of `src/` over `max` lines (unit-test modules left out):
/// `path::name` (path relative to `src/`, without `.rs` / `/mod.rs`).
fn long_functions(max: usize) -> BTreeMap<String, usize> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut out = BTreeMap::new();
    for f in all {
        let text = std::fs::read_to_string(&f).expect("read");
        // Production code: up to the first `#[cfg(test)]` module.
        let all: Vec<&str> = text.lines().collect();
        let tests = (0..all.len()).find(|&i| {
            all[i] == "#[cfg(test)]"
                && all[i + 1..]
                    .iter()
                    .find(|l| !l.starts_with("#["))
                    .is_some_and(|l| {
                        l.trim_start_matches("pub(crate) ")
                            .trim_start_matches("pub ")
                            .starts_with("mod ")
                    })
        });
        let lines = &all[..tests.unwrap_or(all.len())];
        let module = module_of(&src, &f).join("/");
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            let indent = line.len() - t.len();
            let t = t
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub(super) ")
                .trim_start_matches("pub ")
                .trim_start_matches("const ")
                .trim_start_matches("async ");
            let Some(rest) = t.strip_prefix("fn ") else {
                continue;
            };
            if line.trim_end().ends_with(';') {
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let close = format!("{}}}", " ".repeat(indent));
            let Some(end) = lines[i + 1..].iter().position(|l| l.trim_end() == close) else {
                continue;
            };
            let len = end + 2;
            if len > max {
                out.insert(format!("{module}::{name}"), len);
            }
        }
    }
    out
}

/// No function in `src/` is over 120 lines unless ARCHITECTURE.md lists it,
/// with why, in its table of exceptions (and lists nothing that is not).
#[test]
fn long_functions_are_the_listed_exceptions() {
    let doc = architecture_md();
    let listed: BTreeSet<String> = table_after(&doc, "## Where this deviates")
        .iter()
        .map(|row| {
            row[0]
                .trim_matches('`')
                .replace(".rs::", "::")
                .replace("/mod::", "::")
        })
        .collect();
    let long = long_functions(120);
    let unlisted: Vec<String> = long
        .iter()
        .filter(|(f, _)| !listed.contains(*f))
        .map(|(f, n)| format!("{f}: {n} lines"))
        .collect();
    let stale: Vec<&String> = listed.iter().filter(|f| !long.contains_key(*f)).collect();
    assert!(
        unlisted.is_empty() && stale.is_empty(),
        "over 120 lines and not in ARCHITECTURE.md's exceptions: {unlisted:?}; listed but not over 120 lines: {stale:?}"
    );
}
