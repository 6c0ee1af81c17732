//! `docs/API.md`, the API written for people, against `openapi.json`, which `openapi.rs` checks
//! against the served routes: the page has one `### \`METHOD /path\`` section per operation of the
//! document, and no other, and it names every status code the document answers.

use std::collections::BTreeSet;

use serde_json::Value;

const PAGE: &str = include_str!("../../docs/API.md");
const DOCUMENT: &str = include_str!("../../openapi.json");

fn documented_operations() -> BTreeSet<String> {
    let doc: Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                out.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    out
}

fn page_sections() -> BTreeSet<String> {
    PAGE.lines()
        .filter_map(|line| line.strip_prefix("### `"))
        .filter_map(|rest| rest.strip_suffix('`'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_page_has_one_section_per_documented_operation() {
    let documented = documented_operations();
    let sections = page_sections();
    assert!(documented.len() >= 10, "openapi.json lists {documented:?}");
    let missing: Vec<_> = documented.difference(&sections).collect();
    let extra: Vec<_> = sections.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "docs/API.md has no section for {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "docs/API.md describes operations openapi.json does not: {extra:?}"
    );
}

#[test]
fn the_page_names_every_status_the_document_answers() {
    let doc: Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
    let mut statuses = BTreeSet::new();
    for item in doc["paths"].as_object().expect("paths").values() {
        for op in item.as_object().expect("a path item").values() {
            if let Some(responses) = op.get("responses").and_then(Value::as_object) {
                statuses.extend(responses.keys().cloned());
            }
        }
    }
    let missing: Vec<_> = statuses
        .iter()
        .filter(|s| !PAGE.contains(&format!("`{s}`")))
        .collect();
    assert!(missing.is_empty(), "docs/API.md never names {missing:?}");
}

#[test]
fn the_page_links_only_to_files_of_the_repository() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs");
    for (i, _) in PAGE.match_indices("](") {
        let target = &PAGE[i + 2..];
        let target = &target[..target.find(')').expect("a closed link")];
        if target.starts_with("http") || target.starts_with('#') {
            continue;
        }
        let path = std::path::Path::new(root).join(target);
        assert!(
            path.exists(),
            "docs/API.md links to {target}, which does not exist"
        );
    }
}
