//! Git as the people around the daemon use it: the git CLI with a fixed identity and no outside
//! configuration, a bare remote with a working clone, commits pushed to it, the status branch
//! read back, and a `git daemon` serving it over git://.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use canaryd::git::{Author, Mirror, Remote};
use canaryd::record::StatusFile;

/// Runs the git CLI as a user would, in `dir`; its output, whole. Panics when git fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "advice.detachedHead=false",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Dev")
        .env("GIT_AUTHOR_EMAIL", "dev@example.com")
        .env("GIT_COMMITTER_NAME", "Dev")
        .env("GIT_COMMITTER_EMAIL", "dev@example.com")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("the git CLI");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`git`]'s output without the line ends after it: an id, a subject, a log.
pub fn git_trim(dir: &Path, args: &[&str]) -> String {
    git(dir, args).trim_end().to_string()
}

/// A bare repository standing in for the forge, and a user's working clone of it.
#[derive(Clone, Debug)]
pub struct Repo {
    /// `remote.git`, bare.
    pub remote: PathBuf,
    /// `work`, a clone of it.
    pub work: PathBuf,
}

impl Repo {
    /// An empty remote in `dir/remote.git`, cloned to `dir/work`.
    pub fn init(dir: &Path) -> Repo {
        let repo = Repo {
            remote: dir.join("remote.git"),
            work: dir.join("work"),
        };
        git(dir, &["init", "--bare", "-q", "remote.git"]);
        git(dir, &["clone", "-q", "remote.git", "work"]);
        repo
    }

    /// Writes files in the working clone (`None` deletes one), commits them (an empty commit
    /// when nothing changed) and pushes to `main`, as a merged pull request would; the id.
    pub fn commit(&self, files: &[(&str, Option<&str>)], message: &str) -> String {
        for (path, text) in files {
            let full = self.work.join(path);
            match text {
                Some(text) => {
                    if let Some(parent) = full.parent() {
                        std::fs::create_dir_all(parent).expect("a folder in the working clone");
                    }
                    std::fs::write(&full, text).expect("a file in the working clone");
                }
                None => std::fs::remove_file(&full).expect("a file to delete"),
            }
        }
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        git(&self.work, &["push", "-q", "origin", "HEAD:main"]);
        git_trim(&self.work, &["rev-parse", "HEAD"])
    }

    /// The status files on the remote's status branch (none when it has none), read through
    /// `scratch`.
    pub fn statuses(&self, scratch: &Path) -> BTreeMap<String, StatusFile> {
        status_files(&self.remote, scratch)
    }

    /// Every version of a rollout's status file on the status branch, oldest first.
    pub fn history(&self, rollout: &str) -> Vec<StatusFile> {
        let path = format!("status/{rollout}.yaml");
        let log = git(
            &self.remote,
            &[
                "log",
                "--reverse",
                "--format=%H",
                "canaryd/status",
                "--",
                &path,
            ],
        );
        log.lines()
            .map(|c| {
                let text = git(&self.remote, &["show", &format!("{c}:{path}")]);
                StatusFile::from_yaml(&text).expect("a status file")
            })
            .collect()
    }

    /// The status branch's subjects for one rollout, newest first, as the working clone
    /// fetches them.
    pub fn status_log(&self, rollout: &str) -> String {
        git(&self.work, &["fetch", "-q", "origin", "canaryd/status"]);
        git(
            &self.work,
            &[
                "log",
                "--format=%s",
                "FETCH_HEAD",
                "--",
                &format!("status/{rollout}.yaml"),
            ],
        )
    }

    /// Branches on the remote under `prefix`.
    pub fn branches(&self, prefix: &str) -> Vec<String> {
        git(
            &self.remote,
            &[
                "for-each-ref",
                "--format=%(refname:short)",
                &format!("refs/heads/{prefix}"),
            ],
        )
        .lines()
        .map(str::to_string)
        .collect()
    }
}

/// The status files on the status branch of the repository at `remote` (none when it has
/// none), read through `scratch` with canaryd's own reader.
pub fn status_files(remote: &Path, scratch: &Path) -> BTreeMap<String, StatusFile> {
    let remote = remote.to_str().expect("a UTF-8 path");
    canaryd::git::read_status_branch(remote, "canaryd/status", scratch)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, StatusFile::from_yaml(&v).expect("a status file")))
        .collect()
}

/// canaryd's mirror in `dir` of the repository at `url`: branch `main`, status branch
/// `canaryd/status`, specs under `rollouts/`, no credentials.
pub fn mirror(dir: &Path, url: &str) -> Mirror {
    let remote = Remote {
        url: url.to_string(),
        branch: "main".into(),
        status_branch: "canaryd/status".into(),
        rollouts_dir: "rollouts".into(),
    };
    Mirror::open(dir, remote, Author::default()).expect("a mirror")
}

/// An error and its sources, as the daemon prints them.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A `git daemon` serving the repositories under a folder over git:// on loopback, pushes
/// allowed (so that the remote's hooks run, as on a real server); killed on drop.
pub struct GitDaemon {
    child: Child,
    pub port: u16,
}

impl GitDaemon {
    pub fn start(base: &Path) -> GitDaemon {
        let port = super::net::free_port();
        // The daemon binary itself: `git daemon` would leave it running when killed.
        let exec_path = git_trim(base, &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args(["--reuseaddr", "--export-all", "--enable=receive-pack"])
            .arg(format!("--base-path={}", base.display()))
            .args(["--listen=127.0.0.1", &format!("--port={port}")])
            .arg(base)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon");
        let daemon = GitDaemon { child, port };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return daemon;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("git daemon did not start");
    }

    /// The git:// URL of the repository `name` under the served folder.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
