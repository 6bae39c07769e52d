//! Finding and reading spec files, status files and the controller configuration on disk.
//!
//! The one place of the spec side that touches the file system. Oversized files are refused
//! from their metadata, before a byte is read.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::core::diag::{Diagnostic, Position};
use crate::core::model::Catalog;
use crate::core::par;
use crate::core::progress::Status;
use crate::core::record::StatusFile;
use crate::core::spec::RouterSpec;
use crate::core::validate::{self, Known, Source};
use crate::core::yaml::MAX_FILE_BYTES;
use crate::edge::git::IGNORE_FILE;

/// Errors that stop a command from running at all (exit 2), as opposed to findings.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("path {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("controller configuration {path} is invalid: {message}")]
    Config { path: PathBuf, message: String },
    #[error("status file {path} is invalid: {message}")]
    Status { path: PathBuf, message: String },
}

/// Spec files read from disk, and the problems met reading them.
#[derive(Debug, Default)]
pub struct Loaded {
    pub sources: Vec<Source>,
    pub diags: Vec<Diagnostic>,
    /// Files that could not be read at all.
    pub broken: Vec<String>,
}

/// Reads every `*.yaml`/`*.yml` under `paths` (files or directories, recursively, sorted,
/// skipping hidden entries and what `.canarydignore` lists). File names in diagnostics are
/// shown relative to `base` when under it.
pub fn load(paths: &[PathBuf], base: Option<&Path>) -> Result<Loaded, RepoError> {
    let mut files = Vec::new();
    for path in paths {
        if !path.exists() {
            return Err(RepoError::NotFound { path: path.clone() });
        }
        if path.is_dir() {
            walk(path, &ignored(path), &mut files)?;
        } else {
            files.push(path.clone());
        }
    }
    let mut loaded = Loaded::default();
    // Thousands of small files: reading them is mostly system calls, which overlap well.
    let read = par::map(files, |path| {
        let shown = base
            .and_then(|b| path.strip_prefix(b).ok())
            .unwrap_or(&path)
            .display()
            .to_string();
        let text = read_bounded(&path);
        (shown, text)
    });
    for (shown, text) in read {
        match text {
            Ok(text) => loaded.sources.push(Source { file: shown, text }),
            Err(message) => {
                loaded.diags.push(
                    Diagnostic::error(&shown, Position { line: 1, column: 1 }, "", message.0)
                        .with_help(message.1),
                );
                loaded.broken.push(shown);
            }
        }
    }
    Ok(loaded)
}

/// Reads and validates the specs under `paths`.
pub fn catalog(
    paths: &[PathBuf],
    base: Option<&Path>,
    known: &Known,
) -> Result<(Catalog, Vec<Diagnostic>, Vec<Source>), RepoError> {
    let loaded = load(paths, base)?;
    let (mut catalog, diags) = validate::validate(&loaded.sources, known);
    catalog.broken_files.extend(loaded.broken);
    Ok((catalog, by_place(diags, loaded.diags), loaded.sources))
}

/// Reads the specs under `paths` and returns every problem [`catalog`] would, with what was
/// read (for showing the lines they are on), without keeping the rollouts: `lint`.
pub fn diagnose(
    paths: &[PathBuf],
    base: Option<&Path>,
    known: &Known,
) -> Result<(Vec<Diagnostic>, Vec<Source>), RepoError> {
    let loaded = load(paths, base)?;
    let diags = validate::diagnose(&loaded.sources, known);
    Ok((by_place(diags, loaded.diags), loaded.sources))
}

/// Validation's problems and reading's, in file and position order.
fn by_place(mut diags: Vec<Diagnostic>, read: Vec<Diagnostic>) -> Vec<Diagnostic> {
    diags.extend(read);
    diags.sort_by(|a, b| (a.file.as_str(), a.position).cmp(&(b.file.as_str(), b.position)));
    diags
}

/// Reads a spec file, refusing what is not a regular file or is over [`MAX_FILE_BYTES`]
/// without reading more than that: a symlink to `/dev/zero` or a FIFO reports size 0.
fn read_bounded(path: &Path) -> Result<String, (String, String)> {
    let io = |e: io::Error| {
        let help = match e.kind() {
            io::ErrorKind::PermissionDenied => "check the file's permissions",
            io::ErrorKind::NotFound => "the file (or the target of its symlink) is gone",
            _ => "check that the file is readable",
        };
        (format!("cannot read file: {e}"), help.to_string())
    };
    let file = fs::File::open(path).map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    if !metadata.is_file() {
        return Err((
            "not a regular file".to_string(),
            "spec files are plain files; remove it or list it in .canarydignore".to_string(),
        ));
    }
    let too_big = |size: u64| {
        (
            format!(
                "file is {:.1} MiB; spec files are limited to {} MiB",
                size as f64 / (1024.0 * 1024.0),
                MAX_FILE_BYTES / (1024 * 1024)
            ),
            "split it, or list it in .canarydignore if it is not a spec".to_string(),
        )
    };
    let size = metadata.len();
    if size > MAX_FILE_BYTES {
        return Err(too_big(size));
    }
    // Sized from the metadata, so the text is read in one go and kept without slack (the file
    // may still grow or shrink meanwhile: `take` bounds it either way).
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        (
            format!(
                "file is not UTF-8 (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
            "save it as UTF-8".to_string(),
        )
    })
}

fn ignored(dir: &Path) -> Vec<PathBuf> {
    fs::read_to_string(dir.join(IGNORE_FILE))
        .map(|text| {
            text.lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                .map(|l| dir.join(l.trim_end_matches('/')))
                .collect()
        })
        .unwrap_or_default()
}

/// Collects the YAML files under `dir`. Symlinked folders are not followed (a link to `..`
/// would list everything twice, or forever); symlinked files are read like files.
fn walk(dir: &Path, skip: &[PathBuf], out: &mut Vec<PathBuf>) -> Result<(), RepoError> {
    let read = |e| RepoError::Read {
        path: dir.to_path_buf(),
        source: e,
    };
    let mut entries: Vec<(PathBuf, fs::FileType)> = fs::read_dir(dir)
        .map_err(read)?
        .map(|e| e.and_then(|e| Ok((e.path(), e.file_type()?))))
        .collect::<Result<_, _>>()
        .map_err(read)?;
    // All in `dir`: their names alone order them as their paths would, and compare faster.
    entries.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
    for (path, kind) in entries {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden || skip.iter().any(|s| path.starts_with(s)) {
            continue;
        }
        if kind.is_dir() {
            walk(&path, skip, out)?;
        } else if (!kind.is_symlink() || !path.is_dir())
            && matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            )
        {
            out.push(path);
        }
    }
    Ok(())
}

/// The controller's configuration file (`canaryd run --config`). Every field but `routers`,
/// `webhook` and `gitAuth` has a flag and an environment variable of the same name, which win
/// over the file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Routers by name, as in a `kind: Router` document's `spec`.
    #[serde(default)]
    pub routers: BTreeMap<String, RouterSpec>,
    /// The repository of rollout specs: a local path or a URL.
    pub repo: Option<String>,
    /// The watched branch.
    pub branch: Option<String>,
    /// Folder of rollout specs inside the repository.
    pub rollouts: Option<String>,
    /// The branch status files are committed to.
    pub status_branch: Option<String>,
    /// Where the daemon keeps its Git mirror.
    pub data_dir: Option<PathBuf>,
    /// How often the remote is fetched, e.g. `30s`.
    pub poll_interval: Option<String>,
    /// Address of the admin endpoints (`/healthz`, `/readyz`, `/metrics`).
    pub admin: Option<String>,
    /// Limits of the admin listener: `headerReadTimeout`, `maxHeaderBytes`, `maxConnections`,
    /// `backlog` (the body and upstream limits are the embedded router's only).
    #[serde(default)]
    pub admin_limits: crate::core::spec::Limits,
    /// The Prometheus that `provider: prometheus` metrics (and the HAProxy and Traefik
    /// built-in templates) query.
    pub prometheus: Option<crate::edge::prometheus::PrometheusConfig>,
    /// The forge for revert pull requests and commit statuses (`github: {...}`).
    pub forge: Option<crate::edge::forge::ForgeConfig>,
    /// Push webhooks on the admin address (`/hooks/github`, `/hooks/generic`), signed with
    /// `secret: {file: …}` or `{env: …}`.
    pub webhook: Option<crate::edge::webhook::WebhookConfig>,
    /// Credentials for the repository and the SSH host keys trusted: `username`, `token`,
    /// `password`, `sshKey`, `sshKeyPassphrase`, `knownHosts`.
    pub git_auth: Option<crate::edge::git::GitAuth>,
    /// Notification sinks (`sinks: {NAME: {webhook | slack | teams: …}}`) and the default
    /// subscriptions of rollouts that name none.
    pub notifications: Option<crate::edge::notify::NotifyConfig>,
}

impl Config {
    pub fn read(path: &Path) -> Result<Config, RepoError> {
        let text = fs::read_to_string(path).map_err(|e| RepoError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        serde_saphyr::from_str(&text).map_err(|e| RepoError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    pub fn known(&self) -> Known {
        Known {
            routers: self
                .routers
                .iter()
                .map(|(n, r)| (n.clone(), r.kind()))
                .collect(),
            sinks: self
                .notifications
                .as_ref()
                .map(|n| n.sinks.keys().cloned().collect()),
        }
    }
}

/// Reads the recorded status of `rollout` from `dir/<rollout>.yaml` (a status file as the
/// status branch holds it, e.g. a checkout of that branch's `status/` folder); a new status
/// when absent.
pub fn read_status(dir: &Path, rollout: &str) -> Result<Status, RepoError> {
    let path = dir.join(format!("{rollout}.yaml"));
    match fs::read_to_string(&path) {
        Ok(text) => StatusFile::from_yaml(&text)
            .map(|f| f.status)
            .map_err(|message| RepoError::Status { path, message }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Status::new(rollout)),
        Err(e) => Err(RepoError::Read { path, source: e }),
    }
}
