//! The Git layer against real repositories in temp dirs, with the git CLI playing the users.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use canaryd::edge::git::{self, Author, GateCommit, GitError, Heads, Mirror, Push, RevertBranch};
use tempfile::TempDir;

use crate::support::git::{GitDaemon, Repo, chain, git_trim, mirror};

/// A bare remote, a user's working clone of it, and room for mirrors.
struct World {
    tmp: TempDir,
    repo: Repo,
}

impl World {
    fn new() -> World {
        let tmp = TempDir::new().unwrap();
        let repo = Repo::init(tmp.path());
        World { tmp, repo }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn remote_url(&self) -> String {
        self.repo.remote.to_str().unwrap().to_string()
    }

    fn work(&self) -> PathBuf {
        self.repo.work.clone()
    }

    /// Writes files (None deletes) in the working clone, commits and pushes; returns the id.
    fn commit(&self, files: &[(&str, Option<&str>)], message: &str) -> String {
        self.repo.commit(files, message)
    }

    fn mirror_at(&self, dir: &str, url: &str) -> Mirror {
        mirror(&self.path(dir), url)
    }

    fn mirror(&self) -> Mirror {
        self.mirror_at("data/mirror.git", &self.remote_url())
    }

    /// A fresh clone of the remote, as a reviewer would look at it.
    fn fresh_clone(&self, name: &str) -> PathBuf {
        git_trim(self.tmp.path(), &["clone", "-q", "remote.git", name]);
        self.path(name)
    }
}

fn changes(items: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
        .collect()
}

fn map(items: &[(&str, &str)]) -> BTreeMap<String, String> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn open_and_fetch_report_the_heads() {
    let w = World::new();
    let mirror = w.mirror();
    assert_eq!(mirror.fetch().unwrap(), Heads::default(), "empty remote");

    let c1 = w.commit(&[("rollouts/web.yaml", Some("a: 1\n"))], "add web");
    let heads = mirror.fetch().unwrap();
    assert_eq!(heads.spec.as_deref(), Some(c1.as_str()));
    assert_eq!(heads.status, None, "no status commit yet");

    let c2 = w.commit(&[("rollouts/web.yaml", Some("a: 2\n"))], "bump web");
    assert_eq!(mirror.fetch().unwrap().spec, Some(c2.clone()));

    // Reopening with another spelling of the URL updates the mirror's origin.
    drop(mirror);
    let url = format!("file://{}", w.remote_url());
    let reopened = w.mirror_at("data/mirror.git", &url);
    assert_eq!(reopened.fetch().unwrap().spec, Some(c2));
    let config = git_trim(&w.path("data/mirror.git"), &["config", "remote.origin.url"]);
    assert_eq!(config, url);
}

#[test]
fn spec_files_reads_yaml_under_the_rollouts_folder() {
    let w = World::new();
    let big = format!("k: \"{}\"\n", "x".repeat(1024 * 1024));
    let c = w.commit(
        &[
            ("rollouts/web.yaml", Some("kind: Rollout\n")),
            ("rollouts/team/api.yml", Some("kind: Rollout # api\n")),
            ("rollouts/team/deep/db.yaml", Some("kind: Router\n")),
            ("rollouts/README.md", Some("not a spec\n")),
            ("rollouts/.hidden.yaml", Some("hidden: true\n")),
            ("rollouts/drafts/wip.yaml", Some("draft: true\n")),
            ("rollouts/team/old.yaml", Some("old: true\n")),
            ("rollouts/big.yaml", Some(&big)),
            ("other/outside.yaml", Some("outside: true\n")),
            (
                "rollouts/.canarydignore",
                Some("# not specs\ndrafts/\nrollouts/team/old.yaml  # repo-relative\n"),
            ),
        ],
        "specs",
    );
    // Not UTF-8: written with bytes, not text.
    fs::write(w.work().join("rollouts/latin1.yaml"), b"name: caf\xe9\n").unwrap();
    let c2 = w.commit(&[], "latin-1 file");
    let mirror = w.mirror();
    mirror.fetch().unwrap();

    let specs = mirror.spec_files(&c).unwrap();
    let paths: Vec<&str> = specs.files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "rollouts/team/api.yml",
            "rollouts/team/deep/db.yaml",
            "rollouts/web.yaml"
        ]
    );
    assert_eq!(specs.files[2].1, "kind: Rollout\n");
    assert_eq!(specs.skipped.len(), 1, "{:?}", specs.skipped);
    assert_eq!(specs.skipped[0].0, "rollouts/big.yaml");
    assert!(
        specs.skipped[0].1.contains("1 MiB"),
        "{}",
        specs.skipped[0].1
    );

    let later = mirror.spec_files(&c2).unwrap();
    assert_eq!(later.files.len(), 3);
    let why: BTreeMap<_, _> = later.skipped.into_iter().collect();
    assert!(why["rollouts/latin1.yaml"].contains("UTF-8"), "{why:?}");

    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let err = mirror.spec_files(unknown).unwrap_err();
    assert!(matches!(err, GitError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains(unknown), "{err}");
    assert!(!err.is_transient());
}

#[test]
fn spec_files_of_a_commit_without_the_folder_is_empty() {
    let w = World::new();
    let c = w.commit(&[("README.md", Some("hi\n"))], "readme");
    let mirror = w.mirror();
    mirror.fetch().unwrap();
    assert_eq!(mirror.spec_files(&c).unwrap(), git::SpecFiles::default());
}

#[test]
fn file_at_and_file_history_follow_the_first_parent() {
    let w = World::new();
    let c1 = w.commit(&[("rollouts/web.yaml", Some("v: 1\n"))], "add web");
    let _c2 = w.commit(&[("rollouts/api.yaml", Some("v: 1\n"))], "add api");
    let c3 = w.commit(&[("rollouts/web.yaml", Some("v: 2\n"))], "web v2");
    git_trim(&w.work(), &["revert", "--no-edit", "HEAD"]);
    git_trim(&w.work(), &["push", "-q", "origin", "main"]);
    let c4 = git_trim(&w.work(), &["rev-parse", "HEAD"]);
    let c5 = w.commit(&[("rollouts/web.yaml", None)], "drop web");

    let mirror = w.mirror();
    let head = mirror.fetch().unwrap().spec.unwrap();
    assert_eq!(head, c5);
    assert_eq!(
        mirror.file_at(&c4, "rollouts/web.yaml").unwrap().as_deref(),
        Some("v: 1\n"),
        "the revert restored v1"
    );
    assert_eq!(mirror.file_at(&c5, "rollouts/web.yaml").unwrap(), None);
    assert_eq!(mirror.file_at(&c1, "rollouts").unwrap(), None, "a folder");

    let history = mirror.file_history(&head, "rollouts/web.yaml", 10).unwrap();
    let expected = vec![
        (c5.clone(), Some(c4.clone())),
        (c4.clone(), Some(c3.clone())),
        (c3.clone(), Some(_c2.clone())),
        (c1.clone(), None),
    ];
    assert_eq!(history, expected);
    assert_eq!(
        mirror.file_history(&head, "rollouts/web.yaml", 2).unwrap(),
        expected[..2]
    );
    let subject = git_trim(&w.work(), &["log", "-1", "--format=%s", &c4]);
    assert_eq!(subject, "Revert \"web v2\"");
}

#[test]
fn commit_status_creates_updates_and_deletes_files() {
    let w = World::new();
    w.commit(&[("rollouts/web.yaml", Some("v: 1\n"))], "add web");
    let mirror = w.mirror();
    mirror.fetch().unwrap();
    assert!(mirror.status_files().unwrap().is_empty());
    assert_eq!(
        mirror
            .commit_status(&changes(&[("web", None)]), "nothing to delete")
            .unwrap(),
        Push::Unchanged,
        "no empty root commit"
    );
    assert_eq!(mirror.fetch().unwrap().status, None);

    let first = changes(&[
        ("web", Some("phase: step-1\n")),
        ("api", Some("phase: idle\n")),
    ]);
    let Push::Pushed(id1) = mirror
        .commit_status(&first, "web: step 1\n\nweight 10%\n\nRollout: web\n")
        .unwrap()
    else {
        panic!("first status commit not pushed");
    };
    assert_eq!(
        mirror.status_files().unwrap(),
        map(&[("api", "phase: idle\n"), ("web", "phase: step-1\n")]),
        "visible without a fetch"
    );
    assert_eq!(mirror.fetch().unwrap().status, Some(id1.clone()));
    assert_eq!(
        mirror.commit_status(&first, "same again").unwrap(),
        Push::Unchanged
    );
    let Push::Pushed(id2) = mirror
        .commit_status(&changes(&[("web", Some("phase: step-2\n"))]), "web: step 2")
        .unwrap()
    else {
        panic!("update not pushed");
    };
    let Push::Pushed(id3) = mirror
        .commit_status(&changes(&[("api", None)]), "api: removed")
        .unwrap()
    else {
        panic!("delete not pushed");
    };
    assert_eq!(
        mirror.status_files().unwrap(),
        map(&[("web", "phase: step-2\n")])
    );
    assert_eq!(
        mirror
            .commit_status(&changes(&[("gone", None)]), "nothing")
            .unwrap(),
        Push::Unchanged,
        "deleting an absent file changes nothing"
    );

    // What a reviewer sees in a fresh clone.
    let clone = w.fresh_clone("review");
    let log = git_trim(&clone, &["log", "--format=%H %s", "origin/canaryd/status"]);
    assert_eq!(
        log,
        format!("{id3} api: removed\n{id2} web: step 2\n{id1} web: step 1")
    );
    let story = git_trim(
        &clone,
        &[
            "log",
            "--format=%s",
            "origin/canaryd/status",
            "--",
            "status/web.yaml",
        ],
    );
    assert_eq!(story, "web: step 2\nweb: step 1");
    let author = git_trim(
        &clone,
        &[
            "log",
            "-1",
            "--format=%an <%ae> / %cn",
            "origin/canaryd/status",
        ],
    );
    assert_eq!(author, "canaryd <canaryd@localhost> / canaryd");
    let body = git_trim(&clone, &["log", "-1", "--format=%B", &id1]);
    assert_eq!(body, "web: step 1\n\nweight 10%\n\nRollout: web");
    // The watched branch is untouched and the status branch is a separate root.
    assert_eq!(
        git_trim(&clone, &["rev-list", "--count", "origin/canaryd/status"]),
        "3"
    );
    assert_eq!(
        git_trim(&clone, &["ls-tree", "-r", "--name-only", &id3]),
        "status/web.yaml"
    );

    let bad = mirror
        .commit_status(&changes(&[("../escape", Some("x"))]), "bad")
        .unwrap_err();
    assert!(bad.to_string().contains("../escape"), "{bad}");
}

#[test]
fn a_chain_of_status_commits_is_pushed_once_each_commit_touching_its_own_file() {
    let w = World::new();
    w.commit(&[("rollouts/web.yaml", Some("v: 1\n"))], "add web");
    let mirror = w.mirror();
    mirror.fetch().unwrap();
    let chain = [
        (
            changes(&[("web", Some("phase: step-1\n"))]),
            "web: step 1".to_string(),
        ),
        (
            changes(&[("api", Some("phase: idle\n"))]),
            "api: stable".to_string(),
        ),
        // Says what the chain already says: left out.
        (
            changes(&[("web", Some("phase: step-1\n"))]),
            "web: again".to_string(),
        ),
    ];
    let Push::Pushed(tip) = mirror.commit_status_chain(&chain).unwrap() else {
        panic!("chain not pushed");
    };
    assert_eq!(mirror.fetch().unwrap().status, Some(tip.clone()));
    assert_eq!(
        mirror.commit_status_chain(&chain).unwrap(),
        Push::Unchanged,
        "nothing new: no commit"
    );
    let clone = w.fresh_clone("review");
    let log = git_trim(&clone, &["log", "--format=%s", "origin/canaryd/status"]);
    assert_eq!(log, "api: stable\nweb: step 1");
    for (file, subject) in [
        ("status/web.yaml", "web: step 1"),
        ("status/api.yaml", "api: stable"),
    ] {
        let story = git_trim(
            &clone,
            &["log", "--format=%s", "origin/canaryd/status", "--", file],
        );
        assert_eq!(story, subject, "{file}");
    }
}

#[test]
fn a_concurrent_status_push_is_rejected_then_retried_without_losing_it() {
    let w = World::new();
    w.commit(&[("rollouts/web.yaml", Some("v: 1\n"))], "add web");
    let mirror = w.mirror();
    mirror.fetch().unwrap();
    let Push::Pushed(_) = mirror
        .commit_status(&changes(&[("web", Some("phase: 1\n"))]), "web: 1")
        .unwrap()
    else {
        panic!("not pushed");
    };

    // Another writer pushes to the status branch in between.
    let other = w.fresh_clone("other");
    git_trim(&other, &["checkout", "-q", "canaryd/status"]);
    fs::write(other.join("status/api.yaml"), "phase: other\n").unwrap();
    git_trim(&other, &["add", "-A"]);
    git_trim(&other, &["commit", "-q", "-m", "api: other writer"]);
    git_trim(&other, &["push", "-q", "origin", "canaryd/status"]);

    let next = changes(&[("web", Some("phase: 2\n"))]);
    assert_eq!(
        mirror.commit_status(&next, "web: 2").unwrap(),
        Push::Rejected
    );
    assert_eq!(
        mirror.status_files().unwrap(),
        map(&[("web", "phase: 1\n")]),
        "a rejected push leaves the local copy as fetched"
    );

    mirror.fetch().unwrap();
    let Push::Pushed(id) = mirror.commit_status(&next, "web: 2").unwrap() else {
        panic!("retry not pushed");
    };
    let expected = map(&[("api", "phase: other\n"), ("web", "phase: 2\n")]);
    assert_eq!(mirror.status_files().unwrap(), expected);
    let remote = w.path("remote.git");
    assert_eq!(git_trim(&remote, &["rev-parse", "canaryd/status"]), id);
    assert_eq!(
        git_trim(&remote, &["log", "--format=%s", "canaryd/status"]),
        "web: 2\napi: other writer\nweb: 1"
    );
}

#[test]
fn gates_are_read_from_trailers() {
    let w = World::new();
    let gate = |action: &str, rollout: &str, rev: &str| {
        let body = format!("Canaryd-Gate: {action}\nRollout: {rollout}\nRevision: {rev}");
        let work = w.work();
        git_trim(
            &work,
            &[
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                &format!("{action} {rollout}"),
                "-m",
                &body,
            ],
        );
        git_trim(&work, &["push", "-q", "origin", "main"]);
        git_trim(&work, &["rev-parse", "HEAD"])
    };
    w.commit(&[("rollouts/web.yaml", Some("v: 1\n"))], "add web");
    let promote = gate("promote", "web", "r1");
    gate("promote", "api", "r1");
    w.commit(&[], "unrelated\n\nRollout: web\nRevision: r9");
    w.commit(
        &[],
        "bogus\n\nCanaryd-Gate: explode\nRollout: web\nRevision: r1",
    );
    w.commit(&[], "trailers in the subject only: Canaryd-Gate: abort");
    let abort = gate("abort", "web", "r2");
    w.commit(&[("rollouts/web.yaml", Some("v: 2\n"))], "web v2");

    let mirror = w.mirror();
    let head = mirror.fetch().unwrap().spec.unwrap();
    let all = mirror.gates(&head, "web", None, 100).unwrap();
    assert_eq!(
        all,
        vec![
            GateCommit {
                id: promote.clone(),
                action: "promote".into(),
                revision: "r1".into()
            },
            GateCommit {
                id: abort.clone(),
                action: "abort".into(),
                revision: "r2".into()
            },
        ]
    );
    let after = mirror.gates(&head, "web", Some(&promote), 100).unwrap();
    assert_eq!(after, all[1..]);
    assert!(
        mirror
            .gates(&head, "web", Some(&abort), 100)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        mirror.gates(&head, "web", None, 2).unwrap(),
        all[1..],
        "limit"
    );
    assert!(mirror.gates(&head, "web", None, 1).unwrap().is_empty());
    assert_eq!(mirror.gates(&head, "api", None, 100).unwrap().len(), 1);
}

#[test]
fn ensure_revert_branch_is_created_once() {
    let w = World::new();
    w.commit(&[("rollouts/web.yaml", Some("v: 1\n"))], "web v1");
    let base = w.commit(
        &[
            ("rollouts/web.yaml", Some("v: 2\n")),
            ("rollouts/extra.yaml", Some("new: true\n")),
        ],
        "web v2",
    );
    let mirror = w.mirror();
    mirror.fetch().unwrap();
    let restore = changes(&[
        ("rollouts/web.yaml", Some("v: 1\n")),
        ("rollouts/extra.yaml", None),
    ]);
    let message = "Revert web to v1\n\nCanary analysis failed.\n";
    let RevertBranch::Created(id) = mirror
        .ensure_revert_branch("canaryd/revert/web-abc", &base, &restore, message)
        .unwrap()
    else {
        panic!("not created");
    };
    assert_eq!(
        mirror
            .ensure_revert_branch("canaryd/revert/web-abc", &base, &restore, "again")
            .unwrap(),
        RevertBranch::Existed(id.clone())
    );
    // After a restart, with a brand-new mirror.
    let fresh = w.mirror_at("data2/mirror.git", &w.remote_url());
    assert_eq!(
        fresh
            .ensure_revert_branch("canaryd/revert/web-abc", &base, &restore, "again")
            .unwrap(),
        RevertBranch::Existed(id.clone())
    );

    let clone = w.fresh_clone("review");
    let branch = "origin/canaryd/revert/web-abc";
    assert_eq!(git_trim(&clone, &["rev-parse", branch]), id);
    assert_eq!(
        git_trim(&clone, &["rev-parse", &format!("{branch}^")]),
        base
    );
    assert_eq!(
        git_trim(&clone, &["show", &format!("{branch}:rollouts/web.yaml")]),
        "v: 1"
    );
    assert_eq!(
        git_trim(&clone, &["ls-tree", "-r", "--name-only", branch]),
        "rollouts/web.yaml"
    );
    assert_eq!(
        git_trim(&clone, &["log", "-1", "--format=%s", branch]),
        "Revert web to v1"
    );
    assert_eq!(
        git_trim(&clone, &["rev-parse", "origin/main"]),
        base,
        "watched branch untouched"
    );
    assert_eq!(
        git_trim(&clone, &["rev-list", "--count", branch]),
        "3",
        "one commit"
    );

    let err = mirror
        .ensure_revert_branch("main", &base, &restore, "no")
        .unwrap_err();
    assert!(!err.is_transient());
}

#[test]
fn a_working_copy_can_be_the_remote() {
    let w = World::new();
    let base = w.commit(&[("rollouts/web.yaml", Some("v: 1\n"))], "web v1");
    let work = w.work();
    let mirror = w.mirror_at("data/mirror.git", work.to_str().unwrap());
    assert_eq!(mirror.fetch().unwrap().spec, Some(base.clone()));

    let Push::Pushed(id) = mirror
        .commit_status(&changes(&[("web", Some("phase: 1\n"))]), "web: 1")
        .unwrap()
    else {
        panic!("not pushed");
    };
    assert_eq!(
        git_trim(&work, &["rev-parse", "refs/heads/canaryd/status"]),
        id
    );
    git_trim(&work, &["fsck", "--no-progress"]);

    // The user commits on the status branch in the working copy; the mirror's next push
    // is rejected, then goes through after a fetch.
    git_trim(&work, &["branch", "-q", "side", "canaryd/status"]);
    git_trim(&work, &["update-ref", "refs/heads/canaryd/status", &base]);
    let next = changes(&[("web", Some("phase: 2\n"))]);
    assert_eq!(
        mirror.commit_status(&next, "web: 2").unwrap(),
        Push::Rejected
    );
    git_trim(&work, &["update-ref", "refs/heads/canaryd/status", &id]);

    let created = mirror
        .ensure_revert_branch(
            "revert-web",
            &base,
            &changes(&[("rollouts/web.yaml", None)]),
            "r",
        )
        .unwrap();
    assert!(matches!(created, RevertBranch::Created(_)), "{created:?}");
    assert_eq!(
        git_trim(&work, &["rev-parse", "HEAD"]),
        base,
        "checked-out branch untouched"
    );
    assert_eq!(git_trim(&work, &["status", "--porcelain"]), "");
    assert_eq!(
        git_trim(&work, &["ls-tree", "-r", "--name-only", "revert-web"]),
        ""
    );
}

#[test]
fn gate_commit_lands_on_the_remote() {
    let w = World::new();
    w.commit(&[("rollouts/web.yaml", Some("v: 1\n"))], "web v1");
    let work = w.work();
    fs::write(work.join("rollouts/web.yaml"), "v: dirty\n").unwrap();
    let message = "Promote web\n\nCanaryd-Gate: promote\nRollout: web\nRevision: r1\n";
    let author = Author {
        name: "Grace".into(),
        email: "grace@example.com".into(),
    };
    let id = git::gate_commit(&work, message, &author, true).unwrap();

    let remote = w.path("remote.git");
    assert_eq!(git_trim(&remote, &["rev-parse", "main"]), id);
    assert_eq!(
        git_trim(&remote, &["diff", "--stat", "main~1", "main"]),
        "",
        "empty commit"
    );
    assert_eq!(
        git_trim(&remote, &["log", "-1", "--format=%an <%ae>", "main"]),
        "Grace <grace@example.com>"
    );
    assert_eq!(
        git_trim(&work, &["status", "--porcelain"]),
        " M rollouts/web.yaml",
        "work tree kept"
    );

    let mirror = w.mirror();
    let head = mirror.fetch().unwrap().spec.unwrap();
    let gates = mirror.gates(&head, "web", None, 10).unwrap();
    assert_eq!(gates.len(), 1);
    assert_eq!(
        (gates[0].id.as_str(), gates[0].revision.as_str()),
        (id.as_str(), "r1")
    );

    // Without push, only the working copy moves; a push behind a moved remote is rejected.
    let other = w.fresh_clone("other");
    git_trim(
        &other,
        &["commit", "-q", "--allow-empty", "-m", "someone else"],
    );
    git_trim(&other, &["push", "-q", "origin", "main"]);
    let local = git::gate_commit(&work, "Abort web", &author, false).unwrap();
    assert_eq!(git_trim(&work, &["rev-parse", "main"]), local);
    let err = git::gate_commit(&work, "Abort web again", &author, true).unwrap_err();
    assert!(matches!(err, GitError::Rejected { .. }), "{err}");
    assert!(err.is_transient());
}

#[test]
fn gate_commit_needs_a_branch() {
    let w = World::new();
    let c = w.commit(&[], "first");
    git_trim(&w.work(), &["checkout", "-q", "--detach", &c]);
    let err = git::gate_commit(&w.work(), "x", &Author::default(), false).unwrap_err();
    assert!(matches!(err, GitError::NoBranch { .. }), "{err}");
}

#[test]
fn read_status_branch_from_a_path_or_a_url() {
    let w = World::new();
    w.commit(&[("rollouts/web.yaml", Some("v: 1\n"))], "web v1");
    let scratch = w.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let bare = w.remote_url();
    let err = git::read_status_branch(&bare, "canaryd/status", &scratch).unwrap_err();
    assert!(matches!(err, GitError::NotFound { .. }), "{err}");

    let mirror = w.mirror();
    mirror.fetch().unwrap();
    mirror
        .commit_status(&changes(&[("web", Some("phase: 1\n"))]), "web: 1")
        .unwrap();
    let expected = map(&[("web", "phase: 1\n")]);

    assert_eq!(
        git::read_status_branch(&bare, "canaryd/status", &scratch).unwrap(),
        expected
    );
    // A working clone that only has the remote-tracking branch.
    git_trim(&w.work(), &["fetch", "-q"]);
    let work = w.work();
    assert_eq!(
        git::read_status_branch(work.to_str().unwrap(), "canaryd/status", &scratch).unwrap(),
        expected
    );
    let url = format!("file://{bare}");
    assert_eq!(
        git::read_status_branch(&url, "canaryd/status", &scratch).unwrap(),
        expected
    );
    assert_eq!(
        fs::read_dir(&scratch).unwrap().count(),
        0,
        "scratch cleaned up"
    );
    let err = git::read_status_branch(&url, "nope", &scratch).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn an_unreachable_remote_names_its_redacted_url() {
    let w = World::new();
    let url = "https://robot:s3cret@127.0.0.1:1/canary.git";
    let mirror = w.mirror_at("data/mirror.git", url);
    let err = mirror.fetch().unwrap_err();
    let text = chain(&err);
    assert!(text.contains("https://127.0.0.1:1/canary.git"), "{text}");
    assert!(
        !text.contains("s3cret") && !text.contains("robot"),
        "{text}"
    );
    assert!(err.is_transient(), "{text}");
    assert!(!format!("{mirror:?}").contains("s3cret"));

    let missing = w.path("no-such-repo.git");
    let mirror = w.mirror_at("data2/mirror.git", missing.to_str().unwrap());
    let err = mirror.fetch().unwrap_err();
    assert!(err.to_string().contains("no-such-repo.git"), "{err}");
    assert!(
        !err.is_transient(),
        "a missing path needs an operator: {err}"
    );
}

#[test]
fn redact_strips_credentials() {
    assert_eq!(
        git::redact("https://user:pass@example.com/r.git"),
        "https://example.com/r.git"
    );
    assert_eq!(
        git::redact("https://example.com/r.git"),
        "https://example.com/r.git"
    );
}

#[test]
fn pushes_over_the_network_and_a_declining_hook_is_refused() {
    let w = World::new();
    let base = w.commit(&[("rollouts/web.yaml", Some("v: 1\n"))], "web v1");
    let daemon = GitDaemon::start(w.tmp.path());
    let url = daemon.url("remote.git");
    let mirror = w.mirror_at("data/mirror.git", &url);
    assert_eq!(mirror.fetch().unwrap().spec, Some(base.clone()));
    let Push::Pushed(id) = mirror
        .commit_status(&changes(&[("web", Some("phase: 1\n"))]), "web: 1")
        .unwrap()
    else {
        panic!("not pushed");
    };
    assert_eq!(
        git_trim(&w.path("remote.git"), &["rev-parse", "canaryd/status"]),
        id
    );

    // The server refuses for a reason of its own: reported per ref, not a lost race.
    let hook = w.path("remote.git/hooks/pre-receive");
    fs::write(&hook, "#!/bin/sh\necho 'frozen' >&2\nexit 1\n").unwrap();
    let mut perms = fs::metadata(&hook).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(&hook, perms).unwrap();
    let err = mirror
        .commit_status(&changes(&[("web", Some("phase: 2\n"))]), "web: 2")
        .unwrap_err();
    assert!(matches!(err, GitError::Refused { .. }), "{}", chain(&err));
    assert!(!err.is_transient());
    assert!(err.to_string().contains("hook"), "{err}");
}

#[test]
fn a_lock_a_cut_short_push_left_in_a_local_remote_is_cleared_once_stale() {
    let w = World::new();
    w.commit(&[("rollouts/web.yaml", Some("v: 1\n"))], "add web");
    let mirror = w.mirror();
    mirror.fetch().unwrap();
    let Push::Pushed(_) = mirror
        .commit_status(&changes(&[("web", Some("phase: 1\n"))]), "web: 1")
        .unwrap()
    else {
        panic!("not pushed");
    };
    // A push into a remote on this machine runs in the pushing process: a kill during it
    // leaves the ref's lock in the remote.
    let lock = w.path("remote.git/refs/heads/canaryd/status.lock");
    fs::write(&lock, "").unwrap();
    let next = changes(&[("web", Some("phase: 2\n"))]);
    // Fresh, it may be a live writer's: refused, and said so (not a lost race, retried forever).
    let e = mirror.commit_status(&next, "web: 2").unwrap_err();
    assert!(e.to_string().contains("lock"), "{e}");
    assert!(lock.exists());
    // Old: a dead process's. Cleared, and the push goes through on the next try.
    let stale = std::process::Command::new("touch")
        .args(["-d", "10 seconds ago"])
        .arg(&lock)
        .status()
        .unwrap();
    assert!(stale.success());
    assert_eq!(
        mirror.commit_status(&next, "web: 2").unwrap(),
        Push::Rejected
    );
    assert!(!lock.exists());
    mirror.fetch().unwrap();
    let Push::Pushed(_) = mirror.commit_status(&next, "web: 2").unwrap() else {
        panic!("not pushed after the lock was cleared");
    };
}
