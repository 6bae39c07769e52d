//! The architecture's rules that a test can check by reading `src/`: each outside library
//! stays behind its module, time is read in one place, and no two modules import each other
//! (directly or round a loop); and in `tests/it`, test modules share only `support`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir` (relative to the crate), sorted, with its code: comment lines
/// left out, and unit tests too when `cut_unit_tests`.
fn code_under(dir: &str, cut_unit_tests: bool) -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let code = if cut_unit_tests {
                text.split("#[cfg(test)]").next().unwrap_or_default()
            } else {
                &text
            };
            let code: Vec<&str> = code
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            (
                path.strip_prefix(&root).unwrap().to_path_buf(),
                code.join("\n"),
            )
        })
        .collect()
}

/// Every `.rs` file under `src/`, with its code: comment lines and unit tests left out.
fn sources() -> Vec<(PathBuf, String)> {
    code_under("src", true)
}

/// The top-level module a file belongs to: `git/mirror.rs` → `git`, `plan.rs` → `plan`.
fn module(path: &Path) -> String {
    let first = path
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Files outside `allowed` (path prefixes) whose code mentions `needle`.
fn offenders(needle: &str, allowed: &[&str]) -> Vec<String> {
    sources()
        .into_iter()
        .filter(|(path, code)| {
            let p = path.to_string_lossy();
            code.contains(needle) && !allowed.iter().any(|a| p.starts_with(a))
        })
        .map(|(path, _)| path.display().to_string())
        .collect()
}

#[test]
fn git2_and_octocrab_stay_behind_their_modules() {
    assert_eq!(offenders("git2::", &["git/"]), Vec::<String>::new());
    assert_eq!(offenders("octocrab", &["forge/"]), Vec::<String>::new());
}

#[test]
fn the_clock_is_read_in_the_clock_module_only() {
    for now in ["Utc::now", "Local::now", "SystemTime::now", "Instant::now"] {
        assert_eq!(
            offenders(now, &["clock.rs"]),
            Vec::<String>::new(),
            "{now} outside src/clock.rs"
        );
    }
}

#[test]
fn no_two_modules_import_each_other_even_round_a_loop() {
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, code) in sources() {
        let from = module(&path);
        if from == "main" || from == "lib" {
            continue;
        }
        let edges = uses.entry(from.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let to: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            if !to.is_empty() && to != from {
                edges.insert(to);
            }
        }
    }
    // A depth-first search that reports the first loop it walks into.
    fn visit(
        m: &str,
        uses: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if !done.insert(m.to_string()) {
            return None;
        }
        path.push(m.to_string());
        for next in uses.get(m).into_iter().flatten() {
            if let Some(cycle) = visit(next, uses, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in uses.keys() {
        let cycle = visit(m, &uses, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "import cycle: {}",
            cycle.unwrap().join(" → ")
        );
    }
}

/// The test modules of this binary: the `mod` lines of `tests/it/main.rs`.
fn test_modules() -> BTreeSet<String> {
    let main = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/main.rs");
    std::fs::read_to_string(main)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mod ")?.strip_suffix(';'))
        .map(str::to_string)
        .collect()
}

#[test]
fn test_modules_share_only_the_support_harness() {
    let modules = test_modules();
    assert!(
        modules.contains("support") && modules.contains("tidy"),
        "{modules:?}"
    );
    let mut offenders = Vec::new();
    for (path, code) in &code_under("tests/it", false) {
        // In `support/`, `super::` is `support` itself.
        let prefixes: &[&str] = if path.starts_with("support") {
            &["crate::"]
        } else {
            &["crate::", "super::"]
        };
        for prefix in prefixes {
            for (i, _) in code.match_indices(prefix) {
                let to: String = code[i + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if to != "support" && modules.contains(&to) {
                    offenders.push(format!("{}: {prefix}{to}", path.display()));
                }
            }
        }
    }
    assert_eq!(
        offenders,
        Vec::<String>::new(),
        "a test module imports another; shared harness goes in tests/it/support/"
    );
}
