//! Validation, table style: each case is a rollout spec and the problems it must (or must not) raise.

use std::time::Duration;

use canaryd::core::diag::{Diagnostic, Severity};
use canaryd::core::model::{Catalog, Step, Weight};
use canaryd::core::validate::{self, Known, Source};
use chrono::{TimeZone as _, Utc};

const ROUTER: &str = "apiVersion: canaryd.dev/v1alpha1
kind: Router
metadata: {name: edge}
spec: {kind: embedded, listen: \"127.0.0.1:8080\", backends: {blue: \"http://127.0.0.1:9001\", green: \"http://127.0.0.1:9002\"}}
";

/// A file holding the router and one rollout named `web` whose `spec:` body is `body`
/// (indented by two spaces).
fn rollout(body: &str) -> String {
    let body: String = body.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "{ROUTER}---\napiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n{body}"
    )
}

const TARGET: &str = "router: edge\nservice: web\nstable: {name: blue, version: \"1\"}\ncanary: {name: green, version: \"2\"}\n";

fn run(body: &str) -> (Catalog, Vec<Diagnostic>) {
    validate::validate_texts(&[("rollouts/web.yaml", &rollout(&format!("{TARGET}{body}")))])
}

/// Checks that `body` raises exactly the errors whose (field, message fragment) are listed.
fn check(body: &str, expected: &[(&str, &str)]) {
    let (catalog, diags) = run(body);
    let errors: Vec<&Diagnostic> = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    for (field, fragment) in expected {
        assert!(
            errors
                .iter()
                .any(|d| d.field == *field && d.message.contains(fragment) && d.help.is_some()),
            "expected `{field}: {fragment}` in\n{errors:#?}"
        );
    }
    assert_eq!(errors.len(), expected.len(), "{body}\n{errors:#?}");
    assert_eq!(catalog.rollouts.is_empty(), !expected.is_empty());
    assert_eq!(catalog.invalid.contains_key("web"), !expected.is_empty());
}

fn valid(body: &str) -> canaryd::core::model::Rollout {
    let (mut catalog, diags) = run(body);
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:#?}");
    catalog.rollouts.remove(0)
}

#[test]
fn weights_are_percentages_that_only_grow() {
    check("steps: [{setWeight: 10}, {setWeight: 50}]", &[]);
    check(
        "steps: [{setWeight: -5}]",
        &[("spec.steps[0].setWeight", "weight -5 is out of range")],
    );
    check(
        "steps: [{setWeight: 101}]",
        &[("spec.steps[0].setWeight", "weight 101 is out of range")],
    );
    check(
        "steps: [{setWeight: 50}, {pause: {}}, {setWeight: 20}]",
        &[(
            "spec.steps[2].setWeight",
            "weight 20 is lower than the 50 before it",
        )],
    );
    check("steps: []", &[("spec.steps", "the step list is empty")]);
    check("", &[("spec", "the rollout has no steps")]);
}

#[test]
fn a_repeated_weight_is_only_a_warning() {
    let (catalog, diags) = run("steps: [{setWeight: 20}, {setWeight: 20}]");
    assert_eq!(catalog.rollouts.len(), 1);
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].severity, Severity::Warning);
    assert!(diags[0].message.contains("repeats"));
}

#[test]
fn durations_need_units() {
    check(
        "steps: [{setWeight: 5}, {pause: {duration: 90}}]",
        &[("spec.steps[1].pause.duration", "has no unit")],
    );
    check(
        "steps: [{setWeight: 5}, {pause: {duration: 2 hours}}]",
        &[("spec.steps[1].pause.duration", "unknown unit")],
    );
    check(
        "steps: [{setWeight: 5}]\nprogressDeadline: 0s",
        &[("spec.progressDeadline", "zero")],
    );
    let r = valid("steps: [{setWeight: 5}, {pause: {duration: 1h30m}}]");
    assert_eq!(r.steps[1], Step::Pause(Some(Duration::from_secs(5400))));
    assert_eq!(
        r.progress_deadline,
        Duration::from_secs(600),
        "default as Argo and Flagger"
    );
    assert!(r.deadline_abort, "default abort, as Flagger");
}

#[test]
fn the_shorthand_expands_without_overshooting() {
    let r = valid("stepWeight: 20\nmaxWeight: 50\ninterval: 2m");
    let minute2 = Step::Pause(Some(Duration::from_secs(120)));
    let w = |n| Step::SetWeight(Weight::new(n).unwrap());
    assert_eq!(
        r.steps,
        vec![
            w(20),
            minute2.clone(),
            w(40),
            minute2.clone(),
            w(50),
            minute2
        ]
    );
    let r = valid("stepWeights: [1, 5, 25]");
    assert_eq!(r.steps.len(), 6);
    assert_eq!(
        r.steps[1],
        Step::Pause(Some(Duration::from_secs(60))),
        "default interval 1m"
    );
    let r = valid("stepWeight: 25");
    assert_eq!(
        r.allowed_weights()
            .iter()
            .map(|w| w.get())
            .collect::<Vec<_>>(),
        [0, 25, 50, 75, 100]
    );
    check(
        "stepWeight: 0",
        &[("spec.stepWeight", "never moves traffic")],
    );
    check(
        "stepWeights: [10, 5]",
        &[("spec.stepWeights[1]", "does not increase")],
    );
    check(
        "stepWeights: [10, 60]\nmaxWeight: 50",
        &[("spec.maxWeight", "below the last step weight 60")],
    );
    check(
        "stepWeight: 10\nsteps: [{setWeight: 10}]",
        &[("spec.stepWeight", "both `steps` and the shorthand")],
    );
    check(
        "stepWeight: 10\nstepWeights: [10]",
        &[("spec.stepWeights", "both `stepWeight` and `stepWeights`")],
    );
}

#[test]
fn backends_must_differ() {
    let with_canary = |canary: &str| {
        let body = format!(
            "router: edge\nservice: web\nstable: {{name: blue, version: \"1\"}}\ncanary: {canary}\nsteps: [{{setWeight: 5}}]"
        );
        validate::validate_texts(&[("r.yaml", &rollout(&body))])
    };
    let (catalog, diags) = with_canary("{name: blue, version: \"3\"}");
    assert!(catalog.rollouts.is_empty());
    assert_eq!(diags[0].field, "spec.canary.name");
    assert!(
        diags[0]
            .message
            .contains("canary and stable are the same backend `blue`")
    );
    // A canary identical to stable is no canary at all.
    let (catalog, diags) = with_canary("{name: blue, version: \"1\"}");
    assert!(diags.is_empty());
    assert!(catalog.rollouts[0].target().canary.is_none());
}

#[test]
fn analyses_are_checked_whole() {
    check(
        "steps: [{setWeight: 5}]\nanalysis: {metrics: []}",
        &[("spec.analysis.metrics", "no metrics")],
    );
    check(
        "steps: [{setWeight: 5}]\nanalysis:\n  metrics:\n    - {name: e, template: error-rate}\n    - {name: e, template: error-rate}",
        &[("spec.analysis.metrics[1].name", "appears twice")],
    );
    check(
        "steps: [{setWeight: 5}]\nanalysis:\n  metrics:\n    - {name: e, successCondition: result < 1}",
        &[("spec.analysis.metrics[0]", "has no source")],
    );
    check(
        "steps: [{setWeight: 5}]\nanalysis:\n  metrics:\n    - {name: e, provider: prometheus, query: up}",
        &[("spec.analysis.metrics[0]", "has no condition")],
    );
    check(
        "steps: [{setWeight: 5}]\nanalysis:\n  metrics:\n    - {name: e, provider: prometheus, query: up, failureCondition: result >}",
        &[("spec.analysis.metrics[0].failureCondition", "bad condition")],
    );
    check(
        "steps: [{setWeight: 5}, {analysis: {count: 0, metrics: [{name: e, template: error-rate}]}}]",
        &[("spec.steps[1].analysis.count", "never measures")],
    );
    check(
        "steps: [{setWeight: 5}, {analysis: {count: 3, metrics: [{name: e, template: error-rate}]}}]",
        &[("spec.steps[1].analysis.count", "needs an interval")],
    );
    // Several problems in one rollout are all reported.
    check(
        "steps: [{setWeight: 500}, {pause: {duration: soon}}]\nanalysis: {metrics: [{name: e, template: nope}]}",
        &[
            ("spec.steps[0].setWeight", "out of range"),
            ("spec.steps[1].pause.duration", "bad duration"),
            (
                "spec.analysis.metrics[0].template",
                "unknown metric template `nope`",
            ),
        ],
    );
}

#[test]
fn analysis_defaults_follow_argo_rollouts() {
    let r = valid(
        "steps: [{setWeight: 5}, {analysis: {metrics: [{name: e, template: error-rate}]}}]\nanalysis: {metrics: [{name: e, template: error-rate}]}",
    );
    let Step::Analysis(step) = &r.steps[1] else {
        panic!()
    };
    assert_eq!(
        (step.interval, step.count),
        (None, Some(1)),
        "a step analysis measures once"
    );
    assert_eq!(
        (
            step.failure_limit,
            step.inconclusive_limit,
            step.consecutive_error_limit
        ),
        (0, 0, 4)
    );
    let bg = r.background.unwrap();
    assert_eq!(
        (bg.interval, bg.count),
        (Some(Duration::from_secs(60)), None),
        "background runs until the end"
    );
    // Templates resolve: the built-in error-rate measures the embedded router.
    assert_eq!(bg.metrics[0].query, "error_rate");
    assert_eq!(
        bg.metrics[0].success.as_ref().unwrap().as_str(),
        "result <= 0.01"
    );
}

#[test]
fn metric_templates_from_the_repository_resolve_and_can_be_overridden() {
    let template = "apiVersion: canaryd.dev/v1alpha1\nkind: MetricTemplate\nmetadata: {name: errs}\nspec: {provider: prometheus, query: 'sum(x)', successCondition: result < 1}\n---\n";
    let body = format!(
        "{TARGET}steps: [{{setWeight: 5}}]\nanalysis: {{metrics: [{{name: e, template: errs, successCondition: result < 0.5}}]}}"
    );
    let text = format!("{template}{}", rollout(&body));
    let (catalog, diags) = validate::validate_texts(&[("r.yaml", &text)]);
    assert!(diags.is_empty(), "{diags:#?}");
    let m = &catalog.rollouts[0].background.as_ref().unwrap().metrics[0];
    assert_eq!(
        (m.query.as_str(), m.success.as_ref().unwrap().as_str()),
        ("sum(x)", "result < 0.5")
    );
}

#[test]
fn names_are_dns_labels_and_unique() {
    let text =
        rollout(&format!("{TARGET}steps: [{{setWeight: 5}}]")).replace("name: web", "name: Web_1");
    let (_, diags) = validate::validate_texts(&[("r.yaml", &text)]);
    assert!(
        diags
            .iter()
            .any(|d| d.field == "metadata.name" && d.message.contains("not a DNS label"))
    );
    let routers = format!("{ROUTER}---\n{ROUTER}");
    let (_, diags) = validate::validate_texts(&[("r.yaml", &routers)]);
    assert!(
        diags
            .iter()
            .any(|d| d.message == "router `edge` is defined twice" && d.position.line == 8),
        "{diags:#?}"
    );
}

#[test]
fn duplicate_rollouts_across_files_hold_both() {
    let a = rollout(&format!("{TARGET}steps: [{{setWeight: 5}}]"));
    let b = "apiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata: {name: web}\nspec: {router: edge, service: x, stable: {name: a}, steps: [{setWeight: 1}]}\n";
    let (catalog, diags) = validate::validate_texts(&[("a.yaml", &a), ("b.yaml", b)]);
    assert!(catalog.rollouts.is_empty(), "neither copy can be trusted");
    assert!(catalog.invalid.contains_key("web"));
    let d = diags.iter().find(|d| d.file == "b.yaml").unwrap();
    assert!(
        d.help
            .as_ref()
            .unwrap()
            .contains("first defined at a.yaml:"),
        "{d:#?}"
    );
}

#[test]
fn routers_may_come_from_the_controller_configuration() {
    let text = "apiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata: {name: web}\nspec:\n  router: lb\n  service: web\n  stable: {name: a}\n  steps: [{setWeight: 5}]\n".to_string();
    let sources = [Source {
        file: "r.yaml".into(),
        text,
    }];
    let (_, diags) = validate::validate(&sources, &Known::default());
    assert!(
        diags[0].message.contains("unknown router `lb`")
            && diags[0].help.as_ref().unwrap().contains("none is defined")
    );
    let known = Known {
        routers: [("lb".to_string(), canaryd::core::spec::RouterKind::Haproxy)].into(),
        ..Known::default()
    };
    let (catalog, diags) = validate::validate(&sources, &known);
    assert!(diags.is_empty() && catalog.rollouts.len() == 1);
}

#[test]
fn one_bad_document_does_not_hide_the_others() {
    let good = rollout(&format!("{TARGET}steps: [{{setWeight: 5}}]"));
    let bad = "---\napiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata: {name: api}\nspec: {router: edge, service: api, stable: {name: a}, steps: [{setWeight: 900}]}\n";
    let (catalog, diags) = validate::validate_texts(&[("r.yaml", &format!("{good}{bad}"))]);
    assert_eq!(
        catalog
            .rollouts
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["web"]
    );
    assert!(
        catalog.invalid["api"][0].contains("r.yaml:19:75:"),
        "{:?}",
        catalog.invalid
    );
    assert_eq!(diags.len(), 1);
}

#[test]
fn a_malformed_file_holds_the_rollouts_it_names() {
    // A complete document before the syntax error is named and held; the broken one is held
    // through its file (the daemon holds every rollout last seen there), since a name read
    // from a half-parsed document cannot be trusted.
    let text = format!(
        "{}---\napiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata: {{name: api\nspec:\n  router: [edge\n",
        rollout(&format!("{TARGET}steps: [{{setWeight: 5}}]"))
    );
    let (catalog, diags) = validate::validate_texts(&[("r.yaml", &text)]);
    assert_eq!(catalog.broken_files, ["r.yaml"]);
    assert!(
        catalog.invalid.contains_key("web"),
        "its traffic must be held, not treated as deleted"
    );
    assert_eq!(
        catalog.invalid.len(),
        1,
        "no half-read name: {:?}",
        catalog.invalid
    );
    assert!(catalog.rollouts.is_empty());
    assert!(diags[0].message.starts_with("malformed YAML"));
}

#[test]
fn a_huge_file_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(100 * 1024 * 1024).unwrap(); // sparse: 100 MB that cost nothing to make
    let loaded = canaryd::edge::repo::load(&[dir.path().to_path_buf()], Some(dir.path())).unwrap();
    assert!(loaded.sources.is_empty());
    assert_eq!(loaded.broken, ["huge.yaml"]);
    assert!(
        loaded.diags[0].message.contains("100.0 MiB"),
        "{:?}",
        loaded.diags
    );
}

#[test]
fn the_revision_is_the_backends_not_the_steps() {
    let base = valid("steps: [{setWeight: 5}]");
    let edited = valid(
        "steps: [{setWeight: 5}, {pause: {}}, {setWeight: 50}]\nanalysis: {metrics: [{name: e, template: error-rate}]}",
    );
    assert_eq!(
        base.revision, edited.revision,
        "editing steps must not restart a rollout"
    );
    let (catalog, _) = validate::validate_texts(&[(
        "r.yaml",
        &rollout(
            "router: edge\nservice: web\nstable: {name: blue, version: \"1\"}\ncanary: {name: green, version: \"3\"}\nsteps: [{setWeight: 5}]",
        ),
    )]);
    assert_ne!(
        base.revision, catalog.rollouts[0].revision,
        "a new version is a new revision"
    );
    let retried = valid("steps: [{setWeight: 5}]\nretry: 1");
    assert_ne!(
        base.revision, retried.revision,
        "`retry` runs an aborted revision again"
    );
}

#[test]
fn windows_read_crontab_in_their_time_zone() {
    let r = valid(
        "steps: [{setWeight: 5}]\nwindow: {cron: \"* 9-16 * * 1-5\", timezone: Europe/Berlin}",
    );
    let w = r.window.unwrap();
    // Monday 2026-11-23: Berlin is UTC+1 in winter.
    let utc = |d, h, m| Utc.with_ymd_and_hms(2026, 11, d, h, m, 0).unwrap();
    assert!(!w.contains(utc(23, 7, 59)), "08:59 Berlin");
    assert!(w.contains(utc(23, 8, 0)), "09:00 Berlin");
    assert!(w.contains(utc(23, 15, 59)), "16:59 Berlin");
    assert!(!w.contains(utc(23, 16, 0)), "17:00 Berlin");
    assert!(!w.contains(utc(22, 10, 0)), "Sunday");
    assert_eq!(
        w.next_open(utc(21, 12, 0)),
        Some(utc(23, 8, 0)),
        "Saturday: opens Monday 09:00 Berlin"
    );
    // Summer time: 09:00 Berlin is 07:00 UTC.
    let summer = Utc.with_ymd_and_hms(2026, 7, 6, 7, 0, 0).unwrap();
    assert!(w.contains(summer));
    check(
        "steps: [{setWeight: 5}]\nwindow: {cron: \"* 9-16 * *\"}",
        &[("spec.window.cron", "expected 5 fields")],
    );
    check(
        "steps: [{setWeight: 5}]\nwindow: {cron: \"61 * * * *\"}",
        &[("spec.window.cron", "minute field `61`")],
    );
    check(
        "steps: [{setWeight: 5}]\nwindow: {cron: \"* * * * *\", timezone: Mars/Olympus}",
        &[("spec.window.timezone", "unknown time zone")],
    );
}

#[test]
fn stepped_rollback_and_drift_policy_are_read() {
    let r = valid("steps: [{setWeight: 5}]\nrollback: {mode: stepped}\nonDrift: hold");
    assert_eq!(
        r.rollback,
        canaryd::core::model::RollbackPolicy::Stepped(Duration::from_secs(30))
    );
    assert_eq!(r.on_drift, canaryd::core::spec::DriftPolicy::Hold);
    let (_, diags) = run("steps: [{setWeight: 5}]\nrollback: {mode: immediate, interval: 1m}");
    assert!(
        diags
            .iter()
            .any(|d| d.severity == Severity::Warning && d.field == "spec.rollback.interval")
    );
}

#[test]
fn every_unknown_field_is_reported_with_a_suggestion_and_the_rest_still_checked() {
    let (catalog, diags) = run(
        "stepweight: 10\nsteps:\n  - setWeight: 150\n  - pause: {durration: 5m}\nanalysis:\n  metrics:\n    - {name: e, template: error-rate, succesCondition: result < 1}\n",
    );
    let found: Vec<(String, String, Option<String>)> = diags
        .iter()
        .map(|d| (d.field.clone(), d.message.clone(), d.help.clone()))
        .collect();
    let has = |field: &str, message: &str, near: Option<&str>| {
        found.iter().any(|(f, m, h)| {
            f == field
                && m == message
                && near.is_none_or(|n| {
                    h.as_deref()
                        .is_some_and(|h| h.contains(&format!("did you mean `{n}`?")))
                })
        })
    };
    assert!(
        has(
            "spec.stepweight",
            "unknown field `stepweight`",
            Some("stepWeight")
        ),
        "{found:#?}"
    );
    assert!(
        has(
            "spec.steps[1].pause.durration",
            "unknown field `durration`",
            Some("duration")
        ),
        "{found:#?}"
    );
    assert!(
        has(
            "spec.analysis.metrics[0].succesCondition",
            "unknown field `succesCondition`",
            Some("successCondition")
        ),
        "{found:#?}"
    );
    assert!(
        has(
            "spec.steps[0].setWeight",
            "weight 150 is out of range",
            None
        ),
        "and validation went on: {found:#?}"
    );
    assert_eq!(diags.len(), 4, "{found:#?}");
    assert!(catalog.rollouts.is_empty());
    // Each points at its key.
    let d = diags.iter().find(|d| d.field == "spec.stepweight").unwrap();
    assert_eq!((d.position.line, d.position.column), (14, 3));
}

#[test]
fn unknown_router_settings_are_refused_too() {
    let text = ROUTER.replace("listen:", "lisen:");
    let (_, diags) = validate::validate_texts(&[("r.yaml", &text)]);
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert!(
        diags[0].message.contains("unknown field `lisen`"),
        "{diags:#?}"
    );
}

#[test]
fn durations_are_bounded_so_nothing_overflows_later() {
    check(
        "steps: [{setWeight: 10}, {pause: {duration: 99999999d}}]",
        &[("spec.steps[1].pause.duration", "longer than a year")],
    );
    check(
        "steps: [{setWeight: 10}]\nprogressDeadline: 400d",
        &[("spec.progressDeadline", "longer than a year")],
    );
    valid("steps: [{setWeight: 10}, {pause: {duration: 366d}}]");
}

#[test]
fn the_shorthand_refuses_what_would_skip_the_canary() {
    check(
        "stepWeight: 10\nmaxWeight: 0",
        &[("spec.maxWeight", "straight to promotion")],
    );
    check(
        "stepWeight: 30\nmaxWeight: 20",
        &[("spec.stepWeight", "above `maxWeight` 20")],
    );
    check(
        "stepWeight: 10\ninterval: 0s",
        &[("spec.interval", "holds no weight")],
    );
}

#[test]
fn special_files_and_symlink_loops_are_refused_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::os::unix::fs::symlink("/dev/zero", root.join("zero.yaml")).unwrap();
    std::os::unix::fs::symlink("..", root.join("up")).unwrap();
    std::fs::write(root.join("ok.yaml"), ROUTER).unwrap();
    let loaded = canaryd::edge::repo::load(&[root.to_path_buf()], Some(root)).unwrap();
    assert_eq!(
        loaded.sources.len(),
        1,
        "the loop through `up` is not followed"
    );
    assert_eq!(loaded.broken, ["zero.yaml"]);
    assert_eq!(loaded.diags[0].message, "not a regular file");
}

#[test]
fn a_bad_condition_is_pointed_at_where_it_goes_wrong() {
    let (_, diags) = run(
        "steps: [{setWeight: 5}]\nanalysis:\n  metrics:\n    - name: e\n      template: error-rate\n      successCondition: result < < 1\n      failureCondition: \"result >\"\n",
    );
    let at = |field: &str| {
        let d = diags.iter().find(|d| d.field.ends_with(field)).unwrap();
        (d.position.line, d.position.column, d.message.clone())
    };
    // Line 19 is `      successCondition: result < < 1` (indented two more in the file).
    let (line, column, message) = at("successCondition");
    assert_eq!((line, column), (19, 36), "{message}");
    let (line, column, _) = at("failureCondition");
    assert_eq!(
        (line, column),
        (20, 36),
        "after the quote, at the end of `result >`"
    );
}

#[test]
fn judge_and_minimum_samples_are_checked() {
    let judge = |body: &str| {
        format!(
            "steps:\n  - setWeight: 20\n  - analysis:\n      interval: 1m\n      count: 2\n      judge:\n{}",
            body.lines()
                .map(|l| format!("        {l}\n"))
                .collect::<String>()
        )
    };
    let metrics = "metrics:\n  - {name: errors, template: error-rate, direction: increase}\n";
    // A judge alone is a whole analysis; its score is one more metric named `judge`.
    let r = valid(&judge(&format!("pass: 90\nmarginal: 75\n{metrics}")));
    let Step::Analysis(a) = &r.steps[1] else {
        panic!("{:?}", r.steps)
    };
    assert_eq!(a.metrics.len(), 1);
    let j = a.metrics[0].judge.as_ref().unwrap();
    assert_eq!(a.metrics[0].name, "judge");
    assert_eq!(j.metrics[0].query, "error_rate");
    assert_eq!(j.min_samples, 5);
    assert_eq!(j.confidence, 0.98);

    check(
        &judge(&format!("pass: 70\nmarginal: 80\n{metrics}")),
        &[("spec.steps[1].analysis.judge.marginal", "above pass")],
    );
    check(
        &judge(&format!("pass: 90\nmarginal: 75\nstep: 40s\n{metrics}")),
        &[(
            "spec.steps[1].analysis.judge.step",
            "fewer than two samples",
        )],
    );
    check(
        &judge(&format!("pass: 90\nmarginal: 75\nstep: 15s\n{metrics}")),
        &[(
            "spec.steps[1].analysis.judge.step",
            "gives 4 samples a side, fewer than the 5",
        )],
    );
    check(
        &judge(
            "pass: 90\nmarginal: 75\nmetrics:\n  - {name: e, template: error-rate, muted: true}\n",
        ),
        &[(
            "spec.steps[1].analysis.judge.metrics",
            "every judged metric is muted",
        )],
    );
    check(
        &judge(&format!(
            "pass: 90\nmarginal: 75\nconfidence: 1.5\n{metrics}"
        )),
        &[("spec.steps[1].analysis.judge.confidence", "not between")],
    );
    check(
        &judge("pass: 90\nmarginal: 75\nmetrics:\n  - {name: e, template: nope}\n"),
        &[(
            "spec.steps[1].analysis.judge.metrics[0].template",
            "unknown metric template",
        )],
    );
    // A single measurement has no window to sample.
    check(
        "steps:\n  - setWeight: 20\n  - analysis:\n      judge: {pass: 90, marginal: 75, metrics: [{name: e, template: error-rate}]}\n",
        &[(
            "spec.steps[1].analysis.judge",
            "needs the analysis to have an `interval`",
        )],
    );

    // The built-in request templates ask for 20 requests; a check may ask for more, not 0.
    let r = valid(
        "steps:\n  - setWeight: 20\n  - analysis:\n      metrics:\n        - {name: e, template: error-rate}\n        - {name: s, template: request-success-rate, minSamples: 500}\n",
    );
    let Step::Analysis(a) = &r.steps[1] else {
        panic!()
    };
    assert_eq!(a.metrics[0].min_samples, Some(20));
    assert_eq!(a.metrics[1].min_samples, Some(500));
    check(
        "steps:\n  - setWeight: 20\n  - analysis:\n      metrics:\n        - {name: e, template: error-rate, minSamples: 0}\n",
        &[(
            "spec.steps[1].analysis.metrics[0].minSamples",
            "asks for nothing",
        )],
    );
    check(
        "steps:\n  - setWeight: 20\n  - analysis:\n      metrics:\n        - {name: e, provider: prometheus, query: 'sum(x)', successCondition: 'result < 1', minSamples: 10}\n",
        &[(
            "spec.steps[1].analysis.metrics[0].minSamples",
            "has no `samplesQuery`",
        )],
    );
}

#[test]
fn promql_variables_are_checked_where_they_are_written() {
    let text = "steps:\n  - setWeight: 20\n  - analysis:\n      metrics:\n        - name: e\n          provider: prometheus\n          query: 'sum(rate(x{server=\"{{ canry }}\"}[{{ interval }}]))'\n          successCondition: result < 0.01\n";
    let (_, diags) = run(text);
    let e = diags.iter().find(|d| d.is_error()).unwrap();
    assert_eq!(e.field, "spec.steps[1].analysis.metrics[0].query");
    assert!(e.message.contains("unknown variable `canry`"), "{e:?}");
    // Pointed at the misspelt name itself.
    let line = rollout(&format!("{TARGET}{text}"))
        .lines()
        .nth(e.position.line - 1)
        .unwrap()
        .to_string();
    assert!(
        line[e.position.column - 1..].starts_with("canry }}"),
        "{line} {e:?}"
    );
}

#[test]
fn header_routes_and_stickiness_are_checked_where_they_are_written() {
    let r = valid(
        "sticky: {header: X-User-Id}
steps:
- setHeaderRoute:
    name: testers
    match:
    - {headerName: X-Canary, headerValue: {exact: always}}
    - headers: {CF-IPCountry: {regex: \"DE|AT\"}}
      cookies: {beta: {prefix: \"on\"}}
- setWeight: 10
- setHeaderRoute: {name: testers}
- setWeight: 50",
    );
    use canaryd::core::model::{Field, Pattern, Sticky};
    assert_eq!(r.sticky, Some(Sticky::Header("X-User-Id".into())));
    let routes = r.routes_at(1);
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].backend, "green");
    assert_eq!(routes[0].matches.len(), 2, "entries are alternatives");
    let second = &routes[0].matches[1].all;
    assert_eq!(second.len(), 2, "criteria of one entry all hold");
    assert_eq!(second[0].on, Field::Header);
    assert_eq!(second[1].value, Pattern::Prefix("on".into()));
    assert!(r.routes_at(2).is_empty(), "removed by name");
    assert_eq!(r.weight_at(0), Weight::ZERO, "a route sets no weight");

    check(
        "steps:\n- setHeaderRoute: {name: t, match: [{headerName: X-Canary}]}",
        &[(
            "spec.steps[0].setHeaderRoute.match[0].headerName",
            "without `headerValue`",
        )],
    );
    check(
        "steps:\n- setHeaderRoute: {name: t, match: [{headerName: X, headerValue: {exact: a, regex: b}}]}",
        &[(
            "spec.steps[0].setHeaderRoute.match[0].headerValue",
            "exactly one of",
        )],
    );
    check(
        "steps:\n- setHeaderRoute: {name: t, match: [{headerName: X, headerValue: {regex: \"(a\"}}]}",
        &[(
            "spec.steps[0].setHeaderRoute.match[0].headerValue.regex",
            "not a regular expression",
        )],
    );
    check(
        "steps:\n- setHeaderRoute: {name: t, match: [{}]}",
        &[("spec.steps[0].setHeaderRoute.match[0]", "matches nothing")],
    );
    check(
        "sticky: {header: \"X User\"}\nsteps: [{setWeight: 10}]",
        &[("spec.sticky.header", "not a header or cookie name")],
    );
    // Removing a route never set is only a warning.
    let (_, diags) = run("steps:\n- setWeight: 10\n- setHeaderRoute: {name: nobody}");
    assert!(
        diags
            .iter()
            .any(|d| !d.is_error() && d.message.contains("which no earlier step sets")),
        "{diags:#?}"
    );
}

#[test]
fn a_router_that_cannot_keep_users_sticky_is_refused_naming_those_that_can() {
    let caddy = "apiVersion: canaryd.dev/v1alpha1
kind: Router
metadata: {name: lb}
spec: {kind: caddy, admin: \"http://127.0.0.1:2019\", backends: {blue: \"127.0.0.1:9001\", green: \"127.0.0.1:9002\"}}
---
apiVersion: canaryd.dev/v1alpha1
kind: Rollout
metadata: {name: web}
spec:
  router: lb
  service: web
  stable: {name: blue}
  canary: {name: green}
  sticky: {cookie: uid}
  steps:
  - setHeaderRoute: {name: t, match: [{headerName: X-Canary, headerValue: {exact: always}}]}
  - setWeight: 10
";
    let (catalog, diags) = validate::validate_texts(&[("rollouts/web.yaml", caddy)]);
    let errors: Vec<&Diagnostic> = diags.iter().filter(|d| d.is_error()).collect();
    // Caddy routes by header (its matchers); it cannot keep sticky users monotone.
    assert_eq!(errors.len(), 1, "{errors:#?}");
    for (e, (field, line)) in errors.iter().zip([("spec.sticky", 14)]) {
        assert_eq!(e.field, field, "{e:#?}");
        assert!(e.message.contains("router kind `caddy` cannot"), "{e:#?}");
        assert!(
            e.help
                .as_deref()
                .unwrap()
                .contains("routers that can: embedded, haproxy")
        );
        assert_eq!(e.position.line, line, "{e:#?}");
    }
    assert!(catalog.invalid.contains_key("web"));
}

#[test]
fn a_gateway_takes_header_routes_but_neither_cookie_matches_nor_sticky_users() {
    let doc = |extra: &str, entry: &str| {
        format!(
            "apiVersion: canaryd.dev/v1alpha1
kind: Router
metadata: {{name: k8s}}
spec: {{kind: gatewayApi, server: \"http://127.0.0.1:8001\", namespace: shop}}
---
apiVersion: canaryd.dev/v1alpha1
kind: Rollout
metadata: {{name: web}}
spec:
  router: k8s
  service: web
  stable: {{name: blue}}
  canary: {{name: green}}
{extra}  steps:
  - setHeaderRoute: {{name: testers, match: [{entry}]}}
  - setWeight: 10
"
        )
    };
    let ok = doc("", "{headerName: X-Canary, headerValue: {exact: always}}");
    let (catalog, diags) = validate::validate_texts(&[("rollouts/web.yaml", &ok)]);
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:#?}");
    assert_eq!(catalog.rollouts[0].routes_at(0).len(), 1);

    let cookie = doc("", "{cookies: {beta: {exact: \"1\"}}}");
    let (_, diags) = validate::validate_texts(&[("rollouts/web.yaml", &cookie)]);
    let errors: Vec<&Diagnostic> = diags.iter().filter(|d| d.is_error()).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        errors[0].field,
        "spec.steps[0].setHeaderRoute.match[0].cookies"
    );
    assert!(
        errors[0]
            .help
            .as_deref()
            .unwrap()
            .contains("routers that can: embedded")
    );

    let sticky = doc(
        "  sticky: {header: X-User-Id}\n",
        "{headerName: X-Canary, headerValue: {exact: always}}",
    );
    let (_, diags) = validate::validate_texts(&[("rollouts/web.yaml", &sticky)]);
    let errors: Vec<&Diagnostic> = diags.iter().filter(|d| d.is_error()).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].field, "spec.sticky");
}

#[test]
fn flaggers_ab_form_needs_iterations_and_no_steps_beside_it() {
    let ab = "analysis:\n  interval: 30s\n  iterations: 10\n  match:\n  - headers: {x-canary: {exact: insider}}\n  metrics: [{name: errors, provider: prometheus, query: up, successCondition: result < 1}]\n";
    let r = valid(ab);
    assert!(matches!(r.steps[0], Step::SetHeaderRoute { .. }));
    let Step::Analysis(a) = &r.steps[1] else {
        panic!("{:?}", r.steps)
    };
    assert_eq!(a.count, Some(10));
    assert_eq!(a.interval, Some(Duration::from_secs(30)));
    check(
        &ab.replace("  iterations: 10\n", ""),
        &[("spec.analysis.match", "needs `iterations`")],
    );
    check(
        &format!("{ab}steps: [{{setWeight: 10}}]"),
        &[("spec.analysis.match", "replaces the steps")],
    );
    check(
        "steps:\n- analysis: {iterations: 3, metrics: [{name: e, provider: prometheus, query: up, successCondition: result < 1}]}",
        &[(
            "spec.steps[0].analysis.iterations",
            "belong in `spec.analysis` only",
        )],
    );
}

#[test]
fn blue_green_is_a_strategy_instead_of_steps_with_a_preview_that_matches() {
    let bg = "strategy:\n  blueGreen:\n    preview: [{headerName: X-Preview, headerValue: {exact: \"1\"}}]\n    autoPromotionSeconds: 30\n";
    let r = valid(bg);
    assert_eq!(
        r.steps.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "header route preview: X-Preview=1",
            "pause 30s",
            "setWeight 100"
        ]
    );
    check(
        &format!("{bg}steps: [{{setWeight: 10}}]"),
        &[("spec.strategy", "replaces the steps")],
    );
    check(
        "strategy:\n  blueGreen:\n    preview: []\n",
        &[("spec.strategy.blueGreen.preview", "the match list is empty")],
    );
}

#[test]
fn haproxy_takes_one_criterion_per_match_entry_and_lint_says_so() {
    let doc = |entry: &str| {
        format!(
            "apiVersion: canaryd.dev/v1alpha1
kind: Router
metadata: {{name: lb}}
spec: {{kind: haproxy, runtimeApi: \"127.0.0.1:9999\"}}
---
apiVersion: canaryd.dev/v1alpha1
kind: Rollout
metadata: {{name: web}}
spec:
  router: lb
  service: web
  stable: {{name: blue}}
  canary: {{name: green}}
  steps:
  - setHeaderRoute: {{name: t, match: [{entry}]}}
  - setWeight: 10
"
        )
    };
    // Alternatives, one criterion each: fine.
    let ored = doc("{headers: {X-A: {exact: '1'}}}, {cookies: {beta: {exact: 'on'}}}");
    let (catalog, diags) = validate::validate_texts(&[("rollouts/web.yaml", &ored)]);
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:#?}");
    assert!(!catalog.invalid.contains_key("web"));
    // Both must hold: HAProxy cannot, and lint says which routers can.
    let anded = doc("{headers: {X-A: {exact: '1'}}, cookies: {beta: {exact: 'on'}}}");
    let (catalog, diags) = validate::validate_texts(&[("rollouts/web.yaml", &anded)]);
    let errors: Vec<&Diagnostic> = diags.iter().filter(|d| d.is_error()).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = errors[0];
    assert_eq!(e.field, "spec.steps[0].setHeaderRoute.match[0]", "{e:#?}");
    assert_eq!(e.position.line, 15, "{e:#?}");
    assert_eq!(
        e.message,
        "router kind `haproxy` cannot express several criteria in one match entry yet"
    );
    let help = e.help.as_deref().unwrap();
    assert!(
        help.starts_with("routers that can: embedded") && !help.contains("haproxy"),
        "{help}"
    );
    assert!(catalog.invalid.contains_key("web"));
}

#[test]
fn notify_names_sinks_of_the_configuration_and_lint_warns_of_an_unknown_one() {
    let body = format!(
        "{TARGET}steps: [{{setWeight: 10}}]\nnotify:\n  - {{sink: chat, severity: warn}}\n  - {{sink: ops, events: [aborted, promoted]}}\n"
    );
    let sources = [Source {
        file: "rollouts/web.yaml".to_string(),
        text: rollout(&body),
    }];
    // Without the configuration (plain `lint`): nothing to check the names against.
    let (catalog, diags) = validate::validate(&sources, &Known::default());
    assert!(diags.is_empty(), "{diags:#?}");
    let subs = catalog.rollouts[0].notify.as_ref().unwrap();
    assert_eq!(subs.len(), 2);
    assert_eq!(
        subs[1].events,
        Some(vec![
            canaryd::core::notify::Kind::Aborted,
            canaryd::core::notify::Kind::Promoted
        ])
    );
    // With it: `ops` is not a sink there. A warning, not an error: nothing is told to it, and
    // the rollout runs.
    let known = Known {
        sinks: Some(["chat".to_string()].into()),
        ..Known::default()
    };
    let (catalog, diags) = validate::validate(&sources, &known);
    assert_eq!(diags.len(), 1, "{diags:#?}");
    let d = &diags[0];
    assert!(!d.is_error());
    assert_eq!(d.field, "spec.notify[1].sink");
    assert_eq!((d.position.line, d.position.column), (17, 14), "{d:#?}");
    assert_eq!(d.message, "no notification sink `ops` in the configuration");
    assert!(d.help.as_deref().unwrap().contains("known sinks: chat"));
    assert_eq!(catalog.rollouts.len(), 1);
    // An event that does not exist is an error, with the file and line.
    check(
        "steps: [{setWeight: 10}]\nnotify: [{sink: chat, events: [exploded]}]",
        &[("spec.notify[0].events[0]", "exploded")],
    );
}

#[test]
fn built_in_load_is_bounded_and_names_steps_that_exist() {
    check(
        "steps: [{setWeight: 10}, {setWeight: 50}]\nload: {url: \"https://shop.example/\", rps: 5000, concurrency: 0, steps: [0, 3], method: PATCH, headers: {\"X Bad\": v}}",
        &[
            ("spec.load.url", "is not an http:// URL"),
            ("spec.load.rps", "outside 1 to 1000"),
            ("spec.load.concurrency", "outside 1 to 256"),
            ("spec.load.method", "not one built-in load sends"),
            ("spec.load.headers.X Bad", "not a header name"),
            ("spec.load.steps[0]", "counted from 1"),
        ],
    );
    check(
        "steps: [{setWeight: 10}, {setWeight: 50}]\nload: {url: \"http://127.0.0.1:8080/\", rps: 20, steps: [3]}",
        &[(
            "spec.load.steps",
            "step 3 does not exist: the rollout has 2",
        )],
    );
    let (catalog, diags) =
        run("steps: [{setWeight: 10}]\nload: {url: \"http://127.0.0.1:8080/\", rps: 50}");
    assert!(diags.is_empty(), "{diags:#?}");
    let load = catalog.rollouts[0].load.as_ref().unwrap();
    assert_eq!(
        (load.rps, load.concurrency, load.method.as_str()),
        (50, 16, "GET")
    );
}

#[test]
fn hooks_become_steps_and_metrics_in_the_order_flagger_calls_them() {
    use canaryd::core::model::HookKind;
    let (catalog, diags) = run("hooks:
  - {name: ready, type: confirm-rollout, url: \"http://t:1/ready\"}
  - {name: accept, type: pre-rollout, url: \"http://t:1/accept\"}
  - {name: more, type: confirm-traffic-increase, url: \"http://t:1/more\", interval: 5s}
  - {name: smoke, type: rollout, url: \"http://t:1/smoke\"}
  - {name: ship, type: confirm-promotion, url: \"http://t:1/ship\"}
  - {name: tell, type: post-rollout, url: \"http://t:1/tell\"}
load: {url: \"http://t:1/\", rps: 10, steps: [2]}
steps:
  - setWeight: 20
  - analysis: {interval: 1m, count: 2, metrics: [{name: errors, template: error-rate}]}
  - setWeight: 100
");
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:#?}");
    let r = &catalog.rollouts[0];
    let shape: Vec<String> = r
        .steps
        .iter()
        .map(|s| match s {
            Step::SetWeight(w) => format!("weight {}", w.get()),
            Step::Analysis(a) => {
                let names: Vec<&str> = a.metrics.iter().map(|m| m.name.as_str()).collect();
                format!(
                    "{} {}",
                    if a.gate { "gate" } else { "analysis" },
                    names.join(",")
                )
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        shape,
        [
            "gate gate:ready",
            "analysis hook:accept",
            "gate gate:more",
            "weight 20",
            "analysis errors,hook:smoke",
            "gate gate:ship",
            "weight 100",
        ]
    );
    let Step::Analysis(more) = &r.steps[2] else {
        unreachable!()
    };
    assert_eq!(more.interval, Some(Duration::from_secs(5)));
    // `load.steps: [2]` is the analysis as written, now the fifth step.
    assert_eq!(r.load.as_ref().unwrap().steps, Some(vec![4]));
    assert_eq!(r.post_hooks.len(), 1);
    assert_eq!(r.post_hooks[0].kind, HookKind::PostRollout);
    check(
        "steps: [{setWeight: 10}]
hooks:
  - {name: a, type: rollout, url: \"https://x/\", method: PATCH, secret: {file: /s, env: S}}
  - {name: a, type: bogus, url: \"http://x/\"}",
        &[("spec.hooks[1].type", "bogus")],
    );
    check(
        "steps: [{setWeight: 10}]
hooks:
  - {name: a, type: rollout, url: \"ftp://x/\", method: PATCH, secret: {file: /s, env: S}}
  - {name: a, type: pre-rollout, url: \"https://x/\"}",
        &[
            ("spec.hooks[0].url", "not an http:// or https:// URL"),
            ("spec.hooks[0].method", "PATCH"),
            ("spec.hooks[0].secret", "exactly one of"),
            ("spec.hooks[1].name", "another hook is named `a`"),
        ],
    );
}

#[test]
fn lint_refuses_what_the_rollouts_router_cannot_read_with_the_line() {
    let doc = |kind: &str, spec: &str, entry: &str| {
        format!(
            "apiVersion: canaryd.dev/v1alpha1
kind: Router
metadata: {{name: lb}}
spec: {{kind: {kind}, {spec}}}
---
apiVersion: canaryd.dev/v1alpha1
kind: Rollout
metadata: {{name: web}}
spec:
  router: lb
  service: web
  stable: {{name: blue}}
  canary: {{name: green}}
  steps:
  - setHeaderRoute: {{name: t, match: [{entry}]}}
  - setWeight: 10
"
        )
    };
    let nginx = "upstreamFile: /tmp/u.conf, config: /tmp/n.conf, backends: {blue: \"127.0.0.1:1\", green: \"127.0.0.1:2\"}";
    let traefik = "api: \"http://127.0.0.1:1\", dynamicFile: /tmp/d.yml, backends: {blue: \"http://127.0.0.1:1\", green: \"http://127.0.0.1:2\"}";
    for (kind, spec, entry, field, says) in [
        (
            "nginx",
            nginx,
            "{headers: {\"X:Canary\": {exact: a}}}",
            "spec.steps[0].setHeaderRoute.match[0].headers.X:Canary",
            "nginx reads `X:Canary` through a variable",
        ),
        (
            "traefik",
            traefik,
            "{cookies: {tier: {regex: \"\\\\bgold\"}}}",
            "spec.steps[0].setHeaderRoute.match[0].cookies.tier",
            "cookie `tier` by regex",
        ),
    ] {
        let text = doc(kind, spec, entry);
        let (catalog, diags) = validate::validate_texts(&[("rollouts/web.yaml", &text)]);
        let errors: Vec<&Diagnostic> = diags.iter().filter(|d| d.is_error()).collect();
        assert_eq!(errors.len(), 1, "{kind}: {errors:#?}");
        let e = errors[0];
        assert_eq!(e.field, field, "{e:#?}");
        assert_eq!(e.position.line, 15, "{e:#?}");
        assert!(
            e.message
                .starts_with(&format!("router kind `{kind}` cannot match this: "))
                && e.message.contains(says),
            "{e:#?}"
        );
        assert!(e.help.as_deref().unwrap().contains("embedded"), "{e:#?}");
        assert!(catalog.invalid.contains_key("web"));
    }
}

/// A file with the router, rollouts `a`, `b` and `c` (each on its own service, with the steps
/// given) and a group of them whose `spec:` body is `group`.
fn grouped(steps: [&str; 3], group: &str) -> (Catalog, Vec<Diagnostic>) {
    let mut text = ROUTER.to_string();
    for (name, steps) in ["a", "b", "c"].iter().zip(steps) {
        text.push_str(&format!(
            "---\napiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata: {{name: {name}}}\n\
             spec: {{router: edge, service: {name}, stable: {{name: blue}}, canary: {{name: green}}, steps: {steps}}}\n"
        ));
    }
    let group: String = group.lines().map(|l| format!("  {l}\n")).collect();
    text.push_str(&format!(
        "---\napiVersion: canaryd.dev/v1alpha1\nkind: RolloutGroup\nmetadata: {{name: release}}\nspec:\n{group}"
    ));
    validate::validate_texts(&[("rollouts/release.yaml", &text)])
}

const TWO_STEPS: &str = "[{setWeight: 20}, {pause: {duration: 1m}}, {setWeight: 50}]";

fn group_errors(diags: &[Diagnostic]) -> Vec<(String, String)> {
    diags
        .iter()
        .filter(|d| d.is_error())
        .inspect(|d| assert!(d.help.is_some(), "{d:?}"))
        .map(|d| (d.field.clone(), d.message.clone()))
        .collect()
}

#[test]
fn a_valid_group_is_in_the_catalog_with_what_each_member_waits_for() {
    let (catalog, diags) = grouped(
        [TWO_STEPS, TWO_STEPS, "[{setWeight: 10}]"],
        "order: ordered\nmembers:\n  - rollout: a\n  - rollout: b\n    dependsOn: [a]\n  - rollout: c\n    dependsOn: [{rollout: a, step: 2}, b]\n",
    );
    assert_eq!(group_errors(&diags), []);
    assert_eq!(catalog.rollouts.len(), 3);
    let [g] = catalog.groups.as_slice() else {
        panic!("{:?}", catalog.groups)
    };
    assert_eq!(g.name, "release");
    assert_eq!(g.order, canaryd::core::spec::GroupOrder::Ordered);
    let c = g.member("c").unwrap();
    assert_eq!(
        c.waits_for,
        [
            canaryd::core::model::Wait {
                rollout: "a".into(),
                step: Some(1)
            },
            canaryd::core::model::Wait {
                rollout: "b".into(),
                step: None
            }
        ]
    );
    // Affinity: every member but the first hop follows its side header while in flight.
    let (catalog, diags) = grouped(
        [TWO_STEPS, TWO_STEPS, TWO_STEPS],
        "members: [{rollout: a}, {rollout: b}]\naffinity: {from: a}\n",
    );
    assert_eq!(group_errors(&diags), []);
    let b = catalog.rollouts.iter().find(|r| r.name == "b").unwrap();
    let follow: Vec<String> = b.routes_at(0).iter().map(|r| format!("{r:?}")).collect();
    assert_eq!(follow.len(), 2, "{follow:?}");
    assert!(
        follow[0].contains("X-Canaryd-Side") && follow[0].contains("a=canary"),
        "{follow:?}"
    );
    let a = catalog.rollouts.iter().find(|r| r.name == "a").unwrap();
    assert!(a.follow.is_empty());
    // Lockstep is the default order.
    let (catalog, diags) = grouped(
        [TWO_STEPS, TWO_STEPS, TWO_STEPS],
        "members: [{rollout: a}, {rollout: b}, {rollout: c}]\n",
    );
    assert_eq!(group_errors(&diags), []);
    assert_eq!(
        catalog.groups[0].order,
        canaryd::core::spec::GroupOrder::Lockstep
    );
}

/// The members' steps, the group's spec, and the errors (field, message) it must raise.
type GroupCase<'a> = ([&'a str; 3], &'a str, &'a [(&'a str, &'a str)]);

#[test]
fn a_group_that_cannot_move_as_one_holds_every_member() {
    let cases: [GroupCase; 8] = [
        (
            [TWO_STEPS, "[{setWeight: 20}, {setWeight: 60}]", TWO_STEPS],
            "members: [{rollout: a}, {rollout: b}, {rollout: c}]\n",
            &[(
                "spec.members[1].rollout",
                "lockstep member `b` sets weights 20%, 60% but `a` sets 20%, 50%",
            )],
        ),
        (
            [TWO_STEPS, TWO_STEPS, TWO_STEPS],
            "members:\n  - rollout: a\n  - rollout: b\n    dependsOn: [a]\n",
            &[(
                "spec.members[1].dependsOn[0]",
                "member `b` of lockstep group `release` has dependsOn",
            )],
        ),
        (
            [TWO_STEPS, TWO_STEPS, TWO_STEPS],
            "order: ordered\nmembers:\n  - rollout: a\n  - rollout: b\n    dependsOn: [c]\n",
            &[(
                "spec.members[1].dependsOn[0]",
                "member `b` depends on `c`, which is not a member of group `release`",
            )],
        ),
        (
            [TWO_STEPS, TWO_STEPS, TWO_STEPS],
            "order: ordered\nmembers:\n  - rollout: a\n  - rollout: b\n    dependsOn: [{rollout: a, step: 4}]\n",
            &[(
                "spec.members[1].dependsOn[0]",
                "member `b` waits for step 4 of `a`, which has 3 steps",
            )],
        ),
        (
            [TWO_STEPS, TWO_STEPS, TWO_STEPS],
            "order: ordered\nmembers:\n  - rollout: a\n    dependsOn: [a]\n  - rollout: b\n",
            &[(
                "spec.members[0].dependsOn[0]",
                "member `a` depends on itself",
            )],
        ),
        (
            [TWO_STEPS, TWO_STEPS, TWO_STEPS],
            "members: [{rollout: a}, {rollout: b}, {rollout: a}]\n",
            &[(
                "spec.members[2].rollout",
                "rollout `a` is named twice in group `release`",
            )],
        ),
        (
            [TWO_STEPS, TWO_STEPS, TWO_STEPS],
            "order: ordered\nmembers: [{rollout: a}, {rollout: b}]\naffinity: {from: a}\n",
            &[(
                "spec.affinity",
                "group `release` keeps users on one side but is not lockstep",
            )],
        ),
        (
            [TWO_STEPS, TWO_STEPS, TWO_STEPS],
            "members: [{rollout: a}, {rollout: b}]\naffinity: {from: c}\n",
            &[(
                "spec.affinity.from",
                "affinity.from `c` is not a member of group `release`",
            )],
        ),
    ];
    for (steps, group, expected) in cases {
        let (catalog, diags) = grouped(steps, group);
        let errors = group_errors(&diags);
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(f, m)| (f.to_string(), m.to_string()))
            .collect();
        assert_eq!(errors, expected, "{group}");
        assert!(catalog.groups.is_empty(), "{group}");
        // Its members are held with the reason; the rollout outside it runs.
        let members: Vec<&str> = ["a", "b", "c"]
            .into_iter()
            .filter(|m| group.contains(&format!("rollout: {m}")))
            .collect();
        for m in &members {
            let why = &catalog.invalid[*m];
            assert!(
                why.iter().any(|l| l.contains(&expected[0].1)),
                "{m}: {why:?}"
            );
        }
        let running: Vec<&str> = catalog.rollouts.iter().map(|r| r.name.as_str()).collect();
        let outside: Vec<&str> = ["a", "b", "c"]
            .into_iter()
            .filter(|m| !members.contains(m))
            .collect();
        assert_eq!(running, outside, "{group}");
    }
}

#[test]
fn an_invalid_member_holds_its_group() {
    let (catalog, diags) = grouped(
        [TWO_STEPS, "[{setWeight: 200}]", TWO_STEPS],
        "members: [{rollout: a}, {rollout: b}]\n",
    );
    assert_eq!(group_errors(&diags).len(), 1, "{diags:#?}");
    assert!(catalog.groups.is_empty());
    assert!(
        catalog.invalid["a"]
            .iter()
            .any(|l| l.contains("group `release` is held: its member `b` is invalid")),
        "{:?}",
        catalog.invalid
    );
    let running: Vec<&str> = catalog.rollouts.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(running, ["c"]);
}
