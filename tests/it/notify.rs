//! Notifications through the real daemon: a local receiver plays a generic webhook, Slack and a
//! Teams workflow on 127.0.0.1, checks each body's shape (Slack's through Slack's own SDK,
//! `slack_sdk`'s Block Kit models), the webhook's signature, and counts what it accepted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, Uri};
use canaryd::core::notify::{Kind, Notice, Severity};
use canaryd::edge::notify::{signature, slack_body, teams_body};
use canaryd::edge::secret::Secret;
use serde_json::Value;

use crate::support::world::{World, phase};

const WEBHOOK_SECRET: &str = "whsec-3b7f1c9e";
const SLACK_TOKEN: &str = "xoxb-hidden-8d2e";
const TEAMS_TOKEN: &str = "sig-teams-5a1f";

/// One request the receiver got, and whether it accepted it.
#[derive(Clone, Debug)]
struct Got {
    path: String,
    headers: HeaderMap,
    body: String,
    accepted: bool,
}

/// The receiver: answers 503 to the first `refuse` deliveries of event `aborted` on
/// `/webhook`, 200 to everything else.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    refuse: Arc<Mutex<usize>>,
}

impl Receiver {
    async fn start(
        refuse: usize,
        stop: tokio_util::sync::CancellationToken,
    ) -> (Receiver, SocketAddr) {
        let r = Receiver::default();
        *r.refuse.lock().unwrap() = refuse;
        let state = r.clone();
        let app =
            axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    let path = uri.path().to_string();
                    let aborted = headers
                        .get("x-canaryd-event")
                        .is_some_and(|v| v == "aborted");
                    let accepted = {
                        let mut left = state.refuse.lock().unwrap();
                        if path == "/webhook" && aborted && *left > 0 {
                            *left -= 1;
                            false
                        } else {
                            true
                        }
                    };
                    state.got.lock().unwrap().push(Got {
                        path: path.clone(),
                        headers,
                        body,
                        accepted,
                    });
                    match (accepted, path.starts_with("/teams")) {
                        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
                        // Teams workflows answer 202 with no body; Slack `200 ok`.
                        (true, true) => (StatusCode::ACCEPTED, ""),
                        (true, false) => (StatusCode::OK, "ok"),
                    }
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .unwrap();
        });
        (r, addr)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Accepted deliveries on paths starting with `path` of event `event`.
    fn accepted(&self, path: &str, event: &str) -> Vec<Got> {
        self.got()
            .into_iter()
            .filter(|g| {
                g.accepted
                    && g.path.starts_with(path)
                    && g.headers.get("x-canaryd-event").is_some_and(|v| v == event)
            })
            .collect()
    }
}

/// Every Slack body in `bodies` through `slack_sdk`'s Block Kit models: each block parses to
/// its type and passes `validate_json()` (Slack's documented limits), and the fallback text is
/// there. Needs `pip install slack_sdk` (`.ci/run` installs it).
fn validate_with_slack_sdk(bodies: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bodies.json");
    let parsed: Vec<Value> = bodies
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    std::fs::write(&file, serde_json::to_string(&parsed).unwrap()).unwrap();
    let script = r#"
import json, sys
from slack_sdk.models.blocks import Block
bodies = json.load(open(sys.argv[1]))
for body in bodies:
    assert isinstance(body.get("text"), str) and body["text"], "no fallback text"
    assert 0 < len(body["blocks"]) <= 50, "block count"
    for raw in body["blocks"]:
        block = Block.parse(raw)
        assert block is not None and type(block) is not Block, f"unknown block {raw}"
        block.validate_json()
print(len(bodies))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&file)
        .output()
        .expect("python3 runs (apt-get install python3)");
    assert!(
        out.status.success(),
        "slack_sdk refused a body (or is missing: pip install slack_sdk): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        bodies.len().to_string()
    );
}

/// The Teams workflow body as Microsoft documents it: a `message` with one Adaptive Card
/// attachment, version 1.2, a body of elements, no `Action.Submit`.
fn assert_teams_shape(body: &Value) {
    assert_eq!(body["type"], "message", "{body}");
    let attachments = body["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 1, "{body}");
    assert_eq!(
        attachments[0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    let card = &attachments[0]["content"];
    assert_eq!(card["type"], "AdaptiveCard", "{body}");
    assert_eq!(card["version"], "1.2", "{body}");
    for element in card["body"].as_array().unwrap() {
        let kind = element["type"].as_str().unwrap();
        assert!(["TextBlock", "FactSet"].contains(&kind), "{element}");
    }
    for action in card["actions"].as_array().into_iter().flatten() {
        assert_eq!(action["type"], "Action.OpenUrl", "{action}");
    }
    assert!(body.to_string().len() <= 28 * 1024, "over Teams' 28 KB");
}

fn notice(kind: Kind, text: &str) -> Notice {
    Notice {
        id: format!("checkout/3f2a9c1d0e4b/{}", kind.as_str()),
        kind,
        severity: kind.severity(),
        rollout: "checkout".into(),
        revision: "3f2a9c1d0e4b".into(),
        phase: "aborted".into(),
        title: format!("checkout: {}", kind.as_str()),
        text: text.into(),
        step: Some(2),
        steps: 4,
        weights: BTreeMap::from([
            ("blue".to_string(), canaryd::core::model::Weight::FULL),
            ("green".to_string(), canaryd::core::model::Weight::ZERO),
        ]),
        evidence: Some("errors = 0.3".into()),
        revert_branch: Some("canaryd/revert/checkout/3f2a9c1d0e4b".into()),
        revert_pr: Some("https://github.com/octo/shop/pull/7".into()),
        at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
    }
}

#[test]
fn slack_and_teams_bodies_keep_the_documented_shapes_and_limits() {
    // A long evidence line with mrkdwn's special characters: cut, escaped, still valid.
    let long = format!("errors <0.01> & {}", "x".repeat(5000));
    let bodies: Vec<String> = [
        notice(Kind::Aborted, &long),
        notice(Kind::Promoted, "promoted"),
        notice(Kind::Paused, "waiting for a promote commit"),
    ]
    .iter()
    .map(|n| {
        slack_body(
            n,
            "canaryd status checkout --repo https://git.example/shop.git",
        )
        .to_string()
    })
    .collect();
    validate_with_slack_sdk(&bodies);
    let first: Value = serde_json::from_str(&bodies[0]).unwrap();
    let story = first["blocks"][1]["text"]["text"].as_str().unwrap();
    assert!(
        story.starts_with("errors &lt;0.01&gt; &amp; xxx"),
        "{story}"
    );
    assert!(story.chars().count() <= 3000);
    assert_eq!(first["blocks"][0]["text"]["text"], "🔴 checkout: aborted");
    let teams = teams_body(&notice(Kind::Aborted, &long), "canaryd status checkout");
    assert_teams_shape(&teams);
    assert_eq!(
        teams["attachments"][0]["content"]["actions"][0]["url"],
        "https://github.com/octo/shop/pull/7"
    );
    assert_eq!(Severity::Error, notice(Kind::Aborted, "").severity);
}

/// Steps that analyse the canary at 50 % (errors, 1 s apart, four times) and go on.
const ANALYSED: &str = "  steps:\n    - setWeight: 50\n    - analysis:\n        interval: 1s\n        count: 4\n        metrics:\n          - {name: errors, template: error-rate}\n    - setWeight: 100\n";

#[test]
fn an_abort_is_told_once_to_each_sink_through_refusals_and_a_kill() {
    let stop = tokio_util::sync::CancellationToken::new();
    let mut w = World::new(0.0, 0.3);
    let (receiver, addr) = w.rt.block_on(Receiver::start(3, stop.clone()));
    let slack_url = w.dir.path().join("slack-url");
    std::fs::write(
        &slack_url,
        format!("http://{addr}/slack/T000/B000/{SLACK_TOKEN}\n"),
    )
    .unwrap();
    w.env = vec![("CANARYD_TEST_HOOK_SECRET", WEBHOOK_SECRET)];
    let teams_url = format!("http://{addr}/teams/workflows/{TEAMS_TOKEN}");
    let teams_file = w.dir.path().join("teams-url");
    std::fs::write(&teams_file, &teams_url).unwrap();
    w.config = Some(format!(
        "notifications:
  sinks:
    ops:
      webhook: {{url: \"http://{addr}/webhook\", secret: {{env: CANARYD_TEST_HOOK_SECRET}}, headers: {{X-Team: shop}}}}
    chat:
      slack: {{url: {{file: {}}}}}
    teams:
      teams: {{url: {{file: {}}}}}
  default:
    - {{sink: ops}}
    - {{sink: chat, severity: warn}}
    - {{sink: teams, events: [aborted]}}
",
        slack_url.display(),
        teams_file.display()
    ));
    w.start_on_stable(ANALYSED);
    w.background_load(40);
    w.merge(
        "checkout.yaml",
        &w.spec(true, ANALYSED),
        "canary: green 1.1",
    );

    // The first try of `aborted` on the webhook is refused; the daemon is killed then.
    let deadline = Instant::now() + Duration::from_secs(40);
    while !receiver
        .got()
        .iter()
        .any(|g| g.path == "/webhook" && !g.accepted)
    {
        assert!(
            Instant::now() < deadline,
            "no abort told: {:#?}",
            receiver.got()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The other sinks took it meanwhile (a delivery is recorded the moment its 2xx is read;
    // a kill in the instant between the receiver's answer and that write could send it
    // twice, and this test is not about that instant).
    while receiver.accepted("/slack/", "aborted").is_empty()
        || receiver.accepted("/teams/", "aborted").is_empty()
    {
        assert!(Instant::now() < deadline, "{:#?}", receiver.got());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    w.kill();
    w.start();
    let deadline = Instant::now() + Duration::from_secs(40);
    while receiver.accepted("/webhook", "aborted").is_empty() {
        assert!(
            Instant::now() < deadline,
            "aborted never accepted: {:#?}\n{}",
            receiver.got(),
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Time for anything sent twice to arrive.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(phase(&w.status("checkout").unwrap()), "aborted");

    let refused = receiver.got().iter().filter(|g| !g.accepted).count();
    assert_eq!(refused, 3, "{:#?}", receiver.got());
    for (path, event) in [
        ("/webhook", "aborted"),
        ("/webhook", "started"),
        ("/slack/", "aborted"),
        ("/teams/", "aborted"),
    ] {
        let n = receiver.accepted(path, event).len();
        assert_eq!(n, 1, "{event} accepted {n} times on {path}");
    }
    // Severity `warn` on Slack: no `started`, no `step`; Teams takes `aborted` only.
    assert!(receiver.accepted("/slack/", "started").is_empty());
    assert!(receiver.accepted("/slack/", "step").is_empty());
    assert!(
        receiver
            .got()
            .iter()
            .filter(|g| g.path.starts_with("/teams/"))
            .all(|g| g.headers["x-canaryd-event"] == "aborted")
    );

    let all = receiver.got();
    for g in &all {
        for secret in [WEBHOOK_SECRET, SLACK_TOKEN, TEAMS_TOKEN] {
            assert!(
                !g.body.contains(secret),
                "a secret in {}: {}",
                g.path,
                g.body
            );
        }
    }
    // The webhook: signed, named, with the evidence, the revert branch and the command.
    for g in all.iter().filter(|g| g.path == "/webhook") {
        let sig = g.headers["x-canaryd-signature-256"].to_str().unwrap();
        assert_eq!(
            sig,
            signature(&Secret::new(WEBHOOK_SECRET), g.body.as_bytes())
        );
        assert_eq!(g.headers["x-team"], "shop");
        let body: Value = serde_json::from_str(&g.body).unwrap();
        assert_eq!(
            g.headers["x-canaryd-delivery"],
            body["id"].as_str().unwrap()
        );
    }
    let aborted: Value =
        serde_json::from_str(&receiver.accepted("/webhook", "aborted")[0].body).unwrap();
    assert_eq!(aborted["event"], "aborted");
    assert_eq!(aborted["severity"], "error");
    assert!(
        aborted["evidence"]
            .as_str()
            .unwrap()
            .starts_with("errors = 0."),
        "{aborted}"
    );
    assert!(
        aborted["revertBranch"]
            .as_str()
            .unwrap()
            .starts_with("canaryd/revert/"),
        "{aborted}"
    );
    assert!(
        aborted["statusCommand"]
            .as_str()
            .unwrap()
            .starts_with("canaryd status checkout --repo "),
        "{aborted}"
    );
    // Slack's bodies through Slack's SDK; Teams' as Microsoft documents them.
    let slack: Vec<String> = all
        .iter()
        .filter(|g| g.path.starts_with("/slack/"))
        .map(|g| g.body.clone())
        .collect();
    validate_with_slack_sdk(&slack);
    for g in all.iter().filter(|g| g.path.starts_with("/teams/")) {
        assert_teams_shape(&serde_json::from_str(&g.body).unwrap());
    }
    // Counted on /metrics.
    let metrics = w.admin_get("/metrics");
    assert!(
        metrics.contains("canaryd_notifications_total{sink=\"ops\",outcome=\"sent\"}"),
        "{metrics}"
    );
    stop.cancel();
}
