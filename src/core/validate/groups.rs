//! Rollout groups in the spec: each `kind: RolloutGroup` document is read on its own (with the
//! positions of its members, so the document can be dropped), then checked against the
//! rollouts: members no document defines, a rollout in two groups, `dependsOn` that is not a
//! member or closes a cycle, lockstep members that do not set the same weights. A group with
//! any error, or with a member that is invalid, holds every member: a release that cannot move
//! as one does not move at all.

use std::collections::BTreeMap;

use super::{Cx, Site, check_name, duplicate, read};
use crate::core::diag::{Diagnostic, Position};
use crate::core::model::{
    Catalog, Criterion, Field, Group, GroupAffinity, Match, Member, Pattern, Route, SIDE_HEADER,
    Wait,
};
use crate::core::spec::{self, Dependency, GroupOrder};
use crate::core::yaml::Document;

/// A group as written, with where each part is.
pub(super) struct Draft<'a> {
    file: &'a str,
    name: String,
    order: GroupOrder,
    members: Vec<DraftMember>,
    /// `spec.affinity`, with where its `from` is and where the block is.
    affinity: Option<(spec::Affinity, Position, Position)>,
}

struct DraftMember {
    rollout: String,
    /// Where its `rollout` is.
    at: Position,
    field: String,
    depends_on: Vec<(Dependency, Position, String)>,
}

/// What the group checks need of a valid rollout: its step count and the weights its
/// `setWeight` steps set, in order.
#[derive(Clone, Debug, Default)]
pub(super) struct Shape {
    pub steps: usize,
    pub weights: Vec<u8>,
}

/// Reads one group document; `None` when it does not deserialise or its name is unusable
/// (the problems are in `diags`). `names` holds the groups read so far, for duplicates.
pub(super) fn read_group<'a>(
    file: &'a str,
    doc: &Document<'_>,
    names: &mut BTreeMap<String, Site<'a>>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Draft<'a>> {
    let paths = doc.paths();
    let g = read::<spec::RolloutGroupDoc>(doc, &paths, file, diags)?;
    let mut cx = Cx::new(file, doc, &paths, diags);
    if !check_name(&mut cx, &g.metadata.name)
        || duplicate(&mut cx, "rollout group", &g.metadata.name, names).is_some()
    {
        return None;
    }
    names.insert(
        g.metadata.name.clone(),
        (file, paths.value("metadata.name")),
    );
    if g.spec.members.is_empty() {
        cx.error(
            "spec.members",
            format!("rollout group `{}` has no members", g.metadata.name),
            "name the rollouts released together: `members: [{rollout: checkout}, ...]`",
        );
        return None;
    }
    let members = g
        .spec
        .members
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let field = format!("spec.members[{i}].rollout");
            let depends_on = m
                .depends_on
                .into_iter()
                .enumerate()
                .map(|(j, d)| {
                    let f = format!("spec.members[{i}].dependsOn[{j}]");
                    (d, paths.value(&f), f)
                })
                .collect();
            DraftMember {
                rollout: m.rollout,
                at: paths.value(&field),
                field,
                depends_on,
            }
        })
        .collect();
    Some(Draft {
        file,
        name: g.metadata.name,
        order: g.spec.order,
        members,
        affinity: g.spec.affinity.map(|a| {
            (
                a,
                paths.value("spec.affinity.from"),
                paths.value("spec.affinity"),
            )
        }),
    })
}

/// Checks every group against the rollouts (`defined`: every rollout name a document gives,
/// valid or not; `shapes`: the valid ones), adds what it finds to `diags`, holds the members of
/// groups that cannot run (in `catalog.invalid`) and puts the others in `catalog.groups`.
pub(super) fn check(
    drafts: Vec<Draft<'_>>,
    defined: &BTreeMap<String, Site<'_>>,
    shapes: &BTreeMap<String, Shape>,
    diags: &mut Vec<Diagnostic>,
    catalog: &mut Catalog,
) {
    // Each group's own errors, as one-line diagnostics, by group.
    let mut errors: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut error = |group: &str, d: Diagnostic, diags: &mut Vec<Diagnostic>| {
        errors
            .entry(group.to_string())
            .or_default()
            .push(d.one_line());
        diags.push(d);
    };

    // A rollout in two groups: an error at each membership, naming the others.
    let mut memberships: BTreeMap<&str, Vec<(&Draft<'_>, &DraftMember)>> = BTreeMap::new();
    for g in &drafts {
        for m in &g.members {
            let places = memberships.entry(&m.rollout).or_default();
            // Twice in one group is its own error, below.
            if !places.iter().any(|(o, _)| std::ptr::eq(*o, g)) {
                places.push((g, m));
            }
        }
    }
    for (rollout, places) in &memberships {
        if places.len() < 2 {
            continue;
        }
        for (g, m) in places {
            let others: Vec<String> = places
                .iter()
                .filter(|(o, _)| !std::ptr::eq(*o, *g))
                .map(|(o, om)| {
                    format!("`{}` at {}:{}:{}", o.name, o.file, om.at.line, om.at.column)
                })
                .collect();
            let d = Diagnostic::error(
                g.file,
                m.at,
                &m.field,
                format!(
                    "rollout `{rollout}` is a member of group `{}` and of {}",
                    g.name,
                    others.join(" and ")
                ),
            )
            .with_help(
                "a rollout is released with one group: one revision, one revert; remove it from \
                 all groups but one",
            );
            error(&g.name, d, diags);
        }
    }

    for g in &drafts {
        let members: BTreeMap<&str, &DraftMember> =
            g.members.iter().map(|m| (m.rollout.as_str(), m)).collect();
        for m in &g.members {
            if !defined.contains_key(&m.rollout) {
                let known: Vec<&str> = defined.keys().map(String::as_str).collect();
                let d = Diagnostic::error(
                    g.file,
                    m.at,
                    &m.field,
                    format!(
                        "group `{}` names rollout `{}`, which no document defines",
                        g.name, m.rollout
                    ),
                )
                .with_help(did_you_mean(&m.rollout, &known));
                error(&g.name, d, diags);
            }
        }
        // The same rollout twice in one group.
        let mut seen: BTreeMap<&str, &DraftMember> = BTreeMap::new();
        for m in &g.members {
            if let Some(first) = seen.insert(&m.rollout, m) {
                let d = Diagnostic::error(
                    g.file,
                    m.at,
                    &m.field,
                    format!(
                        "rollout `{}` is named twice in group `{}`",
                        m.rollout, g.name
                    ),
                )
                .with_help(format!(
                    "first named at {}:{}:{}",
                    g.file, first.at.line, first.at.column
                ));
                error(&g.name, d, diags);
            }
        }
        for m in &g.members {
            for (dep, at, field) in &m.depends_on {
                let target = dep.rollout();
                let problem = if g.order == GroupOrder::Lockstep {
                    Some((
                        format!(
                            "member `{}` of lockstep group `{}` has dependsOn",
                            m.rollout, g.name
                        ),
                        "lockstep members move together; write `order: ordered` for members \
                         that start after others"
                            .to_string(),
                    ))
                } else if target == m.rollout {
                    Some((
                        format!("member `{}` depends on itself", m.rollout),
                        "remove it from its own dependsOn".to_string(),
                    ))
                } else if !members.contains_key(target) {
                    Some((
                        format!(
                            "member `{}` depends on `{target}`, which is not a member of group `{}`",
                            m.rollout, g.name
                        ),
                        "a member waits only for members of its own group; add it to `members`"
                            .to_string(),
                    ))
                } else if let Dependency::Step(s) = dep
                    && let Some(shape) = shapes.get(target)
                    && s.step as usize > shape.steps
                {
                    Some((
                        format!(
                            "member `{}` waits for step {} of `{target}`, which has {} steps",
                            m.rollout, s.step, shape.steps
                        ),
                        "steps count from 1, as `canaryd status` shows them (`step 2/4`)"
                            .to_string(),
                    ))
                } else {
                    None
                };
                if let Some((message, help)) = problem {
                    let d = Diagnostic::error(g.file, *at, field, message).with_help(help);
                    error(&g.name, d, diags);
                }
            }
        }
        if let Some((m, field, at, cycle)) = cycle(g, &members) {
            let d = Diagnostic::error(
                g.file,
                at,
                field,
                format!(
                    "the dependsOn of group `{}` go round in a cycle: {}",
                    g.name,
                    cycle.join(" → ")
                ),
            )
            .with_help(format!(
                "no member of a cycle could ever start; remove one of its edges (for example \
                 `{m}`'s)"
            ));
            error(&g.name, d, diags);
        }
        if let Some((a, from_at, at)) = &g.affinity {
            let header = a.header.as_deref().unwrap_or(SIDE_HEADER);
            let token = |c: char| c.is_ascii_alphanumeric() || "-_".contains(c);
            let problem = if g.order != GroupOrder::Lockstep {
                Some((
                    "spec.affinity",
                    *at,
                    format!(
                        "group `{}` keeps users on one side but is not lockstep",
                        g.name
                    ),
                    "affinity needs every member at the same step: a user on the canary of one \
                     must find a canary in the others; write `order: lockstep`",
                ))
            } else if !members.contains_key(a.from.as_str()) {
                Some((
                    "spec.affinity.from",
                    *from_at,
                    format!(
                        "affinity.from `{}` is not a member of group `{}`",
                        a.from, g.name
                    ),
                    "name the member whose router is the first hop: it picks each user's side",
                ))
            } else if header.is_empty() || !header.chars().all(token) {
                Some((
                    "spec.affinity.header",
                    *at,
                    format!("`{header}` is not a header name"),
                    "letters, digits, `-` and `_`; the default is X-Canaryd-Side",
                ))
            } else {
                None
            };
            if let Some((field, pos, message, help)) = problem {
                let d = Diagnostic::error(g.file, pos, field, message).with_help(help);
                error(&g.name, d, diags);
            }
        }
        if g.order == GroupOrder::Lockstep {
            let mut first: Option<(&DraftMember, &Shape)> = None;
            for m in &g.members {
                let Some(shape) = shapes.get(&m.rollout) else {
                    continue;
                };
                let Some((f, fs)) = first else {
                    first = Some((m, shape));
                    continue;
                };
                if shape.weights != fs.weights {
                    let d = Diagnostic::error(
                        g.file,
                        m.at,
                        &m.field,
                        format!(
                            "lockstep member `{}` sets weights {} but `{}` sets {}",
                            m.rollout,
                            weights(&shape.weights),
                            f.rollout,
                            weights(&fs.weights)
                        ),
                    )
                    .with_help(
                        "in lockstep every member sets the same weights in the same order, so \
                         that all are at one step's weight; write `order: ordered` for members \
                         that step differently",
                    );
                    error(&g.name, d, diags);
                }
            }
        }
    }

    // Hold every member of a group that cannot run as one.
    for g in drafts {
        let mut why: Vec<String> = errors.remove(&g.name).unwrap_or_default();
        for m in &g.members {
            let invalid =
                catalog.invalid.contains_key(&m.rollout) || !shapes.contains_key(&m.rollout);
            if invalid && defined.contains_key(&m.rollout) {
                why.push(format!(
                    "{}: group `{}` is held: its member `{}` is invalid",
                    g.file, g.name, m.rollout
                ));
            }
        }
        if why.is_empty() {
            catalog.groups.push(Group {
                affinity: g.affinity.map(|(a, _, _)| GroupAffinity {
                    header: a.header.unwrap_or_else(|| SIDE_HEADER.to_string()),
                    from: a.from,
                }),
                name: g.name,
                file: g.file.to_string(),
                order: g.order,
                members: g
                    .members
                    .into_iter()
                    .map(|m| Member {
                        rollout: m.rollout,
                        waits_for: m
                            .depends_on
                            .into_iter()
                            .map(|(d, _, _)| match d {
                                Dependency::Promoted(r) => Wait {
                                    rollout: r,
                                    step: None,
                                },
                                Dependency::Step(s) => Wait {
                                    rollout: s.rollout,
                                    step: Some((s.step as usize).saturating_sub(1)),
                                },
                            })
                            .collect(),
                    })
                    .collect(),
            });
            continue;
        }
        for m in &g.members {
            if defined.contains_key(&m.rollout) {
                let held = catalog.invalid.entry(m.rollout.clone()).or_default();
                for line in &why {
                    if !held.contains(line) {
                        held.push(line.clone());
                    }
                }
            }
        }
    }
    catalog.groups.sort_by(|a, b| a.name.cmp(&b.name));
}

/// The first cycle of `dependsOn` edges in `g` (among its members), as the member whose edge
/// closes it, that edge's field and position, and the names around the cycle.
fn cycle<'d>(
    g: &'d Draft<'_>,
    members: &BTreeMap<&str, &'d DraftMember>,
) -> Option<(&'d str, &'d str, Position, Vec<String>)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit<'d>(
        m: &'d DraftMember,
        members: &BTreeMap<&str, &'d DraftMember>,
        marks: &mut BTreeMap<&'d str, Mark>,
        path: &mut Vec<&'d str>,
    ) -> Option<(&'d str, &'d str, Position, Vec<String>)> {
        marks.insert(&m.rollout, Mark::Open);
        path.push(&m.rollout);
        for (dep, at, field) in &m.depends_on {
            let Some(next) = members.get(dep.rollout()) else {
                continue;
            };
            if std::ptr::eq(*next, m) {
                continue; // a self-dependency is reported on its own
            }
            match marks
                .get(next.rollout.as_str())
                .copied()
                .unwrap_or(Mark::New)
            {
                Mark::Open => {
                    let start = path.iter().position(|r| *r == next.rollout)?;
                    let mut names: Vec<String> =
                        path[start..].iter().map(|r| (*r).to_string()).collect();
                    names.push(next.rollout.clone());
                    return Some((&m.rollout, field, *at, names));
                }
                Mark::New => {
                    if let Some(found) = visit(next, members, marks, path) {
                        return Some(found);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(&m.rollout, Mark::Done);
        None
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    for m in &g.members {
        if marks.get(m.rollout.as_str()).copied().unwrap_or(Mark::New) == Mark::New {
            let mut path = Vec::new();
            if let Some(found) = visit(m, members, &mut marks, &mut path) {
                return Some(found);
            }
        }
    }
    None
}

fn weights(ws: &[u8]) -> String {
    if ws.is_empty() {
        return "none".to_string();
    }
    let ws: Vec<String> = ws.iter().map(|w| format!("{w}%")).collect();
    ws.join(", ")
}

/// A hint naming the closest known rollout, if one is close.
fn did_you_mean(name: &str, known: &[&str]) -> String {
    let close = known
        .iter()
        .map(|k| (crate::core::yaml::edit_distance(name, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min();
    match close {
        Some((_, k)) => format!("did you mean `{k}`? members are rollouts' `metadata.name`"),
        None => "members are rollouts' `metadata.name`, defined in this repository".to_string(),
    }
}

/// Version affinity: every member of a group with `affinity` but its first hop gets the routes
/// that keep a request on the side the first hop chose (`<service>=canary` to its canary,
/// `<service>=stable` to its stable), in force while it is in flight.
pub(super) fn follow(catalog: &mut Catalog) {
    for g in catalog.groups.clone() {
        let Some(a) = &g.affinity else { continue };
        let Some(first) = catalog.index_of(&a.from) else {
            continue;
        };
        let service = catalog.rollouts[first].target().service.clone();
        for m in g.members.iter().filter(|m| m.rollout != a.from) {
            let Some(i) = catalog.index_of(&m.rollout) else {
                continue;
            };
            let r = &mut catalog.rollouts[i];
            let Some(canary) = r.target().canary.clone() else {
                continue;
            };
            let stable = r.target().stable.name.clone();
            let route = |side: &str, backend: String| Route {
                name: format!("affinity-{side}"),
                matches: vec![Match {
                    all: vec![Criterion {
                        on: Field::Header,
                        name: a.header.clone(),
                        value: Pattern::Exact(format!("{service}={side}")),
                    }],
                }],
                backend,
            };
            r.follow = vec![route("canary", canary.name), route("stable", stable)];
        }
    }
}
