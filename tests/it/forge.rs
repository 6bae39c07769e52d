//! The GitHub forge driver against the fake GitHub of [`crate::support::github`], which holds
//! every request to GitHub's published OpenAPI description: pull requests, commit statuses,
//! check runs, App tokens, retries, rate limits, and what never answers.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use axum::http::Method;
use base64::Engine;
use canaryd::forge::{
    AnyForge, CommitReport, Forge, ForgeConfig, ForgeError, GitHubApp, GitHubConfig, ReportState,
    RevertRequest, StatusKind,
};
use canaryd::secret::SecretRef;
use serde_json::{Value, json};

use crate::support::github::{
    APP_ID, Expect, FakeGitHub, HEAD, INSTALLATION_ID, INSTALLATION_TOKEN, Mishap, OWNER, REPO,
    SHA, TOKEN, app_key, now_s, pull_url, spec,
};
use crate::support::net::{Silent, free_port};

fn revert(body: &str) -> RevertRequest {
    RevertRequest {
        head: HEAD.into(),
        base: "main".into(),
        title: "Revert checkout to 3f2a9c1: canary failed its analysis".into(),
        body: body.into(),
    }
}

const EVIDENCE: &str = "canaryd aborted rollout `checkout` at step 2 (weight 20).\n\n\
| metric | canary | limit |\n|---|---|---|\n| error-rate | 0.071 | < 0.01 |\n";

fn status(context: &str, state: ReportState, description: &str) -> CommitReport {
    CommitReport {
        sha: SHA.into(),
        context: context.into(),
        state,
        description: description.into(),
        target_url: Some("https://canaryd.example.com/rollouts/checkout".into()),
    }
}

// --- Pull requests ---------------------------------------------------------------------------

#[tokio::test]
async fn first_abort_opens_exactly_one_pull_request_with_the_evidence() {
    let gh = FakeGitHub::start(Expect::Token(TOKEN.into())).await;
    let pr = gh
        .forge(StatusKind::CommitStatus)
        .revert_pr(&revert(EVIDENCE))
        .await
        .unwrap();
    assert!(pr.created);
    assert_eq!(pr.url, pull_url(pr.number));
    assert_eq!(gh.calls(), ["pulls/list 200", "pulls/create 201"]);
    let log = gh.log();
    // The lookup names the head as OWNER:branch (a bare branch is ignored by GitHub).
    assert_eq!(
        log[0].param("head"),
        Some(format!("{OWNER}:{HEAD}").as_str())
    );
    assert_eq!(log[0].param("base"), Some("main"));
    assert_eq!(log[0].param("state"), Some("open"));
    assert_eq!(
        log[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let sent: Value = serde_json::from_str(&log[1].body).unwrap();
    assert_eq!(sent["head"], HEAD);
    assert_eq!(sent["base"], "main");
    assert_eq!(sent["body"], EVIDENCE);
    let pulls = gh.pulls();
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0]["number"], pr.number);
    assert_eq!(pulls[0]["body"], EVIDENCE);
    gh.assert_clean();
}

#[tokio::test]
async fn a_restart_finds_the_open_pull_request_and_updates_it() {
    let gh = FakeGitHub::start(Expect::Token(TOKEN.into())).await;
    let first = gh
        .forge(StatusKind::CommitStatus)
        .revert_pr(&revert(EVIDENCE))
        .await
        .unwrap();
    gh.clear_log();

    // A new forge (nothing in memory), more evidence: found and updated, not opened again.
    let more = format!("{EVIDENCE}\nLatency p99 also rose: 812 ms.\n");
    let again = gh
        .forge(StatusKind::CommitStatus)
        .revert_pr(&revert(&more))
        .await
        .unwrap();
    assert_eq!(again.number, first.number);
    assert_eq!(again.url, first.url);
    assert!(!again.created);
    assert_eq!(gh.calls(), ["pulls/list 200", "pulls/update 200"]);
    let sent: Value = serde_json::from_str(&gh.log()[1].body).unwrap();
    assert_eq!(sent, json!({"title": revert("").title, "body": more}));
    assert_eq!(gh.pulls().len(), 1);
    assert_eq!(gh.pulls()[0]["body"], more.as_str());

    // The same request once more: found, already as asked, nothing written.
    gh.clear_log();
    let same = gh
        .forge(StatusKind::CommitStatus)
        .revert_pr(&revert(&more))
        .await
        .unwrap();
    assert_eq!((same.number, same.created), (first.number, false));
    assert_eq!(gh.calls(), ["pulls/list 200"]);
    gh.assert_clean();
}

#[tokio::test]
async fn already_exists_on_create_turns_into_the_lookup() {
    let gh = FakeGitHub::start(Expect::Token(TOKEN.into())).await;
    // Another writer (or our own earlier call whose answer was lost) opened it, and the first
    // lookup does not list it yet.
    gh.forge(StatusKind::CommitStatus)
        .revert_pr(&revert(EVIDENCE))
        .await
        .unwrap();
    gh.clear_log();
    gh.mishap("pulls/list", Mishap::Stale);
    let pr = gh
        .forge(StatusKind::CommitStatus)
        .revert_pr(&revert(EVIDENCE))
        .await
        .unwrap();
    assert!(!pr.created);
    assert_eq!(pr.number, gh.pulls()[0]["number"].as_u64().unwrap());
    assert_eq!(
        gh.calls(),
        ["pulls/list 200", "pulls/create 422", "pulls/list 200"]
    );
    assert_eq!(gh.pulls().len(), 1);
    gh.assert_clean();
}

#[tokio::test]
async fn a_branch_with_nothing_to_revert_is_permanent() {
    let gh = FakeGitHub::start(Expect::Token(TOKEN.into())).await;
    let mut req = revert(EVIDENCE);
    req.base = HEAD.into();
    let e = gh
        .forge(StatusKind::CommitStatus)
        .revert_pr(&req)
        .await
        .unwrap_err();
    assert!(matches!(e, ForgeError::Permanent(_)), "{e:?}");
    assert!(e.to_string().contains("no commits"), "{e}");
    assert_eq!(gh.calls(), ["pulls/list 200", "pulls/create 422"]);
    gh.assert_clean();
}

#[tokio::test]
async fn a_502_without_effect_is_retried_and_opens_one_pull_request() {
    let gh = FakeGitHub::start(Expect::Token(TOKEN.into())).await;
    gh.mishap(
        "pulls/list",
        Mishap::BadGateway {
            after_effect: false,
        },
    );
    gh.mishap(
        "pulls/create",
        Mishap::BadGateway {
            after_effect: false,
        },
    );
    let pr = gh
        .forge(StatusKind::CommitStatus)
        .revert_pr(&revert(EVIDENCE))
        .await
        .unwrap();
    // The create that failed did nothing, so sending it again is no duplicate; each attempt
    // starts from the lookup.
    assert!(pr.created);
    assert_eq!(
        gh.calls(),
        [
            "pulls/list 502",
            "pulls/list 200",
            "pulls/create 502",
            "pulls/list 200",
            "pulls/create 201"
        ]
    );
    assert_eq!(gh.pulls().len(), 1);
    gh.assert_clean();
}

#[tokio::test]
async fn a_502_after_the_pull_request_was_made_is_not_followed_by_a_second_create() {
    let gh = FakeGitHub::start(Expect::Token(TOKEN.into())).await;
    gh.mishap("pulls/create", Mishap::BadGateway { after_effect: true });
    let pr = gh
        .forge(StatusKind::CommitStatus)
        .revert_pr(&revert(EVIDENCE))
        .await
        .unwrap();
    // The answer was lost; the retry's lookup finds the pull request the create made. The
    // driver cannot know this call made it, so it says found.
    assert!(!pr.created);
    assert_eq!(
        gh.calls(),
        ["pulls/list 200", "pulls/create 502", "pulls/list 200"]
    );
    assert_eq!(gh.pulls().len(), 1);
    assert_eq!(pr.number, gh.pulls()[0]["number"].as_u64().unwrap());
    gh.assert_clean();
}

#[tokio::test]
async fn lasting_5xx_gives_a_transient_error_after_three_attempts() {
    let gh = FakeGitHub::start(Expect::Token(TOKEN.into())).await;
    for _ in 0..3 {
        gh.mishap(
            "pulls/list",
            Mishap::BadGateway {
                after_effect: false,
            },
        );
    }
    let started = Instant::now();
    let e = gh
        .forge(StatusKind::CommitStatus)
        .revert_pr(&revert(EVIDENCE))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert_eq!(e.retry_after(), None);
    assert!(e.to_string().contains("502"), "{e}");
    assert!(!e.to_string().contains("<html"), "{e}");
    assert_eq!(
        gh.calls(),
        ["pulls/list 502", "pulls/list 502", "pulls/list 502"]
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    gh.assert_clean();
}

// --- Rate limits and credentials -------------------------------------------------------------

#[tokio::test]
async fn a_primary_rate_limit_is_transient_until_the_reset() {
    let gh = FakeGitHub::start(Expect::Token(TOKEN.into())).await;
    gh.mishap(
        "pulls/list",
        Mishap::RateLimited {
            reset: now_s() + 1800,
        },
    );
    let started = Instant::now();
    let e = gh
        .forge(StatusKind::CommitStatus)
        .revert_pr(&revert(EVIDENCE))
        .await
        .unwrap_err();
    // Not slept through: handed back at once with the wait.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let ForgeError::Transient {
        retry_after: Some(wait),
        ..
    } = &e
    else {
        panic!("{e:?}");
    };
    assert!((1795..=1800).contains(&wait.as_secs()), "{wait:?}");
    assert!(e.to_string().contains("rate limit"), "{e}");
    assert_eq!(gh.calls(), ["pulls/list 403"]);
    gh.assert_clean();
}

#[tokio::test]
async fn a_secondary_rate_limit_hands_back_retry_after_and_a_short_one_is_waited() {
    let gh = FakeGitHub::start(Expect::Token(TOKEN.into())).await;
    let forge = gh.forge(StatusKind::CommitStatus);
    gh.mishap(
        "repos/create-commit-status",
        Mishap::Secondary { retry_after: 90 },
    );
    let e = forge
        .report(&status("canaryd/checkout", ReportState::Pending, "step 1"))
        .await
        .unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(90)), "{e:?}");
    assert_eq!(gh.calls(), ["repos/create-commit-status 403"]);

    // A wait of a second is within what one call sleeps.
    gh.clear_log();
    gh.mishap(
        "repos/create-commit-status",
        Mishap::Secondary { retry_after: 1 },
    );
    forge
        .report(&status("canaryd/checkout", ReportState::Pending, "step 1"))
        .await
        .unwrap();
    assert_eq!(
        gh.calls(),
        [
            "repos/create-commit-status 403",
            "repos/create-commit-status 201"
        ]
    );
    gh.assert_clean();
}

#[tokio::test]
async fn bad_credentials_are_permanent_and_never_show_the_token() {
    // GitHub expects another token than the one canaryd has.
    let gh = FakeGitHub::start(Expect::Token("ghp_theRightOne".into())).await;
    let forge = gh.forge(StatusKind::CommitStatus);
    let e = forge.revert_pr(&revert(EVIDENCE)).await.unwrap_err();
    assert!(matches!(e, ForgeError::Permanent(_)), "{e:?}");
    assert!(e.to_string().contains("bad credentials"), "{e}");
    for shown in [e.to_string(), format!("{e:?}"), format!("{forge:?}")] {
        assert!(!shown.contains(TOKEN), "{shown}");
    }
    let e = forge
        .report(&status("canaryd/checkout", ReportState::Pending, "x"))
        .await
        .unwrap_err();
    assert!(matches!(e, ForgeError::Permanent(_)), "{e:?}");
    assert!(!e.to_string().contains(TOKEN), "{e}");
    // Not retried.
    assert_eq!(
        gh.calls(),
        ["pulls/list 401", "repos/create-commit-status 401"]
    );
    gh.assert_clean();
}

#[tokio::test]
async fn the_token_is_kept_out_of_everything_sent() {
    let gh = FakeGitHub::start(Expect::Token(TOKEN.into())).await;
    let forge = gh.forge(StatusKind::CommitStatus);
    // Evidence that quotes the token by accident (an environment dump, a URL with it).
    let leaky = format!("{EVIDENCE}\nenv: GITHUB_TOKEN={TOKEN}\n");
    let mut req = revert(&leaky);
    req.title = format!("Revert checkout ({TOKEN})");
    forge.revert_pr(&req).await.unwrap();
    let mut report = status(
        "canaryd/checkout",
        ReportState::Failure,
        &format!("failed; token {TOKEN}"),
    );
    report.target_url = Some(format!("https://x.example/?t={TOKEN}"));
    forge.report(&report).await.unwrap();
    let pulls = gh.pulls();
    assert!(
        pulls[0]["body"]
            .as_str()
            .unwrap()
            .contains("GITHUB_TOKEN=***")
    );
    assert!(
        gh.log()
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&*format!("Bearer {TOKEN}")))
    );
    gh.assert_clean();
}

// --- Commit statuses -------------------------------------------------------------------------

async fn status_sequence(last: ReportState, word: &str) {
    let gh = FakeGitHub::start(Expect::Token(TOKEN.into())).await;
    let forge = gh.forge(StatusKind::CommitStatus);
    forge
        .report(&status(
            "canaryd/checkout",
            ReportState::Pending,
            "step 1 of 4: 10% to canary",
        ))
        .await
        .unwrap();
    let long = format!(
        "{word}: {}",
        "error-rate 0.071 over the 0.01 limit; ".repeat(10)
    );
    forge
        .report(&status("canaryd/checkout", last, &long))
        .await
        .unwrap();
    assert_eq!(
        gh.calls(),
        [
            "repos/create-commit-status 201",
            "repos/create-commit-status 201"
        ]
    );
    let statuses = gh.fake.lock().unwrap().statuses.clone();
    let states: Vec<&str> = statuses
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["pending", word]);
    for s in &statuses {
        assert_eq!(s["sha"], SHA);
        assert_eq!(s["context"], "canaryd/checkout");
        assert_eq!(
            s["target_url"],
            "https://canaryd.example.com/rollouts/checkout"
        );
    }
    let kept = statuses[1]["description"].as_str().unwrap();
    assert_eq!(kept.chars().count(), 140);
    assert!(kept.starts_with(word) && kept.ends_with('…'), "{kept}");
    gh.assert_clean();
}

#[tokio::test]
async fn commit_status_pending_then_failure() {
    status_sequence(ReportState::Failure, "failure").await;
}

#[tokio::test]
async fn commit_status_pending_then_success() {
    status_sequence(ReportState::Success, "success").await;
}

// --- GitHub App: installation token, check runs ----------------------------------------------

fn b64(part: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap()
}

/// `jwt` is a JWT signed RS256 by the App's key (checked by the openssl CLI, not by the
/// library that signed it), issued by the App, valid now for at most 10 minutes.
fn assert_app_jwt(jwt: &str, public_key: &Path) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let header: Value = serde_json::from_slice(&b64(parts[0])).unwrap();
    assert_eq!(header["alg"], "RS256");
    let claims: Value = serde_json::from_slice(&b64(parts[1])).unwrap();
    assert!(
        claims["iss"].as_u64() == Some(APP_ID)
            || claims["iss"].as_str() == Some(APP_ID.to_string().as_str()),
        "{claims}"
    );
    let (iat, exp, now) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
        now_s(),
    );
    assert!(
        iat <= now && now < exp && exp - iat <= 600,
        "{claims} at {now}"
    );
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    let signature = dir.path().join("signature");
    std::fs::write(&input, format!("{}.{}", parts[0], parts[1])).unwrap();
    std::fs::write(&signature, b64(parts[2])).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(public_key)
        .arg("-signature")
        .arg(&signature)
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "signature: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Verified OK");
}

#[tokio::test]
async fn an_app_trades_a_jwt_for_an_installation_token_and_keeps_it() {
    let gh = FakeGitHub::start(Expect::App).await;
    let forge = gh.forge(StatusKind::CommitStatus);
    forge.revert_pr(&revert(EVIDENCE)).await.unwrap();
    forge
        .report(&status("canaryd/checkout", ReportState::Failure, "aborted"))
        .await
        .unwrap();
    assert_eq!(
        gh.calls(),
        [
            "apps/create-installation-access-token 201",
            "pulls/list 200",
            "pulls/create 201",
            "repos/create-commit-status 201"
        ]
    );
    let log = gh.log();
    // The token asked for reaches the one repository.
    let asked: Value = serde_json::from_str(&log[0].body).unwrap();
    assert_eq!(asked, json!({"repositories": [REPO]}));
    assert_eq!(
        log[0].path,
        format!("/app/installations/{INSTALLATION_ID}/access_tokens")
    );
    let (jwts, public_key) = {
        let fake = gh.fake.lock().unwrap();
        (fake.jwts.clone(), fake.public_key.clone().unwrap())
    };
    assert_eq!(jwts.len(), 1);
    assert_app_jwt(&jwts[0], &public_key);
    for r in &log[1..] {
        assert_eq!(
            r.authorization.as_deref(),
            Some(&*format!("Bearer {INSTALLATION_TOKEN}")),
            "{r:?}"
        );
    }
    gh.assert_clean();
}

#[tokio::test]
async fn check_runs_are_created_once_then_updated_and_found_after_a_restart() {
    let gh = FakeGitHub::start(Expect::App).await;
    let forge = gh.forge(StatusKind::CheckRun);
    forge
        .report(&status(
            "canaryd/checkout",
            ReportState::Pending,
            "step 1 of 4",
        ))
        .await
        .unwrap();
    forge
        .report(&status(
            "canaryd/checkout",
            ReportState::Pending,
            "step 2 of 4",
        ))
        .await
        .unwrap();
    forge
        .report(&status(
            "canaryd/checkout",
            ReportState::Failure,
            "aborted: error-rate 0.071",
        ))
        .await
        .unwrap();
    assert_eq!(
        gh.calls(),
        [
            "apps/create-installation-access-token 201",
            "checks/list-for-ref 200",
            "checks/create 201",
            "checks/update 200",
            "checks/update 200"
        ]
    );
    let log = gh.log();
    assert_eq!(log[1].param("check_name"), Some("canaryd/checkout"));
    assert_eq!(log[1].param("app_id"), Some(APP_ID.to_string().as_str()));
    let created: Value = serde_json::from_str(&log[2].body).unwrap();
    assert_eq!(created["name"], "canaryd/checkout");
    assert_eq!(created["head_sha"], SHA);
    assert_eq!(created["status"], "in_progress");
    assert_eq!(
        created["details_url"],
        "https://canaryd.example.com/rollouts/checkout"
    );
    let done: Value = serde_json::from_str(&log[4].body).unwrap();
    assert_eq!(
        (done["status"].as_str(), done["conclusion"].as_str()),
        (Some("completed"), Some("failure"))
    );

    // A restart: nothing in memory, the run is found, not made again.
    gh.clear_log();
    let restarted = gh.forge(StatusKind::CheckRun);
    restarted
        .report(&status(
            "canaryd/checkout",
            ReportState::Success,
            "promoted",
        ))
        .await
        .unwrap();
    assert_eq!(
        gh.calls(),
        [
            "apps/create-installation-access-token 201",
            "checks/list-for-ref 200",
            "checks/update 200"
        ]
    );
    // Another rollout on the same commit gets its own run.
    restarted
        .report(&status("canaryd/payments", ReportState::Pending, "step 1"))
        .await
        .unwrap();
    let runs = gh.fake.lock().unwrap().runs.clone();
    assert_eq!(runs.len(), 2);
    assert_eq!(
        (runs[0]["status"].as_str(), runs[0]["conclusion"].as_str()),
        (Some("completed"), Some("success"))
    );
    assert_eq!(runs[1]["name"], "canaryd/payments");
    gh.assert_clean();
}

#[tokio::test]
async fn a_502_on_check_run_create_is_followed_by_the_lookup_not_a_second_run() {
    let gh = FakeGitHub::start(Expect::App).await;
    gh.mishap("checks/create", Mishap::BadGateway { after_effect: true });
    gh.forge(StatusKind::CheckRun)
        .report(&status("canaryd/checkout", ReportState::Pending, "step 1"))
        .await
        .unwrap();
    assert_eq!(
        gh.calls(),
        [
            "apps/create-installation-access-token 201",
            "checks/list-for-ref 200",
            "checks/create 502",
            "checks/list-for-ref 200",
            "checks/update 200"
        ]
    );
    assert_eq!(gh.fake.lock().unwrap().runs.len(), 1);
    gh.assert_clean();
}

#[tokio::test]
async fn a_refused_app_jwt_is_permanent() {
    // GitHub expects a token, not an App: the JWT is refused.
    let gh = FakeGitHub::start(Expect::Token(TOKEN.into())).await;
    let dir = tempfile::tempdir().unwrap();
    app_key(dir.path());
    let cfg = ForgeConfig::GitHub(GitHubConfig {
        api_url: Some(gh.url.clone()),
        owner: OWNER.into(),
        repo: REPO.into(),
        token: None,
        app: Some(GitHubApp {
            id: APP_ID,
            private_key: SecretRef::file(dir.path().join("app.pem")),
            installation_id: INSTALLATION_ID,
        }),
        statuses: StatusKind::CheckRun,
    });
    let forge = AnyForge::connect(&cfg).unwrap();
    let e = forge
        .report(&status("canaryd/checkout", ReportState::Pending, "x"))
        .await
        .unwrap_err();
    assert!(matches!(e, ForgeError::Permanent(_)), "{e:?}");
    assert!(
        e.to_string().contains("installation token") && e.to_string().contains("bad credentials"),
        "{e}"
    );
    assert_eq!(gh.calls(), ["apps/create-installation-access-token 401"]);
    gh.assert_clean();
}

// --- The fake itself -------------------------------------------------------------------------

#[test]
fn the_fake_refuses_what_the_description_does_not_allow() {
    let spec = spec();
    let (op, params) = spec.route(&Method::POST, "/repos/o/r/pulls").unwrap();
    assert_eq!(op.id, "pulls/create");
    assert!(
        spec.check_request(op, &params, &[], br#"{"title":"t","head":"h","base":"b"}"#)
            .is_empty()
    );
    // A misspelt field, a wrong type, an unknown query parameter.
    let wrong = spec.check_request(
        op,
        &params,
        &[],
        br#"{"title":"t","head":"h","base":"b","bdy":"x"}"#,
    );
    assert!(wrong.iter().any(|w| w.contains("/bdy")), "{wrong:?}");
    let wrong = spec.check_request(op, &params, &[], br#"{"title":1,"head":"h","base":"b"}"#);
    assert!(!wrong.is_empty());
    let (op, params) = spec.route(&Method::GET, "/repos/o/r/pulls").unwrap();
    let wrong = spec.check_request(op, &params, &[("status".into(), "open".into())], b"");
    assert!(!wrong.is_empty());
    let wrong = spec.check_request(op, &params, &[("state".into(), "opened".into())], b"");
    assert!(!wrong.is_empty());
    // A status outside the enum; a `$ref`ed schema (the installation token's permissions).
    let (op, params) = spec
        .route(&Method::POST, &format!("/repos/o/r/statuses/{SHA}"))
        .unwrap();
    assert_eq!(op.id, "repos/create-commit-status");
    assert!(
        !spec
            .check_request(op, &params, &[], br#"{"state":"failed"}"#)
            .is_empty()
    );
    let (op, params) = spec
        .route(&Method::POST, "/app/installations/1/access_tokens")
        .unwrap();
    assert!(
        spec.check_request(op, &params, &[], br#"{"permissions":{"checks":"write"}}"#)
            .is_empty()
    );
    assert!(
        !spec
            .check_request(op, &params, &[], br#"{"permissions":{"checks":"own"}}"#)
            .is_empty()
    );
    // Check runs: a date that is not a date-time; an integer path parameter.
    let (op, params) = spec
        .route(&Method::PATCH, "/repos/o/r/check-runs/12")
        .unwrap();
    assert_eq!(op.id, "checks/update");
    assert!(
        !spec
            .check_request(op, &params, &[], br#"{"completed_at":"yesterday"}"#)
            .is_empty()
    );
    let (op, params) = spec
        .route(&Method::PATCH, "/repos/o/r/check-runs/x")
        .unwrap();
    assert!(!spec.check_request(op, &params, &[], b"{}").is_empty());
    assert!(spec.route(&Method::POST, "/repos/o/r/pull").is_none());
}

// --- No answer -------------------------------------------------------------------------------

fn token_forge(api_url: &str, dir: &Path) -> canaryd::forge::github::GitHub {
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let cfg = ForgeConfig::GitHub(GitHubConfig {
        api_url: Some(api_url.into()),
        owner: OWNER.into(),
        repo: REPO.into(),
        token: Some(SecretRef::file(dir.join("token"))),
        app: None,
        statuses: StatusKind::CommitStatus,
    });
    let AnyForge::GitHub(github) = AnyForge::connect(&cfg).unwrap();
    github
}

#[tokio::test]
async fn github_down_is_transient() {
    // A port nobody listens on: bound, then closed.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let forge = token_forge(&format!("http://127.0.0.1:{port}"), dir.path());
    let started = Instant::now();
    let e = forge.revert_pr(&revert(EVIDENCE)).await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(e.to_string().contains("no answer"), "{e}");
    assert!(!e.to_string().contains(TOKEN), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_silent_github_is_bounded_by_the_request_timeout() {
    // Accepts connections and never answers.
    let silent = Silent::start().await;
    let url = format!("http://{}", silent.addr);
    let dir = tempfile::tempdir().unwrap();
    let forge = token_forge(&url, dir.path()).with_retry(canaryd::forge::github::Retry {
        attempts: 2,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
        max_wait: Duration::from_secs(1),
        request_timeout: Duration::from_millis(300),
    });
    let started = Instant::now();
    let e = forge
        .report(&status("canaryd/checkout", ReportState::Pending, "x"))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(e.to_string().contains("no answer within"), "{e}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(2),
        "{took:?}"
    );
    drop(silent);
}
