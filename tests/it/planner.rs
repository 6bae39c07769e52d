//! The planner's rules as table tests over a simulated router and clock, and properties that no sequence of inputs may break.
//!
//! Every test drives [`canaryd::core::plan::plan`] the way the daemon does: plan, record the status,
//! apply the traffic to the router (unless it is down), read the router back on the next plan.
//! Time only moves when a test moves it.

use std::collections::BTreeMap;
use std::time::Duration;

use canaryd::core::analysis::{self, Evidence, Outcome};
use canaryd::core::group::GroupGate;
use canaryd::core::model::{Metric, Observed, Revision, Rollout, Step, Traffic, Weight};
use canaryd::core::plan::{
    self, Action, AnalysisRef, Due, Gate, GateAction, Inputs, Plan, Revert, Sample,
};
use canaryd::core::progress::{Drift, DriftAction, PauseReason, Progress, Run, Status};
use canaryd::core::validate::validate_texts;
use chrono::{DateTime, TimeZone as _, Utc};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

const ROUTERS: &str = "\
apiVersion: canaryd.dev/v1alpha1
kind: Router
metadata:
  name: edge
spec:
  kind: embedded
  listen: 127.0.0.1:8080
  backends: {blue: \"http://127.0.0.1:9001\", green: \"http://127.0.0.1:9002\"}
";

/// The service `web` on router `edge`: stable `blue` at 1.0, canary `green` at 1.1.
const BACKENDS: &str = "\
router: edge
service: web
stable: {name: blue, version: '1.0'}
canary: {name: green, version: '1.1'}
";

/// The same service with no canary: all traffic to `blue`.
const NO_CANARY: &str = "\
router: edge
service: web
stable: {name: blue, version: '1.0'}
";

/// `basic.yaml`'s steps: 10 % for five minutes, 50 % for ten, then promote.
const BASIC_STEPS: &str = "steps: [{setWeight: 10}, {pause: {duration: 5m}}, {setWeight: 50}, {pause: {duration: 10m}}]\n";

/// A rollout `web` whose `spec:` is `body` (dedented), validated with router `edge` beside it.
fn spec(body: &str) -> Rollout {
    let mut text = String::from(
        "apiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: web\nspec:\n",
    );
    for line in dedent(body).lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    let (catalog, diags) = validate_texts(&[("routers.yaml", ROUTERS), ("web.yaml", &text)]);
    let errors: Vec<String> = diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.one_line())
        .collect();
    assert!(
        errors.is_empty(),
        "the test's spec is invalid:\n{text}\n{errors:#?}"
    );
    catalog
        .rollouts
        .into_iter()
        .next()
        .expect("the spec validates to one rollout")
}

/// A rollout of canary `green` over stable `blue`, with `rest` (steps and options) added.
fn canary(rest: &str) -> Rollout {
    spec(&format!("{BACKENDS}{}", dedent(rest)))
}

/// Strips the common indentation of `s`, so specs can be written indented in raw strings.
fn dedent(s: &str) -> String {
    let s = s.trim_start_matches('\n');
    let indent = s
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    s.lines()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn pct(n: u8) -> Weight {
    Weight::new(i64::from(n)).expect("a percentage")
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn mins(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}

/// Monday 2 March 2026, 10:00 UTC: inside a weekday office-hours window.
fn monday_10am() -> DateTime<Utc> {
    utc(2026, 3, 2, 10, 0)
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .expect("a valid time")
}

fn observed(weights: &[(&str, u32)]) -> Observed {
    Observed::weights(weights.iter().map(|(n, w)| (n.to_string(), *w)).collect())
}

/// What the metrics provider answered: a value, no data (`Ok(None)`), or an error.
type Answer = Result<Option<f64>, String>;

fn value(v: f64) -> Answer {
    Ok(Some(v))
}

const NO_DATA: Answer = Ok(None);

fn unreachable_provider() -> Answer {
    Err("connection refused".to_string())
}

/// The metric a plan asked to measure, looked up in the spec it was planned with.
fn metric<'a>(spec: &'a Rollout, due: &Due) -> &'a Metric {
    let analysis = match due.analysis {
        AnalysisRef::Step(k) => match &spec.steps[k] {
            Step::Analysis(a) => a,
            other => panic!("plan asked to measure step {k}, which is `{other}`"),
        },
        AnalysisRef::Background => spec
            .background
            .as_ref()
            .expect("plan asked for a background measurement without a background analysis"),
    };
    analysis
        .metrics
        .iter()
        .find(|m| m.name == due.metric)
        .expect("plan asked for a metric the analysis names")
}

/// One rollout under test: the spec in Git, the status recorded in Git, a router, a clock and
/// the promote/abort commits made so far.
struct World {
    spec: Rollout,
    status: Status,
    /// The router's weights for the service (percentages).
    router: Observed,
    router_up: bool,
    now: DateTime<Utc>,
    /// Every promote/abort commit, oldest first; plans see those after `status.last_gate`.
    gates: Vec<Gate>,
    /// Measurements taken since the last plan, for the next one.
    samples: Vec<Sample>,
    /// The measurements taken last, to replay them.
    taken: Vec<Sample>,
    last: Option<Plan>,
    /// Every traffic the router was given, oldest first.
    applied: Vec<Traffic>,
}

impl World {
    /// A new rollout on a router whose service has both backends, all traffic on stable.
    fn new(spec: Rollout) -> World {
        World::on_router(spec, observed(&[("blue", 100), ("green", 0)]))
    }

    fn on_router(spec: Rollout, router: Observed) -> World {
        World {
            status: Status::new(&spec.name),
            spec,
            router,
            router_up: true,
            now: monday_10am(),
            gates: Vec::new(),
            samples: Vec::new(),
            taken: Vec::new(),
            last: None,
            applied: Vec::new(),
        }
    }

    /// Plans, records the status, applies the traffic: one turn of the daemon's loop.
    fn step(&mut self) -> Plan {
        self.turn(true)
    }

    /// Plans and records the status, then dies before touching the router (kill -9).
    fn crash_before_apply(&mut self) -> Plan {
        self.turn(false)
    }

    fn turn(&mut self, apply: bool) -> Plan {
        let plan = self.plan_with(None);
        self.take(plan, apply)
    }

    /// The plan for now, with what the rollout's group allows; changes nothing.
    fn plan_with(&self, group: Option<&GroupGate>) -> Plan {
        let live = self.router_up.then(|| self.router.clone());
        let gates = self.pending_gates();
        let inputs = Inputs {
            spec: &self.spec,
            recorded: &self.status,
            live: live.as_ref(),
            samples: &self.samples,
            gates: &gates,
            now: self.now,
            group,
        };
        let plan = plan::plan(inputs);
        // Pure: `canaryd plan` and the daemon, given the same inputs, cannot disagree.
        assert_eq!(
            plan::plan(inputs),
            plan,
            "the same inputs planned twice differ"
        );
        plan
    }

    /// Records `plan`'s status and, when `apply`, gives the router its traffic.
    fn take(&mut self, plan: Plan, apply: bool) -> Plan {
        self.samples.clear();
        self.status = plan.status.clone();
        if apply
            && self.router_up
            && let Some(t) = &plan.traffic
        {
            self.apply(t);
        }
        self.last = Some(plan.clone());
        plan
    }

    /// The spec became invalid: plans with [`plan::plan_invalid`], as the daemon does.
    fn step_invalid(&mut self, error: &str) -> Plan {
        let plan = plan::plan_invalid(&self.status, vec![error.to_string()]);
        self.status = plan.status.clone();
        if let Some(t) = &plan.traffic {
            self.apply(t);
        }
        self.last = Some(plan.clone());
        plan
    }

    /// The router takes `t` whole, routes and sticky key included (as the embedded router).
    fn apply(&mut self, t: &Traffic) {
        self.applied.push(t.clone());
        self.router = Observed {
            backends: t
                .backends
                .iter()
                .map(|(name, w)| (name.clone(), u32::from(w.get())))
                .collect(),
            routes: t.routes.clone(),
            sticky: t.sticky.clone(),
        };
    }

    /// Plans until a plan changes nothing or asks for measurements (the daemon re-plans after
    /// every plan that changed something).
    fn settle(&mut self) -> Plan {
        for _ in 0..20 {
            let before = self.status.clone();
            let plan = self.step();
            if !plan.has_changes(&before) || !plan.measure.is_empty() {
                return plan;
            }
        }
        panic!(
            "the planner did not settle in 20 plans; last: {:#?}",
            self.last
        );
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Moves the clock to the plan's wake time and plans.
    fn wake(&mut self) -> Plan {
        let at = self
            .last
            .as_ref()
            .and_then(|p| p.wake)
            .expect("the last plan asked to be woken");
        self.now = at;
        self.step()
    }

    fn commit(&mut self, id: &str, action: GateAction) {
        self.gates.push(Gate {
            id: id.to_string(),
            action,
        });
    }

    fn pending_gates(&self) -> Vec<Gate> {
        let after = match &self.status.last_gate {
            Some(id) => self
                .gates
                .iter()
                .position(|g| &g.id == id)
                .map_or(0, |i| i + 1),
            None => 0,
        };
        self.gates[after..].to_vec()
    }

    /// Answers every measurement the last plan asked for with `answer`, then plans with them.
    fn measure(&mut self, answer: Answer) -> Plan {
        self.measure_each(|_| answer.clone())
    }

    fn measure_each(&mut self, answer: impl Fn(&str) -> Answer) -> Plan {
        self.take_measurements(answer);
        self.step()
    }

    /// Takes the measurements the last plan asked for, for the next plan to fold in.
    fn take_measurements(&mut self, answer: impl Fn(&str) -> Answer) {
        let due = self
            .last
            .as_ref()
            .map(|p| p.measure.clone())
            .unwrap_or_default();
        assert!(
            !due.is_empty(),
            "the last plan asked for no measurement: {:#?}",
            self.last
        );
        self.samples = due
            .iter()
            .map(|d| Sample {
                revision: self.spec.revision.clone(),
                analysis: d.analysis,
                metric: d.metric.clone(),
                measurement: analysis::evaluate(
                    metric(&self.spec, d),
                    answer(&d.metric).map(analysis::Reading::value),
                    self.now,
                ),
            })
            .collect();
        self.taken = self.samples.clone();
    }

    /// Someone sets the router's weights by hand.
    fn hand_set(&mut self, weights: &[(&str, u32)]) {
        self.router = observed(weights);
    }

    /// The router's weights, as `blue=90 green=10`.
    fn router(&self) -> String {
        self.router
            .backends
            .iter()
            .map(|(n, w)| format!("{n}={w}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn phase(&self) -> &'static str {
        self.status.progress.phase()
    }

    fn run(&self) -> &Run {
        self.status
            .progress
            .run()
            .unwrap_or_else(|| panic!("no rollout in flight: {:#?}", self.status.progress))
    }

    /// Drives a fresh rollout to its step `k`, entered and verified; `k` must be a step that
    /// waits (a pause or an analysis), since a verified `setWeight` moves straight on.
    fn at_step(mut self, k: usize) -> World {
        for _ in 0..50 {
            let plan = self.settle();
            if self
                .status
                .progress
                .run()
                .is_some_and(|r| r.step == k && r.verified)
            {
                // An analysis takes its first measurement one interval in: go there.
                if matches!(self.status.progress, Progress::Analysing { .. })
                    && plan.measure.is_empty()
                    && plan.wake.is_some()
                {
                    self.wake();
                }
                return self;
            }
            if !plan.measure.is_empty() {
                self.measure(value(0.0));
            } else if let Some(at) = plan.wake {
                self.now = at;
            } else {
                panic!("stuck before step {k}: {:#?}", plan);
            }
        }
        panic!("never reached step {k}");
    }
}

fn names(due: &[Due]) -> Vec<(AnalysisRef, &str)> {
    due.iter()
        .map(|d| (d.analysis, d.metric.as_str()))
        .collect()
}

fn reason(action: &Action) -> &str {
    match action {
        Action::Wait { reason } | Action::Hold { reason } | Action::Reapply { reason } => reason,
        other => panic!("expected an action with a reason, got {other:?}"),
    }
}

fn evidence(action: &Action) -> &Evidence {
    match action {
        Action::Abort { evidence } => evidence,
        other => panic!("expected an abort, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Steps
// ---------------------------------------------------------------------------------------------

#[test]
fn a_merged_canary_gets_its_first_weight() {
    let mut w = World::new(canary(BASIC_STEPS));
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 0,
            weight: pct(10)
        }
    );
    assert_eq!(w.router(), "blue=90 green=10");
    assert_eq!(w.phase(), "progressing");
    // Write-ahead: the status names the weight before it is known to have taken.
    let run = w.run();
    assert_eq!((run.step, run.weight, run.verified), (0, pct(10), false));
    assert_eq!(run.revision, w.spec.revision);
    assert_eq!(run.started_at, monday_10am());

    // The next plan reads it back and moves on to the pause.
    let p = w.step();
    assert!(w.run().verified);
    assert_eq!(p.action, Action::Pause { step: 1 });
    assert_eq!(p.traffic, None, "the pause keeps the weight");
    assert_eq!(p.wake, Some(monday_10am() + mins(5)));
}

#[test]
fn a_timed_pause_holds_until_its_duration_passes() {
    let mut w = World::new(canary(BASIC_STEPS)).at_step(1);
    let entered = w.now;
    w.advance(mins(5) - secs(1));
    let p = w.step();
    assert!(matches!(p.action, Action::Wait { .. }), "{:?}", p.action);
    assert_eq!(reason(&p.action), "paused until 2026-03-02 10:05:00 UTC");
    assert_eq!(p.wake, Some(entered + mins(5)));
    assert_eq!(w.router(), "blue=90 green=10");

    let p = w.wake();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 2,
            weight: pct(50)
        }
    );
    assert_eq!(w.router(), "blue=50 green=50");
}

#[test]
fn a_manual_pause_waits_for_a_promote_commit() {
    let mut w = World::new(canary(
        "steps: [{setWeight: 20}, {pause: {}}, {setWeight: 60}]",
    ))
    .at_step(1);
    for _ in 0..3 {
        w.advance(Duration::from_secs(86_400));
        let p = w.step();
        assert_eq!(
            reason(&p.action),
            "paused until promoted (canaryd promote web)"
        );
        assert_eq!(p.wake, None, "nothing but a commit can end a manual pause");
        assert_eq!(w.router(), "blue=80 green=20");
    }
    w.commit("c0ffee1", GateAction::Promote);
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 2,
            weight: pct(60)
        }
    );
    assert_eq!(w.router(), "blue=40 green=60");
    assert_eq!(w.status.last_gate.as_deref(), Some("c0ffee1"));
}

#[test]
fn a_promote_commit_is_honoured_once() {
    let mut w = World::new(canary(
        "steps: [{setWeight: 10}, {pause: {}}, {setWeight: 30}, {pause: {}}, {setWeight: 60}, {pause: {}}]",
    ))
    .at_step(1);
    w.commit("c1", GateAction::Promote);
    w.settle();
    assert_eq!(
        (w.run().step, w.router()),
        (3, "blue=70 green=30".to_string())
    );
    // The same commit is still on the branch: later plans must not honour it again.
    for _ in 0..3 {
        w.advance(mins(1));
        w.step();
    }
    assert_eq!(
        (w.run().step, w.router()),
        (3, "blue=70 green=30".to_string())
    );
    w.commit("c2", GateAction::Promote);
    w.settle();
    assert_eq!(
        (w.run().step, w.router()),
        (5, "blue=40 green=60".to_string())
    );
}

#[test]
fn an_abort_commit_sends_traffic_to_stable_and_opens_a_revert() {
    let mut w = World::new(canary(BASIC_STEPS)).at_step(1);
    w.commit("badc0de", GateAction::Abort);
    let p = w.step();
    let e = evidence(&p.action);
    assert_eq!(e.summary, "aborted by hand in commit badc0de");
    assert_eq!(w.router(), "blue=100 green=0");
    assert_eq!(w.phase(), "aborted");
    assert_eq!(
        p.revert,
        Some(Revert {
            revision: w.spec.revision.clone(),
            evidence: e.clone()
        })
    );
    assert_eq!(w.status.aborted, vec![w.spec.revision.clone()]);
}

#[test]
fn a_promote_made_at_a_set_weight_step_opens_the_next_gate() {
    let mut w = World::new(canary(
        "steps: [{setWeight: 10}, {pause: {}}, {setWeight: 30}, {pause: {}}]",
    ));
    w.commit("c1", GateAction::Promote);
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 0,
            weight: pct(10)
        }
    );
    assert_eq!(
        w.status.last_gate, None,
        "nothing to move past yet: the commit waits"
    );
    w.settle();
    assert_eq!(
        w.router(),
        "blue=70 green=30",
        "the manual pause after 10% was passed"
    );
    assert_eq!(w.status.last_gate.as_deref(), Some("c1"));
    assert_eq!(
        (w.phase(), w.run().step),
        ("paused", 3),
        "and only that one"
    );
}

#[test]
fn the_revert_stays_wanted_while_git_asks_for_the_aborted_revision() {
    let mut w = World::new(canary(BASIC_STEPS)).at_step(1);
    w.commit("badc0de", GateAction::Abort);
    w.step();
    // The daemon died before opening the revert: later plans still ask for it (opening it is
    // idempotent), and leave traffic on stable.
    for _ in 0..2 {
        w.advance(mins(1));
        let p = w.step();
        assert_eq!(
            p.revert.as_ref().map(|r| &r.revision),
            Some(&w.spec.revision)
        );
        assert_eq!(p.traffic, None);
        assert_eq!(w.router(), "blue=100 green=0");
    }
    // The revert is merged: nothing more to revert.
    w.spec = spec(&format!("{NO_CANARY}{BASIC_STEPS}"));
    let p = w.step();
    assert_eq!(p.revert, None);
    assert_eq!(w.phase(), "rolledBack");
}

#[test]
fn the_last_step_promotes_to_100() {
    let mut w = World::new(canary("steps: [{setWeight: 50}]"));
    w.step();
    let p = w.step();
    assert_eq!(p.action, Action::Promote);
    assert_eq!(w.router(), "blue=0 green=100");
    assert_eq!(w.phase(), "promoted");
    assert_eq!(w.status.promoted, vec![w.spec.revision.clone()]);
    // And it stays there: a finished rollout is never run again.
    w.advance(Duration::from_secs(86_400));
    let p = w.step();
    assert_eq!(reason(&p.action), "promoted; traffic matches");
    assert_eq!((p.traffic, p.wake), (None, None));
}

#[test]
fn a_promoted_canary_that_someone_moves_is_put_back_at_100() {
    let mut w = World::new(canary("steps: [{setWeight: 50}]"));
    w.settle();
    w.hand_set(&[("blue", 50), ("green", 50)]);
    let p = w.step();
    assert_eq!(reason(&p.action), "promoted: canary belongs at 100%");
    assert_eq!(w.router(), "blue=0 green=100");
}

#[test]
fn a_spec_without_canary_sends_all_traffic_to_stable() {
    let mut w = World::on_router(
        spec(&format!("{NO_CANARY}{BASIC_STEPS}")),
        observed(&[("blue", 80), ("green", 20)]),
    );
    let p = w.step();
    assert_eq!(p.action, Action::Stable);
    assert_eq!(w.router(), "blue=100 green=0");
    assert_eq!(w.phase(), "stable");
    let p = w.step();
    assert_eq!(reason(&p.action), "no canary; traffic matches");
    assert_eq!(p.traffic, None);
}

#[test]
fn a_canary_equal_to_stable_is_no_canary() {
    let mut w = World::on_router(
        spec(&format!(
            "{NO_CANARY}canary: {{name: blue, version: '1.0'}}\n{BASIC_STEPS}"
        )),
        observed(&[("blue", 100)]),
    );
    let p = w.step();
    assert_eq!(reason(&p.action), "traffic matches");
    assert_eq!(w.phase(), "stable");
}

#[test]
fn a_canary_already_at_100_on_first_sight_is_adopted_not_run_again() {
    let mut w = World::on_router(
        canary(BASIC_STEPS),
        observed(&[("blue", 0), ("green", 100)]),
    );
    let p = w.step();
    assert_eq!(
        reason(&p.action),
        "canary already at 100%: recorded as promoted"
    );
    assert_eq!(p.traffic, None);
    assert_eq!(w.phase(), "promoted");
    assert_eq!(w.router(), "blue=0 green=100");
}

#[test]
fn shorthand_step_weight_goes_up_to_max_weight_then_promotes() {
    let s = canary("stepWeight: 20\nmaxWeight: 50\ninterval: 1m");
    let hold = Step::Pause(Some(mins(1)));
    assert_eq!(
        s.steps,
        vec![
            Step::SetWeight(pct(20)),
            hold.clone(),
            Step::SetWeight(pct(40)),
            hold.clone(),
            Step::SetWeight(pct(50)),
            hold,
        ]
    );
    let mut w = World::new(s);
    let mut seen = Vec::new();
    for _ in 0..10 {
        w.settle();
        let green = w.router.backends["green"];
        if seen.last() != Some(&green) {
            seen.push(green);
        }
        if w.phase() == "promoted" {
            break;
        }
        w.advance(mins(1));
    }
    assert_eq!(seen, vec![20, 40, 50, 100]);
}

#[test]
fn shorthand_step_weights_hold_each_weight_for_the_interval() {
    let mut w = World::new(canary("stepWeights: [1, 5, 25]\ninterval: 30m"));
    w.settle();
    assert_eq!(w.router(), "blue=99 green=1");
    w.advance(mins(29));
    w.settle();
    assert_eq!(w.router(), "blue=99 green=1");
    w.advance(mins(1));
    w.settle();
    assert_eq!(w.router(), "blue=95 green=5");
}

// ---------------------------------------------------------------------------------------------
// Analysis
// ---------------------------------------------------------------------------------------------

/// 20 %, then an analysis step of `errors` (error-rate: success when `result <= 0.01`), then 50 %.
fn analysed(options: &str) -> Rollout {
    canary(&format!(
        "
        steps:
          - setWeight: 20
          - analysis:
              metrics: [{{name: errors, template: error-rate}}]
{}
          - setWeight: 50
        ",
        dedent(options)
            .lines()
            .map(|l| format!("              {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    ))
}

#[test]
fn passing_analysis_advances() {
    let mut w = World::new(analysed("interval: 1m\ncount: 3"));
    w.step();
    let p = w.step();
    assert_eq!(p.action, Action::Analyse { step: 1 });
    // The first measurement comes one interval in, when its window holds this step's traffic.
    assert!(p.measure.is_empty());
    assert_eq!(p.wake, Some(w.now + mins(1)));
    let p = w.wake();
    assert_eq!(names(&p.measure), vec![(AnalysisRef::Step(1), "errors")]);
    let start = w.now;
    for i in 1..3 {
        let p = w.measure(value(0.001));
        assert_eq!(reason(&p.action), "analysing");
        assert_eq!(
            p.wake,
            Some(start + mins(i)),
            "next measurement one interval later"
        );
        assert!(p.measure.is_empty());
        let p = w.wake();
        assert_eq!(names(&p.measure), vec![(AnalysisRef::Step(1), "errors")]);
    }
    let p = w.measure(value(0.001));
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 2,
            weight: pct(50)
        }
    );
    assert_eq!(w.router(), "blue=50 green=50");
}

#[test]
fn an_analysis_waits_out_its_initial_delay() {
    let mut w = World::new(analysed("initialDelay: 2m"));
    w.step();
    let p = w.step();
    assert_eq!(p.action, Action::Analyse { step: 1 });
    assert!(p.measure.is_empty());
    assert_eq!(p.wake, Some(w.now + mins(2)));
    let p = w.wake();
    assert_eq!(names(&p.measure), vec![(AnalysisRef::Step(1), "errors")]);
}

#[test]
fn failing_analysis_aborts_at_once_with_evidence() {
    let mut w = World::new(analysed("")).at_step(1);
    let p = w.measure(value(0.2));
    let e = evidence(&p.action);
    assert_eq!(
        e.summary,
        "errors = 0.2 missed `result <= 0.01` (1 failure, limit 0)"
    );
    assert_eq!(e.metric.as_deref(), Some("errors"));
    assert_eq!(e.condition.as_deref(), Some("success `result <= 0.01`"));
    assert_eq!(e.values, vec![Some(0.2)]);
    assert_eq!(w.router(), "blue=100 green=0");
    assert_eq!(w.phase(), "aborted");
    let revert = p.revert.as_ref().expect("a revert is opened");
    assert_eq!(revert.revision, w.spec.revision);
    assert_eq!(&revert.evidence, e);
    match &w.status.progress {
        Progress::Aborted {
            step,
            weight,
            evidence,
            ..
        } => {
            assert_eq!(
                (*step, *weight),
                (1, pct(20)),
                "the status says where it stopped"
            );
            assert_eq!(evidence, e);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn failure_limit_tolerates_that_many_failures() {
    let mut w = World::new(analysed("interval: 1m\ncount: 5\nfailureLimit: 2")).at_step(1);
    for v in [0.3, 0.001, 0.3] {
        let p = w.measure(value(v));
        assert_eq!(reason(&p.action), "analysing");
        assert_eq!(w.router(), "blue=80 green=20");
        w.wake();
    }
    let p = w.measure(value(0.4));
    assert_eq!(
        evidence(&p.action).summary,
        "errors = 0.4 missed `result <= 0.01` (3 failures, limit 2)"
    );
    assert_eq!(
        evidence(&p.action).values,
        vec![Some(0.3), Some(0.001), Some(0.3), Some(0.4)]
    );
    assert_eq!(w.router(), "blue=100 green=0");
}

#[test]
fn no_data_is_inconclusive_and_pauses() {
    let mut w = World::new(analysed("")).at_step(1);
    let p = w.measure(NO_DATA);
    assert_eq!(
        reason(&p.action),
        "errors inconclusive: no data (1 time, limit 0); waiting for a promote or abort commit"
    );
    assert!(matches!(p.action, Action::Hold { .. }));
    assert!(matches!(
        w.status.progress,
        Progress::Paused {
            reason: PauseReason::Inconclusive { .. },
            until: None,
            ..
        }
    ));
    assert_eq!(w.router(), "blue=80 green=20");
    // It waits for a person however long it takes.
    w.advance(Duration::from_secs(86_400));
    let p = w.step();
    assert!(
        reason(&p.action)
            == "errors inconclusive: no data (1 time, limit 0); promote or abort by commit",
        "{p:?}"
    );
    assert_eq!(w.router(), "blue=80 green=20");
    // A promote commit is that person's decision: on to the next step.
    w.commit("go-on", GateAction::Promote);
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 2,
            weight: pct(50)
        }
    );
}

#[test]
fn an_inconclusive_pause_ends_with_an_abort_commit() {
    let mut w = World::new(analysed("")).at_step(1);
    w.measure(NO_DATA);
    w.commit("stop", GateAction::Abort);
    let p = w.step();
    assert_eq!(
        evidence(&p.action).summary,
        "aborted by hand in commit stop"
    );
    assert_eq!(w.router(), "blue=100 green=0");
}

#[test]
fn inconclusive_with_policy_abort_aborts() {
    let mut w = World::new(analysed("onInconclusive: abort")).at_step(1);
    let p = w.measure(NO_DATA);
    assert_eq!(
        evidence(&p.action).summary,
        "errors inconclusive: no data (1 time, limit 0)"
    );
    assert!(p.revert.is_some());
    assert_eq!(w.router(), "blue=100 green=0");
}

#[test]
fn provider_errors_are_not_failures_and_hold_past_the_limit() {
    let mut w = World::new(analysed("interval: 1m\ncount: 2")).at_step(1);
    // Four errors in a row are within the default consecutiveErrorLimit; each is retried 10 s later.
    for _ in 0..4 {
        let p = w.measure(unreachable_provider());
        assert_eq!(reason(&p.action), "analysing");
        assert_eq!(p.wake, Some(w.now + secs(10)));
        w.wake();
    }
    // The fifth holds the rollout; it is not a failure, so no abort.
    let p = w.measure(unreachable_provider());
    assert!(matches!(p.action, Action::Hold { .. }), "{:?}", p.action);
    assert_eq!(
        reason(&p.action),
        "errors could not be measured: connection refused (5 in a row, limit 4)"
    );
    assert_eq!(p.traffic, None);
    assert_eq!(w.phase(), "analysing");
    // Past the limit it keeps holding (and retrying), short of the progress deadline.
    for _ in 0..20 {
        w.wake();
        let p = w.measure(unreachable_provider());
        assert!(matches!(p.action, Action::Hold { .. }), "{:?}", p.action);
        assert_eq!(w.router(), "blue=80 green=20");
    }
    // The provider comes back: the analysis goes on and the hold is over.
    w.wake();
    let p = w.measure(value(0.001));
    assert_eq!(reason(&p.action), "analysing");
    assert_eq!(w.run().stall, None);
    w.wake();
    let p = w.measure(value(0.001));
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 2,
            weight: pct(50)
        }
    );
}

#[test]
fn a_failing_background_analysis_aborts_at_any_step() {
    let mut w = World::new(canary(&format!(
        "{BASIC_STEPS}analysis: {{interval: 1m, metrics: [{{name: errors, template: error-rate}}]}}"
    )))
    .at_step(3);
    w.advance(mins(1));
    let p = w.step();
    assert_eq!(names(&p.measure), vec![(AnalysisRef::Background, "errors")]);
    let p = w.measure(value(0.5));
    assert_eq!(
        evidence(&p.action).summary,
        "errors = 0.5 missed `result <= 0.01` (1 failure, limit 0)"
    );
    assert_eq!(w.router(), "blue=100 green=0");
}

#[test]
fn an_analysis_measures_only_at_a_verified_weight() {
    let mut w = World::new(analysed("")).at_step(1);
    // An edit raises the weight the analysis runs at, and the write does not reach the router.
    w.spec = canary(
        "steps: [{setWeight: 30}, {analysis: {metrics: [{name: errors, template: error-rate}]}}]",
    );
    let p = w.crash_before_apply();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 1,
            weight: pct(30)
        }
    );
    assert!(
        p.measure.is_empty(),
        "20 % is not what the analysis is about any more"
    );
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 1,
            weight: pct(30)
        }
    );
    assert!(p.measure.is_empty(), "30 % is not confirmed yet");
    assert_eq!(w.router(), "blue=70 green=30");
    let p = w.step();
    assert_eq!(names(&p.measure), vec![(AnalysisRef::Step(1), "errors")]);
}

#[test]
fn replayed_measurements_are_not_counted_twice() {
    let mut w = World::new(analysed("interval: 1m\ncount: 3\nfailureLimit: 1")).at_step(1);
    let p = w.measure(value(0.3));
    assert_eq!(reason(&p.action), "analysing");
    // After a restart the same measurement comes in again: it is the same one failure.
    for _ in 0..3 {
        w.samples = w.taken.clone();
        let p = w.step();
        assert_eq!(reason(&p.action), "analysing");
    }
    match &w.status.progress {
        Progress::Analysing { analysis, .. } => assert_eq!(analysis.metrics["errors"].failures, 1),
        other => panic!("{other:?}"),
    }
    // A measurement older than the analysis run counts for nothing either.
    let mut stale = w.taken[0].clone();
    stale.measurement.at = monday_10am() - mins(1);
    w.samples = vec![stale];
    w.step();
    w.wake();
    let p = w.measure(value(0.3));
    assert_eq!(
        evidence(&p.action).summary,
        "errors = 0.3 missed `result <= 0.01` (2 failures, limit 1)"
    );
}

#[test]
fn measurements_of_another_revision_are_ignored() {
    let mut w = World::new(analysed("")).at_step(1);
    // A failing measurement, but of another revision (the previous canary's, say).
    w.take_measurements(|_| value(0.9));
    for s in &mut w.samples {
        s.revision = Revision::from("0123456789ab");
    }
    let p = w.step();
    assert_eq!(reason(&p.action), "analysing");
    assert_eq!(w.router(), "blue=80 green=20");
}

// ---------------------------------------------------------------------------------------------
// Holding: router, deadline, window
// ---------------------------------------------------------------------------------------------

#[test]
fn an_unreachable_router_holds_and_never_advances_blind() {
    let mut w = World::new(canary(BASIC_STEPS)).at_step(1);
    w.router_up = false;
    w.advance(mins(6));
    for _ in 0..3 {
        let p = w.step();
        assert_eq!(
            p.action,
            Action::Hold {
                reason: "router weights unknown".into()
            }
        );
        assert_eq!(p.traffic, None);
        assert_eq!(p.wake, Some(w.now + secs(10)), "retried soon");
        assert_eq!(
            w.run().step,
            1,
            "the pause is over, but the step does not move"
        );
        w.advance(secs(10));
    }
    assert_eq!(
        w.run().stall.as_ref().map(|s| s.because.as_str()),
        Some("router weights unknown")
    );
    w.router_up = true;
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 2,
            weight: pct(50)
        }
    );
    assert_eq!(w.router(), "blue=50 green=50");
}

#[test]
fn a_weight_that_did_not_reach_the_router_is_set_again_when_it_is_back() {
    let mut w = World::new(canary(BASIC_STEPS)).at_step(1);
    w.advance(mins(5));
    // The plan sets 50 %, and the router goes away before the write reaches it.
    let p = w.crash_before_apply();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 2,
            weight: pct(50)
        }
    );
    w.router_up = false;
    let p = w.step();
    assert_eq!(
        p.action,
        Action::Hold {
            reason: "router weights unknown".into()
        }
    );
    assert_eq!(p.traffic, None, "nothing is written blind");
    w.advance(secs(30));
    w.router_up = true;
    assert_eq!(w.router(), "blue=90 green=10");
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 2,
            weight: pct(50)
        }
    );
    assert_eq!(w.router(), "blue=50 green=50");
    let p = w.step();
    assert_eq!(p.action, Action::Pause { step: 3 });
    assert_eq!(w.run().stall, None);
}

#[test]
fn the_deadline_aborts_a_long_hold() {
    let mut w = World::new(canary(&format!("{BASIC_STEPS}progressDeadline: 5m"))).at_step(1);
    w.router_up = false;
    w.advance(mins(1));
    let stalled_at = w.now;
    let p = w.step();
    assert!(matches!(p.action, Action::Hold { .. }));
    assert_eq!(w.run().stall.as_ref().map(|s| s.since), Some(stalled_at));
    w.advance(mins(5) - secs(1));
    let p = w.step();
    assert!(matches!(p.action, Action::Hold { .. }), "{:?}", p.action);
    assert_eq!(p.wake, Some(w.now + secs(1)), "woken at the deadline");
    let p = w.wake();
    assert_eq!(
        evidence(&p.action).summary,
        "no progress for 5m: router weights unknown"
    );
    assert!(p.revert.is_some());
    assert_eq!(w.phase(), "aborted");
    // The router was down when the abort was decided: canary to 0 as soon as it is back.
    w.router_up = true;
    let p = w.step();
    assert_eq!(reason(&p.action), "aborted: canary belongs at 0%");
    assert_eq!(w.router(), "blue=100 green=0");
}

#[test]
fn a_long_timed_pause_is_not_a_stall() {
    let mut w = World::new(canary(
        "steps: [{setWeight: 10}, {pause: {duration: 1h}}, {setWeight: 50}]\nprogressDeadline: 5m",
    ))
    .at_step(1);
    w.advance(mins(30));
    let p = w.step();
    assert!(matches!(p.action, Action::Wait { .. }), "{:?}", p.action);
    let p = w.wake();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 2,
            weight: pct(50)
        }
    );
}

#[test]
fn deadline_without_abort_only_reports() {
    let mut w = World::new(canary(&format!(
        "{BASIC_STEPS}progressDeadline: 5m\nprogressDeadlineAbort: false"
    )))
    .at_step(1);
    w.router_up = false;
    w.step();
    w.advance(mins(20));
    let p = w.step();
    assert_eq!(
        p.action,
        Action::Hold {
            reason: "router weights unknown".into()
        }
    );
    assert_eq!(w.phase(), "paused");
    assert!(
        w.run().deadline_exceeded,
        "the status reports the missed deadline"
    );
    assert_eq!(p.revert, None);
    w.router_up = true;
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 2,
            weight: pct(50)
        }
    );
    assert!(!w.run().deadline_exceeded);
}

const OFFICE_HOURS: &str = "window: {cron: '* 9-16 * * Mon-Fri'}\n";

#[test]
fn outside_the_window_steps_do_not_advance() {
    let mut w = World::new(canary(&format!(
        "steps: [{{setWeight: 10}}, {{pause: {{duration: 30m}}}}, {{setWeight: 50}}]\n{OFFICE_HOURS}"
    )));
    w.now = utc(2026, 3, 2, 16, 40);
    let w = &mut w.at_step(1);
    w.advance(mins(30)); // 17:10, after hours
    let p = w.step();
    assert_eq!(reason(&p.action), "outside window `* 9-16 * * Mon-Fri`");
    assert!(matches!(p.action, Action::Hold { .. }));
    assert_eq!(
        p.wake,
        Some(utc(2026, 3, 3, 9, 0)),
        "woken when the window opens"
    );
    assert_eq!(w.router(), "blue=90 green=10");
    let p = w.wake();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 2,
            weight: pct(50)
        }
    );
}

#[test]
fn a_canary_merged_outside_the_window_starts_when_it_opens() {
    let mut w = World::new(canary(&format!("{BASIC_STEPS}{OFFICE_HOURS}")));
    w.now = utc(2026, 3, 7, 12, 0); // Saturday
    let p = w.step();
    assert_eq!(
        reason(&p.action),
        "outside window `* 9-16 * * Mon-Fri`: the rollout starts when it opens"
    );
    assert_eq!(p.traffic, None);
    assert_eq!(p.wake, Some(utc(2026, 3, 9, 9, 0)));
    assert_eq!(w.router(), "blue=100 green=0");
    let p = w.wake();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 0,
            weight: pct(10)
        }
    );
}

#[test]
fn a_canary_superseded_outside_the_window_gives_its_traffic_back_to_stable() {
    let mut w = World::new(canary(&format!("{BASIC_STEPS}{OFFICE_HOURS}"))).at_step(1);
    assert_eq!(w.router(), "blue=90 green=10");
    // Friday evening a new version of the canary is merged: green now runs something no
    // analysis has seen, so it gets no traffic until the window opens and the rollout starts.
    w.now = utc(2026, 3, 6, 18, 0);
    w.spec = spec(&format!(
        "router: edge\nservice: web\nstable: {{name: blue, version: '1'}}\ncanary: {{name: green, version: '3'}}\n{BASIC_STEPS}{OFFICE_HOURS}"
    ));
    let p = w.step();
    assert_eq!(w.phase(), "waiting");
    assert_eq!(w.router(), "blue=100 green=0");
    assert_eq!(p.wake, Some(utc(2026, 3, 9, 9, 0)), "Monday 09:00");
    let p = w.step();
    assert_eq!((p.traffic, w.phase()), (None, "waiting"), "it stays put");
    w.wake();
    assert_eq!(
        (w.phase(), w.router()),
        ("progressing", "blue=90 green=10".to_string())
    );
}

#[test]
fn outside_the_window_failures_still_abort() {
    let mut w = World::new(canary(&format!(
        "{BASIC_STEPS}{OFFICE_HOURS}analysis: {{interval: 1m, metrics: [{{name: errors, template: error-rate}}]}}"
    )))
    .at_step(1);
    w.now = utc(2026, 3, 2, 20, 0);
    let p = w.step();
    assert_eq!(names(&p.measure), vec![(AnalysisRef::Background, "errors")]);
    let p = w.measure(value(0.5));
    assert!(matches!(p.action, Action::Abort { .. }), "{:?}", p.action);
    assert_eq!(w.router(), "blue=100 green=0");
}

#[test]
fn outside_the_window_a_promote_commit_is_still_honoured() {
    let mut w = World::new(canary(&format!(
        "steps: [{{setWeight: 10}}, {{pause: {{}}}}, {{setWeight: 50}}]\n{OFFICE_HOURS}"
    )))
    .at_step(1);
    w.now = utc(2026, 3, 7, 12, 0);
    w.commit("weekend-fix", GateAction::Promote);
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 2,
            weight: pct(50)
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Drift: the live weight is not the recorded one
// ---------------------------------------------------------------------------------------------

#[test]
fn a_hand_changed_weight_is_reapplied_and_recorded_as_drift() {
    let mut w = World::new(canary(BASIC_STEPS)).at_step(1);
    w.advance(mins(1));
    w.hand_set(&[("blue", 70), ("green", 30)]);
    let p = w.step();
    assert_eq!(
        p.action,
        Action::Reapply {
            reason: "live canary weight 30% differs from step 2 weight 10%".into()
        }
    );
    assert_eq!(w.router(), "blue=90 green=10");
    assert_eq!(
        w.status.drift,
        Some(Drift {
            at: w.now,
            expected: pct(10),
            live: BTreeMap::from([("blue".into(), pct(70)), ("green".into(), pct(30))]),
            action: DriftAction::Reapplied,
        })
    );
    // Read back, the rollout goes on where it was; the pause keeps its end.
    let p = w.step();
    assert_eq!(reason(&p.action), "paused until 2026-03-02 10:05:00 UTC");
}

#[test]
fn a_restarted_router_in_its_own_scale_is_set_again() {
    // HAProxy reports weights 0..=256; 256/0 is "all on blue".
    let mut w = World::new(canary(BASIC_STEPS)).at_step(1);
    w.hand_set(&[("blue", 256), ("green", 0)]);
    let p = w.step();
    assert!(matches!(p.action, Action::Reapply { .. }), "{:?}", p.action);
    assert_eq!(w.router(), "blue=90 green=10");
}

#[test]
fn the_same_weight_in_another_scale_is_not_drift() {
    let mut w = World::new(canary(BASIC_STEPS)).at_step(1);
    w.hand_set(&[("blue", 230), ("green", 26)]); // 89.8 % / 10.2 % rounds to 90/10
    let p = w.step();
    assert!(matches!(p.action, Action::Wait { .. }), "{:?}", p.action);
    assert_eq!(w.status.drift, None);
}

#[test]
fn weights_that_do_not_fit_the_backends_hold_and_say_so() {
    // A third backend carries traffic: canaryd cannot tell what the canary has, so it holds.
    let mut w = World::new(canary(BASIC_STEPS)).at_step(1);
    w.hand_set(&[("blue", 50), ("green", 25), ("purple", 25)]);
    w.advance(mins(6));
    let p = w.step();
    assert_eq!(
        p.action,
        Action::Hold {
            reason: "router reports weights that do not fit this rollout's backends".into()
        }
    );
    assert_eq!(p.traffic, None);
    assert_eq!(w.run().step, 1);
    assert_eq!(w.router(), "blue=50 green=25 purple=25");
}

#[test]
fn a_promote_commit_made_during_a_drift_hold_is_honoured_when_it_ends() {
    let mut w = World::new(canary(
        "steps: [{setWeight: 20}, {pause: {}}, {setWeight: 60}]\nonDrift: hold",
    ))
    .at_step(1);
    w.hand_set(&[("blue", 70), ("green", 30)]);
    w.commit("promote-1", GateAction::Promote);
    let p = w.step();
    assert!(matches!(p.action, Action::Hold { .. }), "{:?}", p.action);
    assert_eq!(w.status.last_gate, None, "not honoured yet");
    w.hand_set(&[("blue", 80), ("green", 20)]);
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 2,
            weight: pct(60)
        }
    );
    assert_eq!(w.status.last_gate.as_deref(), Some("promote-1"));
}

#[test]
fn with_on_drift_hold_a_hand_changed_weight_is_left_and_reported() {
    let mut w = World::new(canary(&format!("{BASIC_STEPS}onDrift: hold"))).at_step(1);
    w.hand_set(&[("blue", 70), ("green", 30)]);
    w.advance(mins(10));
    for _ in 0..2 {
        let p = w.step();
        assert_eq!(
            p.action,
            Action::Hold {
                reason: "live canary weight 30% differs from step 2 weight 10% (onDrift: hold)"
                    .into()
            }
        );
        assert_eq!(p.traffic, None);
        assert_eq!(w.router(), "blue=70 green=30");
        assert_eq!(w.run().step, 1, "the pause is over but the rollout holds");
        let drift = w.status.drift.as_ref().expect("drift recorded");
        assert_eq!((drift.expected, drift.action), (pct(10), DriftAction::Held));
        assert_eq!(
            drift.at,
            monday_10am() + mins(10),
            "the first sighting is kept"
        );
        w.advance(mins(1));
    }
    // Someone puts it back: the rollout goes on.
    w.hand_set(&[("blue", 90), ("green", 10)]);
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 2,
            weight: pct(50)
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Revisions: revert, restart, retry
// ---------------------------------------------------------------------------------------------

/// A world whose spec first had no canary (stable), then got one merged and is at step `k`.
fn merged(steps_and_options: &str, k: usize) -> (World, Rollout, Rollout) {
    let before = spec(&format!("{NO_CANARY}{}", dedent(steps_and_options)));
    let after = canary(steps_and_options);
    let mut w = World::new(before.clone());
    w.settle();
    assert_eq!(w.phase(), "stable");
    w.spec = after.clone();
    (w.at_step(k), before, after)
}

const THREE_WEIGHTS: &str =
    "steps: [{setWeight: 10}, {setWeight: 30}, {setWeight: 60}, {pause: {}}]\n";

#[test]
fn reverting_the_spec_sends_traffic_back_at_once() {
    let (mut w, before, after) = merged(THREE_WEIGHTS, 3);
    assert_eq!(w.router(), "blue=40 green=60");
    w.spec = before.clone(); // git revert
    let p = w.step();
    assert_eq!(
        p.action,
        Action::RollBack {
            from: after.revision.clone()
        }
    );
    assert_eq!(w.router(), "blue=100 green=0");
    assert_eq!(p.revert, None, "a revert is already what Git says");
    match &w.status.progress {
        Progress::RolledBack {
            revision,
            from,
            weight,
            ..
        } => {
            assert_eq!(
                (revision, from, *weight),
                (&before.revision, &after.revision, pct(0))
            );
        }
        other => panic!("{other:?}"),
    }
    let p = w.step();
    assert_eq!(reason(&p.action), "rolled back; traffic matches");
}

#[test]
fn stepped_rollback_steps_back_through_the_weights() {
    let (mut w, before, after) = merged(
        &format!("{THREE_WEIGHTS}rollback: {{mode: stepped, interval: 30s}}"),
        3,
    );
    w.spec = before;
    let p = w.step();
    assert_eq!(
        p.action,
        Action::RollBack {
            from: after.revision.clone()
        }
    );
    assert_eq!(w.router(), "blue=70 green=30");
    assert_eq!(w.phase(), "rollingBack");
    assert_eq!(p.wake, Some(w.now + secs(30)));
    w.advance(secs(29));
    let p = w.step();
    assert!(matches!(p.action, Action::Wait { .. }), "{:?}", p.action);
    assert_eq!(w.router(), "blue=70 green=30");
    let p = w.wake();
    assert_eq!(p.action, Action::StepBack);
    assert_eq!(w.router(), "blue=90 green=10");
    let p = w.wake();
    assert_eq!(p.action, Action::StepBack);
    assert_eq!(w.router(), "blue=100 green=0");
    assert_eq!(w.phase(), "rolledBack");
    assert_eq!(p.wake, None);
}

#[test]
fn editing_steps_during_a_stepped_rollback_steps_through_the_new_weights() {
    let stepped = "rollback: {mode: stepped, interval: 30s}\n";
    let (mut w, before, _) = merged(&format!("{THREE_WEIGHTS}{stepped}"), 3);
    w.spec = before;
    w.step();
    assert_eq!(w.router(), "blue=70 green=30");
    // The restored spec is edited while traffic steps back: 10 % is no longer one of its weights.
    w.spec = spec(&format!(
        "{NO_CANARY}steps: [{{setWeight: 20}}, {{setWeight: 40}}, {{pause: {{}}}}]\n{stepped}"
    ));
    w.advance(secs(30));
    w.step();
    let allowed = w.spec.allowed_weights();
    let green = Weight::new(i64::from(w.router.backends["green"])).expect("a percentage");
    assert!(
        allowed.contains(&green),
        "green at {green}, not one of {allowed:?}"
    );
}

#[test]
fn reverting_to_a_promoted_revision_restores_it() {
    let v1 = canary("steps: [{setWeight: 50}]");
    let v2 = spec(&format!(
        "router: edge\nservice: web\nstable: {{name: green, version: '1.1'}}\ncanary: {{name: blue, version: '1.2'}}\n{THREE_WEIGHTS}"
    ));
    let mut w = World::new(v1.clone());
    w.settle();
    assert_eq!(
        (w.phase(), w.router()),
        ("promoted", "blue=0 green=100".to_string())
    );
    w.spec = v2.clone();
    w.settle();
    assert_eq!(
        w.router(),
        "blue=60 green=40",
        "1.2 is the canary now, on blue, waiting at its manual pause"
    );
    w.spec = v1.clone();
    let p = w.step();
    assert_eq!(
        p.action,
        Action::RollBack {
            from: v2.revision.clone()
        }
    );
    assert_eq!(w.router(), "blue=0 green=100");
    assert!(matches!(w.status.progress, Progress::RolledBack { weight, .. } if weight == pct(100)));
}

#[test]
fn reverting_a_promoted_release_restores_the_one_before() {
    let v1 = canary("steps: [{setWeight: 50}]");
    let v2 = spec(
        "router: edge\nservice: web\nstable: {name: green, version: '1.1'}\ncanary: {name: blue, version: '1.2'}\nsteps: [{setWeight: 50}]",
    );
    let mut w = World::new(v1.clone());
    w.settle();
    w.spec = v2.clone();
    w.settle();
    assert_eq!(
        (w.phase(), w.router()),
        ("promoted", "blue=100 green=0".to_string())
    );
    // A bug shows up after promotion; the release is reverted. 1.1 on green comes back at once,
    // and is not run through its steps again.
    w.spec = v1.clone();
    let p = w.step();
    assert_eq!(
        p.action,
        Action::RollBack {
            from: v2.revision.clone()
        }
    );
    assert_eq!(w.router(), "blue=0 green=100");
    assert_eq!(w.phase(), "rolledBack");
    assert_eq!(
        w.status.promoted,
        vec![v1.revision.clone(), v2.revision.clone()]
    );
}

#[test]
fn a_new_canary_waits_for_a_readable_router() {
    let mut w = World::new(canary(BASIC_STEPS));
    w.router_up = false;
    let p = w.step();
    assert_eq!(
        reason(&p.action),
        "router weights unknown: the rollout starts once they can be read"
    );
    assert_eq!((p.traffic, w.phase()), (None, "pending"));
    w.router_up = true;
    w.step();
    assert_eq!(
        (w.phase(), w.router()),
        ("progressing", "blue=90 green=10".to_string())
    );
}

#[test]
fn a_finished_canary_seen_first_while_the_router_is_down_is_not_run_again() {
    let mut w = World::on_router(
        canary(BASIC_STEPS),
        observed(&[("blue", 0), ("green", 100)]),
    );
    w.router_up = false;
    w.step();
    w.router_up = true;
    w.step();
    assert_eq!(
        (w.phase(), w.router()),
        ("promoted", "blue=0 green=100".to_string())
    );
}

#[test]
fn editing_steps_outside_the_window_does_not_raise_the_weight() {
    let office = "window: {cron: '* 9-16 * * Mon-Fri'}\n";
    let mut w = World::new(canary(&format!(
        "steps: [{{setWeight: 10}}, {{pause: {{}}}}, {{setWeight: 60}}]\n{office}"
    )))
    .at_step(1);
    w.now = utc(2026, 3, 7, 12, 0); // Saturday
    w.spec = canary(&format!(
        "steps: [{{setWeight: 40}}, {{pause: {{}}}}, {{setWeight: 60}}]\n{office}"
    ));
    let p = w.step();
    assert_eq!(p.traffic, None);
    assert_eq!(w.router(), "blue=90 green=10");
    assert_eq!(p.wake, Some(utc(2026, 3, 9, 9, 0)));
    // Lowering it is not an advance: that may happen at any time.
    w.spec = canary(&format!(
        "steps: [{{setWeight: 5}}, {{pause: {{}}}}, {{setWeight: 60}}]\n{office}"
    ));
    w.step();
    assert_eq!(w.router(), "blue=95 green=5");
    // Monday morning the raised edit takes effect.
    w.spec = canary(&format!(
        "steps: [{{setWeight: 40}}, {{pause: {{}}}}, {{setWeight: 60}}]\n{office}"
    ));
    w.now = utc(2026, 3, 9, 9, 0);
    let p = w.step();
    assert_eq!(w.router(), "blue=60 green=40", "{p:#?}");
}

#[test]
fn an_edited_pause_duration_counts_from_when_the_pause_began() {
    let mut w = World::new(canary(BASIC_STEPS)).at_step(1);
    let began = w.now;
    w.advance(mins(2));
    w.spec = canary("steps: [{setWeight: 10}, {pause: {duration: 3m}}, {setWeight: 50}]");
    let p = w.step();
    assert_eq!(
        p.wake,
        Some(began + mins(3)),
        "not the old 5m, and not 3m from now"
    );
    w.advance(mins(1));
    w.step();
    assert_eq!(w.router(), "blue=50 green=50");
}

#[test]
fn a_promote_made_before_an_inconclusive_result_does_not_pass_it() {
    let mut w = World::new(canary(
        "steps: [{setWeight: 20}, {pause: {}}, {setWeight: 50}]\nanalysis: {interval: 1m, metrics: [{name: errors, template: error-rate}]}",
    ));
    w.step(); // 20 %
    w.step(); // verified: the manual pause is entered
    assert_eq!((w.phase(), w.status.last_gate.as_deref()), ("paused", None));
    w.wake(); // the background analysis measures, one interval in
    // A promote arrives while the measurement is out; it finds no data.
    w.commit("early", GateAction::Promote);
    w.take_measurements(|_| NO_DATA);
    w.step();
    assert!(matches!(
        &w.status.progress,
        Progress::Paused {
            reason: PauseReason::Inconclusive { .. },
            ..
        }
    ));
    assert_eq!(
        w.status.last_gate.as_deref(),
        Some("early"),
        "the earlier promote is spent"
    );
    w.advance(mins(10));
    w.step();
    assert_eq!(
        (w.phase(), w.router()),
        ("paused", "blue=80 green=20".to_string())
    );
    // A person looks at it and promotes: that commit moves it on.
    w.commit("late", GateAction::Promote);
    w.step();
    assert_eq!(
        (w.run().step, w.router()),
        (2, "blue=50 green=50".to_string()),
        "a decision made after the evidence moves it on"
    );
}

#[test]
fn editing_steps_mid_rollout_does_not_restart() {
    let mut w = World::new(canary(BASIC_STEPS)).at_step(3);
    let run = w.run().clone();
    w.advance(mins(2));
    w.spec = canary(
        "steps: [{setWeight: 10}, {pause: {duration: 5m}}, {setWeight: 40}, {pause: {duration: 10m}}, {setWeight: 80}]",
    );
    assert_eq!(
        w.spec.revision, run.revision,
        "steps are not part of the revision"
    );
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 3,
            weight: pct(40)
        },
        "the weight in force at step 4 now"
    );
    assert_eq!(w.router(), "blue=60 green=40");
    let now = w.run();
    assert_eq!(
        (now.step, now.started_at, now.step_started_at),
        (3, run.started_at, run.step_started_at)
    );
    w.step();
    // The pause keeps its end, then the new list goes on.
    w.advance(mins(8));
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 4,
            weight: pct(80)
        }
    );
}

#[test]
fn editing_a_pause_into_an_analysis_enters_it_at_the_same_index() {
    let mut w = World::new(canary(BASIC_STEPS)).at_step(1);
    w.spec = canary(
        "steps: [{setWeight: 10}, {analysis: {metrics: [{name: errors, template: error-rate}]}}, {setWeight: 50}]",
    );
    let p = w.step();
    assert_eq!(p.action, Action::Analyse { step: 1 });
    assert_eq!(names(&p.measure), vec![(AnalysisRef::Step(1), "errors")]);
    assert_eq!(w.router(), "blue=90 green=10");
}

#[test]
fn shortening_the_steps_below_the_current_one_resumes_at_the_last_step() {
    // The doc: the step index is kept, clamped, and the weight in force there re-applied;
    // the edit is not a promotion.
    let mut w = World::new(canary(BASIC_STEPS)).at_step(3);
    w.spec = canary("steps: [{setWeight: 10}, {setWeight: 30}, {pause: {}}]");
    let p = w.step();
    assert_eq!(p.action, Action::Pause { step: 2 });
    assert_eq!(w.router(), "blue=70 green=30");
    assert_eq!(w.phase(), "paused");
}

#[test]
fn changing_the_canary_backend_restarts() {
    let mut w = World::new(canary(BASIC_STEPS)).at_step(3);
    let old = w.spec.revision.clone();
    w.advance(mins(1));
    w.spec = spec(&format!(
        "router: edge\nservice: web\nstable: {{name: blue, version: '1.0'}}\ncanary: {{name: green, version: '1.2'}}\n{BASIC_STEPS}"
    ));
    assert_ne!(w.spec.revision, old);
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 0,
            weight: pct(10)
        }
    );
    assert_eq!(w.router(), "blue=90 green=10");
    assert_eq!(
        (w.run().started_at, &w.run().revision),
        (w.now, &w.spec.revision)
    );

    // A canary on another backend: the old one stops serving.
    w.spec = spec(&format!(
        "router: edge\nservice: web\nstable: {{name: blue, version: '1.0'}}\ncanary: {{name: purple, version: '1.3'}}\n{BASIC_STEPS}"
    ));
    w.step();
    assert_eq!(w.router(), "blue=90 green=0 purple=10");
}

#[test]
fn an_aborted_revision_is_not_retried_on_its_own() {
    let (mut w, before, after) = merged(BASIC_STEPS, 1);
    w.commit("abort-1", GateAction::Abort);
    w.step();
    assert_eq!(w.phase(), "aborted");
    w.advance(Duration::from_secs(86_400));
    let p = w.step();
    assert_eq!(reason(&p.action), "aborted; traffic matches");
    assert_eq!(p.traffic, None);
    // The revert PR is merged...
    w.spec = before;
    w.step();
    assert_eq!(w.router(), "blue=100 green=0");
    // ...and someone merges the very same change again.
    w.spec = after;
    let p = w.step();
    assert_eq!(
        reason(&p.action),
        "revision was aborted before; not retried on its own"
    );
    assert_eq!(w.router(), "blue=100 green=0");
    assert_eq!(w.phase(), "aborted");
    for _ in 0..3 {
        w.advance(mins(10));
        w.step();
        assert_eq!(w.router(), "blue=100 green=0");
    }
}

#[test]
fn bumping_retry_runs_it_again() {
    let mut w = World::new(canary(BASIC_STEPS)).at_step(1);
    w.commit("abort-1", GateAction::Abort);
    w.step();
    w.spec = canary(&format!("{BASIC_STEPS}retry: 1"));
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 0,
            weight: pct(10)
        }
    );
    assert_eq!(w.router(), "blue=90 green=10");
}

// ---------------------------------------------------------------------------------------------
// Invalid specs and crashes
// ---------------------------------------------------------------------------------------------

#[test]
fn an_invalid_spec_leaves_traffic_and_resumes_when_fixed() {
    let mut w = World::new(canary(BASIC_STEPS)).at_step(1);
    w.hand_set(&[("blue", 75), ("green", 25)]);
    let p = w.step_invalid("web.yaml:12:20: spec.steps[2].setWeight: weight 150 is out of range");
    assert_eq!(p.action, Action::Invalid);
    assert_eq!((p.traffic, p.wake, p.revert), (None, None, None));
    assert_eq!(w.phase(), "invalid");
    assert_eq!(w.router(), "blue=75 green=25", "exactly as it was");
    w.advance(mins(10));
    w.step_invalid("web.yaml:12:20: spec.steps[2].setWeight: weight 150 is out of range");
    match &w.status.progress {
        Progress::Invalid { errors, held } => {
            assert_eq!(errors.len(), 1);
            assert_eq!(held.phase(), "paused", "not nested invalid in invalid");
        }
        other => panic!("{other:?}"),
    }
    // Fixed: it resumes where it was. The hand-made weight is drift like any other, and the
    // pause that ended meanwhile moves on.
    let p = w.step();
    assert!(matches!(p.action, Action::Reapply { .. }), "{:?}", p.action);
    assert_eq!(w.router(), "blue=90 green=10");
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 2,
            weight: pct(50)
        }
    );
}

#[test]
fn a_restart_after_a_crash_between_record_and_apply_reapplies_the_recorded_weight() {
    let mut w = World::new(canary(BASIC_STEPS)).at_step(1);
    w.advance(mins(5));
    let p = w.crash_before_apply();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 2,
            weight: pct(50)
        }
    );
    assert_eq!(w.router(), "blue=90 green=10");
    w.advance(secs(20)); // restarted
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 2,
            weight: pct(50)
        }
    );
    assert_eq!(w.router(), "blue=50 green=50");
    let p = w.step();
    assert_eq!(
        p.action,
        Action::Pause { step: 3 },
        "no step skipped, none run twice"
    );
}

#[test]
fn a_crash_before_the_first_weight_reaches_a_router_without_the_canary_reapplies_it() {
    // The router only learns of the canary backend from canaryd's first apply.
    let mut w = World::on_router(canary(BASIC_STEPS), observed(&[("blue", 100)]));
    w.crash_before_apply();
    assert_eq!(w.router(), "blue=100");
    w.advance(secs(20));
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 0,
            weight: pct(10)
        }
    );
    assert_eq!(w.router(), "blue=90 green=10");
}

#[test]
fn a_crash_after_an_abort_is_recorded_still_sends_traffic_to_stable() {
    let mut w = World::new(analysed("")).at_step(1);
    w.take_measurements(|_| value(0.9));
    let p = w.crash_before_apply();
    assert!(matches!(p.action, Action::Abort { .. }));
    assert_eq!(w.router(), "blue=80 green=20");
    let p = w.step();
    assert_eq!(reason(&p.action), "aborted: canary belongs at 0%");
    assert_eq!(w.router(), "blue=100 green=0");
}

#[test]
fn a_promote_commit_made_while_the_router_is_down_is_not_lost() {
    let mut w = World::new(canary(
        "steps: [{setWeight: 20}, {pause: {}}, {setWeight: 60}]",
    ))
    .at_step(1);
    w.router_up = false;
    w.commit("promote-1", GateAction::Promote);
    let p = w.step();
    assert!(
        matches!(p.action, Action::Hold { .. }),
        "never advances blind: {:?}",
        p.action
    );
    w.advance(secs(10));
    w.router_up = true;
    let p = w.step();
    assert_eq!(
        p.action,
        Action::SetWeight {
            step: 2,
            weight: pct(60)
        }
    );
    assert_eq!(w.router(), "blue=40 green=60");
}

#[test]
fn an_abort_commit_made_while_the_router_is_down_aborts_at_once() {
    let mut w = World::new(canary(BASIC_STEPS)).at_step(1);
    w.router_up = false;
    w.commit("abort-1", GateAction::Abort);
    let p = w.step();
    assert!(matches!(p.action, Action::Abort { .. }));
    w.router_up = true;
    w.step();
    assert_eq!(w.router(), "blue=100 green=0");
}

#[test]
fn status_round_trips_through_yaml() {
    // Walk a rollout through most of its states, and read back every status it recorded.
    let s = canary(
        "
        steps:
          - setWeight: 20
          - analysis:
              interval: 1m
              count: 3
              metrics: [{name: errors, template: error-rate}]
          - pause: {}
          - setWeight: 50
        analysis: {interval: 1m, metrics: [{name: latency, template: request-duration}]}
        onDrift: hold
        rollback: {mode: stepped, interval: 30s}
        ",
    );
    let mut w = World::new(s.clone());
    let mut statuses = Vec::new();
    let mut record = |w: &World| statuses.push(w.status.clone());
    w.step();
    record(&w);
    w.step();
    w.wake();
    w.measure(value(0.001));
    record(&w);
    w.wake();
    w.measure_each(|m| {
        if m == "errors" {
            unreachable_provider()
        } else {
            value(123.25)
        }
    });
    record(&w);
    w.wake();
    w.measure(NO_DATA);
    record(&w); // paused, inconclusive
    w.hand_set(&[("blue", 60), ("green", 40)]);
    w.step();
    record(&w); // drift held
    w.step_invalid("web.yaml:3:1: spec: broken");
    record(&w);
    w.commit("abort-1", GateAction::Abort);
    w.step();
    record(&w); // aborted, with evidence, last gate, aborted list
    let promoted =
        canary("steps: [{setWeight: 30}]\nrollback: {mode: stepped, interval: 30s}\nretry: 1");
    w.spec = promoted.clone();
    w.settle();
    record(&w); // promoted
    w.spec = spec(&format!(
        "router: edge\nservice: web\nstable: {{name: green, version: '1.1'}}\ncanary: {{name: blue, version: '1.2'}}\n{THREE_WEIGHTS}"
    ));
    w.settle();
    w.spec = promoted;
    w.step();
    record(&w); // rolling back through 30 %, the restored spec's one weight below 60 %
    w.wake();
    record(&w); // rolled back
    let phases: Vec<&str> = statuses.iter().map(|s| s.progress.phase()).collect();
    assert_eq!(
        phases,
        [
            "progressing",
            "analysing",
            "analysing",
            "paused",
            "paused",
            "invalid",
            "aborted",
            "promoted",
            "rollingBack",
            "rolledBack"
        ]
    );
    assert!(statuses[4].drift.is_some());
    for status in &statuses {
        let text = serde_saphyr::to_string(status).expect("status serialises");
        let back: Status = serde_saphyr::from_str(&text).expect("status reads back");
        assert_eq!(&back, status, "round trip of\n{text}");
        // The daemon resumes from what Git holds: the same plan either way.
        let inputs = |recorded| Inputs {
            spec: &s,
            recorded,
            live: Some(&w.router),
            samples: &[],
            gates: &[],
            now: w.now,
            group: None,
        };
        assert_eq!(plan::plan(inputs(&back)), plan::plan(inputs(status)));
    }
    let text = serde_saphyr::to_string(&statuses[1]).expect("serialises");
    assert!(text.contains("phase: analysing"), "{text}");
}

#[test]
fn outcomes_recorded_in_status_match_what_was_measured() {
    let mut w = World::new(analysed("interval: 1m\ncount: 3")).at_step(1);
    w.measure(value(0.001));
    w.wake();
    w.measure(unreachable_provider());
    match &w.status.progress {
        Progress::Analysing { analysis, .. } => {
            let m = &analysis.metrics["errors"];
            let outcomes: Vec<Outcome> = m.recent.iter().map(|x| x.outcome).collect();
            assert_eq!(outcomes, vec![Outcome::Success, Outcome::Error]);
            assert_eq!((m.measured, m.errors, m.consecutive_errors), (1, 1, 1));
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Properties: random specs under random events
// ---------------------------------------------------------------------------------------------

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// One step of a generated spec; weights are increments, so the list always grows.
    #[derive(Clone, Debug)]
    enum StepShape {
        Weight(u8),
        Pause(Option<u32>),
        Analysis {
            count: u32,
            interval: u32,
            failure_limit: u32,
            abort_if_inconclusive: bool,
        },
    }

    /// Everything of a generated spec except its backends.
    #[derive(Clone, Debug)]
    struct Shape {
        steps: Vec<StepShape>,
        background: Option<(u32, u32, bool)>,
        window: Option<&'static str>,
        drift_hold: bool,
        stepped_rollback: bool,
        deadline: u32,
        deadline_abort: bool,
    }

    /// The backends a spec can name; changing between them changes the revision. Index 3 swaps
    /// roles, as after a promotion; index 4 puts the canary on a third backend.
    const TARGETS: [&str; 6] = [
        "stable: {name: blue, version: '1'}",
        "stable: {name: blue, version: '1'}\ncanary: {name: green, version: '2'}",
        "stable: {name: blue, version: '1'}\ncanary: {name: green, version: '3'}",
        "stable: {name: green, version: '2'}\ncanary: {name: blue, version: '4'}",
        "stable: {name: blue, version: '1'}\ncanary: {name: purple, version: '5'}",
        "stable: {name: blue, version: '1'}\ncanary: {name: green, version: '2'}\nretry: 1",
    ];

    const WINDOWS: [&str; 2] = ["* 9-16 * * Mon-Fri", "0-29 * * * *"];

    fn analysis_yaml(
        name: &str,
        interval: Option<u32>,
        count: Option<u32>,
        failure_limit: u32,
        abort: bool,
    ) -> String {
        let mut fields = Vec::new();
        if let Some(i) = interval {
            fields.push(format!("interval: {i}s"));
        }
        if let Some(c) = count {
            fields.push(format!("count: {c}"));
        }
        fields.push(format!("failureLimit: {failure_limit}"));
        fields.push(format!(
            "onInconclusive: {}",
            if abort { "abort" } else { "pause" }
        ));
        fields.push(format!("metrics: [{{name: {name}, template: error-rate}}]"));
        format!("{{{}}}", fields.join(", "))
    }

    fn render(shape: &Shape, target: usize) -> Rollout {
        let mut steps = Vec::new();
        let mut weight = 0u8;
        for s in &shape.steps {
            match s {
                StepShape::Weight(d) => {
                    if weight + d <= 100 {
                        weight += d;
                        steps.push(format!("{{setWeight: {weight}}}"));
                    }
                }
                StepShape::Pause(None) => steps.push("{pause: {}}".into()),
                StepShape::Pause(Some(s)) => steps.push(format!("{{pause: {{duration: {s}s}}}}")),
                StepShape::Analysis {
                    count,
                    interval,
                    failure_limit,
                    abort_if_inconclusive,
                } => {
                    let (interval, count) = if *count > 1 {
                        (Some(*interval), Some(*count))
                    } else {
                        (None, None)
                    };
                    steps.push(format!(
                        "{{analysis: {}}}",
                        analysis_yaml(
                            "errors",
                            interval,
                            count,
                            *failure_limit,
                            *abort_if_inconclusive
                        )
                    ));
                }
            }
        }
        if steps.is_empty() {
            steps.push("{setWeight: 50}".into());
        }
        let mut body = format!(
            "router: edge\nservice: web\n{}\nsteps: [{}]\nprogressDeadline: {}s\nprogressDeadlineAbort: {}\n",
            TARGETS[target],
            steps.join(", "),
            shape.deadline,
            shape.deadline_abort
        );
        if let Some((interval, failure_limit, abort)) = shape.background {
            body += &format!(
                "analysis: {}\n",
                analysis_yaml("bg-errors", Some(interval), None, failure_limit, abort)
            );
        }
        if let Some(cron) = shape.window {
            body += &format!("window: {{cron: '{cron}'}}\n");
        }
        if shape.drift_hold {
            body += "onDrift: hold\n";
        }
        if shape.stepped_rollback {
            body += "rollback: {mode: stepped, interval: 30s}\n";
        }
        spec(&body)
    }

    fn step_shape() -> impl Strategy<Value = StepShape> {
        prop_oneof![
            3 => (1u8..=40).prop_map(StepShape::Weight),
            1 => prop::option::of(prop_oneof![Just(30u32), Just(60), Just(300), Just(3600)])
                .prop_map(StepShape::Pause),
            1 => (1u32..=3, prop_oneof![Just(30u32), Just(60)], 0u32..=2, any::<bool>()).prop_map(
                |(count, interval, failure_limit, abort_if_inconclusive)| StepShape::Analysis {
                    count,
                    interval,
                    failure_limit,
                    abort_if_inconclusive,
                }
            ),
        ]
    }

    fn steps() -> impl Strategy<Value = Vec<StepShape>> {
        prop::collection::vec(step_shape(), 1..8)
    }

    fn shape() -> impl Strategy<Value = Shape> {
        (
            steps(),
            prop::option::of((prop_oneof![Just(30u32), Just(60)], 0u32..=2, any::<bool>())),
            prop::option::of(prop::sample::select(WINDOWS.to_vec())),
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just(60u32), Just(300), Just(600)],
            any::<bool>(),
        )
            .prop_map(
                |(
                    steps,
                    background,
                    window,
                    drift_hold,
                    stepped_rollback,
                    deadline,
                    deadline_abort,
                )| Shape {
                    steps,
                    background,
                    window,
                    drift_hold,
                    stepped_rollback,
                    deadline,
                    deadline_abort,
                },
            )
    }

    #[derive(Clone, Debug)]
    enum Event {
        Advance(u32),
        /// Move the clock to the last plan's wake time.
        Wake,
        RouterDown,
        RouterUp,
        /// Someone sets raw weights by hand: blue, green, and purple when present.
        HandSet(u32, u32, Option<u32>),
        Measure(Outcome),
        Promote,
        Abort,
        EditSteps(Vec<StepShape>),
        /// Merge a spec naming other backends (`TARGETS[i]`).
        Switch(usize),
        /// `git revert` to a spec that was in force earlier.
        Revert(usize),
        CrashBeforeApply,
        Invalid,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            4 => prop_oneof![Just(0u32), 1u32..=60, 60u32..=3600].prop_map(Event::Advance),
            4 => Just(Event::Wake),
            1 => Just(Event::RouterDown),
            2 => Just(Event::RouterUp),
            1 => (0u32..=256, 0u32..=256, prop::option::of(0u32..=100))
                .prop_map(|(b, g, p)| Event::HandSet(b, g, p)),
            5 => prop_oneof![
                6 => Just(Outcome::Success),
                1 => Just(Outcome::Failure),
                1 => Just(Outcome::Inconclusive),
                1 => Just(Outcome::Error),
            ]
            .prop_map(Event::Measure),
            1 => Just(Event::Promote),
            1 => Just(Event::Abort),
            1 => steps().prop_map(Event::EditSteps),
            // Removing the canary (index 0) is what a revert of the first canary looks like.
            2 => prop_oneof![Just(0usize), 1usize..TARGETS.len()].prop_map(Event::Switch),
            2 => (0usize..64).prop_map(Event::Revert),
            1 => Just(Event::CrashBeforeApply),
            1 => Just(Event::Invalid),
        ]
    }

    fn answer(outcome: Outcome) -> Answer {
        match outcome {
            Outcome::Success => value(0.0),
            Outcome::Failure => value(0.5),
            Outcome::Inconclusive => NO_DATA,
            Outcome::Error => unreachable_provider(),
        }
    }

    /// One plan, with what it was planned from.
    #[derive(Debug)]
    struct Record {
        event: Event,
        spec: Rollout,
        recorded: Status,
        plan: Plan,
        now: DateTime<Utc>,
        /// The last rollout in flight before this plan: what a stepped rollback steps back from.
        last_run: Option<Run>,
    }

    /// Runs the events against a world starting with `target` and `shape`; one plan per event.
    fn simulate(shape: Shape, target: usize, events: Vec<Event>) -> Vec<Record> {
        let first = render(&shape, target);
        let mut history = vec![(shape, target, first.clone())];
        let mut current = 0;
        let mut w = World::new(first);
        let mut gate = 0;
        let mut last_run: Option<Run> = None;
        let mut records = Vec::new();
        for event in events {
            let recorded = w.status.clone();
            let spec_before = w.spec.clone();
            let plan = match &event {
                Event::Advance(s) => {
                    w.advance(secs(u64::from(*s)));
                    w.step()
                }
                Event::Wake => {
                    if let Some(at) = w.last.as_ref().and_then(|p| p.wake)
                        && at > w.now
                    {
                        w.now = at;
                    }
                    w.step()
                }
                Event::RouterDown => {
                    w.router_up = false;
                    w.step()
                }
                Event::RouterUp => {
                    w.router_up = true;
                    w.step()
                }
                Event::HandSet(b, g, p) => {
                    let mut weights = vec![("blue", *b), ("green", *g)];
                    if let Some(p) = p {
                        weights.push(("purple", *p));
                    }
                    w.hand_set(&weights);
                    w.step()
                }
                Event::Measure(outcome) => {
                    if w.last.as_ref().is_some_and(|p| !p.measure.is_empty()) {
                        w.measure(answer(*outcome))
                    } else {
                        w.step()
                    }
                }
                Event::Promote | Event::Abort => {
                    gate += 1;
                    let action = if matches!(event, Event::Promote) {
                        GateAction::Promote
                    } else {
                        GateAction::Abort
                    };
                    w.commit(&format!("gate-{gate}"), action);
                    w.step()
                }
                Event::EditSteps(steps) => {
                    let (shape, target, _) = &history[current];
                    let shape = Shape {
                        steps: steps.clone(),
                        ..shape.clone()
                    };
                    let spec = render(&shape, *target);
                    history.push((shape, *target, spec.clone()));
                    current = history.len() - 1;
                    w.spec = spec;
                    w.step()
                }
                Event::Switch(target) => {
                    let spec = render(&history[current].0, *target);
                    history.push((history[current].0.clone(), *target, spec.clone()));
                    current = history.len() - 1;
                    w.spec = spec;
                    w.step()
                }
                Event::Revert(i) => {
                    current = i % history.len();
                    w.spec = history[current].2.clone();
                    w.step()
                }
                Event::CrashBeforeApply => w.crash_before_apply(),
                Event::Invalid => w.step_invalid("web.yaml:1:1: spec: broken"),
            };
            // Specs only change before a plan; a plan is made with the spec in force after the event.
            let spec = if matches!(event, Event::Invalid) {
                spec_before
            } else {
                w.spec.clone()
            };
            let next_run = plan.status.progress.run().cloned();
            records.push(Record {
                event,
                spec,
                recorded,
                plan,
                now: w.now,
                last_run: last_run.clone(),
            });
            if next_run.is_some() {
                last_run = next_run;
            }
        }
        records
    }

    fn cases() -> impl Strategy<Value = (Shape, usize, Vec<Event>)> {
        (
            shape(),
            1usize..TARGETS.len(),
            prop::collection::vec(event(), 1..40),
        )
    }

    /// Checks one plan's traffic against the spec in force: sums to 100, and every backend that
    /// is not on the stable side carries 0, 100 or one of the spec's `setWeight` values.
    fn check_traffic(r: &Record) -> Result<(), TestCaseError> {
        let Some(t) = &r.plan.traffic else {
            return Ok(());
        };
        let sum: u32 = t.backends.values().map(|w| u32::from(w.get())).sum();
        prop_assert_eq!(
            sum,
            100,
            "weights do not sum to 100 after {:?}: {:#?}",
            r.event,
            r
        );
        // Stepped rollbacks included: each step back is computed from the spec in force.
        let allowed = r.spec.allowed_weights();
        let target = r.spec.target();
        let stepping_back = matches!(r.plan.action, Action::RollBack { .. } | Action::StepBack);
        // On the way back, the old run's stable takes the rest, and its canary steps down
        // through the spec's weights.
        let old = r.last_run.as_ref().filter(|_| stepping_back);
        for (backend, weight) in &t.backends {
            let stable_side = match old {
                Some(run) => {
                    *backend == run.stable
                        || (*backend == target.stable.name && *backend != run.canary)
                }
                None => *backend == target.stable.name,
            };
            if !stable_side {
                prop_assert!(
                    allowed.contains(weight),
                    "after {:?}, backend {} gets {}, not one of {:?}: {:#?}",
                    r.event,
                    backend,
                    weight,
                    allowed,
                    r
                );
            }
        }
        Ok(())
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            // A failure found here becomes a table test above; no regression files in the tree.
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// Checks the order of one plan's effects against what its traffic does to the canary,
    /// judged from the data (weights before and after), not from the action's name.
    fn check_order(r: &Record) -> Result<(), TestCaseError> {
        use canaryd::core::plan::Effect;
        let effects = r.plan.effects();
        let at = |e: Effect| effects.iter().position(|x| *x == e);
        for e in &effects {
            prop_assert_eq!(
                effects.iter().filter(|x| *x == e).count(),
                1,
                "{:?} twice",
                e
            );
        }
        let record = at(Effect::Record);
        prop_assert!(record.is_some(), "no record: {:?}", effects);
        if let Some(m) = at(Effect::Measure) {
            prop_assert!(record < Some(m), "measured before recording: {:?}", effects);
        }
        let Some(traffic) = &r.plan.traffic else {
            prop_assert!(at(Effect::SetTraffic).is_none(), "{:?}", effects);
            return Ok(());
        };
        let set = at(Effect::SetTraffic);
        prop_assert!(set.is_some(), "traffic never set: {:?}", effects);
        // The canary is the backend of a revision on trial: that of the run after the plan or
        // before it.
        let before_run = r.recorded.progress.run();
        let canary = r
            .plan
            .status
            .progress
            .run()
            .or(before_run)
            .map(|run| run.canary.clone());
        if let Some(canary) = canary {
            let after = traffic
                .backends
                .get(&canary)
                .copied()
                .unwrap_or(Weight::ZERO);
            let before = before_run
                .filter(|run| run.canary == canary)
                .map_or(Weight::ZERO, |run| run.weight);
            // A rollback may raise a backend back to where a promoted revision had it: that
            // is the way back to a proven version, applied at once.
            let rollback = matches!(r.plan.action, Action::RollBack { .. } | Action::StepBack);
            if matches!(r.plan.action, Action::Abort { .. }) {
                prop_assert!(after <= before, "an abort raised {}: {:#?}", canary, r);
            }
            if after > before && !rollback {
                prop_assert!(
                    record < set,
                    "canary {} {} -> {} applied before it was recorded: {:?} {:#?}",
                    canary,
                    before,
                    after,
                    effects,
                    r
                );
            }
        }
        if r.plan.toward_safety() {
            prop_assert!(
                set < record
                    && at(Effect::ReadBack).is_some_and(|b| set < Some(b) && Some(b) < record),
                "a step back recorded before it was applied and read back: {:?}",
                effects
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn a_step_toward_the_canary_is_recorded_first_and_a_step_back_applied_first(
            (shape, target, events) in cases()
        ) {
            for r in simulate(shape, target, events) {
                check_order(&r)?;
            }
        }

        #[test]
        fn no_input_makes_the_planner_emit_a_weight_the_spec_does_not_name(
            (shape, target, events) in cases()
        ) {
            for r in simulate(shape, target, events) {
                check_traffic(&r)?;
                if let Some(wake) = r.plan.wake {
                    prop_assert!(wake >= r.now, "wake in the past: {:?}", r);
                }
            }
        }

        #[test]
        fn an_aborted_revision_gets_no_canary_traffic_until_the_revision_changes(
            (shape, target, events) in cases()
        ) {
            let mut aborted: Option<Revision> = None;
            for r in simulate(shape, target, events) {
                if aborted.as_ref().is_some_and(|a| *a != r.spec.revision) {
                    aborted = None;
                }
                if let Progress::Aborted { revision, .. } = &r.plan.status.progress
                    && *revision == r.spec.revision
                {
                    aborted = Some(revision.clone());
                }
                // Also when the spec comes back to a revision aborted earlier.
                let was_aborted = r.recorded.aborted.contains(&r.spec.revision);
                if (aborted.is_some() || was_aborted)
                    && let (Some(t), Some(c)) = (&r.plan.traffic, &r.spec.target().canary)
                {
                    let w = t.backends.get(&c.name).copied().unwrap_or(Weight::ZERO);
                    prop_assert_eq!(w, Weight::ZERO, "aborted canary {} gets traffic: {:#?}", c.name, r);
                }
            }
        }
    }
}

#[test]
fn a_router_that_forgot_every_weight_is_drift_and_set_again() {
    // The embedded router restarts with the daemon and knows no weights until they are set.
    let mut w = World::new(canary(BASIC_STEPS)).at_step(1);
    w.hand_set(&[]);
    let p = w.step();
    assert!(matches!(p.action, Action::Reapply { .. }), "{:?}", p.action);
    assert_eq!(w.router(), "blue=90 green=10");
    assert_eq!(
        w.status.drift.as_ref().map(|d| d.live.is_empty()),
        Some(true)
    );
}

#[test]
fn two_promotes_for_one_pause_pass_only_that_pause() {
    let mut w = World::new(canary(
        "steps: [{setWeight: 20}, {pause: {}}, {setWeight: 40}, {pause: {}}, {setWeight: 60}]",
    ))
    .at_step(1);
    w.commit("promote-1", GateAction::Promote);
    w.commit("promote-2", GateAction::Promote);
    w.step();
    w.settle();
    assert_eq!(
        (w.phase(), w.run().step),
        ("paused", 3),
        "held at the second pause"
    );
    assert_eq!(w.status.last_gate.as_deref(), Some("promote-2"));
    assert_eq!(w.router(), "blue=60 green=40");
}

const ROUTED_STEPS: &str = "
    sticky: {header: X-User-Id}
    steps:
    - setHeaderRoute:
        name: testers
        match: [{headerName: X-Canary, headerValue: {exact: always}}]
    - pause: {duration: 5m}
    - setWeight: 10
    - pause: {duration: 5m}
    - setHeaderRoute: {name: testers}
    - setWeight: 50
    - pause: {}
";

#[test]
fn a_header_route_sends_testers_to_the_canary_at_weight_0_until_removed() {
    let mut w = World::new(canary(ROUTED_STEPS));
    let p = w.step();
    assert_eq!(p.action, Action::SetRoutes { step: 0 });
    let t = p.traffic.clone().expect("routes are traffic");
    assert_eq!(w.router(), "blue=100 green=0");
    assert_eq!(t.routes.len(), 1);
    assert_eq!(t.routes[0].backend, "green");
    assert_eq!(t.sticky, None, "no split to keep users on at weight 0");
    // Recorded first: a route toward the canary is a step toward it.
    assert_eq!(p.effects()[0], canaryd::core::plan::Effect::Record);
    // Read back with the route in place: on to the pause.
    let p = w.step();
    assert!(w.run().verified);
    assert_eq!(p.action, Action::Pause { step: 1 });

    let mut w = w.at_step(3);
    let live = w.router.clone();
    assert_eq!(
        live.routes.len(),
        1,
        "the route stays while the weight grows"
    );
    assert_eq!(
        live.sticky,
        Some(canaryd::core::model::Sticky::Header("X-User-Id".into())),
        "sticky while both sides carry weight"
    );
    // Someone drops the route by hand: drift, re-applied.
    w.router.routes.clear();
    let p = w.step();
    assert!(
        matches!(&p.action, Action::Reapply { reason } if reason.contains("header routes")),
        "{:?}",
        p.action
    );
    assert_eq!(w.router.routes.len(), 1);

    let w = w.at_step(6);
    assert!(w.router.routes.is_empty(), "removed at step 5");
    assert_eq!(w.router(), "blue=50 green=50");
}

#[test]
fn an_abort_removes_every_route_and_the_sticky_key() {
    let mut w = World::new(canary(ROUTED_STEPS)).at_step(3);
    assert_eq!(w.router.routes.len(), 1);
    w.commit("badc0de", GateAction::Abort);
    let p = w.step();
    assert!(matches!(p.action, Action::Abort { .. }));
    assert_eq!(w.router(), "blue=100 green=0");
    assert!(w.router.routes.is_empty(), "{:?}", w.router);
    assert_eq!(w.router.sticky, None);
}

const AB_TEST: &str = "
    analysis:
      interval: 1m
      iterations: 3
      match:
      - headers: {x-canary: {exact: insider}}
      - headers: {cookie: {regex: \"^(.*?;)?(canary=always)(;.*)?$\"}}
      metrics: [{name: errors, template: error-rate}]
";

#[test]
fn flaggers_ab_form_shows_the_canary_to_matched_users_only_then_promotes() {
    let spec = canary(AB_TEST);
    assert!(spec.background.is_none(), "the analysis is the step");
    assert_eq!(spec.steps.len(), 2);
    let mut w = World::new(spec);
    let p = w.step();
    assert_eq!(p.action, Action::SetRoutes { step: 0 });
    assert_eq!(
        w.router(),
        "blue=100 green=0",
        "ordinary users stay on stable"
    );
    assert_eq!(w.router.routes[0].matches.len(), 2);
    let mut w = w.at_step(1);
    let started = w.now;
    run_until(&mut w, 0.0, |w| w.phase() == "promoted");
    assert_eq!(
        w.now - started,
        chrono::Duration::minutes(2),
        "three iterations a minute apart"
    );
    assert_eq!(w.router(), "blue=0 green=100");
    assert!(w.router.routes.is_empty());
}

#[test]
fn flaggers_ab_form_aborts_on_a_failing_metric_with_nobody_left_on_the_canary() {
    let mut w = World::new(canary(AB_TEST)).at_step(1);
    let p = w.measure(value(0.5));
    assert!(matches!(p.action, Action::Abort { .. }), "{:?}", p.action);
    assert_eq!(w.router(), "blue=100 green=0");
    assert!(w.router.routes.is_empty());
}

const BLUE_GREEN: &str = "
    strategy:
      blueGreen:
        preview: [{headerName: X-Preview, headerValue: {exact: \"1\"}}]
        prePromotionAnalysis: {interval: 1m, count: 2, metrics: [{name: errors, template: error-rate}]}
        autoPromotionSeconds: 30
        postPromotionAnalysis: {interval: 1m, count: 2, metrics: [{name: errors, template: error-rate}]}
";

/// Plans, measuring `answer` whenever asked and sleeping to each wake, until `done`; the
/// traffic the router was given meanwhile.
fn run_until(w: &mut World, answer: f64, done: impl Fn(&World) -> bool) -> Vec<Traffic> {
    let from = w.applied.len();
    for _ in 0..100 {
        let p = w.step();
        if done(w) {
            return w.applied[from..].to_vec();
        }
        if !p.measure.is_empty() {
            w.measure(value(answer));
        } else if p.traffic.is_none()
            && let Some(at) = p.wake
        {
            // Nothing to read back: on to the next time the plan asked for.
            w.now = at;
        }
    }
    panic!("not done; last: {:#?}", w.last);
}

#[test]
fn blue_green_previews_at_0_then_switches_all_traffic_in_one_apply() {
    let spec = canary(BLUE_GREEN);
    assert_eq!(spec.steps.len(), 5, "{:?}", spec.steps);
    let mut w = World::new(spec);
    let p = w.step();
    assert_eq!(p.action, Action::SetRoutes { step: 0 });
    assert_eq!(
        w.router(),
        "blue=100 green=0",
        "ordinary traffic stays on blue"
    );
    assert_eq!(w.router.routes[0].name, "preview");
    // Pre-promotion analysis on the preview traffic, then 30 s, then the switch.
    let switches = run_until(&mut w, 0.0, |w| w.run().weight == pct(100));
    assert_eq!(
        switches
            .iter()
            .map(|t| t.backends["green"].get())
            .collect::<Vec<_>>(),
        [100],
        "one apply moves everyone: {switches:?}"
    );
    assert_eq!(w.router(), "blue=0 green=100");
    assert!(
        w.router.backends.contains_key("blue"),
        "the old side kept, at 0"
    );
    run_until(&mut w, 0.0, |w| w.phase() == "promoted");
    assert!(
        w.router.routes.is_empty(),
        "the preview route goes with the promotion"
    );
}

#[test]
fn blue_green_switches_back_in_one_apply_when_post_promotion_analysis_fails() {
    let mut w = World::new(canary(BLUE_GREEN));
    run_until(&mut w, 0.0, |w| {
        matches!(w.status.progress, Progress::Analysing { .. }) && w.run().weight == pct(100)
    });
    let applies = run_until(&mut w, 0.5, |w| w.phase() == "aborted");
    assert_eq!(applies.len(), 1, "{applies:?}");
    assert_eq!(w.router(), "blue=100 green=0");
}

#[test]
fn blue_green_without_auto_promotion_waits_for_a_promote_commit() {
    let mut w = World::new(canary(
        "
        strategy:
          blueGreen:
            preview: [{headers: {X-Preview: {exact: \"1\"}}}]
            autoPromotionEnabled: false
        ",
    ));
    let p = w.settle();
    assert!(
        matches!(&p.action, Action::Wait { reason } if reason.contains("promote")),
        "{:?}",
        p.action
    );
    assert_eq!(w.router(), "blue=100 green=0");
    w.commit("c1", GateAction::Promote);
    w.settle();
    assert_eq!(w.router(), "blue=0 green=100");
}

// ---------------------------------------------------------------------------------------------
// Rollout groups: the members' plans with what their group allows, as the daemon makes them
// ---------------------------------------------------------------------------------------------

mod groups {
    use super::*;
    use canaryd::core::group;
    use canaryd::core::model::Catalog;

    /// Members `a` and `b` (services `a` and `b`, canary `green` over `blue`) with the steps
    /// given, in a group whose `spec:` is `group`.
    struct Release {
        catalog: Catalog,
        worlds: Vec<World>,
    }

    impl Release {
        fn new(steps: [&str; 2], group: &str) -> Release {
            let catalog = Release::catalog(steps, group, ["2", "2"]);
            let worlds = catalog.rollouts.iter().cloned().map(World::new).collect();
            Release { catalog, worlds }
        }

        /// The specs with canary versions `versions` (a, b).
        fn catalog(steps: [&str; 2], group: &str, versions: [&str; 2]) -> Catalog {
            let mut text = String::new();
            for ((name, steps), v) in ["a", "b"].into_iter().zip(steps).zip(versions) {
                text.push_str(&format!(
                    "apiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata: {{name: {name}}}\n\
                     spec: {{router: edge, service: {name}, stable: {{name: blue, version: '1'}}, \
                     canary: {{name: green, version: '{v}'}}, steps: {steps}}}\n---\n"
                ));
            }
            text.push_str(&format!(
                "apiVersion: canaryd.dev/v1alpha1\nkind: RolloutGroup\nmetadata: {{name: shop}}\nspec: {group}\n"
            ));
            let (catalog, diags) =
                validate_texts(&[("routers.yaml", ROUTERS), ("shop.yaml", &text)]);
            assert!(diags.iter().all(|d| !d.is_error()), "{diags:#?}");
            assert_eq!(catalog.groups.len(), 1);
            catalog
        }

        /// A merge that changes the members' specs to `catalog`'s mid-release.
        fn change(&mut self, catalog: Catalog) {
            for w in &mut self.worlds {
                w.spec = catalog
                    .rollouts
                    .iter()
                    .find(|r| r.name == w.spec.name)
                    .unwrap()
                    .clone();
            }
            self.catalog = catalog;
        }

        fn world(&mut self, name: &str) -> &mut World {
            self.worlds
                .iter_mut()
                .find(|w| w.spec.name == name)
                .unwrap()
        }

        fn gates(&self, statuses: &[&Status]) -> BTreeMap<String, GroupGate> {
            group::all_gates(&self.catalog, |name| {
                self.worlds
                    .iter()
                    .zip(statuses)
                    .find(|(w, _)| w.spec.name == name)
                    .map(|(_, s)| *s)
            })
        }

        /// One round of the daemon: every member planned with its gate, planned again while
        /// the gates change with what the others' plans say, then all recorded and applied.
        fn turn(&mut self) -> Vec<Plan> {
            let recorded: Vec<&Status> = self.worlds.iter().map(|w| &w.status).collect();
            let first = self.gates(&recorded);
            let mut gates = first.clone();
            let mut plans: Vec<Plan> = Vec::new();
            for _ in 0..3 {
                plans = self
                    .worlds
                    .iter()
                    .map(|w| w.plan_with(gates.get(&w.spec.name)))
                    .collect();
                let planned: Vec<&Status> = plans.iter().map(|p| &p.status).collect();
                let next = group::replan(&first, self.gates(&planned));
                if next == gates {
                    break;
                }
                gates = next;
            }
            self.worlds
                .iter_mut()
                .zip(plans)
                .map(|(w, p)| w.take(p, true))
                .collect()
        }

        /// Rounds until one changes nothing, as a look does; the canary weights of the members
        /// after each round, and the last round's plans.
        fn settle(&mut self) -> (Vec<Vec<u32>>, Vec<Plan>) {
            let mut greens = Vec::new();
            for _ in 0..10 {
                let before: Vec<Status> = self.worlds.iter().map(|w| w.status.clone()).collect();
                let plans = self.turn();
                greens.push(self.green());
                // (An aborted rollout asks for its revert on every plan: not a change.)
                if plans
                    .iter()
                    .zip(&before)
                    .all(|(p, b)| p.traffic.is_none() && p.status == *b)
                {
                    return (greens, plans);
                }
            }
            let last: Vec<(&Progress, Option<&Plan>)> = self
                .worlds
                .iter()
                .map(|w| (&w.status.progress, w.last.as_ref()))
                .collect();
            panic!("the release did not settle in 10 rounds: {last:#?}");
        }

        fn advance(&mut self, d: Duration) {
            for w in &mut self.worlds {
                w.advance(d);
            }
        }

        fn green(&self) -> Vec<u32> {
            self.worlds
                .iter()
                .map(|w| w.router.backends["green"])
                .collect()
        }
    }

    fn promoted(w: &World) -> bool {
        matches!(w.status.progress, Progress::Promoted { .. })
    }

    /// Lockstep: `a` pauses 1 minute at each weight and `b` 3; `a` waits for `b` at each, so
    /// both routers carry the same weight after every round, and both promote in the same one.
    #[test]
    fn lockstep_members_stand_at_one_weight_and_promote_together() {
        let mut r = Release::new(
            [
                "[{setWeight: 10}, {pause: {duration: 1m}}, {setWeight: 50}, {pause: {duration: 1m}}]",
                "[{setWeight: 10}, {pause: {duration: 3m}}, {setWeight: 50}, {pause: {duration: 3m}}]",
            ],
            "{order: lockstep, members: [{rollout: a}, {rollout: b}]}",
        );
        let mut seen = Vec::new();
        let mut held = false;
        for _ in 0..40 {
            let (greens, plans) = r.settle();
            for green in greens {
                assert_eq!(green[0], green[1], "members apart: {green:?}\n{plans:#?}");
                seen.push(green[0]);
            }
            held |= matches!(&plans[0].action, Action::Hold { reason } if reason.contains("group `shop`: waiting for `b`"));
            if promoted(&r.worlds[0]) || promoted(&r.worlds[1]) {
                break;
            }
            r.advance(secs(30));
        }
        assert!(promoted(&r.worlds[0]) && promoted(&r.worlds[1]), "{seen:?}");
        assert!(held, "a never waited for b");
        seen.dedup();
        assert_eq!(seen, [10, 50, 100]);
        // `a` held at 10 % until b's 3 minutes were over.
        assert_eq!(r.worlds[0].router.backends["green"], 100);
    }

    /// Ordered: `b` waits for `a`'s promotion with all traffic on its stable, then starts.
    #[test]
    fn an_ordered_member_starts_after_what_it_depends_on_is_promoted() {
        let mut r = Release::new(
            [
                "[{setWeight: 20}, {pause: {duration: 2m}}]",
                "[{setWeight: 20}, {pause: {duration: 1m}}]",
            ],
            "{order: ordered, members: [{rollout: a}, {rollout: b, dependsOn: [a]}]}",
        );
        let mut a_promoted_at = None;
        let mut b_first_canary = None;
        for tick in 0..20 {
            let (_, plans) = r.settle();
            if a_promoted_at.is_none() && promoted(&r.worlds[0]) {
                a_promoted_at = Some(tick);
            }
            if b_first_canary.is_none() && r.worlds[1].router.backends["green"] > 0 {
                b_first_canary = Some(tick);
            }
            if a_promoted_at.is_none() {
                assert_eq!(r.worlds[1].router.backends["green"], 0);
                assert!(
                    matches!(&plans[1].action, Action::Hold { reason } if reason == "group `shop`: waiting for `a` to be promoted"),
                    "{:?}",
                    plans[1].action
                );
                assert!(matches!(
                    r.worlds[1].status.progress,
                    Progress::Waiting { .. }
                ));
            }
            if promoted(&r.worlds[1]) {
                break;
            }
            r.advance(secs(30));
        }
        let (a, b) = (a_promoted_at.unwrap(), b_first_canary.unwrap());
        assert!(b >= a, "b's canary at tick {b}, a promoted at tick {a}");
        assert!(promoted(&r.worlds[1]));
    }

    /// `dependsOn: {rollout: a, step: 2}`: `b` starts once `a` has entered its second step.
    #[test]
    fn an_ordered_member_can_wait_for_a_step() {
        let mut r = Release::new(
            [
                "[{setWeight: 20}, {pause: {duration: 2m}}, {setWeight: 60}, {pause: {duration: 2m}}]",
                "[{setWeight: 20}]",
            ],
            "{order: ordered, members: [{rollout: a}, {rollout: b, dependsOn: [{rollout: a, step: 3}]}]}",
        );
        r.settle();
        assert_eq!(r.green(), [20, 0]);
        r.advance(mins(2));
        let (greens, _) = r.settle();
        // a entered step 3 (60 %); b starts in the next round, once that is applied.
        assert_eq!(greens[0], [60, 0], "{greens:?}");
        assert_eq!(greens[1], [60, 20], "{greens:?}");
    }

    /// One member aborted (a person's abort commit here; a failed analysis the same): the
    /// other, in flight, aborts with the group's evidence naming the member that failed, and a
    /// member of the release already promoted goes back to 0 too.
    #[test]
    fn a_member_aborted_aborts_the_rest_of_the_release() {
        let mut r = Release::new(
            [
                "[{setWeight: 20}, {pause: {duration: 1m}}]",
                "[{setWeight: 20}, {pause: {}}]",
            ],
            "{order: ordered, members: [{rollout: a}, {rollout: b, dependsOn: [a]}]}",
        );
        for _ in 0..6 {
            r.settle();
            r.advance(secs(30));
        }
        assert!(promoted(&r.worlds[0]));
        assert_eq!(r.green(), [100, 20]);
        r.world("b").commit("c1", GateAction::Abort);
        let (greens, _) = r.settle();
        // b first, then a, the member b depends on.
        assert_eq!(greens[..2], [vec![100, 0], vec![0, 0]], "{greens:?}");
        let Progress::Aborted { evidence, .. } = &r.worlds[0].status.progress else {
            panic!("{:?}", r.worlds[0].status.progress)
        };
        assert!(
            evidence.summary.starts_with("group `shop`: `b` failed: "),
            "{}",
            evidence.summary
        );
        assert_eq!(r.green(), [0, 0]);
        // Settled: nothing moves again.
        let (_, plans) = r.settle();
        assert!(plans.iter().all(|p| p.traffic.is_none()), "{plans:#?}");
        assert!(r.worlds[0].last.as_ref().unwrap().revert.is_some());
    }

    /// Lockstep with one member failing while the other waits at the barrier: both back to 0
    /// within the round after.
    #[test]
    fn lockstep_fails_together() {
        let mut r = Release::new(
            [
                "[{setWeight: 10}, {pause: {duration: 1m}}, {setWeight: 50}]",
                "[{setWeight: 10}, {pause: {}}, {setWeight: 50}]",
            ],
            "{members: [{rollout: a}, {rollout: b}]}",
        );
        r.settle();
        r.advance(mins(2));
        r.settle();
        assert_eq!(r.green(), [10, 10], "a waits for b's pause");
        r.world("b").commit("c1", GateAction::Abort);
        r.settle();
        assert_eq!(r.green(), [0, 0]);
        assert!(
            r.worlds
                .iter()
                .all(|w| matches!(w.status.progress, Progress::Aborted { .. }))
        );
    }

    /// A member changed mid-release restarts under today's rules, in the same release: the
    /// other waits for it at the next weight.
    #[test]
    fn a_member_changed_mid_release_restarts_in_the_same_release() {
        let steps = [
            "[{setWeight: 10}, {pause: {duration: 1m}}, {setWeight: 50}, {pause: {duration: 1m}}]",
            "[{setWeight: 10}, {pause: {duration: 1m}}, {setWeight: 50}, {pause: {duration: 1m}}]",
        ];
        let group = "{members: [{rollout: a}, {rollout: b}]}";
        let mut r = Release::new(steps, group);
        r.settle();
        r.advance(mins(2));
        r.settle();
        assert_eq!(r.green(), [50, 50]);
        let release = r.worlds[0].status.release.clone();
        assert!(release.is_some());
        // b's canary becomes version 3: b starts again from its first step.
        r.change(Release::catalog(steps, group, ["2", "3"]));
        r.settle();
        assert_eq!(
            r.worlds[1].status.release, release,
            "b joined the release under way"
        );
        assert_eq!(r.green(), [50, 10]);
        // a holds before its promotion until b has caught up.
        r.advance(mins(2));
        r.settle();
        assert_eq!(r.green(), [50, 50]);
        assert!(!promoted(&r.worlds[0]), "a promoted without b");
        r.advance(mins(2));
        r.settle();
        assert!(promoted(&r.worlds[0]) && promoted(&r.worlds[1]));
    }
}
