//! Validation: raw YAML documents in, validated [`Catalog`] out, with every problem collected as a [`Diagnostic`].
//!
//! This phase is pure (text in, values out); `lint` runs only this. It never stops at the first
//! problem: each document is checked on its own, and within a rollout every field is checked,
//! so one run of `canaryd lint` lists everything to fix.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::core::diag::{Diagnostic, Position};
use crate::core::model::{
    Analysis, Backend, Catalog, Criterion, Field, Hook, HookKind, JUDGE_METRIC, Judge,
    JudgedMetric, Load, Match, Metric, Pattern, Revision, RollbackPolicy, Rollout, Step, Sticky,
    Target, Weight, Window,
};
use crate::core::spec::condition::Condition;
use crate::core::spec::duration::{self, DURATION_HELP};
use crate::core::spec::{self, DocKind, ProviderKind, RolloutSpec, RouterKind};
use crate::core::yaml::{self, Document, PathMap};
use crate::{core::par, core::templates};

mod groups;

/// One spec file's contents.
#[derive(Clone, Debug)]
pub struct Source {
    /// Path relative to the repository (or as given on the command line).
    pub file: String,
    pub text: String,
}

/// What the controller's own configuration defines, which specs may reference.
#[derive(Clone, Debug, Default)]
pub struct Known {
    /// Router name → kind (built-in metric templates depend on the kind).
    pub routers: BTreeMap<String, RouterKind>,
    /// The notification sinks the configuration defines; `None`: not known here (`lint`
    /// without `--config`), so `notify` names are not checked.
    pub sinks: Option<std::collections::BTreeSet<String>>,
}

/// Default hold of a shorthand weight, as Flagger's `analysis.interval`.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Default progress deadline, as Argo Rollouts and Flagger (600 s).
const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);
/// Default hold of each weight in a stepped rollback.
const DEFAULT_ROLLBACK_INTERVAL: Duration = Duration::from_secs(30);
/// Default consecutive-error limit, as Argo Rollouts.
const DEFAULT_CONSECUTIVE_ERRORS: u32 = 4;

const WEIGHT_HELP: &str = "weights are the percentage of requests sent to the canary, 0 to 100";

/// Validates every document of every source. Returns what is usable and every problem found.
pub fn validate(sources: &[Source], known: &Known) -> (Catalog, Vec<Diagnostic>) {
    check(sources, known, true)
}

/// Every problem [`validate`] finds, by the same checks, without keeping the rollouts they
/// build: what `lint` reports, in a fraction of the memory for a large repository.
pub fn diagnose(sources: &[Source], known: &Known) -> Vec<Diagnostic> {
    check(sources, known, false).1
}

/// [`validate`], keeping each valid rollout in the catalog only when `keep_rollouts`.
fn check(sources: &[Source], known: &Known, keep_rollouts: bool) -> (Catalog, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut catalog = Catalog::default();
    let mut parsed: Vec<(&Source, Document)> = Vec::new();

    let split = par::map(sources.iter().collect(), |source: &Source| {
        yaml::documents(&source.file, &source.text)
    });
    for (source, (docs, problems)) in sources.iter().zip(split) {
        if problems.is_empty() {
            parsed.extend(docs.into_iter().map(|d| (source, d)));
            continue;
        }
        // The file is unreadable past some point: hold every rollout it (partly) names.
        let lines: Vec<String> = problems.iter().map(Diagnostic::one_line).collect();
        for doc in docs.iter().filter(|d| d.complete) {
            if doc.kind.as_deref() == Some("Rollout")
                && let Some(name) = &doc.name
            {
                catalog
                    .invalid
                    .entry(name.clone())
                    .or_default()
                    .extend(lines.clone());
            }
        }
        catalog.broken_files.push(source.file.clone());
        diags.extend(problems);
    }

    // Pass 1: routers and metric templates, which rollouts reference.
    // Where each router and template is defined, for duplicate names.
    let mut routers: BTreeMap<String, Site> = BTreeMap::new();
    let mut router_kinds: BTreeMap<String, RouterKind> = BTreeMap::new();
    let mut template_sites: BTreeMap<String, Site> = BTreeMap::new();
    let mut templates: BTreeMap<String, spec::MetricTemplateSpec> = BTreeMap::new();
    let mut rollout_docs = Vec::new();
    let mut group_names: BTreeMap<String, Site> = BTreeMap::new();
    let mut group_drafts = Vec::new();
    for (source, doc) in parsed {
        let file = source.file.as_str();
        let Some(kind) = document_kind(file, &doc, &mut diags) else {
            continue;
        };
        match kind {
            DocKind::Rollout => rollout_docs.push((source, doc)),
            DocKind::RolloutGroup => {
                group_drafts.extend(groups::read_group(file, &doc, &mut group_names, &mut diags));
            }
            DocKind::Router => {
                let paths = doc.paths();
                let Some(r) = read::<spec::RouterDoc>(&doc, &paths, file, &mut diags) else {
                    continue;
                };
                let mut cx = Cx::new(file, &doc, &paths, &mut diags);
                if let spec::RouterSpec::Embedded { limits, .. } = &r.spec
                    && let Err(e) = crate::core::limits::resolve(limits)
                {
                    cx.error(
                        &format!("spec.limits.{}", e.field),
                        e.message,
                        "see the README's \"Embedded router limits\" for each limit and its default",
                    );
                }
                if check_name(&mut cx, &r.metadata.name)
                    && duplicate(&mut cx, "router", &r.metadata.name, &routers).is_none()
                {
                    routers.insert(
                        r.metadata.name.clone(),
                        (file, paths.value("metadata.name")),
                    );
                    router_kinds.insert(r.metadata.name.clone(), r.spec.kind());
                    catalog
                        .routers
                        .insert(r.metadata.name.clone(), r.spec.clone());
                }
            }
            DocKind::MetricTemplate => {
                let paths = doc.paths();
                let Some(t) = read::<spec::MetricTemplateDoc>(&doc, &paths, file, &mut diags)
                else {
                    continue;
                };
                let mut cx = Cx::new(file, &doc, &paths, &mut diags);
                let ok = check_name(&mut cx, &t.metadata.name);
                for (field, text) in [
                    ("spec.successCondition", &t.spec.success_condition),
                    ("spec.failureCondition", &t.spec.failure_condition),
                ] {
                    if let Some(text) = text {
                        condition(&mut cx, field, text);
                    }
                }
                if t.spec.provider == ProviderKind::Prometheus {
                    query_template(&mut cx, "spec.query", &t.spec.query);
                    if let Some(q) = &t.spec.samples_query {
                        query_template(&mut cx, "spec.samplesQuery", q);
                    }
                }
                if ok
                    && duplicate(
                        &mut cx,
                        "metric template",
                        &t.metadata.name,
                        &template_sites,
                    )
                    .is_none()
                {
                    template_sites.insert(
                        t.metadata.name.clone(),
                        (file, paths.value("metadata.name")),
                    );
                    templates.insert(t.metadata.name, t.spec);
                }
            }
        }
    }

    // Pass 2: rollouts.
    let refs = Refs {
        // The daemon drives a router named in its configuration over a same-named document, so
        // the configuration's kind is the one templates resolve by.
        routers: router_kinds
            .into_iter()
            .chain(
                known
                    .routers
                    .iter()
                    .map(|(name, kind)| (name.clone(), *kind)),
            )
            .collect(),
        templates,
        sinks: known.sinks.clone(),
    };
    // Each rollout is checked on its own (in parallel; its path map is dropped once it is),
    // then against the others, in order.
    let checked = par::map(rollout_docs, |(source, doc)| {
        check_rollout(&source.file, doc, &refs, keep_rollouts)
    });
    let mut seen: BTreeMap<String, Site> = BTreeMap::new();
    let mut valid: BTreeMap<String, Option<Rollout>> = BTreeMap::new();
    let mut owners: Vec<Owner> = Vec::new();
    let mut shapes: BTreeMap<String, groups::Shape> = BTreeMap::new();
    for checked in checked {
        let Checked {
            file,
            built,
            name,
            diags: found,
            here,
            site,
        } = checked;
        let errors: Vec<String> = found
            .iter()
            .filter(|d| d.is_error())
            .map(Diagnostic::one_line)
            .collect();
        diags.extend(found);
        let Some(name) = name else {
            continue;
        };
        if let Some((first_file, first_pos)) = seen.get(&name) {
            let d = Diagnostic::error(
                file,
                here,
                "metadata.name",
                format!("rollout `{name}` is defined twice"),
            )
            .with_help(format!(
                "first defined at {first_file}:{}:{}; rollout names must be unique across the \
                 repository, since each has one status file",
                first_pos.line, first_pos.column
            ));
            let line = d.one_line();
            diags.push(d);
            // Neither copy can be trusted to say what is desired.
            valid.remove(&name);
            catalog.invalid.entry(name).or_default().push(line);
            continue;
        }
        seen.insert(name.clone(), (file, here));
        match built {
            Some(b) if errors.is_empty() => {
                owners.push(Owner {
                    router: b.router,
                    service: b.service,
                    rollout: name.clone(),
                    file,
                    site,
                });
                shapes.insert(name.clone(), b.shape);
                valid.insert(name, b.rollout);
            }
            _ => catalog.invalid.entry(name).or_default().extend(errors),
        }
    }
    one_owner_per_service(&mut owners, &mut diags, &mut catalog);
    groups::check(group_drafts, &seen, &shapes, &mut diags, &mut catalog);
    catalog.rollouts = valid
        .into_values()
        .flatten()
        .filter(|r| !catalog.invalid.contains_key(&r.name))
        .collect();
    groups::follow(&mut catalog);
    diags.sort_by(|a, b| (a.file.as_str(), a.position).cmp(&(b.file.as_str(), b.position)));
    (catalog, diags)
}

/// A valid rollout's claim on one service of one router.
struct Owner<'a> {
    router: String,
    service: String,
    rollout: String,
    file: &'a str,
    /// Where its `spec.service` is.
    site: Position,
}

/// Two rollouts driving one service of one router would fight over its weights: each is an
/// error naming the other's file, and both are held (left out of the catalog's rollouts, so
/// the daemon touches neither's traffic and says why in their status).
fn one_owner_per_service(
    owners: &mut [Owner<'_>],
    diags: &mut Vec<Diagnostic>,
    catalog: &mut Catalog,
) {
    owners.sort_by(|a, b| {
        (&a.router, &a.service, &a.file, a.site).cmp(&(&b.router, &b.service, &b.file, b.site))
    });
    for same in owners.chunk_by(|a, b| (&a.router, &a.service) == (&b.router, &b.service)) {
        if same.len() < 2 {
            continue;
        }
        for o in same {
            let others: Vec<String> = same
                .iter()
                .filter(|other| other.rollout != o.rollout)
                .map(|other| {
                    let p = other.site;
                    format!(
                        "`{}` at {}:{}:{}",
                        other.rollout, other.file, p.line, p.column
                    )
                })
                .collect();
            let d = Diagnostic::error(
                o.file,
                o.site,
                "spec.service",
                format!(
                    "rollout `{}` drives service `{}` of router `{}`, as does {}",
                    o.rollout,
                    o.service,
                    o.router,
                    others.join(" and ")
                ),
            )
            .with_help(
                "one rollout owns a service's weights; two would fight over them, so both are \
                 held until one is removed or pointed at another service",
            );
            catalog
                .invalid
                .entry(o.rollout.clone())
                .or_default()
                .push(d.one_line());
            diags.push(d);
        }
    }
}

/// One rollout document checked on its own, before it is compared with the others.
struct Checked<'a> {
    file: &'a str,
    /// What came of it, when it validated on its own.
    built: Option<Built>,
    /// The rollout's name: its spec's, or the document's when the spec did not deserialise.
    name: Option<String>,
    diags: Vec<Diagnostic>,
    /// Where its `metadata.name` is.
    here: Position,
    /// Where its `spec.service` is.
    site: Position,
}

/// A rollout that validated on its own: the service it claims, and the rollout itself unless
/// only its problems are wanted.
struct Built {
    router: String,
    service: String,
    /// What a group needs to know of it.
    shape: groups::Shape,
    rollout: Option<Rollout>,
}

/// Deserialises and validates one rollout document; the document (and, unless
/// `keep_rollout`, the rollout) is dropped here.
fn check_rollout<'a>(
    file: &'a str,
    doc: Document<'_>,
    refs: &Refs,
    keep_rollout: bool,
) -> Checked<'a> {
    let mut diags = Vec::new();
    let paths = doc.paths();
    let rollout = read::<spec::RolloutDoc>(&doc, &paths, file, &mut diags).and_then(|raw| {
        let mut cx = Cx::new(file, &doc, &paths, &mut diags);
        rollout(&mut cx, &raw, refs)
    });
    Checked {
        file,
        here: paths.value("metadata.name"),
        site: paths.value("spec.service"),
        name: rollout.as_ref().map(|r| r.name.clone()).or(doc.name),
        built: rollout.map(|r| Built {
            router: r.target().router.clone(),
            service: r.target().service.clone(),
            shape: groups::Shape {
                steps: r.steps.len(),
                weights: r
                    .steps
                    .iter()
                    .filter_map(|s| match s {
                        crate::core::model::Step::SetWeight(w) => Some(w.get()),
                        _ => None,
                    })
                    .collect(),
            },
            rollout: keep_rollout.then_some(r),
        }),
        diags,
    }
}

/// Deserialises a document, adding its unknown fields (or the error that stopped it) to `diags`.
fn read<T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
    doc: &Document<'_>,
    paths: &PathMap,
    file: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    match doc.deserialize::<T>(file, paths) {
        Ok((value, unknown)) => {
            diags.extend(unknown);
            Some(value)
        }
        Err(d) => {
            diags.push(*d);
            None
        }
    }
}

/// References a rollout may make.
struct Refs {
    routers: BTreeMap<String, RouterKind>,
    templates: BTreeMap<String, spec::MetricTemplateSpec>,
    /// The configuration's notification sinks, when known.
    sinks: Option<std::collections::BTreeSet<String>>,
}

/// The file and path map of the document being checked, and where problems go.
struct Cx<'a> {
    file: &'a str,
    doc: &'a Document<'a>,
    paths: &'a PathMap,
    diags: &'a mut Vec<Diagnostic>,
    errors: usize,
    /// The kind of the router of the rollout being checked, once known.
    router: Option<RouterKind>,
    /// The gate intervals of the rollout's hooks, by hook name, between checking them and
    /// placing them.
    hook_intervals: BTreeMap<String, Duration>,
}

impl<'a> Cx<'a> {
    fn new(
        file: &'a str,
        doc: &'a Document<'a>,
        paths: &'a PathMap,
        diags: &'a mut Vec<Diagnostic>,
    ) -> Self {
        Cx {
            file,
            doc,
            paths,
            diags,
            errors: 0,
            router: None,
            hook_intervals: BTreeMap::new(),
        }
    }

    /// An error `offset` bytes into the string value at `field`, pointed at exactly when the
    /// value is written on one line (plain or quoted), else at the value's start.
    fn error_in_value(
        &mut self,
        field: &str,
        value: &str,
        offset: usize,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        let mut pos = self.paths.value(field);
        let trimmed = value.trim_start();
        let lead = value.len() - trimmed.len();
        if let Some(line) = self.doc.source_line(pos.line)
            && let Some(rest) = line.get(pos.column.saturating_sub(1)..)
        {
            let quote = usize::from(rest.starts_with(['"', '\'']));
            if rest[quote..].starts_with(trimmed) && offset >= lead {
                let chars = trimmed[..(offset - lead).min(trimmed.len())]
                    .chars()
                    .count();
                pos.column += quote + chars;
            }
        }
        self.errors += 1;
        self.diags
            .push(Diagnostic::error(self.file, pos, field, message).with_help(help));
    }

    fn error(&mut self, field: &str, message: impl Into<String>, help: impl Into<String>) {
        self.errors += 1;
        self.diags.push(
            Diagnostic::error(self.file, self.paths.value(field), field, message).with_help(help),
        );
    }

    fn warn(&mut self, field: &str, message: impl Into<String>, help: impl Into<String>) {
        self.diags.push(
            Diagnostic::warning(self.file, self.paths.value(field), field, message).with_help(help),
        );
    }
}

fn document_kind(file: &str, doc: &Document<'_>, diags: &mut Vec<Diagnostic>) -> Option<DocKind> {
    let kinds = || {
        DocKind::ALL
            .iter()
            .map(|k| format!("`{}`", k.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match doc.kind.as_deref() {
        Some(k) => {
            let found = DocKind::parse(k);
            if found.is_none() {
                diags.push(
                    Diagnostic::error(
                        file,
                        doc.paths().value("kind"),
                        "kind",
                        format!("unknown kind `{k}`"),
                    )
                    .with_help(format!("canaryd reads documents of kind {}", kinds())),
                );
            }
            found
        }
        None => {
            diags.push(
                Diagnostic::error(file, doc.start, "kind", "document has no `kind`").with_help(
                    format!(
                        "start each document with `apiVersion: {}` and a `kind:` ({})",
                        spec::API_VERSION,
                        kinds()
                    ),
                ),
            );
            None
        }
    }
}

/// Names become file and branch names: DNS labels only.
fn check_name(cx: &mut Cx<'_>, name: &str) -> bool {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        cx.error(
            "metadata.name",
            format!("name `{name}` is not a DNS label"),
            "use lowercase letters, digits and `-`, at most 63 characters, e.g. `checkout-api`",
        );
    }
    ok
}

/// Where a named document is defined: file and position of its name.
type Site<'a> = (&'a str, Position);

/// Reports `name` if it is already in `seen`; returns `Some` when it was a duplicate.
fn duplicate(
    cx: &mut Cx<'_>,
    what: &str,
    name: &str,
    seen: &BTreeMap<String, Site<'_>>,
) -> Option<()> {
    let (file, pos) = seen.get(name)?;
    cx.error(
        "metadata.name",
        format!("{what} `{name}` is defined twice"),
        format!("first defined at {file}:{}:{}", pos.line, pos.column),
    );
    Some(())
}

/// Longest duration a spec may give: a year. Nothing in a rollout waits longer, and the
/// planner adds durations to timestamps, which must not overflow.
const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

fn dur(cx: &mut Cx<'_>, field: &str, text: &str) -> Option<Duration> {
    match duration::parse(text) {
        Ok(d) if d > MAX_DURATION => {
            cx.error(
                field,
                format!("duration `{}` is longer than a year", text.trim()),
                "durations in a rollout are at most `366d`",
            );
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            cx.error(field, format!("bad duration: {e}"), DURATION_HELP);
            None
        }
    }
}

/// A duration that must not be zero; `zero` and `help` say why for this field.
fn nonzero_dur(
    cx: &mut Cx<'_>,
    field: &str,
    text: &str,
    zero: &str,
    help: &str,
) -> Option<Duration> {
    let d = dur(cx, field, text)?;
    if d.is_zero() {
        cx.error(field, zero, help);
        return None;
    }
    Some(d)
}

fn weight(cx: &mut Cx<'_>, field: &str, n: i64) -> Option<Weight> {
    let w = Weight::new(n);
    if w.is_none() {
        cx.error(field, format!("weight {n} is out of range"), WEIGHT_HELP);
    }
    w
}

fn condition(cx: &mut Cx<'_>, field: &str, text: &str) -> Option<Condition> {
    match Condition::parse(text) {
        Ok(c) => Some(c),
        Err(e) => {
            cx.error_in_value(
                field,
                text,
                e.offset,
                format!("bad condition: {}", e.message),
                e.help,
            );
            None
        }
    }
}

fn rollout(cx: &mut Cx<'_>, raw: &spec::RolloutDoc, refs: &Refs) -> Option<Rollout> {
    let start_errors = cx.errors;
    check_name(cx, &raw.metadata.name);
    let s = &raw.spec;

    cx.router = refs.routers.get(&s.router).copied();
    let target = target(cx, s, refs);
    let (steps, background) = match &s.analysis {
        _ if s.strategy.is_some() => (
            strategy_steps(cx, s, refs),
            s.analysis
                .as_ref()
                .and_then(|a| analysis(cx, "spec.analysis", a, refs, true)),
        ),
        // Flagger's A/B form: the analysis is the rollout's one step, behind a header route.
        Some(a) if a.matches.is_some() => (ab_steps(cx, s, a, refs), None),
        _ => (
            steps(cx, s, refs),
            s.analysis
                .as_ref()
                .and_then(|a| analysis(cx, "spec.analysis", a, refs, true)),
        ),
    };
    let rollback = match &s.rollback {
        None => Some(RollbackPolicy::Immediate),
        Some(r) => match r.mode.unwrap_or_default() {
            spec::RollbackMode::Immediate => {
                if r.interval.is_some() {
                    cx.warn(
                        "spec.rollback.interval",
                        "`interval` has no effect on an immediate rollback",
                        "remove it, or set `mode: stepped`",
                    );
                }
                Some(RollbackPolicy::Immediate)
            }
            spec::RollbackMode::Stepped => match &r.interval {
                None => Some(RollbackPolicy::Stepped(DEFAULT_ROLLBACK_INTERVAL)),
                Some(t) => dur(cx, "spec.rollback.interval", t).map(RollbackPolicy::Stepped),
            },
        },
    };
    let deadline = match &s.progress_deadline {
        None => Some(DEFAULT_DEADLINE),
        Some(t) => nonzero_dur(
            cx,
            "spec.progressDeadline",
            t,
            "progress deadline is zero",
            "give the rollout time to make progress, e.g. `10m`",
        ),
    };
    let window = s.window.as_ref().and_then(|w| window(cx, w));
    let sticky = s.sticky.as_ref().and_then(|st| sticky(cx, st));
    let load = s.load.as_ref().and_then(|l| load(cx, l));
    if let (Some(l), Some(list)) = (&load, &steps)
        && let Some(k) = l.steps.iter().flatten().find(|k| **k >= list.len())
    {
        cx.error(
            "spec.load.steps",
            format!(
                "step {} does not exist: the rollout has {}",
                k + 1,
                list.len()
            ),
            "name steps from 1 to the number of steps",
        );
    }
    let hooks = s
        .hooks
        .as_ref()
        .map(|h| hooks(cx, &raw.metadata.name, h))
        .unwrap_or_default();
    let notify = s.notify.clone();
    if let Some(sinks) = &refs.sinks {
        for (i, sub) in notify.iter().flatten().enumerate() {
            if !sinks.contains(&sub.sink) {
                cx.warn(
                    &format!("spec.notify[{i}].sink"),
                    format!("no notification sink `{}` in the configuration", sub.sink),
                    if sinks.is_empty() {
                        "define it under `notifications.sinks` in the controller configuration; \
                         until then nothing is sent"
                            .to_string()
                    } else {
                        format!(
                            "known sinks: {}; until it is defined nothing is sent",
                            sinks.iter().cloned().collect::<Vec<_>>().join(", ")
                        )
                    },
                );
            }
        }
    }

    if cx.errors > start_errors {
        return None;
    }
    let target = target?;
    let revision = Revision::of(&target, s.retry.unwrap_or(0));
    let (steps, background, map) = with_hooks(cx, steps?, background, &hooks, &revision);
    // `load.steps` counts the steps as written; the hooks' steps come between.
    let load = load.map(|mut l| {
        l.steps = l
            .steps
            .map(|list| list.iter().filter_map(|k| map.get(*k).copied()).collect());
        l
    });
    let post_hooks = hooks
        .iter()
        .filter(|h| h.kind == HookKind::PostRollout)
        .map(|h| Hook {
            revision: revision.clone(),
            ..h.clone()
        })
        .collect();
    Some(Rollout {
        name: raw.metadata.name.clone(),
        file: cx.file.to_string(),
        targets: vec![target],
        revision,
        steps,
        background,
        rollback: rollback?,
        progress_deadline: deadline?,
        deadline_abort: s.progress_deadline_abort.unwrap_or(true),
        window,
        on_drift: s.on_drift.unwrap_or_default(),
        sticky,
        notify,
        load,
        post_hooks,
        follow: Vec::new(),
    })
}

/// How often a `confirm-*` gate asks again, unless its hook says.
const GATE_INTERVAL: Duration = Duration::from_secs(10);
/// A hook's timeout, unless it says.
const HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// `hooks:`, checked (the revision is filled in later).
fn hooks(cx: &mut Cx<'_>, rollout: &str, list: &[spec::HookSpec]) -> Vec<Hook> {
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for (i, h) in list.iter().enumerate() {
        let at = format!("spec.hooks[{i}]");
        let start = cx.errors;
        let token = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if h.name.is_empty() || !h.name.chars().all(token) {
            cx.error(
                &format!("{at}.name"),
                format!("`{}` is not a hook name", h.name),
                "letters, digits, `-`, `_` and `.`, e.g. `acceptance-tests`",
            );
        } else if !names.insert(h.name.clone()) {
            cx.error(
                &format!("{at}.name"),
                format!("another hook is named `{}`", h.name),
                "hook names are unique within a rollout: they name its evidence",
            );
        }
        let url = h.url.trim();
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .unwrap_or("");
        if rest.is_empty() || rest.starts_with('/') || url.chars().any(char::is_whitespace) {
            cx.error(
                &format!("{at}.url"),
                format!("`{url}` is not an http:// or https:// URL"),
                "e.g. `http://tests.shop.svc:8080/run`",
            );
        }
        let method = h.method.as_deref().unwrap_or("POST").to_ascii_uppercase();
        if !["POST", "GET", "PUT"].contains(&method.as_str()) {
            cx.error(
                &format!("{at}.method"),
                format!("method `{method}` is not one a hook sends"),
                "one of POST (default), GET, PUT",
            );
        }
        let timeout = match &h.timeout {
            Some(t) => nonzero_dur(
                cx,
                &format!("{at}.timeout"),
                t,
                "a hook's timeout is zero",
                "e.g. `30s`; the default is 10s",
            ),
            None => Some(HOOK_TIMEOUT),
        };
        let interval = match &h.interval {
            Some(t) => nonzero_dur(
                cx,
                &format!("{at}.interval"),
                t,
                "a gate's interval is zero",
                "e.g. `30s`; the default is 10s",
            ),
            None => Some(GATE_INTERVAL),
        };
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        for (name, value) in &h.headers {
            if name.is_empty() || !name.chars().all(token) || value.chars().any(char::is_control) {
                cx.error(
                    &format!("{at}.headers.{name}"),
                    "not a header name and one-line value",
                    "e.g. `X-Team: shop`",
                );
            }
        }
        let secret = match &h.secret {
            Some(spec::SecretSource { file, env }) if file.is_some() == env.is_some() => {
                cx.error(
                    &format!("{at}.secret"),
                    "give exactly one of `file` and `env`",
                    "e.g. `{env: HOOK_SECRET}`: the secret is read on the daemon's machine",
                );
                None
            }
            Some(spec::SecretSource { file, env }) => Some((file.clone(), env.clone())),
            None => None,
        };
        if cx.errors > start {
            continue;
        }
        let (Some(timeout), Some(interval)) = (timeout, interval) else {
            continue;
        };
        out.push((
            Hook {
                name: h.name.clone(),
                kind: h.kind,
                url: url.to_string(),
                method,
                timeout,
                retries: h.retries.unwrap_or(0),
                headers: h
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                secret,
                rollout: rollout.to_string(),
                revision: Revision::from(""),
                step: None,
                weight: None,
            },
            interval,
        ));
    }
    cx.hook_intervals = out.iter().map(|(h, i)| (h.name.clone(), *i)).collect();
    out.into_iter().map(|(h, _)| h).collect()
}

/// A hook as an analysis metric: 1 when it answered 2xx, which is success. Named
/// `gate:<name>` for a `confirm-*` gate, `hook:<name>` otherwise.
fn hook_metric(hook: &Hook, revision: &Revision, step: usize, weight: Weight) -> Metric {
    let gate = matches!(
        hook.kind,
        HookKind::ConfirmRollout | HookKind::ConfirmTrafficIncrease | HookKind::ConfirmPromotion
    );
    Metric {
        name: format!("{}:{}", if gate { "gate" } else { "hook" }, hook.name),
        provider: crate::core::spec::ProviderKind::Embedded,
        query: String::new(),
        success: crate::core::spec::condition::Condition::parse("result == 1").ok(),
        failure: None,
        min_samples: None,
        samples_query: None,
        judge: None,
        hook: Some(Box::new(Hook {
            revision: revision.clone(),
            step: Some(step),
            weight: Some(weight),
            ..hook.clone()
        })),
    }
}

/// `steps` with the hooks' steps in: a `confirm-rollout` gate first, the `pre-rollout` hooks
/// as a single measurement at weight 0, a `confirm-traffic-increase` gate before each weight
/// that grows, a `confirm-promotion` gate before the weight of 100 (or at the end); and the
/// `rollout` hooks measured with every analysis. Also: where each step as written went.
fn with_hooks(
    cx: &mut Cx<'_>,
    steps: Vec<Step>,
    background: Option<Analysis>,
    hooks: &[Hook],
    revision: &Revision,
) -> (Vec<Step>, Option<Analysis>, Vec<usize>) {
    let of = |kind: HookKind| -> Vec<&Hook> { hooks.iter().filter(|h| h.kind == kind).collect() };
    if hooks.is_empty() {
        let map = (0..steps.len()).collect();
        return (steps, background, map);
    }
    let intervals = std::mem::take(&mut cx.hook_intervals);
    let step_of = |list: &[&Hook], gate: bool, at: usize, weight: Weight| -> Step {
        let interval = list
            .iter()
            .filter_map(|h| intervals.get(&h.name))
            .min()
            .copied()
            .unwrap_or(GATE_INTERVAL);
        Step::Analysis(Analysis {
            metrics: list
                .iter()
                .map(|h| hook_metric(h, revision, at, weight))
                .collect(),
            interval: gate.then_some(interval),
            count: (!gate).then_some(1),
            initial_delay: Duration::ZERO,
            failure_limit: 0,
            inconclusive_limit: 0,
            consecutive_error_limit: DEFAULT_CONSECUTIVE_ERRORS,
            on_inconclusive: crate::core::spec::InconclusivePolicy::default(),
            gate,
        })
    };
    let rollout = of(HookKind::Rollout);
    let mut out: Vec<Step> = Vec::new();
    let mut map = Vec::with_capacity(steps.len());
    let mut weight = Weight::ZERO;
    let confirm_rollout = of(HookKind::ConfirmRollout);
    if !confirm_rollout.is_empty() {
        out.push(step_of(&confirm_rollout, true, 0, weight));
    }
    let pre = of(HookKind::PreRollout);
    if !pre.is_empty() {
        let k = out.len();
        out.push(step_of(&pre, false, k, weight));
    }
    let increase = of(HookKind::ConfirmTrafficIncrease);
    let promotion = of(HookKind::ConfirmPromotion);
    let mut promotion_placed = promotion.is_empty();
    for step in steps {
        if let Step::SetWeight(w) = &step {
            if !promotion_placed && w.get() == 100 {
                let k = out.len();
                out.push(step_of(&promotion, true, k, weight));
                promotion_placed = true;
            } else if !increase.is_empty() && *w > weight {
                let k = out.len();
                out.push(step_of(&increase, true, k, weight));
            }
            weight = *w;
        }
        let step = match step {
            Step::Analysis(mut a) if !rollout.is_empty() => {
                let k = out.len();
                a.metrics
                    .extend(rollout.iter().map(|h| hook_metric(h, revision, k, weight)));
                Step::Analysis(a)
            }
            other => other,
        };
        map.push(out.len());
        out.push(step);
    }
    if !promotion_placed {
        let k = out.len();
        out.push(step_of(&promotion, true, k, weight));
    }
    let background = background.map(|mut a| {
        a.metrics
            .extend(rollout.iter().map(|h| hook_metric(h, revision, 0, weight)));
        a
    });
    let analysed = out.iter().any(|s| {
        matches!(s, Step::Analysis(a) if !a.gate && a.metrics.iter().any(|m| m.hook.as_ref().is_some_and(|h| h.kind == HookKind::Rollout)))
    }) || background.is_some();
    if !rollout.is_empty() && !analysed {
        cx.warn(
            "spec.hooks",
            "`rollout` hooks are called at each analysis measurement, and this rollout has no analysis",
            "add an `analysis` step (or a background `analysis`), or make it a `pre-rollout` hook",
        );
    }
    (out, background, map)
}

fn target(cx: &mut Cx<'_>, s: &RolloutSpec, refs: &Refs) -> Option<Target> {
    let mut ok = true;
    if !refs.routers.contains_key(&s.router) {
        let known = if refs.routers.is_empty() {
            "none is defined: add a `kind: Router` document or define it in the controller's \
             configuration"
                .to_string()
        } else {
            format!(
                "known routers: {}",
                refs.routers.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        cx.error(
            "spec.router",
            format!("unknown router `{}`", s.router),
            known,
        );
        ok = false;
    }
    for (field, value) in [
        ("spec.service", &s.service),
        ("spec.stable.name", &s.stable.name),
    ] {
        if value.trim().is_empty() {
            cx.error(field, "must not be empty", "name it as the router knows it");
            ok = false;
        }
    }
    let stable = Backend {
        name: s.stable.name.clone(),
        version: s.stable.version.clone(),
    };
    let canary = match &s.canary {
        None => None,
        Some(c) if c.name == s.stable.name && c.version == s.stable.version => None,
        Some(c) if c.name == s.stable.name => {
            cx.error(
                "spec.canary.name",
                format!("canary and stable are the same backend `{}`", c.name),
                "traffic is split between two backends on the router: point the canary at the \
                 other one (e.g. `blue`/`green`), and record what it runs in `version`",
            );
            ok = false;
            None
        }
        Some(c) if c.name.trim().is_empty() => {
            cx.error(
                "spec.canary.name",
                "must not be empty",
                "name it as the router knows it",
            );
            ok = false;
            None
        }
        Some(c) => Some(Backend {
            name: c.name.clone(),
            version: c.version.clone(),
        }),
    };
    ok.then(|| Target {
        router: s.router.clone(),
        service: s.service.clone(),
        stable,
        canary,
    })
}

fn steps(cx: &mut Cx<'_>, s: &RolloutSpec, refs: &Refs) -> Option<Vec<Step>> {
    let shorthand = s.step_weight.is_some() || s.step_weights.is_some();
    match (&s.steps, shorthand) {
        (Some(_), true) => {
            let field = if s.step_weight.is_some() {
                "spec.stepWeight"
            } else {
                "spec.stepWeights"
            };
            cx.error(
                field,
                "both `steps` and the shorthand are given",
                "use either an explicit `steps` list or `stepWeight`/`stepWeights` with \
                 `maxWeight` and `interval`, not both",
            );
            None
        }
        (Some(list), false) => {
            for field in ["spec.maxWeight", "spec.interval"] {
                if cx.paths.contains(field) {
                    cx.warn(
                        field,
                        format!("`{}` only applies to the shorthand", &field[5..]),
                        "with an explicit `steps` list, hold weights with `pause` steps",
                    );
                }
            }
            explicit_steps(cx, list, refs)
        }
        (None, true) => shorthand_steps(cx, s),
        (None, false) => {
            cx.error(
                "spec",
                "the rollout has no steps",
                "add `steps:` (e.g. `- setWeight: 10`, `- pause: {duration: 5m}`) or the \
                 shorthand `stepWeight: 10` with `maxWeight` and `interval`",
            );
            None
        }
    }
}

fn explicit_steps(cx: &mut Cx<'_>, list: &[spec::Step], refs: &Refs) -> Option<Vec<Step>> {
    if list.is_empty() {
        cx.error(
            "spec.steps",
            "the step list is empty",
            "add at least one step, e.g. `- setWeight: 10`; promotion follows the last step",
        );
        return None;
    }
    let mut out = Vec::with_capacity(list.len());
    let mut last: Option<(Weight, String)> = None;
    let mut ok = true;
    for (i, step) in list.iter().enumerate() {
        let base = format!("spec.steps[{i}]");
        let step = match step {
            spec::Step::SetWeight(n) => {
                let field = format!("{base}.setWeight");
                let Some(w) = weight(cx, &field, *n) else {
                    ok = false;
                    continue;
                };
                if let Some((prev, prev_field)) = &last {
                    if w < *prev {
                        cx.error(
                            &field,
                            format!(
                                "weight {} is lower than the {} before it",
                                w.get(),
                                prev.get()
                            ),
                            format!(
                                "canary weights only grow during a rollout ({prev_field} sets {}); \
                                 to send traffic back, revert the change instead",
                                prev.get()
                            ),
                        );
                        ok = false;
                    } else if w == *prev {
                        cx.warn(
                            &field,
                            format!("weight {} repeats the step before it", w.get()),
                            "remove the repeated step, or use `pause` to hold a weight",
                        );
                    }
                }
                last = Some((w, field));
                Step::SetWeight(w)
            }
            spec::Step::Pause(p) => match &p.duration {
                None => Step::Pause(None),
                Some(t) => match dur(cx, &format!("{base}.pause.duration"), t) {
                    Some(d) => Step::Pause(Some(d)),
                    None => {
                        ok = false;
                        continue;
                    }
                },
            },
            spec::Step::Analysis(a) => {
                match analysis(cx, &format!("{base}.analysis"), a, refs, false) {
                    Some(a) => Step::Analysis(a),
                    None => {
                        ok = false;
                        continue;
                    }
                }
            }
            spec::Step::SetHeaderRoute(r) => {
                let field = format!("{base}.setHeaderRoute");
                match header_route(cx, &field, &format!("{field}.match"), r, &out) {
                    Some(step) => step,
                    None => {
                        ok = false;
                        continue;
                    }
                }
            }
        };
        out.push(step);
    }
    ok.then_some(out)
}

/// Refuses `what` at `field` unless the rollout's router kind `can`.
fn router_can(cx: &mut Cx<'_>, field: &str, what: &str, can: fn(RouterKind) -> bool) -> bool {
    match cx.router {
        Some(kind) if !can(kind) => {
            cx.error(
                field,
                format!("router kind `{}` cannot express {what} yet", kind.as_str()),
                format!(
                    "routers that can: {}; or route by weight alone on this router",
                    RouterKind::those_that(can)
                ),
            );
            false
        }
        _ => true,
    }
}

/// Whether the rollout's router kind can match `c`; an error at `field` naming why, and the
/// kinds that can, when it cannot.
fn expressible(cx: &mut Cx<'_>, field: &str, c: &Criterion) -> bool {
    let Some(kind) = cx.router else {
        return true;
    };
    let Some(why) = crate::core::express::refusal(kind, c) else {
        return true;
    };
    let others: Vec<&str> = RouterKind::ALL
        .into_iter()
        .filter(|k| {
            *k != kind
                && k.can_route()
                && (c.on != Field::Cookie || k.can_route_by_cookie())
                && crate::core::express::refusal(*k, c).is_none()
        })
        .map(RouterKind::as_str)
        .collect();
    cx.error(
        field,
        format!("router kind `{}` cannot match this: {why}", kind.as_str()),
        format!(
            "rewrite the criterion, or route on a router that can: {}",
            others.join(", ")
        ),
    );
    false
}

/// A `setHeaderRoute` step: its matches checked and compiled (`before`: the steps so far, to
/// warn about removing a route never set).
fn header_route(
    cx: &mut Cx<'_>,
    field: &str,
    list_field: &str,
    r: &spec::HeaderRoute,
    before: &[Step],
) -> Option<Step> {
    let start = cx.errors;
    if !router_can(cx, field, "header routes", RouterKind::can_route) {
        return None;
    }
    if r.name.trim().is_empty() {
        cx.error(
            &format!("{field}.name"),
            "must not be empty",
            "name the route; a later `setHeaderRoute: {name}` removes it",
        );
    }
    let Some(list) = &r.matches else {
        let set = before
            .iter()
            .any(|s| matches!(s, Step::SetHeaderRoute { name, .. } if *name == r.name));
        if !set {
            cx.warn(
                field,
                format!("removes route `{}`, which no earlier step sets", r.name),
                "a `setHeaderRoute` with only a name removes a route set by an earlier step",
            );
        }
        return (cx.errors == start).then(|| Step::SetHeaderRoute {
            name: r.name.clone(),
            matches: Vec::new(),
        });
    };
    if list.is_empty() {
        cx.error(
            list_field,
            "the match list is empty",
            "give at least one entry, e.g. `- {headerName: X-Canary, headerValue: {exact: always}}`, \
             or leave `match` out to remove the route",
        );
    }
    let mut matches = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let at = format!("{list_field}[{i}]");
        let mut all = Vec::new();
        match (&m.header_name, &m.header_value) {
            (Some(name), Some(value)) => {
                if let Some(value) = pattern(cx, &format!("{at}.headerValue"), value) {
                    let c = Criterion {
                        on: Field::Header,
                        name: name.clone(),
                        value,
                    };
                    if expressible(cx, &format!("{at}.headerValue"), &c) {
                        all.push(c);
                    }
                }
            }
            (None, None) => {}
            (Some(_), None) => cx.error(
                &format!("{at}.headerName"),
                "`headerName` without `headerValue`",
                "add `headerValue: {exact: ...}` (or `prefix`, `regex`)",
            ),
            (None, Some(_)) => cx.error(
                &format!("{at}.headerValue"),
                "`headerValue` without `headerName`",
                "add `headerName: X-Canary`",
            ),
        }
        for (key, on, map) in [
            ("headers", Field::Header, &m.headers),
            ("cookies", Field::Cookie, &m.cookies),
            ("query", Field::Query, &m.query),
        ] {
            if on == Field::Cookie
                && !map.is_empty()
                && !router_can(
                    cx,
                    &format!("{at}.cookies"),
                    "cookie matches",
                    RouterKind::can_route_by_cookie,
                )
            {
                continue;
            }
            for (name, value) in map {
                let field = format!("{at}.{key}.{name}");
                if let Some(value) = pattern(cx, &field, value) {
                    let c = Criterion {
                        on,
                        name: name.clone(),
                        value,
                    };
                    if expressible(cx, &field, &c) {
                        all.push(c);
                    }
                }
            }
        }
        if all.len() > 1 {
            router_can(
                cx,
                &at,
                "several criteria in one match entry",
                RouterKind::can_match_all,
            );
        }
        if all.is_empty() && cx.errors == start {
            cx.error(
                &at,
                "the entry matches nothing",
                "give `headerName` and `headerValue`, or `headers`, `cookies` or `query`",
            );
        }
        matches.push(Match { all });
    }
    (cx.errors == start).then(|| Step::SetHeaderRoute {
        name: r.name.clone(),
        matches,
    })
}

/// `{exact|prefix|regex: ...}`: exactly one, and a regex that compiles.
fn pattern(cx: &mut Cx<'_>, field: &str, m: &spec::StringMatch) -> Option<Pattern> {
    let given: Vec<Pattern> = [
        m.exact.clone().map(Pattern::Exact),
        m.prefix.clone().map(Pattern::Prefix),
        m.regex.clone().map(Pattern::Regex),
    ]
    .into_iter()
    .flatten()
    .collect();
    match <[Pattern; 1]>::try_from(given) {
        Ok([Pattern::Regex(r)]) => match regex::Regex::new(&r) {
            Ok(_) => Some(Pattern::Regex(r)),
            Err(e) => {
                cx.error(
                    &format!("{field}.regex"),
                    format!("not a regular expression: {e}"),
                    "RE2 syntax, matched against the whole value, e.g. `^(de|at)$`",
                );
                None
            }
        },
        Ok([p]) => Some(p),
        Err(_) => {
            cx.error(
                field,
                "give exactly one of `exact`, `prefix` or `regex`",
                "e.g. `{exact: always}`",
            );
            None
        }
    }
}

/// `load:`: bounded in rate, concurrency and time; an `http://` URL; the steps it names exist
/// (checked against the steps once they are known, in `check_load_steps`).
fn load(cx: &mut Cx<'_>, l: &spec::LoadSpec) -> Option<Load> {
    use crate::core::load::{DEFAULT_CONCURRENCY, MAX_CONCURRENCY, MAX_RPS};
    let start = cx.errors;
    let url = l.url.trim();
    let rest = url.strip_prefix("http://").unwrap_or("");
    if rest.is_empty() || rest.starts_with('/') || url.chars().any(char::is_whitespace) {
        cx.error(
            "spec.load.url",
            format!("`{url}` is not an http:// URL"),
            "e.g. `http://127.0.0.1:8080/` (the router in front of the service); https is not \
             supported for built-in load",
        );
    }
    if !(1..=MAX_RPS).contains(&l.rps) {
        cx.error(
            "spec.load.rps",
            format!(
                "rate {} is outside 1 to {MAX_RPS} requests per second",
                l.rps
            ),
            "built-in load is for giving an analysis data, not for load tests",
        );
    }
    let concurrency = l
        .concurrency
        .unwrap_or_else(|| l.rps.clamp(1, DEFAULT_CONCURRENCY));
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        cx.error(
            "spec.load.concurrency",
            format!("concurrency {concurrency} is outside 1 to {MAX_CONCURRENCY}"),
            "requests in flight at most; the default is the rate, up to 16",
        );
    }
    let duration = match &l.duration {
        Some(t) => nonzero_dur(
            cx,
            "spec.load.duration",
            t,
            "load duration is zero",
            "leave it out to run as long as the steps that ask for it",
        ),
        None => None,
    };
    let method = l.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
    if !["GET", "HEAD", "POST", "PUT", "DELETE"].contains(&method.as_str()) {
        cx.error(
            "spec.load.method",
            format!("method `{method}` is not one built-in load sends"),
            "one of GET, HEAD, POST, PUT, DELETE",
        );
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    for (name, value) in &l.headers {
        if name.is_empty() || !name.chars().all(token) {
            cx.error(
                &format!("spec.load.headers.{name}"),
                format!("`{name}` is not a header name"),
                "letters, digits and `-`, e.g. `Host`",
            );
        } else if value.chars().any(|c| c.is_control()) {
            cx.error(
                &format!("spec.load.headers.{name}"),
                "a header value may not hold control characters",
                "one line of visible text",
            );
        }
    }
    let steps = l.steps.as_ref().map(|list| {
        for (i, k) in list.iter().enumerate() {
            if *k == 0 {
                cx.error(
                    &format!("spec.load.steps[{i}]"),
                    "steps are counted from 1",
                    "`steps: [1, 2]` runs the load in the first two steps",
                );
            }
        }
        list.iter().map(|k| k.saturating_sub(1)).collect()
    });
    (cx.errors == start).then(|| Load {
        url: url.to_string(),
        rps: l.rps,
        concurrency,
        duration,
        method,
        headers: l
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        steps,
    })
}

/// `sticky:`: a header or cookie name, on a router that can split by it.
fn sticky(cx: &mut Cx<'_>, s: &spec::Sticky) -> Option<Sticky> {
    if !router_can(cx, "spec.sticky", "sticky users", RouterKind::can_stick) {
        return None;
    }
    let (field, name, sticky) = match s {
        spec::Sticky::Header(n) => ("spec.sticky.header", n, Sticky::Header(n.clone())),
        spec::Sticky::Cookie(n) => ("spec.sticky.cookie", n, Sticky::Cookie(n.clone())),
    };
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        cx.error(
            field,
            format!("`{name}` is not a header or cookie name"),
            "letters, digits and `-_.`, e.g. `X-User-Id` or `canary_id`",
        );
        return None;
    }
    Some(sticky)
}

/// Blue/green as steps: the preview route at weight 0, the pre-promotion analysis, the wait
/// (`autoPromotionSeconds`, or a promote commit), the switch to 100 % in one apply, and the
/// post-promotion analysis; promotion (which removes the preview route) follows.
fn strategy_steps(cx: &mut Cx<'_>, s: &RolloutSpec, refs: &Refs) -> Option<Vec<Step>> {
    let start = cx.errors;
    let Some(spec::Strategy::BlueGreen(bg)) = &s.strategy else {
        return None;
    };
    if s.steps.is_some() || s.step_weight.is_some() || s.step_weights.is_some() {
        cx.error(
            "spec.strategy",
            "`strategy` replaces the steps, but steps are given too",
            "remove `steps` (or `stepWeight`/`stepWeights`)",
        );
    }
    let base = "spec.strategy.blueGreen";
    let preview = spec::HeaderRoute {
        name: "preview".to_string(),
        matches: Some(bg.preview.clone()),
    };
    let mut steps = Vec::new();
    steps.extend(header_route(
        cx,
        base,
        &format!("{base}.preview"),
        &preview,
        &[],
    ));
    if let Some(a) = &bg.pre_promotion_analysis {
        steps.extend(
            analysis(cx, &format!("{base}.prePromotionAnalysis"), a, refs, false)
                .map(Step::Analysis),
        );
    }
    let wait = match (
        bg.auto_promotion_enabled.unwrap_or(true),
        bg.auto_promotion_seconds,
    ) {
        (false, _) => Some(Step::Pause(None)),
        (true, Some(n)) if n > 0 => Some(Step::Pause(Some(Duration::from_secs(n.into())))),
        (true, _) => None,
    };
    steps.extend(wait);
    // The switch: one apply; the preview route goes with the promotion.
    steps.push(Step::SetWeight(Weight::FULL));
    if let Some(a) = &bg.post_promotion_analysis {
        steps.extend(
            analysis(cx, &format!("{base}.postPromotionAnalysis"), a, refs, false)
                .map(Step::Analysis),
        );
    }
    (cx.errors == start).then_some(steps)
}

/// Flagger's A/B form (`spec.analysis` with `match` and `iterations`): a header route to the
/// canary at weight 0, then the analysis measured `iterations` times; promotion follows.
fn ab_steps(
    cx: &mut Cx<'_>,
    s: &RolloutSpec,
    a: &spec::Analysis,
    refs: &Refs,
) -> Option<Vec<Step>> {
    let start = cx.errors;
    if s.steps.is_some() || s.step_weight.is_some() || s.step_weights.is_some() {
        cx.error(
            "spec.analysis.match",
            "`match` (Flagger's A/B form) replaces the steps, but steps are given too",
            "remove `steps` (or `stepWeight`/`stepWeights`), or drop `match` and add a \
             `setHeaderRoute` step",
        );
    }
    let Some(iterations) = a.iterations else {
        cx.error(
            "spec.analysis.match",
            "Flagger's A/B form needs `iterations`",
            "add `iterations: 10`: how many times every metric is measured before promotion",
        );
        return None;
    };
    let route = spec::HeaderRoute {
        name: "ab".to_string(),
        matches: a.matches.clone(),
    };
    let route = header_route(cx, "spec.analysis", "spec.analysis.match", &route, &[]);
    let mut step = a.clone();
    step.matches = None;
    step.iterations = None;
    step.count = Some(iterations);
    step.interval = step.interval.or_else(|| Some("1m".to_string()));
    let analysis = analysis(cx, "spec.analysis", &step, refs, false);
    if cx.errors > start {
        return None;
    }
    Some(vec![route?, Step::Analysis(analysis?)])
}

/// Expands Flagger's shorthand. Unlike Flagger, the last weight never overshoots `maxWeight`:
/// `stepWeight: 20, maxWeight: 50` gives 20, 40, 50, then promotion.
fn shorthand_steps(cx: &mut Cx<'_>, s: &RolloutSpec) -> Option<Vec<Step>> {
    let interval = match &s.interval {
        None => Some(DEFAULT_INTERVAL),
        Some(t) => nonzero_dur(
            cx,
            "spec.interval",
            t,
            "interval 0 holds no weight at all",
            "hold each weight long enough to judge it, e.g. `interval: 1m`",
        ),
    };
    let max = match s.max_weight {
        None => Some(Weight::FULL),
        Some(n) => weight(cx, "spec.maxWeight", n).filter(|w| {
            if *w == Weight::ZERO {
                cx.error(
                    "spec.maxWeight",
                    "`maxWeight` 0 would jump from 0 % straight to promotion",
                    "use the last canary weight before promotion, 1 to 100",
                );
            }
            *w > Weight::ZERO
        }),
    };
    if let (Some(step), Some(max)) = (s.step_weight.and_then(Weight::new), max)
        && step > max
    {
        cx.error(
            "spec.stepWeight",
            format!(
                "step weight {} is above `maxWeight` {}",
                step.get(),
                max.get()
            ),
            "make `stepWeight` at most `maxWeight`, or raise `maxWeight`",
        );
        return None;
    }
    let weights: Option<Vec<Weight>> = match (s.step_weight, &s.step_weights) {
        (Some(_), Some(_)) => {
            cx.error(
                "spec.stepWeights",
                "both `stepWeight` and `stepWeights` are given",
                "use `stepWeight` for equal steps or `stepWeights` for a list, not both",
            );
            None
        }
        (Some(n), None) => {
            let step = weight(cx, "spec.stepWeight", n);
            match (step, max) {
                (Some(step), _) if step == Weight::ZERO => {
                    cx.error(
                        "spec.stepWeight",
                        "step weight 0 never moves traffic",
                        "use a step between 1 and 100, e.g. `stepWeight: 10`",
                    );
                    None
                }
                (Some(step), Some(max)) => {
                    let mut ws = Vec::new();
                    let mut w = step.get();
                    while w < max.get() {
                        ws.push(Weight::new(i64::from(w))?);
                        w = w.saturating_add(step.get());
                    }
                    ws.push(max);
                    Some(ws)
                }
                _ => None,
            }
        }
        (None, Some(list)) => {
            if list.is_empty() {
                cx.error(
                    "spec.stepWeights",
                    "the weight list is empty",
                    "list the canary weights to go through, e.g. `[1, 5, 25, 50]`",
                );
                None
            } else {
                let mut ws = Vec::new();
                let mut ok = true;
                for (i, &n) in list.iter().enumerate() {
                    let field = format!("spec.stepWeights[{i}]");
                    match weight(cx, &field, n) {
                        Some(w) if ws.last().is_some_and(|prev| w <= *prev) => {
                            cx.error(
                                &field,
                                format!("weight {} does not increase", w.get()),
                                "list the weights in increasing order",
                            );
                            ok = false;
                        }
                        Some(w) => ws.push(w),
                        None => ok = false,
                    }
                }
                if let (Some(max), Some(&last)) = (s.max_weight.and_then(Weight::new), ws.last())
                    && last > max
                {
                    cx.error(
                        "spec.maxWeight",
                        format!(
                            "`maxWeight` {} is below the last step weight {}",
                            max.get(),
                            last.get()
                        ),
                        "raise `maxWeight` or drop the weights above it",
                    );
                    ok = false;
                }
                ok.then_some(ws)
            }
        }
        (None, None) => None,
    };
    let (weights, interval) = (weights?, interval?);
    Some(
        weights
            .into_iter()
            .flat_map(|w| [Step::SetWeight(w), Step::Pause(Some(interval))])
            .collect(),
    )
}

fn analysis(
    cx: &mut Cx<'_>,
    base: &str,
    a: &spec::Analysis,
    refs: &Refs,
    background: bool,
) -> Option<Analysis> {
    let start = cx.errors;
    if a.matches.is_some() || a.iterations.is_some() {
        let field = if a.matches.is_some() {
            format!("{base}.match")
        } else {
            format!("{base}.iterations")
        };
        cx.error(
            &field,
            "`match` and `iterations` (Flagger's A/B form) belong in `spec.analysis` only",
            "for a header route during the steps, use a `setHeaderRoute` step",
        );
    }
    if a.metrics.is_empty() && a.judge.is_none() {
        cx.error(
            &format!("{base}.metrics"),
            "the analysis has no metrics",
            "add at least one metric check, e.g. `- name: errors\\n  template: error-rate`",
        );
    }
    let mut names = BTreeSet::new();
    // Exactly sized: the catalog keeps every analysis of every rollout.
    let mut metrics = Vec::with_capacity(a.metrics.len() + usize::from(a.judge.is_some()));
    for (i, m) in a.metrics.iter().enumerate() {
        let field = format!("{base}.metrics[{i}]");
        if !names.insert(m.name.as_str()) {
            cx.error(
                &format!("{field}.name"),
                format!("metric `{}` appears twice in this analysis", m.name),
                "give each check its own name; it identifies the check in status and commits",
            );
        }
        if let Some(metric) = metric(cx, &field, m, refs) {
            metrics.push(metric);
        }
    }
    let interval = match &a.interval {
        Some(t) => nonzero_dur(
            cx,
            &format!("{base}.interval"),
            t,
            "analysis interval is zero",
            "measure at most every few seconds, e.g. `interval: 30s`",
        ),
        None if background => Some(DEFAULT_INTERVAL),
        None => None,
    };
    let count = match (a.count, interval, background) {
        (Some(0), ..) => {
            cx.error(
                &format!("{base}.count"),
                "count 0 never measures anything",
                "remove the analysis, or measure at least once",
            );
            None
        }
        (Some(n), None, _) if n > 1 => {
            cx.error(
                &format!("{base}.count"),
                format!("count {n} needs an interval"),
                "add `interval:` so canaryd knows how far apart the measurements are",
            );
            None
        }
        (None, Some(_), false) => {
            cx.error(
                &format!("{base}.interval"),
                "a step analysis with an interval needs a count",
                "without `count` the step would never finish; add e.g. `count: 5`",
            );
            None
        }
        (None, None, false) => Some(1),
        (c, ..) => c,
    };
    if let Some(j) = &a.judge {
        if names.contains(JUDGE_METRIC) {
            cx.error(
                &format!("{base}.judge"),
                format!("a metric check is already named `{JUDGE_METRIC}`"),
                "the judge's score goes by that name in status and commits; rename the check",
            );
        }
        if let Some(m) = judge(cx, &format!("{base}.judge"), j, refs, interval) {
            metrics.push(m);
        }
    }
    let initial_delay = match &a.initial_delay {
        Some(t) => dur(cx, &format!("{base}.initialDelay"), t),
        None => Some(Duration::ZERO),
    };
    if cx.errors > start {
        return None;
    }
    Some(Analysis {
        metrics,
        interval,
        count,
        initial_delay: initial_delay?,
        failure_limit: a.failure_limit.unwrap_or(0),
        inconclusive_limit: a.inconclusive_limit.unwrap_or(0),
        consecutive_error_limit: a
            .consecutive_error_limit
            .unwrap_or(DEFAULT_CONSECUTIVE_ERRORS),
        on_inconclusive: a.on_inconclusive.unwrap_or_default(),
        gate: false,
    })
}

/// Where a check's or judged metric's values come from: its template (a document, or a built-in
/// for the rollout's router kind) with the check's own `provider` and `query` over it.
struct MetricSource {
    template: Option<spec::MetricTemplateSpec>,
    provider: Option<ProviderKind>,
    query: Option<String>,
}

fn source(
    cx: &mut Cx<'_>,
    field: &str,
    name: &str,
    (template, provider, query): (&Option<String>, Option<ProviderKind>, &Option<String>),
    refs: &Refs,
) -> MetricSource {
    let template_name = template;
    let own_query = query.as_deref();
    let template: Option<spec::MetricTemplateSpec> = match template {
        None => None,
        Some(t) => {
            let builtin = cx.router.and_then(|kind| templates::builtin(t, kind));
            match refs.templates.get(t).cloned().or(builtin) {
                Some(found) => Some(found),
                None if templates::BUILTIN.contains(&t.as_str()) => {
                    // Only say why when the router is known (an unknown one is reported already).
                    if let Some(kind) = cx.router {
                        let kinds: Vec<&str> =
                            templates::kinds_for(t).iter().map(|k| k.as_str()).collect();
                        cx.error(
                            &format!("{field}.template"),
                            format!(
                                "the built-in template `{t}` has no query for a `{}` router",
                                kind.as_str()
                            ),
                            format!(
                                "it is built in for {} routers; for this one give a `provider:` \
                                 and a `query:`, or a `kind: MetricTemplate` document",
                                kinds.join(", ")
                            ),
                        );
                    }
                    None
                }
                None => {
                    let mut known: Vec<String> = refs.templates.keys().cloned().collect();
                    known.extend(templates::BUILTIN.iter().map(|s| s.to_string()));
                    cx.error(
                        &format!("{field}.template"),
                        format!("unknown metric template `{t}`"),
                        format!(
                            "use a built-in or a `kind: MetricTemplate` document; known: {}",
                            known.join(", ")
                        ),
                    );
                    None
                }
            }
        }
    };
    let named = template_name.is_some();
    let provider = provider.or(template.as_ref().map(|t| t.provider));
    let query = query.clone().or(template.as_ref().map(|t| t.query.clone()));
    if !named && (provider.is_none() || query.is_none()) {
        cx.error(
            field,
            format!("metric `{name}` has no source"),
            "give it a `template:`, or a `provider:` and a `query:`",
        );
    }
    if let Some(q) = &query
        && q.trim().is_empty()
    {
        cx.error(
            &format!("{field}.query"),
            "the query is empty",
            "write the query to run",
        );
    }
    if provider == Some(ProviderKind::Prometheus)
        && let Some(own) = own_query
    {
        query_template(cx, &format!("{field}.query"), own);
    }
    MetricSource {
        template,
        provider,
        query,
    }
}

fn metric(cx: &mut Cx<'_>, field: &str, m: &spec::MetricCheck, refs: &Refs) -> Option<Metric> {
    let start = cx.errors;
    let MetricSource {
        template,
        provider,
        query,
    } = source(
        cx,
        field,
        &m.name,
        (&m.template, m.provider, &m.query),
        refs,
    );
    let mut parse = |own: &Option<String>, from_template: Option<&String>, key: &str| match (
        own,
        from_template,
    ) {
        (Some(text), _) => condition(cx, &format!("{field}.{key}"), text),
        (None, Some(text)) => Condition::parse(text).ok(),
        (None, None) => None,
    };
    let success = parse(
        &m.success_condition,
        template.as_ref().and_then(|t| t.success_condition.as_ref()),
        "successCondition",
    );
    let failure = parse(
        &m.failure_condition,
        template.as_ref().and_then(|t| t.failure_condition.as_ref()),
        "failureCondition",
    );
    // Only complain about missing conditions when everything they could come from resolved.
    let conditions_ok = (m.template.is_none() || template.is_some())
        && (m.success_condition.is_none() || success.is_some())
        && (m.failure_condition.is_none() || failure.is_some());
    if conditions_ok && success.is_none() && failure.is_none() {
        cx.error(
            field,
            format!("metric `{}` has no condition", m.name),
            "add `successCondition` (e.g. `result < 0.01`) or `failureCondition`; without one \
             every measurement would be inconclusive",
        );
    }
    let min_samples = m
        .min_samples
        .or(template.as_ref().and_then(|t| t.min_samples));
    let samples_query = m
        .samples_query
        .clone()
        .or(template.as_ref().and_then(|t| t.samples_query.clone()));
    if let Some(q) = &m.samples_query {
        query_template(cx, &format!("{field}.samplesQuery"), q);
    }
    if m.min_samples.is_some_and(|n| n == 0) {
        cx.error(
            &format!("{field}.minSamples"),
            "minSamples 0 asks for nothing",
            "remove it, or ask for the requests a verdict needs, e.g. `minSamples: 50`",
        );
    }
    if min_samples.is_some_and(|n| n > 0)
        && provider == Some(ProviderKind::Prometheus)
        && samples_query.is_none()
    {
        cx.error(
            &format!("{field}.minSamples"),
            format!(
                "metric `{}` asks for a minimum sample count but has no `samplesQuery`",
                m.name
            ),
            "add `samplesQuery:` counting the requests over `{{ interval }}`, e.g. \
             `sum(increase(http_requests_total{server=\"{{ canary }}\"}[{{ interval }}]))`",
        );
    }
    if cx.errors > start {
        return None;
    }
    Some(Metric {
        name: m.name.clone(),
        provider: provider?,
        query: query?,
        success,
        failure,
        min_samples: min_samples.filter(|n| *n > 0),
        samples_query,
        judge: None,
        hook: None,
    })
}

/// Checks the `{{ variables }}` of a PromQL query, pointing at the one that is wrong.
fn query_template(cx: &mut Cx<'_>, field: &str, query: &str) {
    if let Err(e) = crate::core::promql::check(query) {
        cx.error_in_value(
            field,
            query,
            e.offset(),
            e.to_string(),
            "variables are {{ canary }}, {{ stable }}, {{ service }}, {{ target }} and \
             {{ interval }}; names may take `| regex` inside a regex matcher",
        );
    }
}

/// The judge of an analysis, as one more metric named [`JUDGE_METRIC`].
fn judge(
    cx: &mut Cx<'_>,
    base: &str,
    j: &spec::Judge,
    refs: &Refs,
    interval: Option<Duration>,
) -> Option<Metric> {
    let start = cx.errors;
    for (key, v) in [("pass", j.pass), ("marginal", j.marginal)] {
        if !(0.0..=100.0).contains(&v) {
            cx.error(
                &format!("{base}.{key}"),
                format!("score threshold {v} is outside 0..100"),
                "the score is the share of passing metrics, 0 to 100",
            );
        }
    }
    if j.marginal > j.pass {
        cx.error(
            &format!("{base}.marginal"),
            format!("marginal {} is above pass {}", j.marginal, j.pass),
            "a score between marginal and pass is inconclusive; marginal must not exceed pass",
        );
    }
    let confidence = j.confidence.unwrap_or(crate::core::judge::CONF_LEVEL);
    if !(confidence > 0.5 && confidence < 1.0) {
        cx.error(
            &format!("{base}.confidence"),
            format!("confidence {confidence} is not between 0.5 and 1"),
            "Kayenta uses 0.98; 0.95 is the textbook choice",
        );
    }
    if interval.is_none() {
        cx.error(
            base,
            "the judge needs the analysis to have an `interval`",
            "the interval is the window both sides are sampled over, e.g. `interval: 1m`",
        );
    }
    let step = j.step.as_ref().and_then(|t| {
        nonzero_dur(
            cx,
            &format!("{base}.step"),
            t,
            "judge step is zero",
            "sample every few seconds, e.g. `step: 5s`",
        )
    });
    if let (Some(step), Some(interval)) = (step, interval)
        && step * 2 > interval
    {
        cx.error(
            &format!("{base}.step"),
            "the step leaves fewer than two samples per window",
            "make the step a small part of the analysis interval, e.g. a tenth",
        );
    }
    let min_samples = j.min_samples.unwrap_or(5);
    if min_samples < 2 {
        cx.error(
            &format!("{base}.minSamples"),
            "the test needs at least two samples a side",
            "use 5 or more",
        );
    }
    if let Some(interval) = interval {
        let step = step.unwrap_or_else(|| (interval / 10).max(Duration::from_secs(1)));
        let per_window = (interval.as_secs_f64() / step.as_secs_f64()).floor() as u64;
        if per_window < min_samples && min_samples >= 2 && step * 2 <= interval {
            cx.error(
                &format!("{base}.step"),
                format!(
                    "a window gives {per_window} samples a side, fewer than the {min_samples} the judge needs"
                ),
                "a smaller step, a longer interval, or a lower minSamples; otherwise every \
                 round is no data",
            );
        }
    }
    if !j.metrics.is_empty() && j.metrics.iter().all(|m| m.muted == Some(true)) {
        cx.error(
            &format!("{base}.metrics"),
            "every judged metric is muted",
            "muted metrics are left out of the score; leave at least one counted",
        );
    }
    if j.metrics.is_empty() {
        cx.error(
            &format!("{base}.metrics"),
            "the judge has no metrics",
            "add at least one, e.g. `- name: latency\n  template: request-duration\n  direction: increase`",
        );
    }
    let mut names = BTreeSet::new();
    let mut metrics = Vec::new();
    for (i, m) in j.metrics.iter().enumerate() {
        let field = format!("{base}.metrics[{i}]");
        if !names.insert(m.name.as_str()) {
            cx.error(
                &format!("{field}.name"),
                format!("metric `{}` appears twice in the judge", m.name),
                "give each judged metric its own name",
            );
        }
        let before = cx.errors;
        let src = source(
            cx,
            &field,
            &m.name,
            (&m.template, m.provider, &m.query),
            refs,
        );
        if let Some(t) = m.tolerance
            && !(t >= 0.0 && t.is_finite())
        {
            cx.error(
                &format!("{field}.tolerance"),
                format!("tolerance {t} is negative"),
                "a fraction of the shift, e.g. 0.25",
            );
        }
        if cx.errors > before {
            continue;
        }
        let (Some(provider), Some(query)) = (src.provider, src.query) else {
            continue;
        };
        let mut spec = crate::core::judge::MetricSpec::new(m.name.clone());
        spec.direction = m.direction.unwrap_or_default();
        spec.tolerance = m.tolerance.unwrap_or(crate::core::judge::TOLERANCE);
        spec.allowed_increase = m
            .allowed_increase
            .unwrap_or(crate::core::judge::ALLOWED_CHANGE);
        spec.allowed_decrease = m
            .allowed_decrease
            .unwrap_or(crate::core::judge::ALLOWED_CHANGE);
        spec.critical = m.critical.unwrap_or(false);
        spec.muted = m.muted.unwrap_or(false);
        metrics.push(JudgedMetric {
            provider,
            query,
            spec,
        });
    }
    if cx.errors > start {
        return None;
    }
    let thresholds = crate::core::judge::Thresholds {
        pass: j.pass,
        marginal: j.marginal,
    };
    Some(Metric {
        name: JUDGE_METRIC.to_string(),
        provider: metrics.first()?.provider,
        query: String::new(),
        success: Condition::parse(&format!("result >= {}", j.pass)).ok(),
        failure: Condition::parse(&format!("result < {}", j.marginal)).ok(),
        min_samples: None,
        samples_query: None,
        judge: Some(Box::new(Judge {
            thresholds,
            confidence,
            step,
            min_samples,
            metrics,
        })),
        hook: None,
    })
}

fn window(cx: &mut Cx<'_>, w: &spec::Window) -> Option<Window> {
    let timezone = match &w.timezone {
        None => Some(chrono_tz::UTC),
        Some(name) => match name.parse::<chrono_tz::Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                cx.error(
                    "spec.window.timezone",
                    format!("unknown time zone `{name}`"),
                    "use an IANA time zone name, e.g. `UTC`, `Europe/Berlin`, `America/New_York`",
                );
                None
            }
        },
    };
    let schedules = match crontab(&w.cron) {
        Ok(s) => Some(s),
        Err(msg) => {
            cx.error(
                "spec.window.cron",
                format!("bad cron expression `{}`: {msg}", w.cron),
                "five fields: minute hour day-of-month month day-of-week, e.g. \
                 `* 9-16 * * Mon-Fri` for weekdays 09:00-16:59",
            );
            None
        }
    };
    let window = Window {
        source: w.cron.clone(),
        schedules: schedules?,
        timezone: timezone?,
    };
    Some(window)
}

/// Parses a five-field crontab expression into the `cron` crate's seven-field form, keeping
/// crontab's meaning where the crate differs:
/// - day-of-week numbers (0 or 7 = Sunday, 1 = Monday) are translated to names, because the
///   crate numbers them from 1 = Sunday and would silently shift every day by one;
/// - with both day fields restricted, crontab matches either (`* * 1 * Mon` is the 1st *and*
///   every Monday); the crate would need both, so that gives two schedules.
fn crontab(expr: &str) -> Result<Vec<cron::Schedule>, String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!("expected 5 fields, found {}", fields.len()));
    }
    let dow = crontab_dow(fields[4])?;
    let full = format!(
        "0 {} {} {} {} {} *",
        fields[0], fields[1], fields[2], fields[3], dow
    );
    let parsed = full.parse::<cron::Schedule>().map_err(|_| {
        // The crate's error names no field: find the one that fails on its own.
        const NAMES: [(&str, &str); 5] = [
            ("minute", "0-59"),
            ("hour", "0-23"),
            ("day of month", "1-31"),
            ("month", "1-12 or Jan-Dec"),
            ("day of week", "0-7 or Sun-Sat"),
        ];
        (0..5)
            .find(|&i| {
                let mut alone = ["*"; 5];
                alone[i] = if i == 4 { dow.as_str() } else { fields[i] };
                format!("0 {} *", alone.join(" "))
                    .parse::<cron::Schedule>()
                    .is_err()
            })
            .map(|i| {
                format!(
                    "{} field `{}` is not valid ({})",
                    NAMES[i].0, fields[i], NAMES[i].1
                )
            })
            .unwrap_or_else(|| "the fields never match together".to_string())
    })?;
    let restricted = |f: &str| f != "*" && f != "?";
    if !(restricted(fields[2]) && restricted(fields[4])) {
        return Ok(vec![parsed]);
    }
    let [min, hour, dom, month, _] = [fields[0], fields[1], fields[2], fields[3], fields[4]];
    [
        format!("0 {min} {hour} {dom} {month} * *"),
        format!("0 {min} {hour} * {month} {dow} *"),
    ]
    .iter()
    .map(|e| e.parse::<cron::Schedule>().map_err(|e| e.to_string()))
    .collect()
}

fn crontab_dow(field: &str) -> Result<String, String> {
    const NAMES: [&str; 8] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let name = |s: &str| -> Result<String, String> {
        match s.parse::<usize>() {
            Ok(n) if n < NAMES.len() => Ok(NAMES[n].to_string()),
            Ok(n) => Err(format!("day of week {n} is not 0-7")),
            Err(_) => Ok(s.to_string()),
        }
    };
    field
        .split(',')
        .map(|item| {
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (item, None),
            };
            let range = match range.split_once('-') {
                // `5-7` (Fri-Sun) wraps past Saturday: split it in two.
                Some((a, "7")) if step.is_none() => format!("{}-Sat,Sun", name(a)?),
                Some((a, b)) => format!("{}-{}", name(a)?, name(b)?),
                None if range == "*" || range == "?" => range.to_string(),
                None => name(range)?,
            };
            Ok(match step {
                Some(s) => format!("{range}/{s}"),
                None => range,
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map(|items| items.join(","))
}

/// Validates sources with no controller configuration, for tests and examples.
pub fn validate_texts(sources: &[(&str, &str)]) -> (Catalog, Vec<Diagnostic>) {
    let sources: Vec<Source> = sources
        .iter()
        .map(|(f, t)| Source {
            file: f.to_string(),
            text: t.to_string(),
        })
        .collect();
    validate(&sources, &Known::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    #[test]
    fn crontab_days_keep_their_meaning() {
        let matches = |expr: &str, t| crontab(expr).unwrap().iter().any(|s| s.includes(t));
        let at = |m, d| chrono::Utc.with_ymd_and_hms(2026, m, d, 10, 0, 0).unwrap();
        let (sunday, monday) = (at(11, 22), at(11, 23));
        // 1-5 is Monday to Friday in crontab.
        assert!(matches("* 9-16 * * 1-5", monday));
        assert!(!matches("* 9-16 * * 1-5", sunday));
        assert!(matches("* * * * 0", sunday));
        assert!(matches("* * * * 5-7", sunday));
        assert!(matches("* * * * Mon-Fri", monday));
        // Both day fields restricted: either matches, as in crontab. 1 March 2026 is a Sunday.
        assert!(matches("* * 1 * Mon", at(3, 1)));
        assert!(matches("* * 1 * Mon", at(3, 2)));
        assert!(!matches("* * 1 * Mon", at(3, 3)));
        assert!(crontab("* * * * 8").is_err());
        assert!(crontab("* * * *").is_err());
    }
}
