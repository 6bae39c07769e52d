//! Push webhooks, `POST /hooks/github` and `POST /hooks/generic` on the admin listener: a signed delivery saying the watched branch moved wakes the daemon's loop to fetch at once.
//
// A delivery is believed only once its signature, `sha256=` + the hex HMAC-SHA256 of the raw
// body with the shared secret, checks out in constant time. Even then it only says *that* the
// remote moved, never what it holds: the daemon fetches and reads Git exactly as on a poll, so
// a replayed delivery costs one fetch at most. The poll goes on regardless and backs up every
// lost delivery.
//
// canaryd's own pushes (the status branch, `canaryd/revert/*`) come back from GitHub as pushes
// to other refs; they are answered "ignored" and wake nothing.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde::Deserialize;
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::edge::secret::SecretRef;
use crate::edge::telemetry::{Event, Telemetry, WebhookOutcome};

/// Where GitHub deliveries are posted.
pub const GITHUB_PATH: &str = "/hooks/github";
/// Where any other sender posts (a CI job, another forge, `curl`).
pub const GENERIC_PATH: &str = "/hooks/generic";
/// Bodies over this are refused (413) unread. A push event is a few KiB; GitHub caps payloads
/// at 25 MB, and one that large carries nothing canaryd needs.
pub const MAX_BODY: usize = 1024 * 1024;
/// How many delivery ids are remembered to answer a redelivery as a duplicate.
const REMEMBERED: usize = 1024;
/// Longer delivery ids are not remembered (GitHub's are 36-character GUIDs).
const MAX_DELIVERY_ID: usize = 100;

/// `webhook:` in the controller configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookConfig {
    /// The shared secret deliveries are signed with (GitHub's "Secret" of the webhook). Read at
    /// each delivery, so a rotated file is picked up without a restart.
    pub secret: SecretRef,
}

/// `sha256=<hex>`: the `X-Hub-Signature-256` value of `body` signed with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = hmac_sha256(secret);
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 2 * tag.len());
    out.push_str("sha256=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Whether `header` (`sha256=<hex>`) signs `body` with `secret`. The comparison takes the same
/// time wherever the first wrong byte is.
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(tag) = header.trim().strip_prefix("sha256=").and_then(unhex) else {
        return false;
    };
    let mut mac = hmac_sha256(secret);
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

pub(crate) fn hmac_sha256(secret: &[u8]) -> Hmac<Sha256> {
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    }
}

fn unhex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What a delivery whose signature checked out asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The watched branch moved (on the generic hook: or the sender did not say which ref).
    Wake { what: String },
    /// Not for the loop: GitHub's ping, or a push to another ref (the status branch, a revert
    /// branch, a tag, another branch).
    Ignore { why: String },
    /// An event canaryd does not act on.
    Unknown { event: String },
    /// The body is not what its event promises.
    Invalid { why: String },
}

/// The part of a push event canaryd reads.
#[derive(Deserialize)]
struct RefOnly {
    #[serde(rename = "ref")]
    reference: Option<String>,
}

/// A GitHub delivery: event `X-GitHub-Event`, body JSON or, when the hook's content type is
/// `application/x-www-form-urlencoded` (GitHub's default), JSON in the `payload` field.
pub fn github(
    event: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
    branch: &str,
) -> Verdict {
    let event = event.map(str::trim).unwrap_or_default();
    match event {
        "" => Verdict::Invalid {
            why: "no X-GitHub-Event header".to_string(),
        },
        "ping" => Verdict::Ignore {
            why: "ping".to_string(),
        },
        "push" => {
            let json = match json_of(content_type, body) {
                Ok(json) => json,
                Err(why) => return Verdict::Invalid { why },
            };
            match serde_json::from_slice::<RefOnly>(&json) {
                Ok(RefOnly { reference: Some(r) }) => by_ref(&r, branch),
                Ok(RefOnly { reference: None }) => Verdict::Invalid {
                    why: "a push event without `ref`".to_string(),
                },
                Err(e) => Verdict::Invalid {
                    why: format!("a push event that is not JSON: {e}"),
                },
            }
        }
        other => Verdict::Unknown {
            event: other.chars().take(64).collect(),
        },
    }
}

/// A generic delivery: an empty body, or JSON `{"ref": "refs/heads/main"}` (`ref` optional; a
/// bare branch name is read as `refs/heads/<name>`).
pub fn generic(content_type: Option<&str>, body: &[u8], branch: &str) -> Verdict {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Verdict::Wake {
            what: "a delivery without a body".to_string(),
        };
    }
    let json = match json_of(content_type, body) {
        Ok(json) => json,
        Err(why) => return Verdict::Invalid { why },
    };
    match serde_json::from_slice::<RefOnly>(&json) {
        Ok(RefOnly { reference: Some(r) }) if r.starts_with("refs/") => by_ref(&r, branch),
        Ok(RefOnly { reference: Some(r) }) => by_ref(&format!("refs/heads/{r}"), branch),
        Ok(RefOnly { reference: None }) => Verdict::Wake {
            what: "a delivery naming no ref".to_string(),
        },
        Err(e) => Verdict::Invalid {
            why: format!("the body is not a JSON object with an optional `ref`: {e}"),
        },
    }
}

fn by_ref(reference: &str, branch: &str) -> Verdict {
    if reference == format!("refs/heads/{branch}") {
        Verdict::Wake {
            what: format!("push to {reference}"),
        }
    } else {
        let shown: String = reference.chars().take(200).collect();
        Verdict::Ignore {
            why: format!("push to {shown}, not the watched branch {branch}"),
        }
    }
}

/// The JSON of a body, form-encoded (`payload=<url-encoded JSON>`) or not.
fn json_of(content_type: Option<&str>, body: &[u8]) -> Result<Vec<u8>, String> {
    let form = content_type
        .and_then(|c| c.split(';').next())
        .is_some_and(|c| {
            c.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return Ok(body.to_vec());
    }
    body.split(|b| *b == b'&')
        .find_map(|pair| pair.strip_prefix(b"payload="))
        .map(percent_decode)
        .ok_or_else(|| "a form-encoded body without a `payload` field".to_string())
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; a malformed
/// escape is kept as it is (JSON parsing then says what is wrong).
fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let byte = s
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = byte {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// The delivery ids answered last, oldest first; at most [`REMEMBERED`] of them.
#[derive(Debug, Default)]
struct Recent {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl Recent {
    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: &str) {
        if !self.set.insert(id.to_string()) {
            return;
        }
        self.order.push_back(id.to_string());
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// Which endpoint a delivery came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    GitHub,
    Generic,
}

/// The webhook endpoints' shared state.
struct Hooks {
    secret: SecretRef,
    /// The watched branch.
    branch: String,
    /// The daemon loop's wake-up channel (the one the local watcher sends on).
    wake: mpsc::Sender<()>,
    telemetry: Arc<Telemetry>,
    seen: Mutex<Recent>,
}

/// How a delivery is answered, and what is counted and logged.
struct Reply {
    outcome: WebhookOutcome,
    status: StatusCode,
    body: String,
    detail: String,
}

impl Reply {
    fn new(outcome: WebhookOutcome, status: StatusCode, body: impl Into<String>) -> Reply {
        let body = body.into();
        Reply {
            outcome,
            status,
            detail: body.clone(),
            body,
        }
    }

    fn detail(mut self, detail: impl Into<String>) -> Reply {
        self.detail = detail.into();
        self
    }
}

/// The webhook routes, for [`crate::edge::admin::Admin::mount`]: a verified push to `branch` sends on
/// `wake`. Deliveries are counted on `telemetry` by outcome.
pub fn routes(
    config: &WebhookConfig,
    branch: &str,
    wake: mpsc::Sender<()>,
    telemetry: Arc<Telemetry>,
) -> Router {
    let hooks = Arc::new(Hooks {
        secret: config.secret.clone(),
        branch: branch.to_string(),
        wake,
        telemetry,
        seen: Mutex::new(Recent::default()),
    });
    Router::new()
        .route(
            GITHUB_PATH,
            post(
                |State(h): State<Arc<Hooks>>, headers: HeaderMap, body: Body| async move {
                    h.deliver(Hook::GitHub, &headers, body).await
                },
            ),
        )
        .route(
            GENERIC_PATH,
            post(
                |State(h): State<Arc<Hooks>>, headers: HeaderMap, body: Body| async move {
                    h.deliver(Hook::Generic, &headers, body).await
                },
            ),
        )
        // The handlers bound the body themselves, to count what they refuse.
        .layer(DefaultBodyLimit::disable())
        .with_state(hooks)
}

fn text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl Hooks {
    async fn deliver(&self, hook: Hook, headers: &HeaderMap, body: Body) -> Response {
        let reply = self.answer(hook, headers, body).await;
        // Header values are the sender's: shown shortened.
        let shown = |name: &str, none: &str| -> String {
            text(headers, name)
                .unwrap_or(none)
                .chars()
                .take(64)
                .collect()
        };
        let what = match hook {
            Hook::GitHub => format!(
                "github {} delivery {}",
                shown("x-github-event", "(no event)"),
                shown("x-github-delivery", "(no id)")
            ),
            Hook::Generic => "generic delivery".to_string(),
        };
        self.telemetry.record(Event::Webhook {
            outcome: reply.outcome,
            detail: format!("{what}: {}", reply.detail),
        });
        if reply.status == StatusCode::NO_CONTENT {
            return reply.status.into_response();
        }
        let mut body = reply.body;
        body.push('\n');
        (reply.status, body).into_response()
    }

    async fn answer(&self, hook: Hook, headers: &HeaderMap, body: Body) -> Reply {
        use WebhookOutcome as O;
        let too_large = || {
            Reply::new(
                O::Invalid,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("bodies are limited to {MAX_BODY} bytes"),
            )
        };
        let declared = text(headers, header::CONTENT_LENGTH.as_str()).and_then(|n| n.parse().ok());
        if declared.is_some_and(|n: usize| n > MAX_BODY) {
            return too_large();
        }
        let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
            return too_large();
        };
        let names: &[&str] = match hook {
            Hook::GitHub => &["x-hub-signature-256"],
            Hook::Generic => &["x-canaryd-signature-256", "x-hub-signature-256"],
        };
        let unauthorized =
            || Reply::new(O::Unauthorized, StatusCode::UNAUTHORIZED, "bad signature");
        let Some(signed) = names.iter().find_map(|n| text(headers, n)) else {
            return unauthorized().detail(format!("no {} header", names.join(" or ")));
        };
        // A file read: off the async workers.
        let secret = self.secret.clone();
        let read = tokio::task::spawn_blocking(move || secret.read("webhook.secret")).await;
        let secret = match read {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Reply::new(
                    O::Unavailable,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "try again later",
                )
                .detail(format!("cannot check the signature: {e}"));
            }
            Err(_) => {
                return Reply::new(
                    O::Unavailable,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "try again later",
                )
                .detail("cannot check the signature: the secret reader stopped");
            }
        };
        if !verify(secret.expose().as_bytes(), &body, signed) {
            return unauthorized().detail("the signature does not match the body and the secret");
        }
        let delivery = text(headers, "x-github-delivery")
            .map(str::trim)
            .filter(|id| !id.is_empty() && id.len() <= MAX_DELIVERY_ID);
        if delivery.is_some_and(|id| self.recent().contains(id)) {
            return Reply::new(
                O::Duplicate,
                StatusCode::OK,
                "duplicate delivery, already answered",
            );
        }
        let content_type = text(headers, header::CONTENT_TYPE.as_str());
        let verdict = match hook {
            Hook::GitHub => github(
                text(headers, "x-github-event"),
                content_type,
                &body,
                &self.branch,
            ),
            Hook::Generic => generic(content_type, &body, &self.branch),
        };
        let reply = match verdict {
            Verdict::Wake { what } => match self.wake.try_send(()) {
                // Full: a wake-up is already pending, and the look it starts fetches.
                Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {
                    Reply::new(O::Woke, StatusCode::ACCEPTED, format!("fetching: {what}"))
                }
                Err(mpsc::error::TrySendError::Closed(())) => {
                    return Reply::new(
                        O::Unavailable,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "shutting down",
                    );
                }
            },
            Verdict::Ignore { why } => {
                Reply::new(O::Ignored, StatusCode::OK, format!("ignored: {why}"))
            }
            Verdict::Unknown { event } => Reply::new(O::Unknown, StatusCode::NO_CONTENT, "")
                .detail(format!("event `{event}` is not acted on")),
            Verdict::Invalid { why } => {
                return Reply::new(O::Invalid, StatusCode::BAD_REQUEST, why);
            }
        };
        if let Some(id) = delivery {
            self.recent().insert(id);
        }
        reply
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_documented_test_vector() {
        // docs.github.com, "Validating webhook deliveries", testing the webhook payload validation.
        let secret = b"It's a Secret to Everybody";
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(signature(secret, b"Hello, World!"), expected);
        assert!(verify(secret, b"Hello, World!", expected));
        assert!(verify(
            secret,
            b"Hello, World!",
            &expected.to_uppercase().replace("SHA256=", "sha256=")
        ));
    }

    #[test]
    fn wrong_bodies_secrets_and_headers_do_not_verify() {
        let secret = b"It's a Secret to Everybody";
        let good = signature(secret, b"Hello, World!");
        for (secret, body, header) in [
            (&secret[..], &b"Hello, World?"[..], good.as_str()),
            (b"It's a secret to everybody", b"Hello, World!", &good),
            (secret, b"Hello, World!", ""),
            (secret, b"Hello, World!", "sha256="),
            (secret, b"Hello, World!", &good[..good.len() - 2]),
            (secret, b"Hello, World!", &good.replace("sha256=", "sha1=")),
            (secret, b"Hello, World!", &good.replace("sha256=", "")),
            (secret, b"Hello, World!", &format!("{good}00")),
            (
                secret,
                b"Hello, World!",
                "sha256=zz7107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            ),
        ] {
            assert!(!verify(secret, body, header), "{header:?}");
        }
    }

    fn wake(what: &str) -> Verdict {
        Verdict::Wake { what: what.into() }
    }

    fn ignore(why: &str) -> Verdict {
        Verdict::Ignore { why: why.into() }
    }

    #[test]
    fn github_events() {
        let check = |event: Option<&str>, ct: Option<&str>, body: &str, want: Verdict| {
            assert_eq!(
                github(event, ct, body.as_bytes(), "main"),
                want,
                "{event:?} {body}"
            );
        };
        let json = Some("application/json");
        check(
            Some("push"),
            json,
            r#"{"ref":"refs/heads/main","after":"x"}"#,
            wake("push to refs/heads/main"),
        );
        check(
            Some("push"),
            json,
            r#"{"ref":"refs/heads/canaryd/status"}"#,
            ignore("push to refs/heads/canaryd/status, not the watched branch main"),
        );
        check(
            Some("push"),
            json,
            r#"{"ref":"refs/heads/canaryd/revert/web-0123456789ab"}"#,
            ignore(
                "push to refs/heads/canaryd/revert/web-0123456789ab, not the watched branch main",
            ),
        );
        check(
            Some("push"),
            json,
            r#"{"ref":"refs/tags/main"}"#,
            ignore("push to refs/tags/main, not the watched branch main"),
        );
        check(
            Some("ping"),
            json,
            r#"{"zen":"Keep it logically awesome."}"#,
            ignore("ping"),
        );
        check(
            Some("issues"),
            json,
            "{}",
            Verdict::Unknown {
                event: "issues".into(),
            },
        );
        assert!(matches!(
            github(None, json, b"{}", "main"),
            Verdict::Invalid { .. }
        ));
        assert!(matches!(
            github(Some("push"), json, b"{}", "main"),
            Verdict::Invalid { .. }
        ));
        assert!(matches!(
            github(Some("push"), json, b"not json", "main"),
            Verdict::Invalid { .. }
        ));
        // GitHub's default content type: the JSON in a form field.
        let form = Some("application/x-www-form-urlencoded");
        check(
            Some("push"),
            form,
            "payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%2C%22x%22%3A%22a+b%22%7D",
            wake("push to refs/heads/main"),
        );
        assert!(matches!(
            github(Some("push"), form, b"other=1", "main"),
            Verdict::Invalid { .. }
        ));
    }

    #[test]
    fn generic_deliveries() {
        let check = |body: &str, want: Verdict| {
            assert_eq!(
                generic(Some("application/json"), body.as_bytes(), "main"),
                want,
                "{body}"
            );
        };
        check("", wake("a delivery without a body"));
        check(" \n", wake("a delivery without a body"));
        check("{}", wake("a delivery naming no ref"));
        check(
            r#"{"ref":"refs/heads/main"}"#,
            wake("push to refs/heads/main"),
        );
        check(r#"{"ref":"main"}"#, wake("push to refs/heads/main"));
        check(
            r#"{"ref":"refs/heads/canaryd/status"}"#,
            ignore("push to refs/heads/canaryd/status, not the watched branch main"),
        );
        assert!(matches!(
            generic(None, b"[1]", "main"),
            Verdict::Invalid { .. }
        ));
        assert!(matches!(
            generic(None, br#"{"ref":7}"#, "main"),
            Verdict::Invalid { .. }
        ));
    }

    #[test]
    fn form_decoding() {
        assert_eq!(percent_decode(b"a+b%20c%7e%zz%4"), b"a b c~%zz%4");
    }

    #[test]
    fn recent_deliveries_are_bounded() {
        let mut r = Recent::default();
        for i in 0..REMEMBERED + 10 {
            r.insert(&format!("id-{i}"));
        }
        r.insert("id-20");
        assert_eq!(r.order.len(), REMEMBERED);
        assert_eq!(r.set.len(), REMEMBERED);
        assert!(!r.contains("id-0") && !r.contains("id-9"));
        assert!(r.contains("id-10") && r.contains(&format!("id-{}", REMEMBERED + 9)));
    }
}
