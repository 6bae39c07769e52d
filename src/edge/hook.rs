//! A rollout's hooks as HTTP calls: the body names the rollout, the revision, the hook, the
//! phase, the step and the canary's weight, signed with HMAC-SHA256 when the hook has a
//! secret; a hook that does not answer 2xx is tried again `retries` times, a second apart. The
//! answer's status and the start of its body are the evidence, secrets scrubbed.
//!
//! `pre-rollout`, `rollout` and `confirm-*` hooks are measured as analysis metrics (the
//! provider calls [`call`]); `post-rollout` hooks are called once per outcome by [`PostHooks`],
//! which records each call in `<data dir>/hooks.called` so that a restart calls none twice.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::core::model::Hook;
use crate::edge::notify::{Journal, record, signature};
use crate::edge::secret::SecretRef;
use crate::edge::telemetry::{ErrorClass, Event as Tele, Telemetry};

/// How much of an answer's body is kept as evidence.
const EXCERPT: usize = 200;
/// The pause between two tries.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// The journal of post-rollout calls, in the data dir.
pub const JOURNAL: &str = "hooks.called";

/// How a hook answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// It answered 2xx.
    pub ok: bool,
    /// `HTTP 503: busy`, `no answer: connection refused`.
    pub evidence: String,
}

/// Calls `hook` in `phase` (its tries included), over `http://` or `https://`.
pub async fn call(client: &crate::edge::https::Client, hook: &Hook, phase: &str) -> Answer {
    let body = json!({
        "hook": hook.name,
        "type": hook.kind.as_str(),
        "rollout": hook.rollout,
        "revision": hook.revision.as_str(),
        "phase": phase,
        "step": hook.step.map(|k| k + 1),
        "canaryWeight": hook.weight.map(|w| w.get()),
    })
    .to_string();
    let secret = match &hook.secret {
        Some((file, env)) => {
            let source = SecretRef {
                file: file.as_ref().map(PathBuf::from),
                env: env.clone(),
            };
            match source.read(&format!("hook `{}` secret", hook.name)) {
                Ok(s) => Some(s),
                Err(e) => {
                    return Answer {
                        ok: false,
                        evidence: e.to_string(),
                    };
                }
            }
        }
        None => None,
    };
    let scrub = |text: String| match &secret {
        Some(s) if !s.expose().is_empty() => text.replace(s.expose(), "***"),
        _ => text,
    };
    let method = hyper::Method::from_bytes(hook.method.as_bytes()).unwrap_or(hyper::Method::POST);
    let mut last = Answer {
        ok: false,
        evidence: "not called".to_string(),
    };
    for attempt in 0..=hook.retries {
        if attempt > 0 {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        let mut request = hyper::Request::builder()
            .method(method.clone())
            .uri(&hook.url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("canaryd/", env!("CARGO_PKG_VERSION")))
            .header("x-canaryd-hook", hook.kind.as_str());
        if let Some(s) = &secret {
            request = request.header("x-canaryd-signature-256", signature(s, body.as_bytes()));
        }
        for (k, v) in &hook.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let request = match request.body(http_body_util::Full::new(hyper::body::Bytes::from(
            body.clone(),
        ))) {
            Ok(r) => r,
            Err(e) => {
                return Answer {
                    ok: false,
                    evidence: format!("cannot build the request: {e}"),
                };
            }
        };
        last = match crate::edge::https::send(client, request, hook.timeout).await {
            Ok(answer) => {
                let text = String::from_utf8_lossy(&answer.body);
                let excerpt: String = text.trim().chars().take(EXCERPT).collect();
                Answer {
                    ok: answer.status.is_success(),
                    evidence: scrub(format!("HTTP {}: {excerpt}", answer.status.as_u16())),
                }
            }
            Err(e) => Answer {
                ok: false,
                evidence: scrub(format!("no answer: {e}")),
            },
        };
        if last.ok {
            break;
        }
    }
    last
}

/// Calls post-rollout hooks once per outcome, off the loop.
#[derive(Debug)]
pub struct PostHooks {
    /// The calls made, across restarts.
    journal: Arc<Mutex<Journal>>,
    /// The calls under way.
    started: Mutex<BTreeSet<String>>,
    client: crate::edge::https::Client,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
}

impl PostHooks {
    pub fn new(
        data_dir: &Path,
        client: crate::edge::https::Client,
        telemetry: Arc<Telemetry>,
        shutdown: CancellationToken,
    ) -> Result<PostHooks, String> {
        Ok(PostHooks {
            journal: Arc::new(Mutex::new(Journal::open(&data_dir.join(JOURNAL))?)),
            started: Mutex::default(),
            client,
            telemetry,
            shutdown,
        })
    }

    /// Calls each of `hooks` for the outcome `key` (`<rollout>/<revision>/<time>/<phase>`) in
    /// `phase`, unless it was called for it before.
    pub fn outcome(&self, hooks: &[Hook], key: &str, phase: &str) {
        for hook in hooks {
            let id = format!("{key}/{}", hook.name);
            let called = self
                .journal
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .has(&id);
            let new = self
                .started
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id.clone());
            if called || !new {
                continue;
            }
            let (client, hook, phase) = (self.client.clone(), hook.clone(), phase.to_string());
            let (journal, telemetry, stop) = (
                Arc::clone(&self.journal),
                Arc::clone(&self.telemetry),
                self.shutdown.clone(),
            );
            tokio::spawn(async move {
                let answer = tokio::select! {
                    () = stop.cancelled() => return,
                    a = call(&client, &hook, &phase) => a,
                };
                if let Err(e) = record(&journal, id).await {
                    tracing::warn!(hook = %hook.name, "post-rollout hook called but not recorded: {e}");
                }
                if answer.ok {
                    tracing::info!(rollout = %hook.rollout, hook = %hook.name, "post-rollout hook: {}", answer.evidence);
                } else {
                    // Only recorded: the rollout is over.
                    telemetry.record(Tele::Error {
                        class: ErrorClass::Notify,
                        rollout: Some(hook.rollout.clone()),
                        message: format!(
                            "post-rollout hook `{}` failed: {}",
                            hook.name, answer.evidence
                        ),
                    });
                }
            });
        }
    }
}
