//! Authenticated remotes, against real servers on 127.0.0.1 started by the tests: `git
//! http-backend` behind NGINX (basic authentication) and fcgiwrap, and OpenSSH's `sshd` with
//! its own host key and authorized_keys. Fetch and push with the right secret; a wrong one fails
//! at once, naming no secret; unknown and changed SSH host keys are refused; the real daemon
//! runs a rollout through the HTTPS remote and writes the password nowhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use canaryd::git::{GitAuth, Mirror, Push};
use canaryd::secret::SecretRef;
use tempfile::TempDir;

use crate::support::git::{self, chain, git};
use crate::support::net::free_port;
use crate::support::rig::{self, Process};
use crate::support::world::{World, phase};

const PASSWORD: &str = "pw-Kq3z9-robot";
const TOKEN: &str = "tok-8HnV2-machine";
const WAIT: Duration = Duration::from_secs(10);

/// A program from PATH or the sbin folders; a missing one fails the test with the install line.
fn program(name: &str, package: &str) -> PathBuf {
    rig::require(name, &format!("apt-get install -y {package}")).unwrap()
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool, log: &Path) {
    let deadline = Instant::now() + WAIT;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn secret_file(dir: &Path, name: &str, value: &str) -> SecretRef {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    SecretRef::file(path)
}

/// `git http-backend` serving the bare repositories under `root`, behind NGINX with basic
/// authentication for the given users, through fcgiwrap; both stopped on drop.
struct HttpGit {
    _nginx: Process,
    _fcgiwrap: Process,
    dir: TempDir,
    port: u16,
}

impl HttpGit {
    fn start(root: &Path, users: &[(&str, &str)]) -> HttpGit {
        let (nginx_binary, fcgiwrap_binary) =
            (program("nginx", "nginx"), program("fcgiwrap", "fcgiwrap"));
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let mut htpasswd = String::new();
        for (user, password) in users {
            let out = Command::new("openssl")
                .args(["passwd", "-apr1", password])
                .output()
                .unwrap();
            assert!(out.status.success());
            htpasswd.push_str(&format!(
                "{user}:{}\n",
                String::from_utf8(out.stdout).unwrap().trim()
            ));
        }
        std::fs::write(dir.path().join("htpasswd"), htpasswd).unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        let backend = Path::new(git(root, &["--exec-path"]).trim()).join("git-http-backend");
        let port = free_port();
        let config = format!(
            "worker_processes 1;\n\
             daemon off;\n\
             master_process off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log notice;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
             \x20   log_format git '$remote_user $status \"$request\"';\n\
             \x20   access_log {d}/access.log git;\n\
             {temp}\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port};\n\
             \x20       location / {{\n\
             \x20           auth_basic \"git\";\n\
             \x20           auth_basic_user_file {d}/htpasswd;\n\
             \x20           client_max_body_size 0;\n\
             \x20           fastcgi_pass unix:{d}/fcgi.sock;\n\
             \x20           fastcgi_param SCRIPT_FILENAME {backend};\n\
             \x20           fastcgi_param GIT_PROJECT_ROOT {root};\n\
             \x20           fastcgi_param GIT_HTTP_EXPORT_ALL \"\";\n\
             \x20           fastcgi_param GIT_CONFIG_NOSYSTEM 1;\n\
             \x20           fastcgi_param HOME {d};\n\
             \x20           fastcgi_param PATH /usr/local/bin:/usr/bin:/bin;\n\
             \x20           fastcgi_param PATH_INFO $uri;\n\
             \x20           fastcgi_param REMOTE_USER $remote_user;\n\
             \x20           fastcgi_param REMOTE_ADDR $remote_addr;\n\
             \x20           fastcgi_param QUERY_STRING $query_string;\n\
             \x20           fastcgi_param REQUEST_METHOD $request_method;\n\
             \x20           fastcgi_param CONTENT_TYPE $content_type;\n\
             \x20           fastcgi_param CONTENT_LENGTH $content_length;\n\
             \x20           fastcgi_param HTTP_CONTENT_ENCODING $http_content_encoding;\n\
             \x20           fastcgi_param GIT_PROTOCOL $http_git_protocol;\n\
             \x20       }}\n\
             \x20   }}\n\
             }}\n",
            backend = backend.display(),
            root = root.display(),
            temp = rig::nginx::temp_paths(dir.path()),
        );
        std::fs::write(dir.path().join("nginx.conf"), config).unwrap();
        let socket = dir.path().join("fcgi.sock");
        let mut fcgiwrap = Process::new(dir.path(), "fcgiwrap.log");
        let mut command = Command::new(fcgiwrap_binary);
        command.arg("-s").arg(format!("unix:{}", socket.display()));
        fcgiwrap.spawn(command).unwrap();
        wait_until(
            "fcgiwrap",
            || socket.exists(),
            &dir.path().join("fcgiwrap.log"),
        );
        let error_log = dir.path().join("error.log");
        let mut nginx = Process::new(dir.path(), "nginx.log");
        let mut command = Command::new(nginx_binary);
        command
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(&error_log);
        nginx.spawn(command).unwrap();
        let server = HttpGit {
            _nginx: nginx,
            _fcgiwrap: fcgiwrap,
            dir,
            port,
        };
        wait_until(
            "nginx",
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            &error_log,
        );
        server
    }

    fn url(&self, repo: &str) -> String {
        format!("http://127.0.0.1:{}/{repo}", self.port)
    }

    /// The access log: `user status "request"`, one line a request.
    fn requests(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

/// A bare repository `remote.git` under a temp dir with one spec commit, pushed from a clone.
struct Repo {
    dir: TempDir,
    head: String,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let repo = git::Repo::init(dir.path());
        git(&repo.remote, &["config", "http.receivepack", "true"]);
        let head = repo.commit(&[("rollouts/web.yaml", Some("v: 1\n"))], "web v1");
        Repo { dir, head }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("remote.git")
    }

    fn mirror(&self, name: &str, url: &str, auth: GitAuth) -> Mirror {
        git::mirror(&self.dir.path().join(name), url).with_auth(auth)
    }

    /// Fetches, then pushes one status commit; checks both against the repository on disk.
    fn fetch_and_push(&self, mirror: &Mirror, phase: &str) {
        let heads = mirror.fetch().unwrap_or_else(|e| panic!("{}", chain(&e)));
        assert_eq!(heads.spec.as_deref(), Some(self.head.as_str()));
        let changes = BTreeMap::from([("web".to_string(), Some(format!("phase: {phase}\n")))]);
        let pushed = mirror
            .commit_status(&changes, &format!("web: {phase}"))
            .unwrap_or_else(|e| panic!("{}", chain(&e)));
        let Push::Pushed(id) = pushed else {
            panic!("not pushed: {pushed:?}");
        };
        assert_eq!(
            git(&self.path(), &["rev-parse", "canaryd/status"]).trim(),
            id
        );
        assert_eq!(
            git(&self.path(), &["show", "canaryd/status:status/web.yaml"]),
            format!("phase: {phase}\n")
        );
    }
}

#[test]
fn https_fetch_and_push_with_a_password_a_token_or_a_credential_helper() {
    let repo = Repo::new();
    let server = HttpGit::start(
        repo.dir.path(),
        &[("robot", PASSWORD), ("x-access-token", TOKEN)],
    );
    let url = server.url("remote.git");
    let secrets = tempfile::tempdir().unwrap();

    let password = GitAuth {
        username: Some("robot".into()),
        password: Some(secret_file(secrets.path(), "password", PASSWORD)),
        ..GitAuth::default()
    };
    password.check().unwrap();
    repo.fetch_and_push(&repo.mirror("m1", &url, password), "1");

    let token = GitAuth {
        token: Some(secret_file(secrets.path(), "token", TOKEN)),
        ..GitAuth::default()
    };
    repo.fetch_and_push(&repo.mirror("m2", &url, token), "2");

    // Nothing configured: git's credential helper, from the mirror's git configuration.
    let helper = repo.mirror("m3", &url, GitAuth::default());
    git(
        &repo.dir.path().join("m3"),
        &[
            "config",
            "credential.helper",
            &format!("!f() {{ echo username=robot; echo password={PASSWORD}; }}; f"),
        ],
    );
    repo.fetch_and_push(&helper, "3");

    let log = server.requests();
    assert!(
        log.contains("robot 200 \"POST /remote.git/git-receive-pack"),
        "{log}"
    );
    assert!(
        log.contains("x-access-token 200 \"POST /remote.git/git-receive-pack"),
        "{log}"
    );
}

#[test]
fn a_wrong_password_fails_at_once_and_names_no_secret() {
    let repo = Repo::new();
    let server = HttpGit::start(repo.dir.path(), &[("robot", PASSWORD)]);
    let url = server.url("remote.git");
    let secrets = tempfile::tempdir().unwrap();
    let wrong = "wrong-Zp4x1-guess";
    let auth = GitAuth {
        username: Some("robot".into()),
        password: Some(secret_file(secrets.path(), "password", wrong)),
        ..GitAuth::default()
    };
    let mirror = repo.mirror("m", &url, auth);
    let started = Instant::now();
    let err = mirror.fetch().unwrap_err();
    let took = started.elapsed();
    let text = chain(&err);
    println!("wrong password: {text} ({took:?})");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        text.contains(&format!("cannot fetch from remote {url}"))
            && text.contains("authentication failed: the remote refused the password of gitAuth.password for `robot`"),
        "{text}"
    );
    assert!(
        !text.contains(wrong) && !format!("{err:?}").contains(wrong),
        "{text}"
    );
    assert!(
        !err.is_transient(),
        "a refused password needs an operator: {text}"
    );
    // One challenge, one refusal: libgit2 was not left asking again and again.
    let refused = server.requests().matches(" 401 ").count();
    assert!(refused <= 2, "{} 401s:\n{}", refused, server.requests());

    // A push is refused the same way.
    let changes = BTreeMap::from([("web".to_string(), Some("phase: 1\n".to_string()))]);
    let err = mirror.commit_status(&changes, "web: 1").unwrap_err();
    let text = chain(&err);
    assert!(
        text.contains("authentication failed") && !text.contains(wrong),
        "{text}"
    );

    // A credential helper whose answer is refused: the same, once.
    let helped = repo.mirror("h", &url, GitAuth::default());
    git(
        &repo.dir.path().join("h"),
        &[
            "config",
            "credential.helper",
            &format!("!f() {{ echo username=robot; echo password={wrong}; }}; f"),
        ],
    );
    let err = helped.fetch().unwrap_err();
    let text = chain(&err);
    assert!(
        text.contains("refused what git's credential helper gave"),
        "{text}"
    );
    assert!(!text.contains(wrong), "{text}");

    // No credentials at all (when this machine has no helper either): says what to set.
    let bare = repo.mirror("b", &url, GitAuth::default());
    let helpers = Command::new("git")
        .args(["config", "--get-all", "credential.helper"])
        .current_dir(repo.dir.path().join("b"))
        .output()
        .unwrap();
    if helpers.stdout.is_empty() {
        let text = chain(&bare.fetch().unwrap_err());
        assert!(
            text.contains("set gitAuth.token or gitAuth.password"),
            "{text}"
        );
    }
}

/// OpenSSH's sshd on 127.0.0.1 with its own host key (ed25519) and authorized_keys, serving
/// the repositories of this machine to the user running the tests; stopped on drop.
struct SshGit {
    _sshd: Process,
    dir: TempDir,
    port: u16,
    user: String,
}

impl SshGit {
    fn start() -> SshGit {
        let sshd = program("sshd", "openssh-server");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_ed25519"), "");
        keygen(&d.join("id_ed25519"), "");
        keygen(&d.join("id_locked"), "correct horse battery");
        keygen(&d.join("id_stranger"), "");
        let authorized = ["id_ed25519.pub", "id_locked.pub"]
            .iter()
            .map(|k| std::fs::read_to_string(d.join(k)).unwrap())
            .collect::<String>();
        std::fs::write(d.join("authorized_keys"), authorized).unwrap();
        let port = free_port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\n\
                 PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 PermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
                d = d.display()
            ),
        )
        .unwrap();
        // sshd started by root wants its privilege separation directory (made by the package's
        // service, which is not running here).
        if Path::new("/run").is_dir() {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let mut child = Process::new(d, "sshd.log");
        let mut command = Command::new(sshd);
        command.args(["-D", "-e", "-f"]).arg(d.join("sshd_config"));
        child.spawn(command).unwrap();
        let log = d.join("sshd.log");
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let server = SshGit {
            _sshd: child,
            dir,
            port,
            user,
        };
        wait_until(
            "sshd",
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            &log,
        );
        server
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn url(&self, repo: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            repo.display()
        )
    }

    /// A known_hosts file with `line`.
    fn known_hosts(&self, name: &str, line: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, format!("{line}\n")).unwrap();
        path
    }

    /// The line OpenSSH would write for this server: `[127.0.0.1]:port ssh-ed25519 AAAA…`.
    fn host_line(&self) -> String {
        let public = std::fs::read_to_string(self.path("host_ed25519.pub")).unwrap();
        let key: Vec<&str> = public.split_whitespace().take(2).collect();
        format!("[127.0.0.1]:{} {}", self.port, key.join(" "))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
    }
}

fn keygen(path: &Path, passphrase: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-C", "", "-N", passphrase, "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ssh_fetch_and_push_with_a_key_and_a_known_host() {
    let server = SshGit::start();
    let repo = Repo::new();
    let url = server.url(&repo.path());
    let known = server.known_hosts("known_hosts", &server.host_line());
    let auth = GitAuth {
        ssh_key: Some(server.path("id_ed25519")),
        known_hosts: Some(known.clone()),
        ..GitAuth::default()
    };
    auth.check().unwrap();
    repo.fetch_and_push(&repo.mirror("m1", &url, auth), "1");

    // OpenSSH's hashed form of the same file, and a key locked with a passphrase.
    let hashed = server.known_hosts("hashed", &server.host_line());
    let out = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&hashed)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = std::fs::read_to_string(&hashed).unwrap();
    assert!(
        text.starts_with("|1|") && !text.contains("127.0.0.1"),
        "{text}"
    );
    let secrets = tempfile::tempdir().unwrap();
    let locked = GitAuth {
        ssh_key: Some(server.path("id_locked")),
        ssh_key_passphrase: Some(secret_file(
            secrets.path(),
            "passphrase",
            "correct horse battery",
        )),
        known_hosts: Some(hashed),
        ..GitAuth::default()
    };
    repo.fetch_and_push(&repo.mirror("m2", &url, locked), "2");
    assert!(
        server.log().contains("Accepted publickey"),
        "{}",
        server.log()
    );
}

#[test]
fn an_unknown_or_changed_host_key_is_refused_before_authenticating() {
    let server = SshGit::start();
    let repo = Repo::new();
    let url = server.url(&repo.path());
    let other = std::fs::read_to_string(server.path("id_stranger.pub")).unwrap();
    let other_key: Vec<&str> = other.split_whitespace().take(2).collect();
    let try_with = |name: &str, line: String| {
        let auth = GitAuth {
            ssh_key: Some(server.path("id_ed25519")),
            known_hosts: Some(server.known_hosts(name, &line)),
            ..GitAuth::default()
        };
        let err = repo.mirror(name, &url, auth).fetch().unwrap_err();
        assert!(!err.is_transient(), "{}", chain(&err));
        chain(&err)
    };

    // The host under another key: someone in between, or a rebuilt server.
    let changed = try_with(
        "changed",
        format!("[127.0.0.1]:{} {}", server.port, other_key.join(" ")),
    );
    assert!(
        changed.contains("host key verification failed")
            && changed.contains("which is not the ssh-ed25519 key")
            && changed.contains("SHA256:"),
        "{changed}"
    );
    // Not listed at all (port 22 is another entry).
    let key = server.host_line();
    let key = key.split_once(' ').unwrap().1;
    let unknown = try_with("unknown", format!("127.0.0.1 {key}"));
    assert!(
        unknown.contains(&format!("[127.0.0.1]:{} is not in", server.port))
            && unknown.contains("ssh-keyscan"),
        "{unknown}"
    );
    // Revoked.
    let revoked = try_with("revoked", format!("@revoked * {key}"));
    println!("changed: {changed}\nunknown: {unknown}\nrevoked: {revoked}");
    assert!(revoked.contains("@revoked"), "{revoked}");
    // Refused before any key was offered.
    assert!(
        !server.log().contains("Accepted publickey"),
        "{}",
        server.log()
    );
}

#[test]
fn an_unauthorized_ssh_key_fails_at_once() {
    let server = SshGit::start();
    let repo = Repo::new();
    let url = server.url(&repo.path());
    let auth = GitAuth {
        ssh_key: Some(server.path("id_stranger")),
        known_hosts: Some(server.known_hosts("known_hosts", &server.host_line())),
        ..GitAuth::default()
    };
    let started = Instant::now();
    let err = repo.mirror("m", &url, auth).fetch().unwrap_err();
    let text = chain(&err);
    println!("unauthorized key: {text} ({:?})", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        text.contains("authentication failed: the SSH server refused the key")
            && text.contains("id_stranger"),
        "{text}"
    );
    assert!(!err.is_transient(), "{text}");
}

/// Points the world's daemon at `server`'s remote as `robot`, with `password` from a file.
fn as_robot(w: &mut World, server: &HttpGit, password: &str) {
    let file = w.dir.path().join("git-password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    w.config = Some(format!(
        "gitAuth:\n  username: robot\n  password: {{file: {}}}\n",
        file.display()
    ));
    w.url = Some(server.url("remote.git"));
}

const STEPS: &str = "  steps:\n    - setWeight: 20\n    - pause: {duration: 1s}\n    - setWeight: 50\n    - pause: {duration: 1s}\n";

#[test]
fn the_daemon_rolls_out_through_an_https_remote_and_writes_the_password_nowhere() {
    let mut w = World::new(0.0, 0.0);
    git(&w.remote, &["config", "http.receivepack", "true"]);
    let server = HttpGit::start(w.dir.path(), &[("robot", PASSWORD)]);
    as_robot(&mut w, &server, PASSWORD);
    w.start_on_stable(STEPS);
    w.merge("checkout.yaml", &w.spec(true, STEPS), "canary: green 1.1");
    // Promotion is recorded before it is applied: wait for the router to read back 100.
    w.wait_for("checkout", 30, "promoted and verified", |s| {
        phase(s) == "promoted"
            && s.live
                .as_ref()
                .is_some_and(|l| l.backends.get("green").is_some_and(|w| w.get() == 100))
    });
    assert_eq!(w.traffic(20).by_backend.get("green"), Some(&20));

    // Every fetch and push went through the server, as robot.
    let log = server.requests();
    assert!(
        log.contains("robot 200 \"POST /remote.git/git-receive-pack"),
        "{log}"
    );
    assert!(
        log.contains("robot 200 \"POST /remote.git/git-upload-pack"),
        "{log}"
    );
    // The password is in no log line and no commit of any branch.
    let logs = w.logs();
    assert!(!logs.contains(PASSWORD), "{logs}");
    let history = git(&w.remote, &["log", "--all", "-p", "--format=%H%n%B"]);
    assert!(history.contains("checkout: promoted"), "{history}");
    assert!(!history.contains(PASSWORD));

    // `canaryd status` reads the same remote with the same credentials.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["status", "--repo", &server.url("remote.git"), "--config"])
        .arg(w.config_file())
        .env_remove("CANARYD_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("rollout checkout: promoted"), "{text}");
    assert_eq!(w.terminate(), Some(0), "{}", w.logs());
}

#[test]
fn a_daemon_with_a_wrong_password_is_not_ready_and_says_why_without_it() {
    let mut w = World::new(0.0, 0.0);
    let server = HttpGit::start(w.dir.path(), &[("robot", PASSWORD)]);
    w.merge("checkout.yaml", &w.spec(false, STEPS), "checkout on blue");
    let wrong = "wrong-Jd83k-guess";
    as_robot(&mut w, &server, wrong);
    w.start();
    std::thread::sleep(Duration::from_secs(3));
    assert!(w.admin_get("/readyz").starts_with("HTTP/1.1 503"));
    let logs = w.logs();
    assert!(logs.contains("fetch failed"), "{logs}");
    assert!(!logs.contains(wrong), "{logs}");
    // About one attempt a poll (1 s), two requests each: not a storm.
    let refused = server.requests().matches(" 401 ").count();
    assert!(
        refused <= 12,
        "{refused} refusals in 3 s:\n{}",
        server.requests()
    );
    assert!(w.status("checkout").is_none());
}
