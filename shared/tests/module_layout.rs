//! The crate's layout rules (its `lib.rs`, "Layout"), checked on the source: no import circle
//! between top-level modules, the core modules use nothing else of the crate, and nothing below the
//! HTTP edge knows HTTP, axum or Lambda.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// Each top-level module's source files, without their `#[cfg(test)] mod tests`.
fn modules() -> BTreeMap<String, Vec<String>> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(Path::new(SRC), &mut files);
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in files {
        let relative = file
            .strip_prefix(SRC)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let top = relative
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        let code = match text.find("#[cfg(test)]\nmod tests") {
            Some(i) => text[..i].to_owned(),
            None => text,
        };
        // Comments may name anything.
        let code: String = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        out.entry(top).or_default().push(code);
    }
    out
}

/// Who uses whom: `crate::<module>` paths in each module's code.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let mut graph = BTreeMap::new();
    for (module, sources) in &modules {
        let mut uses = BTreeSet::new();
        for code in sources {
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if modules.contains_key(&name) && &name != module {
                    uses.insert(name);
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

#[test]
fn no_module_is_part_of_an_import_circle() {
    let graph = graph();
    assert!(graph.len() > 10, "{graph:?}");
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(at) = path.iter().position(|p| p == m) {
            panic!("import circle: {} -> {m}", path[at..].join(" -> "));
        }
        if done.contains(m) {
            return;
        }
        path.push(m.to_owned());
        for next in &graph[m] {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(m.to_owned());
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_core_modules_use_nothing_else_of_the_crate() {
    let graph = graph();
    for core in ["settings", "model", "cursor"] {
        assert!(graph[core].is_empty(), "{core} uses {:?}", graph[core]);
    }
    assert_eq!(
        graph["store"],
        BTreeSet::from(["model".to_owned(), "settings".to_owned()])
    );
}

#[test]
fn nothing_below_the_http_edge_knows_http_or_lambda() {
    let edge = ["http", "lambda", "config", "lib"];
    for (module, sources) in modules() {
        if edge.contains(&module.as_str()) {
            continue;
        }
        for code in sources {
            for word in [
                "axum",
                "lambda_http",
                "lambda_runtime",
                "aws_lambda_events",
                "StatusCode",
                "ApiError",
            ] {
                assert!(!code.contains(word), "{module} mentions {word}");
            }
        }
    }
}
