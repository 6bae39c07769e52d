//! Bounded YAML reading: files split into documents, each with a map from field path to line and column.
//!
//! Every spec file goes through here before serde sees it. This module
//! - refuses oversized files before reading them whole, and bounds events, depth and documents,
//!   so a hostile file (an alias bomb, 100 MB of nesting) is refused in milliseconds;
//! - splits a file into documents, each deserialised on its own, so one bad document does not
//!   hide the others;
//! - records where every field is (`spec.steps[2].setWeight` → line 14, column 19), so that
//!   validation, which runs on typed values, can still point at the source.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_saphyr::granit_parser::{Event, Parser, ScanError, Span};

use crate::diag::{Diagnostic, Position};

/// Largest spec file read, in bytes. Rollout specs are a few kilobytes; anything this large is
/// a mistake or an attack.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Most YAML events (scalars, starts, ends) in one file.
const MAX_EVENTS: usize = 200_000;
/// Deepest nesting of mappings and sequences.
const MAX_DEPTH: usize = 64;
/// Most documents in one file.
const MAX_DOCUMENTS: usize = 256;
/// Most nodes the aliases of a file may stand for once expanded (a billion-laughs guard).
/// Checked while walking, before serde replays a single alias.
const MAX_ALIASED: usize = 100_000;
/// Most events serde may replay through aliases in one document; the walk has already
/// refused anything past this, so it is a second fence.
const MAX_ALIAS_REPLAY: usize = MAX_ALIASED;

/// Where each field of a document is. Keys are paths like `spec.steps[2].setWeight`; the root
/// document is the empty path.
#[derive(Clone, Debug, Default)]
pub struct PathMap {
    nodes: BTreeMap<String, Node>,
}

/// Where one field is: its key (for mapping entries) and its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    pub key: Option<Position>,
    pub value: Position,
}

impl PathMap {
    /// Position of the value at `path`, or of its nearest ancestor that exists (a missing
    /// field is reported at the mapping that lacks it).
    pub fn value(&self, path: &str) -> Position {
        self.lookup(path).value
    }

    /// Position of the key at `path` (falls back to its value, then to the nearest ancestor).
    pub fn key(&self, path: &str) -> Position {
        let node = self.lookup(path);
        node.key.unwrap_or(node.value)
    }

    /// The one key under the mapping at `path`, if it has exactly one (the variant of an
    /// externally tagged enum, like a step's `pause`).
    pub fn only_child(&self, path: &str) -> Option<String> {
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}.")
        };
        let mut children = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k)
            .filter(|k| !k[prefix.len()..].contains(['.', '[']));
        let first = children.next()?.clone();
        children.next().is_none().then_some(first)
    }

    /// Whether `path` is present in the document.
    pub fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(path)
    }

    /// The deepest path whose key or value starts at `pos`, for errors that come with a position
    /// only (serde's). Falls back to the last path that starts before `pos`.
    pub fn path_at(&self, pos: Position) -> String {
        let mut best: Option<(&String, Position)> = None;
        for (path, node) in &self.nodes {
            for p in [node.key, Some(node.value)].into_iter().flatten() {
                if p == pos {
                    return path.clone();
                }
                if p <= pos && best.is_none_or(|(_, b)| p >= b) {
                    best = Some((path, p));
                }
            }
        }
        best.map(|(path, _)| path.clone()).unwrap_or_default()
    }

    fn lookup(&self, path: &str) -> Node {
        let mut path = path;
        loop {
            if let Some(node) = self.nodes.get(path) {
                return *node;
            }
            match parent(path) {
                Some(up) => path = up,
                None => {
                    return Node {
                        key: None,
                        value: Position { line: 1, column: 1 },
                    };
                }
            }
        }
    }
}

fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

/// One YAML document of a file.
#[derive(Clone, Debug)]
pub struct Document {
    /// 0-based index of the document in its file.
    pub index: usize,
    /// The document's text, padded with blank lines so that serde's line numbers are the file's.
    text: String,
    pub paths: PathMap,
    /// Top-level `kind`, when it is a plain string.
    pub kind: Option<String>,
    /// `metadata.name`, when it is a plain string.
    pub name: Option<String>,
    /// Where the document starts.
    pub start: Position,
    /// Whether the parser reached its end; `kind` and `name` of an incomplete document (cut
    /// short by a syntax error) may be partial and are not to be trusted.
    pub complete: bool,
}

impl Document {
    /// Line `n` (1-based) of the file, when it belongs to this document.
    pub fn source_line(&self, n: usize) -> Option<&str> {
        self.text.lines().nth(n.checked_sub(1)?)
    }

    /// Deserialises the document, with alias replay bounded. Every unknown field comes back as
    /// an error diagnostic beside the value, so that one run reports them all and validation
    /// can still check the rest; anything else that fails is one diagnostic at its field.
    pub fn deserialize<T: DeserializeOwned>(
        &self,
        file: &str,
    ) -> Result<(T, Vec<Diagnostic>), Box<Diagnostic>> {
        let mut options = serde_saphyr::Options::default();
        options.alias_limits.max_total_replayed_events = MAX_ALIAS_REPLAY;
        options.with_snippet = false;
        let mut unknown = Vec::new();
        let value =
            serde_saphyr::with_deserializer_from_str_with_options(&self.text, options, |de| {
                serde_ignored::deserialize(de, |path| unknown.push(self.yaml_path(&path)))
            })
            .map_err(|e| {
                let pos = e
                    .location()
                    .map(|l| Position {
                        line: l.line() as usize,
                        column: l.column() as usize,
                    })
                    .filter(|p| p.line > 0)
                    .unwrap_or(self.start);
                let field = self.paths.path_at(pos);
                let (message, help) = explain_serde(&e.without_snippet().to_string());
                Box::new(Diagnostic::error(file, pos, field, message).with_help(help))
            })?;
        let diags = unknown
            .into_iter()
            .map(|path| {
                let name = path.rsplit(['.', '[']).next().unwrap_or(&path).to_string();
                let help = match suggest(&name) {
                    Some(near) => {
                        format!("did you mean `{near}`? The schema in schemas/ lists every field")
                    }
                    None => {
                        "remove it or fix its spelling; the schema in schemas/ lists every field"
                            .to_string()
                    }
                };
                Diagnostic::error(
                    file,
                    self.paths.key(&path),
                    &path,
                    format!("unknown field `{name}`"),
                )
                .with_help(help)
            })
            .collect();
        Ok((value, diags))
    }

    /// Our path syntax for a path serde_ignored reports. Enum variants are not named in its
    /// paths, but a one-key map in the document says which one it was.
    fn yaml_path(&self, path: &serde_ignored::Path<'_>) -> String {
        use serde_ignored::Path;
        match path {
            Path::Root => String::new(),
            Path::Seq { parent, index } => format!("{}[{index}]", self.yaml_path(parent)),
            Path::Map { parent, key } => {
                let base = self.yaml_path(parent);
                if base.is_empty() {
                    key.clone()
                } else {
                    format!("{base}.{key}")
                }
            }
            Path::Some { parent } | Path::NewtypeStruct { parent } => self.yaml_path(parent),
            Path::NewtypeVariant { parent } => {
                let base = self.yaml_path(parent);
                self.paths.only_child(&base).unwrap_or(base)
            }
        }
    }
}

/// Every field name of every document kind, for "did you mean" hints.
fn known_fields() -> &'static [String] {
    static FIELDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FIELDS.get_or_init(|| {
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::Object(props)) = map.get("properties") {
                        out.extend(props.keys().cloned());
                    }
                    map.values().for_each(|v| walk(v, out));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let schema =
            serde_json::to_value(schemars::schema_for!(crate::spec::AnyDoc)).unwrap_or_default();
        let mut out = Vec::new();
        walk(&schema, &mut out);
        out.sort();
        out.dedup();
        out
    })
}

/// The known field closest to `name`: same letters ignoring case, `-` and `_`, or at most
/// two edits away.
fn suggest(name: &str) -> Option<&'static str> {
    let norm = |s: &str| s.to_lowercase().replace(['-', '_'], "");
    let wanted = norm(name);
    known_fields()
        .iter()
        .map(|f| (f, edit_distance(&norm(f), &wanted)))
        .filter(|(_, d)| *d <= 2)
        .min_by_key(|(_, d)| *d)
        .map(|(f, _)| f.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Turns serde-saphyr's message into ours: lowercase, no location (we print it), and a help line.
fn explain_serde(raw: &str) -> (String, String) {
    // serde-saphyr appends " at line X column Y"; we print the position ourselves.
    let mut msg = raw.trim().to_string();
    if let Some(cut) = msg.find(" at line ") {
        msg.truncate(cut);
    }
    let lower = msg.to_lowercase();
    let help = if lower.contains("unknown field") {
        "remove the field or fix its spelling; the schema in schemas/ lists every field".to_string()
    } else if lower.contains("unknown variant") {
        "use one of the values listed above".to_string()
    } else if lower.contains("missing field") {
        "add the field; the schema in schemas/ lists what is required".to_string()
    } else if lower.contains("alias") || lower.contains("budget") || lower.contains("limit") {
        "spec files must stay small: remove the anchors and aliases that expand this much"
            .to_string()
    } else if lower.contains("invalid type") {
        "check the field's type in the schema in schemas/".to_string()
    } else {
        "see the spec reference in README.md".to_string()
    };
    (first_lower(&msg), help)
}

fn first_lower(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Splits `text` into documents with their path maps. Problems that make a document unreadable
/// are returned as diagnostics; the documents before them are still returned.
pub fn documents(file: &str, text: &str) -> (Vec<Document>, Vec<Diagnostic>) {
    let mut walker = Walker::new(text);
    let mut diags = Vec::new();
    let mut parser = Parser::new_from_str(text);
    let mut events = 0usize;
    for next in parser.by_ref() {
        events += 1;
        if events > MAX_EVENTS {
            diags.push(limit(file, &walker, "too many YAML nodes"));
            break;
        }
        let (event, span) = match next {
            Ok(ev) => ev,
            Err(e) => {
                diags.push(scan_error(file, &e));
                break;
            }
        };
        if let Err(msg) = walker.event(event, span) {
            diags.push(limit(file, &walker, msg));
            break;
        }
    }
    (walker.finish(), diags)
}

fn limit(file: &str, walker: &Walker<'_>, what: &str) -> Diagnostic {
    Diagnostic::error(
        file,
        walker.last,
        String::new(),
        format!("{what}: the file is refused"),
    )
    .with_help(format!(
        "spec files are limited to {MAX_EVENTS} nodes (and aliases to {MAX_ALIASED}), \
         {MAX_DEPTH} levels of nesting and {MAX_DOCUMENTS} documents; split or simplify it"
    ))
}

fn scan_error(file: &str, e: &ScanError) -> Diagnostic {
    let m = e.marker();
    let pos = Position {
        line: m.line().max(1),
        column: m.col() + 1,
    };
    Diagnostic::error(
        file,
        pos,
        String::new(),
        format!("malformed YAML: {}", e.info()),
    )
    .with_help("check indentation and quoting around this position")
}

enum Frame {
    Map { key: Option<(String, Position)> },
    Seq { next: usize },
}

struct Walker<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
    docs: Vec<Document>,
    current: Option<Document>,
    stack: Vec<(Frame, String)>,
    last: Position,
    /// Nodes seen so far with every alias counted as the size of what it names.
    expanded: usize,
    /// Nodes that aliases stand for, so far.
    aliased: usize,
    /// Expanded size of each anchor by id.
    anchor_sizes: BTreeMap<usize, usize>,
    /// Open anchored collections: (anchor id, `expanded` when it opened).
    open_anchors: Vec<(usize, usize)>,
}

impl<'a> Walker<'a> {
    fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Walker {
            text,
            line_starts,
            docs: Vec::new(),
            current: None,
            stack: Vec::new(),
            last: Position { line: 1, column: 1 },
            expanded: 0,
            aliased: 0,
            anchor_sizes: BTreeMap::new(),
            open_anchors: Vec::new(),
        }
    }

    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), &'static str> {
        let pos = Position {
            line: span.start.line().max(1),
            column: span.start.col() + 1,
        };
        self.last = pos;
        self.expanded += 1;
        match &event {
            Event::Alias(id) => {
                let size = self.anchor_sizes.get(id).copied().unwrap_or(0);
                self.expanded += size;
                self.aliased += size;
            }
            Event::Scalar(_, _, id, _) if *id != 0 => {
                self.anchor_sizes.insert(*id, 1);
            }
            Event::MappingStart(_, id, _) | Event::SequenceStart(_, id, _) => {
                self.open_anchors.push((*id, self.expanded));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some((id, start)) = self.open_anchors.pop()
                    && id != 0
                {
                    self.anchor_sizes.insert(id, self.expanded - start + 1);
                }
            }
            _ => {}
        }
        if self.aliased > MAX_ALIASED {
            return Err("aliases expand to too many nodes");
        }
        match event {
            Event::DocumentStart(..) => {
                if self.docs.len() >= MAX_DOCUMENTS {
                    return Err("too many documents");
                }
                self.current = Some(Document {
                    index: self.docs.len(),
                    text: String::new(),
                    paths: PathMap::default(),
                    kind: None,
                    name: None,
                    start: pos,
                    complete: false,
                });
                self.stack.clear();
            }
            Event::DocumentEnd => {
                if let Some(mut doc) = self.current.take() {
                    doc.complete = true;
                    self.docs.push(doc);
                }
            }
            Event::Scalar(value, ..) => {
                if self.take_key(&value, pos) {
                    return Ok(());
                }
                let path = self.node_path(pos);
                if let Some(doc) = self.current.as_mut() {
                    match path.as_str() {
                        "kind" => doc.kind = Some(value.to_string()),
                        "metadata.name" => doc.name = Some(value.to_string()),
                        _ => {}
                    }
                }
            }
            Event::Alias(_) if !self.take_key("*alias", pos) => {
                self.node_path(pos);
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err("nesting too deep");
                }
                let key_taken = self.take_key("?", pos);
                let path = if key_taken {
                    // A complex key: its contents get paths under the parent, which is harmless.
                    self.stack
                        .last()
                        .map(|(_, p)| p.clone())
                        .unwrap_or_default()
                } else {
                    self.node_path(pos)
                };
                let frame = if matches!(event, Event::MappingStart(..)) {
                    Frame::Map { key: None }
                } else {
                    Frame::Seq { next: 0 }
                };
                self.stack.push((frame, path));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
        Ok(())
    }

    /// In a mapping that expects a key, records `key` and returns true.
    fn take_key(&mut self, key: &str, pos: Position) -> bool {
        match self.stack.last_mut() {
            Some((Frame::Map { key: slot @ None }, _)) => {
                *slot = Some((key.to_string(), pos));
                true
            }
            _ => false,
        }
    }

    /// Computes the path of a value node starting at `pos`, records it, and advances the parent.
    fn node_path(&mut self, pos: Position) -> String {
        let (path, key_pos) = match self.stack.last_mut() {
            None => (String::new(), None),
            Some((Frame::Map { key }, parent)) => {
                let (k, kp) = key.take().unwrap_or_default();
                let path = if parent.is_empty() {
                    k
                } else {
                    format!("{parent}.{k}")
                };
                (path, Some(kp))
            }
            Some((Frame::Seq { next }, parent)) => {
                let path = format!("{parent}[{next}]");
                *next += 1;
                (path, None)
            }
        };
        if let Some(doc) = self.current.as_mut() {
            doc.paths.nodes.insert(
                path.clone(),
                Node {
                    key: key_pos,
                    value: pos,
                },
            );
        }
        path
    }

    fn finish(mut self) -> Vec<Document> {
        if let Some(doc) = self.current.take() {
            self.docs.push(doc);
        }
        let starts: Vec<usize> = self.docs.iter().map(|d| d.start.line).collect();
        let mut docs = self.docs;
        for (i, doc) in docs.iter_mut().enumerate() {
            let first = doc.start.line;
            let from = self.line_starts[first - 1];
            let to = starts
                .get(i + 1)
                .filter(|&&next| next > first)
                .map(|&next| self.line_starts[next - 1])
                .unwrap_or(self.text.len());
            let mut text = "\n".repeat(first - 1);
            text.push_str(&self.text[from..to]);
            doc.text = text;
        }
        // A document with nothing in it (a trailing `---`) is no document.
        docs.retain(|d| d.paths.nodes.get("").is_some_and(|_| !is_blank(&d.text)));
        docs
    }
}

fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(line: usize, column: usize) -> Position {
        Position { line, column }
    }

    #[test]
    fn maps_paths_to_positions() {
        let text = "kind: Rollout\nmetadata:\n  name: web\nspec:\n  steps:\n    - setWeight: 10\n    - pause: {}\n";
        let (docs, diags) = documents("f.yaml", text);
        assert!(diags.is_empty(), "{diags:?}");
        let doc = &docs[0];
        assert_eq!(doc.kind.as_deref(), Some("Rollout"));
        assert_eq!(doc.name.as_deref(), Some("web"));
        assert_eq!(doc.paths.value("spec.steps[0].setWeight"), pos(6, 18));
        assert_eq!(doc.paths.key("spec.steps[0].setWeight"), pos(6, 7));
        assert_eq!(doc.paths.value("spec.steps[1].pause"), pos(7, 14));
        // Missing fields fall back to the nearest ancestor.
        assert_eq!(doc.paths.value("spec.steps[1].pause.duration"), pos(7, 14));
        assert_eq!(doc.paths.path_at(pos(6, 18)), "spec.steps[0].setWeight");
    }

    #[test]
    fn splits_documents_keeping_file_lines() {
        let text = "# header\nkind: Router\nmetadata: {name: a}\n---\nkind: Rollout\nmetadata:\n  name: b\n---\n";
        let (docs, diags) = documents("f.yaml", text);
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].name.as_deref(), Some("b"));
        assert_eq!(docs[1].paths.value("metadata.name"), pos(7, 9));
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct Strict {
            #[allow(dead_code)]
            kind: String,
        }
        let err = docs[1].deserialize::<Strict>("f.yaml").unwrap_err();
        assert_eq!((err.position.line, err.position.column), (6, 1), "{err:?}");
        assert_eq!(err.field, "metadata");
        assert!(err.message.contains("unknown field `metadata`"), "{err:?}");
    }

    #[test]
    fn malformed_yaml_names_the_position() {
        let (_, diags) = documents("f.yaml", "a: [1, 2\nb: 3\n");
        assert_eq!(diags.len(), 1);
        assert!(diags[0].message.starts_with("malformed YAML"), "{diags:?}");
    }

    #[test]
    fn an_alias_bomb_is_refused_before_expansion() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            let refs = vec![format!("*{prev}"); 10].join(", ");
            text.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        let (_, diags) = documents("bomb.yaml", &text);
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert!(diags[0].message.contains("aliases expand"), "{diags:?}");
        // A few honest aliases are fine.
        let (docs, diags) = documents("ok.yaml", "a: &a [1, 2]\nb: *a\nc: *a\n");
        assert!(diags.is_empty() && docs.len() == 1);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = "[".repeat(10_000);
        let (_, diags) = documents("f.yaml", &text);
        assert_eq!(diags.len(), 1, "{diags:?}");
    }
}
