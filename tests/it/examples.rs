//! Every file in `examples/` lints clean (and satisfies the published schemas); every file in
//! `examples/invalid/` yields the diagnostic its `# expect:` line names, at its line and column.

use std::fs;
use std::path::{Path, PathBuf};

use canaryd::core::validate::Known;
use canaryd::edge::repo;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files_under(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml") {
            out.push(p);
        }
    }
}

#[test]
fn every_valid_example_lints_clean() {
    let examples = root().join("examples");
    let (catalog, diags, sources) =
        repo::catalog(&[examples], Some(&root()), &Known::default()).unwrap();
    assert!(diags.is_empty(), "{diags:#?}");
    assert!(catalog.invalid.is_empty() && catalog.broken_files.is_empty());
    // Basic, manual gate, Flagger shorthand, analysis-heavy, windowed; one per router; a group.
    let names: Vec<&str> = catalog.rollouts.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "billing",
            "cart",
            "checkout",
            "checkout-api",
            "inventory",
            "ledger",
            "payments",
            "payments-api",
            "profile",
            "recommendations",
            "search",
            "search-ab",
            "shop-caddy",
            "shop-haproxy",
            "shop-nginx",
            "shop-traefik"
        ]
    );
    assert!(
        sources.iter().all(|s| !s.file.contains("invalid")),
        "invalid/ is skipped"
    );
}

/// `# expect: LINE:COLUMN FIELD: MESSAGE` (FIELD may be empty).
fn expectation(text: &str) -> (usize, usize, String, String) {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("# expect: "))
        .expect("every invalid example has an `# expect:` line");
    let (pos, rest) = line.split_once(' ').unwrap();
    let (l, c) = pos.split_once(':').unwrap();
    let (field, message) = rest.split_once(": ").unwrap();
    (
        l.parse().unwrap(),
        c.parse().unwrap(),
        field.trim().to_string(),
        message.to_string(),
    )
}

#[test]
fn every_invalid_example_yields_its_diagnostic() {
    let dir = root().join("examples/invalid");
    let mut files = Vec::new();
    files_under(&dir, &mut files);
    assert!(files.len() >= 15, "the invalid set covers the issue's list");
    let mut checked = 0;
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        if !text.contains("# expect: ") {
            continue; // the first half of a pair, e.g. duplicate-name/a.yaml
        }
        let (line, column, field, message) = expectation(&text);
        // Lint the file's folder, so pairs (duplicate names across files) are seen together.
        let target = if file.parent() == Some(dir.as_path()) {
            file.clone()
        } else {
            file.parent().unwrap().to_path_buf()
        };
        let (catalog, diags, _) =
            repo::catalog(&[target], Some(&root()), &Known::default()).unwrap();
        let shown = file.strip_prefix(root()).unwrap().display().to_string();
        let found = diags.iter().any(|d| {
            d.file == shown
                && d.position.line == line
                && d.position.column == column
                && d.field == field
                && d.message.starts_with(&message)
                && d.help.is_some()
        });
        assert!(
            found,
            "{shown}: expected {line}:{column} {field}: {message}\ngot {diags:#?}"
        );
        assert!(
            catalog.rollouts.is_empty(),
            "{shown}: an invalid rollout must not be planned"
        );
        checked += 1;
    }
    assert!(checked >= 15);
}

#[test]
fn examples_satisfy_the_published_schemas() {
    let schema_for = |file: &str| -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(root().join("schemas").join(file)).unwrap())
            .unwrap()
    };
    let any = jsonschema::validator_for(&schema_for("canaryd.json")).unwrap();
    let mut files = Vec::new();
    files_under(&root().join("examples"), &mut files);
    let mut valid_docs = 0;
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        let invalid = file.components().any(|c| c.as_os_str() == "invalid");
        // The header names the schema an editor uses.
        assert!(
            text.starts_with("# yaml-language-server: $schema="),
            "{}",
            file.display()
        );
        if invalid {
            continue;
        }
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        for doc in docs {
            let errors: Vec<String> = any.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}: {errors:?}", file.display());
            let kind = doc["kind"].as_str().unwrap();
            let own = match kind {
                "Rollout" => "rollout.json",
                "Router" => "router.json",
                "RolloutGroup" => "rollout-group.json",
                _ => "metric-template.json",
            };
            assert!(
                jsonschema::is_valid(&schema_for(own), &doc),
                "{}: {kind}",
                file.display()
            );
            valid_docs += 1;
        }
    }
    assert!(valid_docs >= 8);
    // And the schema refuses what validation refuses, where a schema can.
    let bad: serde_json::Value = serde_json::json!({
        "apiVersion": "canaryd.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "Web_1"},
        "spec": {"router": "edge", "service": "web", "stable": {"name": "a"},
                 "steps": [{"setWeight": 150}, {"pause": {"duration": "5 minutes"}}], "stepweight": 1}
    });
    let errors = jsonschema::validator_for(&schema_for("rollout.json"))
        .unwrap()
        .iter_errors(&bad)
        .count();
    assert!(
        errors >= 4,
        "name pattern, weight range, duration pattern, unknown field: {errors}"
    );
}

#[test]
fn committed_schemas_match_the_types() {
    for (name, text) in canaryd::core::schema::all() {
        let path = root().join("schemas").join(name);
        let committed = fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "schemas/{name} is out of date with the Rust types: run `cargo run -- schema --write schemas`"
        );
    }
}
