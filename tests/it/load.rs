//! Built-in load through the real daemon and the embedded router, with no outside traffic at
//! all: it gives the analysis its data (a failing canary is aborted, a sound one promoted),
//! stops with the rollout (no request reaches a backend after), and keeps its rate.

use std::time::{Duration, Instant};

use crate::support::world::{World, canary_weight, phase};

/// Steps that analyse the canary at 50 % and go on to 100 %; load at `rps` from the start.
fn analysed_with_load(w: &World, rps: u32) -> String {
    format!(
        "  load: {{url: \"http://{}/\", rps: {rps}, headers: {{X-Team: shop}}}}
  steps:
    - setWeight: 50
    - analysis:
        interval: 1s
        count: 4
        metrics:
          - {{name: errors, template: error-rate}}
    - setWeight: 100
",
        w.router
    )
}

/// `canaryd_load_requests_total` and `canaryd_load_running` of `checkout`, from /metrics.
fn load_metrics(w: &World) -> (u64, u64) {
    let metrics = w.admin_get("/metrics");
    let value = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} in {metrics}"))
    };
    (
        value("canaryd_load_requests_total{rollout=\"checkout\",outcome=\"ok\"}"),
        value("canaryd_load_running{rollout=\"checkout\"}"),
    )
}

#[test]
fn built_in_load_alone_aborts_a_failing_canary_and_promotes_a_sound_one_then_stops() {
    for (fails, outcome) in [(0.2, "aborted"), (0.0, "promoted")] {
        let mut w = World::new(0.0, fails);
        let steps = analysed_with_load(&w, 100);
        w.start_on_stable(&steps);
        // No load before the canary: the stable rollout asks for none.
        let before = w.backends.served();
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(w.backends.served(), before, "load before the canary");
        w.merge("checkout.yaml", &w.spec(true, &steps), "canary: green 1.1");
        let done = w.wait_for("checkout", 40, outcome, |s| phase(s) == outcome);
        assert_eq!(
            canary_weight(&done),
            if outcome == "promoted" { 100 } else { 0 }
        );
        let errors = done.analysis.iter().find(|m| m.metric == "errors").unwrap();
        assert!(
            errors.samples.is_some_and(|n| n >= 20),
            "the load gave the analysis its data: {errors:?}"
        );
        // Stopped with the rollout: within a second, then not one more request.
        std::thread::sleep(Duration::from_secs(1));
        let after = w.backends.served();
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            w.backends.served(),
            after,
            "{outcome}: requests after the end"
        );
        let (ok, running) = load_metrics(&w);
        assert!(ok >= 50, "{ok} requests of load");
        assert_eq!(running, 0);
        println!("{outcome}: {ok} requests of built-in load, none after the end");
    }
}

#[test]
fn built_in_load_keeps_its_rate_in_the_steps_that_ask_for_it() {
    let mut w = World::new(0.0, 0.0);
    let steps = format!(
        "  load: {{url: \"http://{}/\", rps: 40, steps: [2]}}
  steps:
    - setWeight: 20
    - pause: {{duration: 6s}}
    - setWeight: 40
    - pause: {{}}
",
        w.router
    );
    w.start_on_stable(&steps);
    w.merge("checkout.yaml", &w.spec(true, &steps), "canary: green 1.1");
    w.wait_for("checkout", 30, "in the timed pause", |s| {
        s.status.progress.run().is_some_and(|r| r.step == 1)
    });
    // The middle of the pause: two seconds counted at the backends.
    std::thread::sleep(Duration::from_millis(1500));
    let (start, at) = (w.backends.served(), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let rate = (w.backends.served() - start) as f64 / at.elapsed().as_secs_f64();
    println!("built-in load at 40 rps: {rate:.1} requests/s at the backends");
    assert!((38.0..=42.0).contains(&rate), "{rate} requests/s");
    // Step 3 does not ask for it: it stops there.
    w.wait_for("checkout", 30, "paused at 40 %", |s| {
        s.status.progress.run().is_some_and(|r| r.step == 3)
    });
    std::thread::sleep(Duration::from_secs(1));
    let after = w.backends.served();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w.backends.served(), after, "load outside its steps");
    assert_eq!(load_metrics(&w).1, 0);
}
