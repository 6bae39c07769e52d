//! Notifications: the notices a rollout's status implies ([`crate::core::notify`]), sent to the
//! sinks the controller configuration defines: a generic webhook (JSON, HMAC-SHA256 signed), a
//! Slack incoming webhook (Block Kit) and a Microsoft Teams workflow (an Adaptive Card).
//!
//! The loop never waits: it hands each notice, with the sinks subscribed to it, to a worker
//! task. The worker sends it, retries a failure with backoff (1 s doubling to a minute; a 429's
//! `Retry-After` is honoured), and records each delivery in `<data dir>/notifications.sent`
//! before it is counted done, so a restart sends nothing twice: only a notice whose 2xx was
//! never recorded (a kill between the answer and the write) can be sent again, and every
//! delivery carries its id (`X-Canaryd-Delivery`, and `id` in the webhook's JSON) for a
//! receiver to drop it. A 4xx other than 408 and 429 is permanent: reported, not retried.
//!
//! Secrets (a Slack or Teams URL, a webhook's signing secret) are read at each send and never
//! leave in a body: any of their values found in one is replaced by `***`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hmac::Mac as _;
use http_body_util::Full;
use hyper::body::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::core::notify::{Notice, Severity, Subscription};
use crate::edge::secret::{Secret, SecretRef};
use crate::edge::telemetry::{ErrorClass, Event as Tele, Telemetry};

/// The bound on one delivery, answer included.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The first retry of a failed delivery; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Deliveries waiting beyond which the oldest is dropped (a sink down for long).
const MAX_PENDING: usize = 10_000;
/// How long a delivery that keeps failing is tried before it is dropped.
const GIVE_UP: Duration = Duration::from_secs(6 * 3600);
/// Deliveries recorded in the journal beyond which the oldest are dropped at start.
const JOURNAL_KEEP: usize = 20_000;
/// The journal's file name in the data dir.
pub const JOURNAL: &str = "notifications.sent";
/// What a Slack header may hold (Block Kit: plain text, 150 characters).
const SLACK_HEADER: usize = 150;
/// What a Slack section's text may hold (3,000 characters).
const SLACK_SECTION: usize = 3000;

/// `notifications:` in the controller configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifyConfig {
    /// Sinks by name; rollouts subscribe to them by name.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    /// The subscriptions of a rollout whose spec names none.
    #[serde(default)]
    pub default: Vec<Subscription>,
}

/// One sink: `webhook: {...}`, `slack: {...}` or `teams: {...}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum SinkConfig {
    /// A generic webhook: the notice as JSON, signed with `secret` when one is set
    /// (`X-Canaryd-Signature-256: sha256=<hex HMAC-SHA256 of the body>`).
    Webhook {
        url: String,
        #[serde(default)]
        secret: Option<SecretRef>,
        /// More headers sent with each delivery.
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    /// A Slack incoming webhook; its URL is a secret (`{file: …}` or `{env: …}`).
    Slack { url: SecretRef },
    /// A Microsoft Teams workflow ("When a Teams webhook request is received"); its URL is a
    /// secret.
    Teams { url: SecretRef },
}

impl SinkConfig {
    fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Webhook { .. } => "webhook",
            SinkConfig::Slack { .. } => "slack",
            SinkConfig::Teams { .. } => "teams",
        }
    }
}

/// One delivery: a notice for one sink.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub sink: String,
    pub notice: Notice,
}

impl Delivery {
    fn key(&self) -> String {
        format!("{}\t{}", self.sink, self.notice.id)
    }
}

/// The daemon's handle on the notification worker.
#[derive(Debug)]
pub struct Notifier {
    tx: mpsc::UnboundedSender<Delivery>,
    config: NotifyConfig,
    /// Deliveries handed over (or recorded as sent before this start).
    handed: BTreeSet<String>,
}

impl Notifier {
    /// Starts the worker: `data_dir` holds the journal of deliveries sent; `status_command`
    /// is what a message tells people to run (`canaryd status NAME --repo URL`, `NAME` filled in).
    pub fn start(
        config: NotifyConfig,
        data_dir: &Path,
        status_command: String,
        telemetry: Arc<Telemetry>,
        shutdown: CancellationToken,
    ) -> Result<Notifier, String> {
        let journal = Journal::open(&data_dir.join(JOURNAL))?;
        let handed = journal.sent.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let client = crate::edge::https::client().map_err(|e| format!("notifications: {e}"))?;
        let worker = Worker {
            sender: Arc::new(Sender {
                sinks: config.sinks.clone(),
                client,
                status_command,
            }),
            journal: Arc::new(std::sync::Mutex::new(journal)),
            telemetry,
        };
        tokio::spawn(worker.run(rx, shutdown));
        Ok(Notifier { tx, config, handed })
    }

    /// Hands over every notice of `notices` that `subscriptions` (the configuration's default
    /// when `None`) want and that was not handed over before.
    pub fn tell(&mut self, subscriptions: Option<&[Subscription]>, notices: Vec<Notice>) {
        let subs = subscriptions.unwrap_or(&self.config.default);
        for notice in notices {
            let sinks: BTreeSet<&str> = subs
                .iter()
                .filter(|s| s.wants(notice.kind) && self.config.sinks.contains_key(&s.sink))
                .map(|s| s.sink.as_str())
                .collect();
            for sink in sinks {
                let d = Delivery {
                    sink: sink.to_string(),
                    notice: notice.clone(),
                };
                if self.handed.insert(d.key()) {
                    let _ = self.tx.send(d);
                }
            }
        }
    }
}

/// A record of what was done once and must not be done again after a restart (notifications
/// sent, post-rollout hooks called): one key a line, appended and synced.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    sent: BTreeSet<String>,
}

impl Journal {
    /// Reads the journal (none yet: empty), keeping its last [`JOURNAL_KEEP`] lines.
    pub(crate) fn open(path: &Path) -> Result<Journal, String> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let text = String::from_utf8_lossy(&bytes);
        // A line a crash cut short (no newline) is dropped: that delivery is sent again.
        let whole = text.rfind('\n').map_or("", |end| &text[..=end]);
        let lines: Vec<&str> = whole.lines().filter(|l| !l.is_empty()).collect();
        let kept = &lines[lines.len().saturating_sub(JOURNAL_KEEP)..];
        if kept.len() < lines.len() || whole.len() < text.len() {
            let tmp = path.with_extension("tmp");
            let mut body = kept.join("\n");
            if !body.is_empty() {
                body.push('\n');
            }
            std::fs::File::create(&tmp)
                .and_then(|mut f| {
                    f.write_all(body.as_bytes())?;
                    f.sync_all()
                })
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| format!("cannot rewrite {}: {e}", path.display()))?;
        }
        Ok(Journal {
            path: path.to_path_buf(),
            sent: kept.iter().map(|l| (*l).to_string()).collect(),
        })
    }

    /// Whether `key` was recorded.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.sent.contains(key)
    }

    /// Records `key`, on disk first.
    fn record(&mut self, key: &str) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(format!("{key}\n").as_bytes())?;
        f.sync_data()?;
        self.sent.insert(key.to_string());
        Ok(())
    }
}

/// Records `key` in `journal` on the blocking pool (it writes and syncs a file).
pub(crate) async fn record(
    journal: &Arc<std::sync::Mutex<Journal>>,
    key: String,
) -> Result<(), String> {
    let journal = Arc::clone(journal);
    tokio::task::spawn_blocking(move || {
        journal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(&key)
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()))
}

/// Sends deliveries; shared by the tasks the worker spawns.
struct Sender {
    sinks: BTreeMap<String, SinkConfig>,
    client: crate::edge::https::Client,
    status_command: String,
}

struct Worker {
    sender: Arc<Sender>,
    /// Shared with the send tasks, which record a 2xx the moment it is read.
    journal: Arc<std::sync::Mutex<Journal>>,
    telemetry: Arc<Telemetry>,
}

/// A delivery waiting for its next try.
struct Pending {
    delivery: Delivery,
    due: Instant,
    tries: u32,
    /// Handed over in this order, which is the order it is sent in per sink.
    seq: u64,
    since: Instant,
}

/// How one try went.
enum Tried {
    Sent,
    /// Try again, not before this long.
    Retry(Option<Duration>, String),
    /// Never: the sink refuses it (a 4xx) or cannot be configured.
    Refused(String),
}

impl Worker {
    /// One delivery in flight per sink at a time (so a dead sink holds up only itself), due
    /// ones oldest first; a failure waits its backoff, one that keeps failing for
    /// [`GIVE_UP`] is dropped and reported. Stopping drops what is in flight.
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Delivery>, stop: CancellationToken) {
        let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
        let mut busy: BTreeSet<String> = BTreeSet::new();
        let mut flying: tokio::task::JoinSet<(String, Tried, Result<(), String>)> =
            tokio::task::JoinSet::new();
        let mut seq = 0u64;
        loop {
            let now = crate::edge::clock::instant();
            let mut due: Vec<(&u64, &String)> = pending
                .iter()
                .filter(|(_, p)| p.due <= now && !busy.contains(&p.delivery.sink))
                .map(|(k, p)| (&p.seq, k))
                .collect();
            due.sort();
            let due: Vec<String> = due.into_iter().map(|(_, k)| k.clone()).collect();
            for key in due {
                let Some(p) = pending.get(&key) else { continue };
                if !busy.insert(p.delivery.sink.clone()) {
                    continue;
                }
                let (sender, d) = (Arc::clone(&self.sender), p.delivery.clone());
                let journal = Arc::clone(&self.journal);
                flying.spawn(async move {
                    let tried = sender.send(&d).await;
                    // Recorded at once: a kill now finds it sent, and sends it not again.
                    let recorded = match tried {
                        Tried::Sent => record(&journal, key.clone()).await,
                        _ => Ok(()),
                    };
                    (key, tried, recorded)
                });
            }
            let next = pending
                .values()
                .filter(|p| !busy.contains(&p.delivery.sink))
                .map(|p| p.due)
                .min();
            let sleep = async {
                match next {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                d = rx.recv() => match d {
                    Some(d) if !self.journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).has(&d.key()) => {
                        seq += 1;
                        let now = crate::edge::clock::instant();
                        pending.insert(d.key(), Pending { delivery: d, due: now, tries: 0, seq, since: now });
                        if pending.len() > MAX_PENDING
                            && let Some(oldest) = pending.iter().min_by_key(|(_, p)| p.seq).map(|(k, _)| k.clone())
                            && let Some(p) = pending.remove(&oldest)
                        {
                            self.failed(&p.delivery, "too many notifications waiting", true);
                        }
                    }
                    Some(_) => {}
                    None => return,
                },
                Some(done) = flying.join_next(), if !flying.is_empty() => {
                    let Ok((key, tried, recorded)) = done else { continue };
                    let Some(mut p) = pending.remove(&key) else { continue };
                    busy.remove(&p.delivery.sink);
                    match tried {
                        Tried::Sent => self.sent(&p.delivery, recorded),
                        Tried::Refused(why) => self.failed(&p.delivery, &why, true),
                        Tried::Retry(_, why) if p.since.elapsed() >= GIVE_UP => {
                            self.failed(&p.delivery, &format!("{why}; failing for {} h", GIVE_UP.as_secs() / 3600), true);
                        }
                        Tried::Retry(after, why) => {
                            self.failed(&p.delivery, &why, false);
                            let backoff = FIRST_BACKOFF
                                .saturating_mul(1 << p.tries.min(6))
                                .min(MAX_BACKOFF);
                            // A `Retry-After` is honoured, but never below the backoff.
                            let wait = after.map_or(backoff, |a| a.max(backoff)).min(MAX_BACKOFF);
                            p.due = crate::edge::clock::instant() + wait;
                            p.tries += 1;
                            pending.insert(key, p);
                        }
                    }
                },
                () = sleep => {}
            }
        }
    }

    fn sent(&self, d: &Delivery, recorded: Result<(), String>) {
        if let Err(e) = recorded {
            self.telemetry.record(Tele::Error {
                class: ErrorClass::Notify,
                rollout: Some(d.notice.rollout.clone()),
                message: format!(
                    "notification {} sent to `{}` but not recorded ({e}); a restart may send it again",
                    d.notice.id, d.sink
                ),
            });
        }
        self.telemetry.record(Tele::Notified {
            sink: d.sink.clone(),
            id: d.notice.id.clone(),
            delivered: true,
        });
    }

    fn failed(&self, d: &Delivery, why: &str, dropped: bool) {
        self.telemetry.record(Tele::Notified {
            sink: d.sink.clone(),
            id: d.notice.id.clone(),
            delivered: false,
        });
        self.telemetry.record(Tele::Error {
            class: ErrorClass::Notify,
            rollout: Some(d.notice.rollout.clone()),
            message: format!(
                "notification {} to `{}`: {why}{}",
                d.notice.id,
                d.sink,
                if dropped { "; dropped" } else { "; retrying" }
            ),
        });
    }
}

impl Sender {
    async fn send(&self, d: &Delivery) -> Tried {
        let Some(sink) = self.sinks.get(&d.sink) else {
            return Tried::Refused("no such sink in the configuration".to_string());
        };
        let command = self.status_command.replace("NAME", &d.notice.rollout);
        let (url, secrets, signing, headers) = match resolve(&d.sink, sink) {
            Ok(r) => r,
            Err(e) => return Tried::Retry(None, e),
        };
        let scrub = |mut text: String| {
            for s in &secrets {
                if !s.expose().is_empty() {
                    text = text.replace(s.expose(), "***");
                }
            }
            text
        };
        let body = match sink {
            SinkConfig::Webhook { .. } => webhook_body(&d.notice, &command),
            SinkConfig::Slack { .. } => slack_body(&d.notice, &command),
            SinkConfig::Teams { .. } => teams_body(&d.notice, &command),
        };
        let text = scrub(body.to_string());
        let mut request = hyper::Request::post(url.expose())
            .header("content-type", "application/json")
            .header("user-agent", concat!("canaryd/", env!("CARGO_PKG_VERSION")))
            .header("x-canaryd-event", d.notice.kind.as_str())
            .header("x-canaryd-delivery", &d.notice.id);
        if let Some(key) = &signing {
            request = request.header("x-canaryd-signature-256", signature(key, text.as_bytes()));
        }
        for (k, v) in &headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let request = match request.body(Full::new(Bytes::from(text))) {
            Ok(r) => r,
            Err(e) => {
                return Tried::Refused(format!("{} sink: bad request: {e}", sink.kind()));
            }
        };
        match crate::edge::https::send(&self.client, request, SEND_TIMEOUT).await {
            Err(e) => Tried::Retry(None, scrub(format!("cannot reach the sink: {e}"))),
            Ok(answer) => {
                // A short excerpt of the answer, for the error message, secrets scrubbed.
                let b = &answer.body;
                let excerpt = scrub(String::from_utf8_lossy(&b[..b.len().min(200)]).to_string());
                let code = answer.status.as_u16();
                if answer.status.is_success() {
                    Tried::Sent
                } else if code == 408 || code == 429 || answer.status.is_server_error() {
                    Tried::Retry(answer.retry_after, format!("answered {code} {excerpt}"))
                } else {
                    Tried::Refused(format!("answered {code} {excerpt}"))
                }
            }
        }
    }
}

/// The URL, the secrets to scrub, the signing key and the extra headers of a sink, read now.
#[allow(clippy::type_complexity)]
fn resolve(
    name: &str,
    sink: &SinkConfig,
) -> Result<
    (
        Secret,
        Vec<Secret>,
        Option<Secret>,
        BTreeMap<String, String>,
    ),
    String,
> {
    let what = |field: &str| format!("notifications.sinks.{name}.{field}");
    match sink {
        SinkConfig::Webhook {
            url,
            secret,
            headers,
        } => {
            let key = secret
                .as_ref()
                .map(|s| s.read(&what("webhook.secret")))
                .transpose()
                .map_err(|e| e.to_string())?;
            Ok((
                Secret::new(url.clone()),
                key.iter().cloned().collect(),
                key,
                headers.clone(),
            ))
        }
        SinkConfig::Slack { url } | SinkConfig::Teams { url } => {
            let url = url
                .read(&what(&format!("{}.url", sink.kind())))
                .map_err(|e| e.to_string())?;
            Ok((url.clone(), vec![url], None, BTreeMap::new()))
        }
    }
}

/// `sha256=<hex HMAC-SHA256 of body under key>`, as GitHub signs its webhooks.
pub fn signature(key: &Secret, body: &[u8]) -> String {
    let mut mac = crate::edge::webhook::hmac_sha256(key.expose().as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The generic webhook's body: the notice, and the command to see more.
pub fn webhook_body(n: &Notice, status_command: &str) -> Value {
    let mut v = serde_json::to_value(n).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("event".into(), json!(n.kind.as_str()));
        o.insert("statusCommand".into(), json!(status_command));
    }
    v
}

/// Slack's mrkdwn escapes: `&`, `<` and `>`.
fn mrkdwn(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn mark(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "🟢",
        Severity::Warn => "🟡",
        Severity::Error => "🔴",
    }
}

fn weights_line(n: &Notice) -> String {
    n.weights
        .iter()
        .map(|(b, w)| format!("{b} {w}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A Slack incoming webhook's body: a fallback `text` and Block Kit blocks within Slack's
/// limits (a header, the story, the facts, the revert link, the command to run).
pub fn slack_body(n: &Notice, status_command: &str) -> Value {
    let mut story = mrkdwn(&n.text);
    if let Some(pr) = &n.revert_pr {
        story.push_str(&format!("\n<{pr}|Revert pull request>"));
    } else if let Some(b) = &n.revert_branch {
        story.push_str(&format!("\nRevert branch: `{}`", mrkdwn(b)));
    }
    let mut fields = vec![
        json!({"type": "mrkdwn", "text": format!("*Revision*\n`{}`", n.revision)}),
        json!({"type": "mrkdwn", "text": format!("*Phase*\n{}", n.phase)}),
    ];
    if let Some(k) = n.step {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Step*\n{k}/{}", n.steps)}));
    }
    if !n.weights.is_empty() {
        fields.push(json!({"type": "mrkdwn", "text": cut(&format!("*Weights*\n{}", mrkdwn(&weights_line(n))), 2000)}));
    }
    json!({
        "text": cut(&mrkdwn(&format!("{} {}: {}", mark(n.severity), n.title, n.text)), 3000),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": cut(&format!("{} {}", mark(n.severity), n.title), SLACK_HEADER), "emoji": true}},
            {"type": "section", "text": {"type": "mrkdwn", "text": cut(&story, SLACK_SECTION)}},
            {"type": "section", "fields": fields},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": cut(&format!("`{}`", mrkdwn(status_command)), SLACK_SECTION)}
            ]},
        ],
    })
}

/// A Teams workflow's body: a message carrying one Adaptive Card (1.2, which Teams renders).
pub fn teams_body(n: &Notice, status_command: &str) -> Value {
    let mut facts = vec![
        json!({"title": "Revision", "value": n.revision.as_str()}),
        json!({"title": "Phase", "value": n.phase}),
    ];
    if let Some(k) = n.step {
        facts.push(json!({"title": "Step", "value": format!("{k}/{}", n.steps)}));
    }
    if !n.weights.is_empty() {
        facts.push(json!({"title": "Weights", "value": weights_line(n)}));
    }
    if let Some(b) = &n.revert_branch {
        facts.push(json!({"title": "Revert branch", "value": b}));
    }
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.2",
        "body": [
            {"type": "TextBlock", "text": format!("{} {}", mark(n.severity), n.title), "weight": "Bolder", "size": "Medium", "wrap": true},
            {"type": "TextBlock", "text": n.text, "wrap": true},
            {"type": "FactSet", "facts": facts},
            {"type": "TextBlock", "text": status_command, "fontType": "Monospace", "isSubtle": true, "wrap": true},
        ],
    });
    if let Some(pr) = &n.revert_pr {
        card["actions"] =
            json!([{"type": "Action.OpenUrl", "title": "Revert pull request", "url": pr}]);
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card,
        }],
    })
}
