//! Crash safety of the data dir: what a kill leaves in the daemon's Git mirror (lock files, refs
//! staged for a push) does not stop the restarted daemon, and one data dir serves one daemon.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::support::net::free_port;
use crate::support::world::{KILLED, World, phase};

/// Every file the mirror changes through a lock, relative to `data/mirror.git`: the refs a
/// fetch stages and the remote-tracking refs it moves, the ref a status push stages, and the
/// files Git locks whole.
const LOCKS: [&str; 9] = [
    "refs/canaryd/outgoing/heads/canaryd/status.lock",
    "refs/remotes/origin/canaryd/status.lock",
    "refs/remotes/origin/main.lock",
    "refs/canaryd/fetch/heads/main.lock",
    "refs/canaryd/fetch/heads/canaryd/status.lock",
    "packed-refs.lock",
    "HEAD.lock",
    "config.lock",
    "index.lock",
];

fn mirror(w: &World) -> PathBuf {
    w.dir.path().join("data/mirror.git")
}

/// An empty lock file at `lock` in the mirror, as a kill between Git's create and rename leaves.
fn plant(w: &World, lock: &str) {
    let path = mirror(w).join(lock);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, "").unwrap();
}

/// Waits (at most `secs`) for the status branch to hold more than `seen` versions of
/// `checkout`; whether it does.
fn next_commit(w: &World, seen: usize, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if w.history("checkout").len() > seen {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Starts the daemon and waits until it has recorded the live weights it read after starting
/// (its router forgot them: every start sets them again and records them): it fetched, and
/// pushed a status commit through its mirror. Returns how long that took.
fn restart_and_resume(w: &mut World, why: &str) -> Duration {
    let restarted = Utc::now();
    let started = Instant::now();
    w.start();
    // One poll interval (1 s), and time for the process to start; a kill during a push into
    // the (local) remote leaves its ref locked, which is cleared once 2 s old.
    w.wait_for("checkout", 5, why, |s| {
        s.live.as_ref().is_some_and(|l| l.at > restarted)
    });
    started.elapsed()
}

#[test]
fn lock_files_a_kill_left_in_the_mirror_do_not_stop_the_restarted_daemon() {
    let mut w = World::new(0.0, 0.0);
    w.start_on_stable(KILLED);
    w.merge("checkout.yaml", &w.spec(true, KILLED), "canary: green 1.1");
    // One lock at a time, each planted while the daemon is down mid-rollout (or, once the
    // rollout is over, promoted), then all of them at once.
    let rounds = LOCKS.iter().map(|l| vec![*l]).chain([LOCKS.to_vec()]);
    for locks in rounds {
        let seen = w.history("checkout").len();
        let promoted = w
            .status("checkout")
            .is_some_and(|s| phase(&s) == "promoted");
        if !promoted {
            next_commit(&w, seen, 5);
        }
        w.kill();
        for lock in &locks {
            plant(&w, lock);
        }
        let took = restart_and_resume(&mut w, &format!("resumed despite {locks:?}"));
        eprintln!("resumed in {took:?} despite {locks:?}");
        for lock in &locks {
            assert!(!mirror(&w).join(lock).exists(), "{lock} is still there");
        }
    }
    w.wait_for("checkout", 30, "promoted", |s| phase(s) == "promoted");
    // The operator is told what was cleared.
    let logs = w.logs();
    for lock in LOCKS {
        let name = lock.rsplit('/').next().unwrap();
        assert!(
            logs.lines()
                .any(|l| l.contains("WARN") && l.contains("stale lock") && l.contains(name)),
            "no warning about {lock}:\n{logs}"
        );
    }
    w.killed_rollout_kept_its_steps();
}

#[test]
fn killed_after_each_status_push_before_its_staged_ref_is_dropped_no_step_is_skipped() {
    let mut w = World::new(0.0, 0.0);
    w.start_on_stable(KILLED);
    w.kill();
    // The fault point: the daemon aborts right after each successful status push, before it
    // drops the ref it pushed from and moves its copy of the status branch.
    w.run_args = vec!["--exit-after-status-push"];
    w.merge("checkout.yaml", &w.spec(true, KILLED), "canary: green 1.1");
    let staged = mirror(&w).join("refs/canaryd/outgoing/heads/canaryd/status");
    let mut kills = 0;
    while kills < 40 {
        let seen = w.history("checkout").len();
        w.start();
        assert!(
            next_commit(&w, seen, 10),
            "no status commit after restart {kills}\n{}",
            w.logs()
        );
        // The abort follows the push at once; SIGKILL if it has not come yet.
        std::thread::sleep(Duration::from_millis(100));
        w.kill();
        kills += 1;
        assert!(staged.exists(), "the status push was not interrupted");
        if w.status("checkout")
            .is_some_and(|s| phase(&s) == "promoted")
        {
            break;
        }
    }
    eprintln!("killed {kills} times right after a status push");
    assert!(kills >= 10, "killed only {kills} times");
    w.run_args.clear();
    w.start();
    w.wait_for("checkout", 40, "promoted", |s| phase(s) == "promoted");
    w.killed_rollout_kept_its_steps();
    assert!(!staged.exists(), "the staged ref outlived the restart");
    assert!(w.logs().contains("dropped a ref left staged"));
}

#[test]
fn a_second_daemon_on_the_same_data_dir_refuses_to_start() {
    let mut w = World::new(0.0, 0.0);
    w.start_on_stable(KILLED);
    let data = w.dir.path().join("data");
    let first = std::fs::read_to_string(data.join("canaryd.lock")).unwrap();
    let second = Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["run", "--repo", w.remote.to_str().unwrap(), "--data-dir"])
        .arg(&data)
        .args(["--poll-interval", "1s", "--admin"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .env_remove("CANARYD_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut second = second;
    while second.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second daemon runs on {}", data.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert_eq!(
        error,
        format!(
            "error: data dir {} is in use by another canaryd (pid {})",
            data.display(),
            first.trim()
        ),
        "{stderr}"
    );
    // The first daemon still holds the dir, and works.
    let lock = std::fs::read_to_string(data.join("canaryd.lock")).unwrap();
    assert_eq!(lock, first);
    w.merge("checkout.yaml", &w.spec(true, KILLED), "canary: green 1.1");
    w.wait_for("checkout", 40, "promoted", |s| phase(s) == "promoted");
    assert!(w.admin_get("/readyz").starts_with("HTTP/1.1 200"));
    // A killed daemon's hold goes with it: the next one starts.
    w.kill();
    restart_and_resume(&mut w, "started after the holder was killed");
    assert_ne!(
        std::fs::read_to_string(data.join("canaryd.lock")).unwrap(),
        first
    );
}
