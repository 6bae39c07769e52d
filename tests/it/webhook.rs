//! Push webhooks: GitHub's real example payloads (npm `@octokit/webhooks-examples`), signed here
//! and posted to the admin server on 127.0.0.1; then the real daemon binary, polling every five
//! minutes, woken by one signed delivery.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canaryd::admin::{self, Admin};
use canaryd::secret::SecretRef;
use canaryd::telemetry::Telemetry;
use canaryd::webhook::{self, WebhookConfig};
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::git::git;
use crate::support::net;
use crate::support::world::{HELD, World, canary_weight, phase};

/// The npm package the payloads come from, pinned; `.ci/run` installs it.
const EXAMPLES: &str = "@octokit/webhooks-examples@7.6.1";
const SECRET: &str = "canaryd test secret: not a real one";

/// Every example delivery of GitHub's public API, by event name.
fn examples() -> Vec<(String, Vec<Value>)> {
    let dir = std::env::var_os("CANARYD_WEBHOOKS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/npm-webhooks"));
    let file = [
        dir.join("node_modules/@octokit/webhooks-examples/api.github.com/index.json"),
        dir.join("api.github.com/index.json"),
    ]
    .into_iter()
    .find(|f| f.is_file())
    .unwrap_or_else(|| {
        panic!(
            "GitHub's example payloads are not in {}: `npm install --prefix {} {EXAMPLES}` \
             (or point CANARYD_WEBHOOKS_DIR at another install)",
            dir.display(),
            dir.display()
        )
    });
    let all: Vec<Value> = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    all.into_iter()
        .map(|d| {
            let name = d["name"].as_str().unwrap().to_string();
            let examples = d["examples"].as_array().unwrap().clone();
            (name, examples)
        })
        .collect()
}

fn of(event: &str) -> Vec<Value> {
    examples()
        .into_iter()
        .find(|(name, _)| name == event)
        .map(|(_, e)| e)
        .unwrap()
}

/// `sha256=<hex>` of `body`, computed here with the hmac crate (not canaryd's code).
fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// A delivery as GitHub sends it.
struct Delivery {
    path: &'static str,
    event: Option<&'static str>,
    id: Option<String>,
    body: Vec<u8>,
    content_type: &'static str,
    /// (header, value) of the signature, if any.
    signature: Option<(&'static str, String)>,
}

impl Delivery {
    fn github(event: &'static str, payload: &Value) -> Delivery {
        let body = serde_json::to_vec(payload).unwrap();
        Delivery {
            path: "/hooks/github",
            event: Some(event),
            id: Some(format!("{:032x}", fastrand::u128(..))),
            signature: Some(("X-Hub-Signature-256", sign(SECRET, &body))),
            body,
            content_type: "application/json",
        }
    }

    fn generic(body: &str) -> Delivery {
        Delivery {
            path: "/hooks/generic",
            event: None,
            id: None,
            signature: Some(("X-Canaryd-Signature-256", sign(SECRET, body.as_bytes()))),
            body: body.as_bytes().to_vec(),
            content_type: "application/json",
        }
    }

    async fn post(&self, addr: SocketAddr) -> (u16, String) {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut request = client
            .post(format!("http://{addr}{}", self.path))
            .header("content-type", self.content_type)
            .header("user-agent", "GitHub-Hookshot/canaryd-test")
            .body(self.body.clone());
        if let Some(event) = self.event {
            request = request.header("X-GitHub-Event", event);
        }
        if let Some(id) = &self.id {
            request = request.header("X-GitHub-Delivery", id);
        }
        if let Some((name, value)) = &self.signature {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }
}

/// The admin server with the webhook routes mounted for `branch`, as the daemon mounts them,
/// and the other end of their wake-up channel.
struct Hooks {
    addr: SocketAddr,
    woken: mpsc::Receiver<()>,
    stop: CancellationToken,
    secret: tempfile::NamedTempFile,
}

impl Hooks {
    async fn start(branch: &str) -> Hooks {
        let secret = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret.path(), format!("{SECRET}\n")).unwrap();
        let admin = Admin::new(Arc::new(Telemetry::new()));
        let (listener, addr) = net::listener().await;
        let stop = CancellationToken::new();
        tokio::spawn(admin::serve(listener, admin.clone(), stop.clone()));
        let (tx, woken) = mpsc::channel(1);
        let config = WebhookConfig {
            secret: SecretRef::file(secret.path()),
        };
        admin.mount(webhook::routes(
            &config,
            branch,
            tx,
            admin.telemetry.clone(),
        ));
        Hooks {
            addr,
            woken,
            stop,
            secret,
        }
    }

    /// Whether the loop was woken since the last call.
    fn woke(&mut self) -> bool {
        let mut any = false;
        while self.woken.try_recv().is_ok() {
            any = true;
        }
        any
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn count(metrics: &str, outcome: &str) -> u64 {
    let prefix = format!("canaryd_webhook_deliveries_total{{outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_push_events_wake_the_loop_for_the_watched_branch_only() {
    let mut hooks = Hooks::start("master").await;
    let pushes = of("push");
    assert!(pushes.len() >= 5, "{} push examples", pushes.len());
    let (mut woke, mut ignored) = (0, 0);
    for payload in &pushes {
        let reference = payload["ref"].as_str().unwrap();
        let (status, text) = Delivery::github("push", payload).post(hooks.addr).await;
        if reference == "refs/heads/master" {
            assert_eq!(status, 202, "{reference}: {text}");
            assert!(hooks.woke(), "{reference}");
            woke += 1;
        } else {
            assert_eq!(status, 200, "{reference}: {text}");
            assert!(text.starts_with("ignored: push to refs/tags/"), "{text}");
            assert!(!hooks.woke(), "{reference}");
            ignored += 1;
        }
    }
    assert!(woke >= 2 && ignored >= 3, "{woke} woke, {ignored} ignored");

    // canaryd's own pushes come back as pushes to other branches: ignored, nothing woken.
    let mut ours = pushes
        .iter()
        .find(|p| p["ref"] == "refs/heads/master")
        .unwrap()
        .clone();
    for reference in [
        "refs/heads/canaryd/status",
        "refs/heads/canaryd/revert/checkout-0123456789ab",
        "refs/heads/master-old",
    ] {
        ours["ref"] = reference.into();
        let (status, text) = Delivery::github("push", &ours).post(hooks.addr).await;
        assert_eq!(
            (status, text.trim()),
            (
                200,
                &*format!("ignored: push to {reference}, not the watched branch master")
            )
        );
        assert!(!hooks.woke(), "{reference}");
    }
    let metrics = hooks.metrics().await;
    assert_eq!(count(&metrics, "woke"), woke);
    assert_eq!(count(&metrics, "ignored"), ignored + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_other_real_event_is_answered_without_waking() {
    let mut hooks = Hooks::start("master").await;
    let mut answered = 0;
    for (event, payloads) in examples() {
        if event == "push" {
            continue;
        }
        let event: &'static str = Box::leak(event.into_boxed_str());
        for payload in &payloads {
            let (status, text) = Delivery::github(event, payload).post(hooks.addr).await;
            let want = if event == "ping" { 200 } else { 204 };
            assert_eq!(status, want, "{event}: {text}");
            answered += 1;
        }
    }
    assert!(!hooks.woke());
    assert!(answered > 250, "only {answered} example deliveries");
    let metrics = hooks.metrics().await;
    assert_eq!(count(&metrics, "ignored"), of("ping").len() as u64);
    assert_eq!(
        count(&metrics, "unknown"),
        answered - of("ping").len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_tampered_or_wrongly_signed_deliveries_are_refused() {
    let mut hooks = Hooks::start("master").await;
    let payload = of("push")
        .into_iter()
        .find(|p| p["ref"] == "refs/heads/master")
        .unwrap();
    let good = Delivery::github("push", &payload);

    let mut missing = Delivery::github("push", &payload);
    missing.signature = None;
    let mut tampered = Delivery::github("push", &payload);
    tampered.body = String::from_utf8(tampered.body)
        .unwrap()
        .replace("refs/heads/master", "refs/heads/mastex")
        .into_bytes();
    let mut wrong_secret = Delivery::github("push", &payload);
    wrong_secret.signature = Some(("X-Hub-Signature-256", sign("another secret", &good.body)));
    let mut sha1_only = Delivery::github("push", &payload);
    sha1_only.signature = Some((
        "X-Hub-Signature",
        "sha1=0123456789abcdef0123456789abcdef01234567".into(),
    ));
    let mut other_header = Delivery::github("push", &payload);
    // The generic hook's header is not GitHub's.
    other_header.signature = Some(("X-Canaryd-Signature-256", sign(SECRET, &good.body)));
    let mut truncated = Delivery::github("push", &payload);
    truncated.signature = Some((
        "X-Hub-Signature-256",
        sign(SECRET, &good.body)[..40].to_string(),
    ));
    for (what, delivery) in [
        ("missing", &missing),
        ("tampered", &tampered),
        ("wrong secret", &wrong_secret),
        ("sha1 only", &sha1_only),
        ("other header", &other_header),
        ("truncated", &truncated),
    ] {
        let (status, text) = delivery.post(hooks.addr).await;
        assert_eq!((status, text.as_str()), (401, "bad signature\n"), "{what}");
        assert!(!hooks.woke(), "{what}");
    }
    let metrics = hooks.metrics().await;
    assert_eq!(count(&metrics, "unauthorized"), 6);
    assert_eq!(count(&metrics, "woke"), 0);
    assert!(!metrics.contains(SECRET));

    // The same payload, signed right, still wakes: the refusals changed nothing.
    assert_eq!(good.post(hooks.addr).await.0, 202);
    assert!(hooks.woke());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_is_answered_once_and_oversized_bodies_are_refused() {
    let mut hooks = Hooks::start("master").await;
    let payload = of("push")
        .into_iter()
        .find(|p| p["ref"] == "refs/heads/master")
        .unwrap();
    let delivery = Delivery::github("push", &payload);
    assert_eq!(delivery.post(hooks.addr).await.0, 202);
    assert!(hooks.woke());
    let (status, text) = delivery.post(hooks.addr).await;
    assert_eq!(
        (status, text.trim()),
        (200, "duplicate delivery, already answered")
    );
    assert!(!hooks.woke());
    // A new delivery id is a new delivery.
    let mut again = Delivery::github("push", &payload);
    again.id = Some("another-id".into());
    assert_eq!(again.post(hooks.addr).await.0, 202);
    assert!(hooks.woke());

    let mut big = payload.clone();
    big["padding"] = "x".repeat(webhook::MAX_BODY).into();
    let (status, _) = Delivery::github("push", &big).post(hooks.addr).await;
    assert_eq!(status, 413);
    assert!(!hooks.woke());
    let metrics = hooks.metrics().await;
    assert_eq!(count(&metrics, "duplicate"), 1);
    assert_eq!(count(&metrics, "invalid"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_secret_answers_503_and_wakes_nothing() {
    let mut hooks = Hooks::start("master").await;
    let payload = of("push")
        .into_iter()
        .find(|p| p["ref"] == "refs/heads/master")
        .unwrap();
    std::fs::remove_file(hooks.secret.path()).unwrap();
    let (status, text) = Delivery::github("push", &payload).post(hooks.addr).await;
    assert_eq!((status, text.trim()), (503, "try again later"));
    assert!(!hooks.woke());
    // Put back (rotated): read again at the next delivery.
    std::fs::write(hooks.secret.path(), SECRET).unwrap();
    assert_eq!(
        Delivery::github("push", &payload).post(hooks.addr).await.0,
        202
    );
    assert!(hooks.woke());
    assert_eq!(count(&hooks.metrics().await, "unavailable"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn githubs_default_form_encoding_and_the_generic_hook() {
    let mut hooks = Hooks::start("main").await;
    let mut payload = of("push")
        .into_iter()
        .find(|p| p["ref"] == "refs/heads/master")
        .unwrap();
    payload["ref"] = "refs/heads/main".into();
    // Content type `application/x-www-form-urlencoded`: the JSON in `payload=`.
    let json = serde_json::to_string(&payload).unwrap();
    let mut encoded = String::from("payload=");
    for b in json.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                encoded.push(b as char)
            }
            b' ' => encoded.push('+'),
            b => encoded.push_str(&format!("%{b:02X}")),
        }
    }
    let mut form = Delivery::github("push", &payload);
    form.content_type = "application/x-www-form-urlencoded";
    form.signature = Some(("X-Hub-Signature-256", sign(SECRET, encoded.as_bytes())));
    form.body = encoded.into_bytes();
    assert_eq!(form.post(hooks.addr).await.0, 202);
    assert!(hooks.woke());

    for (body, status, woke) in [
        ("", 202, true),
        (r#"{"ref": "refs/heads/main"}"#, 202, true),
        (r#"{"ref": "main"}"#, 202, true),
        (r#"{"ref": "refs/heads/canaryd/status"}"#, 200, false),
        ("not json", 400, false),
    ] {
        let (got, text) = Delivery::generic(body).post(hooks.addr).await;
        assert_eq!(got, status, "{body}: {text}");
        assert_eq!(hooks.woke(), woke, "{body}");
    }
    // GitHub's header name works on the generic hook too; no header does not.
    let mut hub = Delivery::generic("");
    hub.signature = Some(("X-Hub-Signature-256", sign(SECRET, b"")));
    assert_eq!(hub.post(hooks.addr).await.0, 202);
    assert!(hooks.woke());
    let mut unsigned = Delivery::generic("");
    unsigned.signature = None;
    assert_eq!(unsigned.post(hooks.addr).await.0, 401);
    assert!(!hooks.woke());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoints_are_unchanged_by_the_mount() {
    let hooks = Hooks::start("main").await;
    let get = |path: &'static str| {
        let addr = hooks.addr;
        async move {
            reqwest::get(format!("http://{addr}{path}"))
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get("/healthz").await, 200);
    assert_eq!(get("/readyz").await, 503);
    assert_eq!(get("/metrics").await, 200);
    assert_eq!(get("/hooks/github").await, 405);
    assert_eq!(get("/nope").await, 404);
}

/// A world whose daemon looks only when a signed webhook says so: five minutes between polls,
/// and a file:// URL, which the daemon does not watch on disk.
fn woken_by_webhooks_only() -> World {
    let mut w = World::new(0.0, 0.0);
    w.poll = "5m";
    w.url = Some(format!("file://{}", w.remote.display()));
    let secret = w.dir.path().join("webhook-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    w.config = Some(format!(
        "webhook:\n  secret: {{file: {}}}\n",
        secret.display()
    ));
    w
}

/// GitHub's example push event, made a push to `main` whose new tip is `after`.
fn push_to_main(after: &str) -> Value {
    let mut payload = of("push")
        .into_iter()
        .find(|p| p["ref"] == "refs/heads/master")
        .unwrap();
    payload["ref"] = "refs/heads/main".into();
    payload["after"] = after.into();
    payload
}

#[test]
fn a_signed_push_wakes_the_real_daemon_long_before_its_poll() {
    let mut w = woken_by_webhooks_only();
    w.start_on_stable(HELD);

    let merged = w.merge("checkout.yaml", &w.spec(true, HELD), "canary: green 1.1");
    let payload = push_to_main(&merged);
    let post = |d: &Delivery| w.rt.block_on(d.post(w.admin));

    // Unsigned: refused, nothing happens.
    let mut unsigned = Delivery::github("push", &payload);
    unsigned.signature = None;
    assert_eq!(post(&unsigned).0, 401);
    // The daemon's own status branch: ignored.
    let mut status_push = payload.clone();
    status_push["ref"] = "refs/heads/canaryd/status".into();
    assert_eq!(post(&Delivery::github("push", &status_push)).0, 200);
    std::thread::sleep(Duration::from_millis(1500));
    let still = w.status("checkout").unwrap();
    assert_eq!(canary_weight(&still), 0, "nothing may wake the daemon yet");
    assert_ne!(still.spec_commit.as_deref(), Some(merged.as_str()));

    let sent = Instant::now();
    let (status, text) = post(&Delivery::github("push", &payload));
    assert_eq!(status, 202, "{text}");
    w.wait_for("checkout", 30, "step 1 at 30%", |s| canary_weight(s) == 30);
    let took = sent.elapsed();
    println!("signed push delivery -> first step recorded: {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}\n{}", w.logs());

    let metrics = w.admin_get("/metrics");
    for line in [
        "canaryd_webhook_deliveries_total{outcome=\"woke\"} 1",
        "canaryd_webhook_deliveries_total{outcome=\"ignored\"} 1",
        "canaryd_webhook_deliveries_total{outcome=\"unauthorized\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    let logs = w.logs();
    assert!(
        logs.contains("webhooks served on the admin address"),
        "{logs}"
    );
    assert!(!logs.contains(SECRET), "{logs}");
}

/// `canaryd plan` on a snapshot (the checkout with a pending promote commit, the status file the
/// daemon recorded, the live weights it saw) prints the action and effects the daemon then
/// executes when it looks at that same snapshot.
#[test]
fn canaryd_plan_shows_what_the_daemon_then_does_with_a_pending_promote() {
    // Only a webhook makes the daemon look: the snapshot cannot move under the plan.
    let mut w = woken_by_webhooks_only();
    w.start_on_stable(HELD);
    let push = |w: &World, after: &str| {
        let payload = push_to_main(after);
        let (status, text) =
            w.rt.block_on(Delivery::github("push", &payload).post(w.admin));
        assert_eq!(status, 202, "{text}");
    };
    let merged = w.merge("checkout.yaml", &w.spec(true, HELD), "canary: green 1.1");
    push(&w, &merged);
    w.wait_for("checkout", 30, "paused at 30 %", |s| {
        phase(s) == "paused" && canary_weight(s) == 30
    });
    w.gate("promote");
    let gate = git(&w.work, &["rev-parse", "HEAD"]);

    // The snapshot, as the daemon holds it.
    let file = w.status("checkout").unwrap();
    let before = git(&w.remote, &["rev-parse", "canaryd/status"]);
    let snapshot = w.dir.path().join("snapshot");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::write(snapshot.join("checkout.yaml"), file.to_yaml().unwrap()).unwrap();
    let live = serde_json::json!({ "edge/checkout": file.live.as_ref().unwrap().backends });
    let live_file = w.dir.path().join("live.json");
    std::fs::write(&live_file, live.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["plan", "--repo"])
        .arg(&w.work)
        .arg("--status")
        .arg(&snapshot)
        .arg("--live")
        .arg(&live_file)
        .env_remove("CANARYD_CONFIG")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = |key: &str| {
        printed
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(key)
                    .map(str::trim)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no {key} in {printed}"))
    };
    let (action, effects) = (line("action:"), line("effects:"));
    assert_eq!(action, "set canary weight 60% (step 3)", "{printed}");
    assert_eq!(
        effects, "record status -> set traffic -> report to forge",
        "{printed}"
    );

    // The daemon looks at the same snapshot and does exactly that, in that order: the record
    // (write-ahead, weight unverified) first, then the traffic.
    push(&w, gate.trim());
    w.wait_for("checkout", 30, "past 60 %", |s| canary_weight(s) >= 60);
    let range = format!("{}..canaryd/status", before.trim());
    let bodies = git(
        &w.remote,
        &[
            "log",
            "--reverse",
            "--format=%B%x00",
            &range,
            "--",
            "status/checkout.yaml",
        ],
    );
    let first = bodies.split('\0').next().unwrap();
    assert!(
        first.contains(&format!("action: {action}")),
        "the daemon's first commit after the promote: {first}"
    );
    let recorded = git(
        &w.remote,
        &[
            "show",
            &format!("{}:status/checkout.yaml", {
                let log = git(&w.remote, &["log", "--reverse", "--format=%H", &range]);
                log.lines().next().unwrap().to_string()
            }),
        ],
    );
    let recorded = canaryd::record::StatusFile::from_yaml(&recorded).unwrap();
    let run = recorded.status.progress.run().unwrap();
    assert_eq!(
        (run.weight.get(), run.verified),
        (60, false),
        "written ahead"
    );
}
