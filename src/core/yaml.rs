//! Bounded YAML reading: files split into documents, each with a map from field path to line and column.
//!
//! Every spec file goes through here before serde sees it. This module
//! - refuses oversized files before reading them whole, and bounds events, depth and documents,
//!   so a hostile file (an alias bomb, 100 MB of nesting) is refused in milliseconds;
//! - splits a file into documents, each deserialised on its own, so one bad document does not
//!   hide the others;
//! - records where every field is (`spec.steps[2].setWeight` → line 14, column 19), so that
//!   validation, which runs on typed values, can still point at the source.
//!
//! A file is parsed once: the walk records each document's nodes ([`Document`]), and both the
//! path map and the typed value are built from that record. The value is built by the `de`
//! module for the plain documents that make up nearly every repository, and by serde-saphyr
//! (parsing the document's text) for the rest and for anything that does not deserialise, so
//! that its messages are the ones users see.

mod de;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::ops::Range;

use serde::de::DeserializeOwned;
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, ScanError, Span};

use crate::core::diag::{Diagnostic, Position};

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
///
/// Built for every document checked, so it is cheap to build: the paths back to back in one
/// string, and a sorted table of 24-byte entries into it (a `BTreeMap<String, _>` costs about
/// three times as much, in a hundred small allocations per document).
#[derive(Clone, Debug, Default)]
pub struct PathMap {
    /// Every path, back to back.
    text: String,
    /// One per path, sorted by path.
    entries: Vec<Entry>,
}

/// One path of a [`PathMap`]: where it is in the map's text, and where its key and value are.
#[derive(Clone, Copy, Debug)]
struct Entry {
    start: u32,
    end: u32,
    /// Line 0 when the node has no key (the root, a sequence item).
    key: Pos,
    value: Pos,
}

/// A [`Position`] in half the space: files are at most [`MAX_FILE_BYTES`], so lines and
/// columns fit in 32 bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Pos {
    line: u32,
    column: u32,
}

impl Pos {
    fn new(p: Position) -> Pos {
        let narrow = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Pos {
            line: narrow(p.line),
            column: narrow(p.column),
        }
    }

    fn get(self) -> Position {
        Position {
            line: self.line as usize,
            column: self.column as usize,
        }
    }
}

/// Where one field is: its key (for mapping entries) and its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Node {
    key: Option<Position>,
    value: Position,
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
        let from = self
            .entries
            .partition_point(|e| self.path(e) < prefix.as_str());
        let mut children = self.entries[from..]
            .iter()
            .map(|e| self.path(e))
            .take_while(|k| k.starts_with(&prefix))
            .filter(|k| !k[prefix.len()..].contains(['.', '[']));
        let first = children.next()?.to_string();
        children.next().is_none().then_some(first)
    }

    /// Whether `path` is present in the document.
    pub fn contains(&self, path: &str) -> bool {
        self.find(path).is_some()
    }

    /// The deepest path whose key or value starts at `pos`, for errors that come with a position
    /// only (serde's). Falls back to the last path that starts before `pos`.
    pub fn path_at(&self, pos: Position) -> String {
        let mut best: Option<(&str, Position)> = None;
        for entry in &self.entries {
            let node = entry.node();
            for p in [node.key, Some(node.value)].into_iter().flatten() {
                if p == pos {
                    return self.path(entry).to_string();
                }
                if p <= pos && best.is_none_or(|(_, b)| p >= b) {
                    best = Some((self.path(entry), p));
                }
            }
        }
        best.map(|(path, _)| path.to_string()).unwrap_or_default()
    }

    fn path(&self, entry: &Entry) -> &str {
        &self.text[entry.start as usize..entry.end as usize]
    }

    fn find(&self, path: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| self.path(e).cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }

    fn lookup(&self, path: &str) -> Node {
        let mut path = path;
        loop {
            if let Some(entry) = self.find(path) {
                return entry.node();
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

    /// Records `node` at the path `text[start..]`, which the caller has just written.
    fn record(&mut self, start: usize, node: Node) -> (u32, u32) {
        let range = (offset(start), offset(self.text.len()));
        self.entries.push(Entry {
            start: range.0,
            end: range.1,
            key: node.key.map(Pos::new).unwrap_or_default(),
            value: Pos::new(node.value),
        });
        range
    }

    /// Sorts the entries by path; of a path given twice (a duplicate key), the last wins.
    fn seal(&mut self) {
        let text = &self.text;
        let path = |e: &Entry| &text[e.start as usize..e.end as usize];
        self.entries.sort_by(|a, b| path(a).cmp(path(b)));
        self.entries.dedup_by(|later, kept| {
            let same = path(later) == path(kept);
            if same {
                (kept.key, kept.value) = (later.key, later.value);
            }
            same
        });
    }
}

impl Entry {
    fn node(&self) -> Node {
        Node {
            key: (self.key.line > 0).then(|| self.key.get()),
            value: self.value.get(),
        }
    }
}

/// A byte offset into a path map's text, which is bounded by the file it maps.
fn offset(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
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
pub struct Document<'a> {
    /// 0-based index of the document in its file.
    pub index: usize,
    /// The whole file.
    source: &'a str,
    /// The document's lines in `source`.
    range: Range<usize>,
    /// Its nodes as the walk met them.
    events: Events,
    /// Whether it is the file's only document, so that serde-saphyr, given its text, parses
    /// exactly what the walk did.
    alone: bool,
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

impl<'a> Document<'a> {
    /// Where each field of the document is.
    pub fn paths(&self) -> PathMap {
        let mut paths = fields(&self.events, self.source).paths;
        paths.seal();
        paths
    }

    /// Line `n` (1-based) of the file, when it belongs to this document.
    pub fn source_line(&self, n: usize) -> Option<&'a str> {
        match n.checked_sub(self.start.line) {
            Some(i) => self.source[self.range.clone()].lines().nth(i),
            // The lines before the document read as blank, as serde sees them.
            None => (n > 0).then_some(""),
        }
    }

    /// The document's text, padded with blank lines so that serde's line numbers are the
    /// file's; borrowed for the first document.
    fn text(&self) -> Cow<'a, str> {
        let text = &self.source[self.range.clone()];
        match self.start.line {
            1 => Cow::Borrowed(text),
            first => Cow::Owned("\n".repeat(first - 1) + text),
        }
    }

    /// Deserialises the document, with alias replay bounded. Every unknown field comes back as
    /// an error diagnostic beside the value, so that one run reports them all and validation
    /// can still check the rest; anything else that fails is one diagnostic at its field.
    ///
    /// `paths` is this document's [`Document::paths`]. A plain document is built from the
    /// walk's record; debug builds check that serde-saphyr agrees.
    pub fn deserialize<T: DeserializeOwned + PartialEq + fmt::Debug>(
        &self,
        file: &str,
        paths: &PathMap,
    ) -> Result<(T, Vec<Diagnostic>), Box<Diagnostic>> {
        if self.alone
            && self.events.plain
            && let Some(value) = de::from_events::<T>(&self.events, self.source)
        {
            #[cfg(debug_assertions)]
            {
                let slow = self.deserialize_text::<T>(file, paths);
                assert!(
                    matches!(&slow, Ok((v, unknown)) if *v == value && unknown.is_empty()),
                    "{file}: the walk's value differs from serde-saphyr's:\n{value:?}\n{slow:?}"
                );
            }
            return Ok((value, Vec::new()));
        }
        self.deserialize_text(file, paths)
    }

    /// [`Document::deserialize`] by serde-saphyr, from the document's text.
    fn deserialize_text<T: DeserializeOwned>(
        &self,
        file: &str,
        paths: &PathMap,
    ) -> Result<(T, Vec<Diagnostic>), Box<Diagnostic>> {
        let mut options = serde_saphyr::Options::default();
        options.alias_limits.max_total_replayed_events = MAX_ALIAS_REPLAY;
        options.with_snippet = false;
        let mut unknown = Vec::new();
        let value =
            serde_saphyr::with_deserializer_from_str_with_options(&self.text(), options, |de| {
                serde_ignored::deserialize(de, |path| unknown.push(yaml_path(&path, paths)))
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
                let field = paths.path_at(pos);
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
                    paths.key(&path),
                    &path,
                    format!("unknown field `{name}`"),
                )
                .with_help(help)
            })
            .collect();
        Ok((value, diags))
    }
}

/// Our path syntax for a path serde_ignored reports. Enum variants are not named in its paths,
/// but a one-key map in the document says which one it was.
fn yaml_path(path: &serde_ignored::Path<'_>, paths: &PathMap) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", yaml_path(parent, paths)),
        Path::Map { parent, key } => {
            let base = yaml_path(parent, paths);
            if base.is_empty() {
                key.clone()
            } else {
                format!("{base}.{key}")
            }
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } => yaml_path(parent, paths),
        Path::NewtypeVariant { parent } => {
            let base = yaml_path(parent, paths);
            paths.only_child(&base).unwrap_or(base)
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
        let schema = serde_json::to_value(schemars::schema_for!(crate::core::spec::AnyDoc))
            .unwrap_or_default();
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

pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
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
pub fn documents<'a>(file: &str, text: &'a str) -> (Vec<Document<'a>>, Vec<Diagnostic>) {
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

/// Deepest nesting [`de`] builds a value for; deeper documents go to serde-saphyr, whose own
/// limit is [`MAX_DEPTH`] too.
const PLAIN_DEPTH: usize = MAX_DEPTH / 2;

/// A document's nodes in order, as the walk met them: what its path map and its value are
/// built from.
#[derive(Clone, Debug, Default)]
struct Events {
    list: Vec<Ev>,
    /// Texts of the scalars that are not verbatim in the file (escaped, folded), back to back.
    owned: String,
    /// No anchors, aliases, tags or `%YAML` directive, and at most [`PLAIN_DEPTH`] deep: a
    /// document [`de`] may build the value of.
    plain: bool,
}

/// One node event.
#[derive(Clone, Copy, Debug)]
struct Ev {
    item: Item,
    at: Pos,
}

#[derive(Clone, Copy, Debug)]
enum Item {
    /// A mapping or sequence: the index of its [`Item::End`] and its number of child nodes
    /// (a mapping's keys count).
    MapStart {
        end: u32,
        children: u32,
    },
    SeqStart {
        end: u32,
        children: u32,
    },
    End,
    Alias,
    Scalar {
        start: u32,
        len: u32,
        /// Written without quotes or block indicators.
        plain: bool,
        /// In [`Events::owned`] rather than the file.
        owned: bool,
    },
}

impl Events {
    /// The text of a scalar event; empty for any other.
    fn text<'t>(&'t self, ev: &Ev, source: &'t str) -> &'t str {
        match ev.item {
            Item::Scalar {
                start, len, owned, ..
            } => {
                let from = if owned { &self.owned } else { source };
                &from[start as usize..(start + len) as usize]
            }
            _ => "",
        }
    }
}

/// What a document's events say about its fields.
struct Fields {
    /// Not yet sealed.
    paths: PathMap,
    /// Top-level `kind`, when it is a plain string.
    kind: Option<String>,
    /// `metadata.name`, when it is a plain string.
    name: Option<String>,
}

/// A collection being replayed (on the stack beside where its path is in the path map's text).
enum Frame<'t> {
    Map {
        /// The key of the entry whose value comes next.
        key: Option<(&'t str, Position)>,
    },
    Seq {
        next: usize,
    },
}

/// Replays a document's events into paths. A complex key's contents get paths under its
/// mapping, which is harmless.
fn fields(events: &Events, source: &str) -> Fields {
    let mut out = Fields {
        // At most one path per event, a few words each.
        paths: PathMap {
            text: String::with_capacity(events.list.len() * 16),
            entries: Vec::with_capacity(events.list.len()),
        },
        kind: None,
        name: None,
    };
    let mut stack: Vec<(Frame<'_>, (u32, u32))> = Vec::new();
    for ev in &events.list {
        let pos = ev.at.get();
        let expects_key = matches!(stack.last(), Some((Frame::Map { key: None }, _)));
        // A scalar's text, or what stands for the node when it is a key.
        let text = match ev.item {
            Item::Scalar { .. } => events.text(ev, source),
            Item::Alias => "*alias",
            Item::MapStart { .. } | Item::SeqStart { .. } => "?",
            Item::End => {
                stack.pop();
                continue;
            }
        };
        let path = match stack.last_mut() {
            Some((Frame::Map { key: slot }, parent)) if expects_key => {
                *slot = Some((text, pos));
                // A key has no path of its own; a complex key's contents share its mapping's.
                *parent
            }
            _ => node_path(&mut out.paths, &mut stack, pos),
        };
        match ev.item {
            Item::Scalar { .. } if !expects_key => {
                match &out.paths.text[path.0 as usize..path.1 as usize] {
                    "kind" => out.kind = Some(text.to_string()),
                    "metadata.name" => out.name = Some(text.to_string()),
                    _ => {}
                }
            }
            Item::MapStart { .. } => stack.push((Frame::Map { key: None }, path)),
            Item::SeqStart { .. } => stack.push((Frame::Seq { next: 0 }, path)),
            _ => {}
        }
    }
    out
}

/// Records the path of a value node starting at `pos` and advances its parent. Returns where
/// the path is in the map's text.
fn node_path(
    paths: &mut PathMap,
    stack: &mut [(Frame<'_>, (u32, u32))],
    pos: Position,
) -> (u32, u32) {
    let text = &mut paths.text;
    let start = text.len();
    let key = match stack.last_mut() {
        None => None,
        Some((Frame::Map { key }, parent)) => {
            let (k, kp) = key.take().unwrap_or_default();
            if parent.0 < parent.1 {
                text.extend_from_within(parent.0 as usize..parent.1 as usize);
                text.push('.');
            }
            text.push_str(k);
            Some(kp)
        }
        Some((Frame::Seq { next }, parent)) => {
            text.extend_from_within(parent.0 as usize..parent.1 as usize);
            let _ = write!(text, "[{next}]");
            *next += 1;
            None
        }
    };
    paths.record(start, Node { key, value: pos })
}

struct Walker<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
    docs: Vec<Document<'a>>,
    current: Option<Document<'a>>,
    /// The current document's events so far.
    events: Events,
    /// Its open collections: the index of each one's start event, and its children so far.
    open: Vec<(usize, u32)>,
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
            events: Events::default(),
            open: Vec::new(),
            last: Position { line: 1, column: 1 },
            expanded: 0,
            aliased: 0,
            anchor_sizes: BTreeMap::new(),
            open_anchors: Vec::new(),
        }
    }

    fn event(&mut self, event: Event<'a>, span: Span) -> Result<(), &'static str> {
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
        let at = Pos::new(pos);
        match event {
            Event::DocumentStart(_, version) => {
                if self.docs.len() >= MAX_DOCUMENTS {
                    return Err("too many documents");
                }
                self.current = Some(Document {
                    index: self.docs.len(),
                    source: self.text,
                    range: 0..0,
                    events: Events::default(),
                    alone: false,
                    kind: None,
                    name: None,
                    start: pos,
                    complete: false,
                });
                self.events = Events {
                    // A rollout spec is about a hundred nodes.
                    list: Vec::with_capacity(128),
                    owned: String::new(),
                    plain: version.is_none(),
                };
                self.open.clear();
            }
            Event::DocumentEnd => {
                if let Some(mut doc) = self.current.take() {
                    doc.complete = true;
                    self.close(doc);
                }
            }
            Event::Scalar(value, style, anchor, tag) => {
                self.events.plain &= anchor == 0 && tag.is_none();
                let len = offset(value.len());
                let (start, owned) = match within(self.text, &value) {
                    Some(start) => (offset(start), false),
                    None => {
                        let start = offset(self.events.owned.len());
                        self.events.owned.push_str(&value);
                        (start, true)
                    }
                };
                let plain = style == ScalarStyle::Plain;
                self.push(
                    at,
                    Item::Scalar {
                        start,
                        len,
                        plain,
                        owned,
                    },
                );
            }
            Event::Alias(_) => {
                self.events.plain = false;
                self.push(at, Item::Alias);
            }
            Event::MappingStart(_, anchor, ref tag) | Event::SequenceStart(_, anchor, ref tag) => {
                if self.open.len() >= MAX_DEPTH {
                    return Err("nesting too deep");
                }
                self.events.plain &= anchor == 0 && tag.is_none() && self.open.len() < PLAIN_DEPTH;
                let item = if matches!(event, Event::MappingStart(..)) {
                    Item::MapStart {
                        end: 0,
                        children: 0,
                    }
                } else {
                    Item::SeqStart {
                        end: 0,
                        children: 0,
                    }
                };
                self.push(at, item);
                self.open.push((self.events.list.len() - 1, 0));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let end = offset(self.events.list.len());
                if let Some((start, n)) = self.open.pop()
                    && let Item::MapStart { end: e, children } | Item::SeqStart { end: e, children } =
                        &mut self.events.list[start].item
                {
                    (*e, *children) = (end, n);
                }
                self.events.list.push(Ev {
                    item: Item::End,
                    at,
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// Records a node event, one more child of the collection it is in.
    fn push(&mut self, at: Pos, item: Item) {
        if let Some((_, children)) = self.open.last_mut() {
            *children += 1;
        }
        self.events.list.push(Ev { item, at });
    }

    /// Gives `doc` the events walked so far, and what they say of its kind and name.
    fn close(&mut self, mut doc: Document<'a>) {
        let mut events = std::mem::take(&mut self.events);
        events.list.shrink_to_fit();
        events.owned.shrink_to_fit();
        let fields = fields(&events, self.text);
        (doc.kind, doc.name) = (fields.kind, fields.name);
        doc.events = events;
        self.docs.push(doc);
    }

    fn finish(mut self) -> Vec<Document<'a>> {
        if let Some(doc) = self.current.take() {
            self.close(doc);
        }
        let alone = self.docs.len() == 1;
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
            doc.range = from..to;
            doc.alone = alone;
        }
        // A document with nothing in it (a trailing `---`) is no document.
        docs.retain(|d| !d.events.list.is_empty() && !is_blank(&d.source[d.range.clone()]));
        docs
    }
}

/// Where `part` starts in `whole`, when it is a slice of it (the parser borrows the scalars it
/// did not have to rewrite).
fn within(whole: &str, part: &str) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (start + part.len() <= whole.len()).then_some(start)
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
        let paths = doc.paths();
        assert_eq!(paths.value("spec.steps[0].setWeight"), pos(6, 18));
        assert_eq!(paths.key("spec.steps[0].setWeight"), pos(6, 7));
        assert_eq!(paths.value("spec.steps[1].pause"), pos(7, 14));
        // Missing fields fall back to the nearest ancestor.
        assert_eq!(paths.value("spec.steps[1].pause.duration"), pos(7, 14));
        assert_eq!(paths.path_at(pos(6, 18)), "spec.steps[0].setWeight");
    }

    #[test]
    fn splits_documents_keeping_file_lines() {
        let text = "# header\nkind: Router\nmetadata: {name: a}\n---\nkind: Rollout\nmetadata:\n  name: b\n---\n";
        let (docs, diags) = documents("f.yaml", text);
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].name.as_deref(), Some("b"));
        assert_eq!(docs[1].paths().value("metadata.name"), pos(7, 9));
        #[derive(serde::Deserialize, Debug, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct Strict {
            #[allow(dead_code)]
            kind: String,
        }
        let err = docs[1]
            .deserialize::<Strict>("f.yaml", &docs[1].paths())
            .unwrap_err();
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
