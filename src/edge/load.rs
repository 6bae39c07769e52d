//! Built-in load: requests canaryd sends itself while a canary runs, so its analysis has data
//! with no outside traffic. The planner's side decides when ([`crate::core::load::wanted`]);
//! here each rollout's load runs on its own task, at its rate, with at most its concurrency in
//! flight, and stops when no longer wanted (promotion, abort, another step), after its
//! `duration`, or on shutdown: stopping cancels the requests in flight, so none reaches a
//! backend afterwards. Every request carries `X-Canaryd-Load: <rollout>`, so a route can send
//! it somewhere or an analysis leave it out. Counts are on `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::core::model::Load;

/// The header every request of built-in load carries, naming its rollout.
pub const MARK: &str = "X-Canaryd-Load";
/// The bound on one request, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What one rollout's load did.
#[derive(Debug, Default)]
pub struct Counts {
    /// Answered, any status below 500.
    pub ok: AtomicU64,
    /// Answered 5xx, or not at all (refused, timed out).
    pub failed: AtomicU64,
    /// Not sent: `concurrency` requests were already in flight.
    pub skipped: AtomicU64,
    /// 1 while it runs.
    pub running: AtomicU64,
}

/// The loads of every rollout: started, changed and stopped to match what is wanted.
#[derive(Debug)]
pub struct Loads {
    running: BTreeMap<String, Running>,
    counts: Arc<Mutex<BTreeMap<String, Arc<Counts>>>>,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

#[derive(Debug)]
struct Running {
    load: Load,
    stop: CancellationToken,
}

impl Loads {
    pub fn new(shutdown: CancellationToken) -> Loads {
        Loads {
            running: BTreeMap::new(),
            counts: Arc::default(),
            client: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .unwrap_or_default(),
            shutdown,
        }
    }

    /// Makes `rollout`'s load `wanted`: starts it, restarts it with a changed spec, or stops
    /// it. A load that ended by its `duration` is not started again while it stays wanted.
    pub fn set(&mut self, rollout: &str, wanted: Option<&Load>) {
        match (self.running.get(rollout), wanted) {
            (Some(r), Some(w)) if r.load == *w => {}
            (Some(_), None) => {
                if let Some(r) = self.running.remove(rollout) {
                    r.stop.cancel();
                }
            }
            (_, Some(w)) => {
                if let Some(r) = self.running.remove(rollout) {
                    r.stop.cancel();
                }
                let stop = self.shutdown.child_token();
                let counts = Arc::clone(
                    self.counts
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(rollout.to_string())
                        .or_default(),
                );
                tokio::spawn(run(
                    rollout.to_string(),
                    w.clone(),
                    self.client.clone(),
                    counts,
                    stop.clone(),
                ));
                self.running.insert(
                    rollout.to_string(),
                    Running {
                        load: w.clone(),
                        stop,
                    },
                );
            }
            (None, None) => {}
        }
    }

    /// Stops the loads of rollouts not in `names` (their spec is gone).
    pub fn retain(&mut self, names: &std::collections::BTreeSet<String>) {
        self.running.retain(|name, r| {
            let keep = names.contains(name);
            if !keep {
                r.stop.cancel();
            }
            keep
        });
    }

    /// The counters, for `/metrics`.
    pub fn renderer(&self) -> impl Fn(&mut String) + Send + Sync + 'static {
        let counts = Arc::clone(&self.counts);
        move |out: &mut String| {
            let counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
            render(&counts, out);
        }
    }
}

fn render(counts: &BTreeMap<String, Arc<Counts>>, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP canaryd_load_requests_total Requests of built-in load, by outcome (skipped: \
         the concurrency was in flight).\n# TYPE canaryd_load_requests_total counter"
    );
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    for (rollout, c) in counts {
        let rollout = rollout.replace('\\', "\\\\").replace('"', "\\\"");
        for (outcome, n) in [
            ("ok", get(&c.ok)),
            ("failed", get(&c.failed)),
            ("skipped", get(&c.skipped)),
        ] {
            let _ = writeln!(
                out,
                "canaryd_load_requests_total{{rollout=\"{rollout}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP canaryd_load_running Whether a rollout's built-in load runs.\n# TYPE canaryd_load_running gauge"
    );
    for (rollout, c) in counts {
        let rollout = rollout.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            out,
            "canaryd_load_running{{rollout=\"{rollout}\"}} {}",
            get(&c.running)
        );
    }
}

/// One rollout's load until `stop` (or its duration): a request every `1/rps`, skipped when
/// `concurrency` are in flight; in-flight requests are dropped when it stops.
async fn run(
    rollout: String,
    load: Load,
    client: reqwest::Client,
    counts: Arc<Counts>,
    stop: CancellationToken,
) {
    tracing::info!(rollout = %rollout, url = %load.url, rps = load.rps, "built-in load started");
    counts.running.store(1, Ordering::Relaxed);
    let method =
        reqwest::Method::from_bytes(load.method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let permits = Arc::new(Semaphore::new(load.concurrency as usize));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / load.rps.max(1));
    // Behind (a slow machine): go on at the rate, never in a burst.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let ends = async {
        match load.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(ends);
    let in_flight = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = &mut ends => break,
            _ = tick.tick() => {}
        }
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            counts.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let mut request = client
            .request(method.clone(), &load.url)
            .header(MARK, &rollout);
        for (k, v) in &load.headers {
            request = request.header(k, v);
        }
        let (counts, stop) = (Arc::clone(&counts), stop.clone());
        in_flight.spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = stop.cancelled() => {}
                answer = request.send() => {
                    let ok = answer.is_ok_and(|r| !r.status().is_server_error());
                    let c = if ok { &counts.ok } else { &counts.failed };
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // Ended by its duration: nothing in flight outlives it either.
    stop.cancel();
    in_flight.close();
    in_flight.wait().await;
    counts.running.store(0, Ordering::Relaxed);
    tracing::info!(rollout = %rollout, "built-in load stopped");
}
