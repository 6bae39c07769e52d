//! The daemon's claim on its data dir: an exclusive lock on `<data-dir>/canaryd.lock`, held for the daemon's life.
//
// The lock is the kernel's (`flock`), so it goes with the process however the process ends,
// kill -9 included, and a restart finds the dir free. The file stays, holding the pid of the
// last daemon that claimed it (for the error a second daemon prints). Holding the dir is what
// lets the daemon take every `*.lock` file left in its mirror as stale.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use super::DaemonError;

/// The lock file's name in the data dir.
const LOCK_FILE: &str = "canaryd.lock";

/// The data dir, claimed: released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates `dir` if needed and takes its lock, or says which daemon holds it.
    pub fn claim(dir: &Path) -> Result<DataDir, DaemonError> {
        let failed = |source| DaemonError::DataDir {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(failed)?;
        // Not truncated on open: until the lock is ours, the pid in it is the holder's.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(failed)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(DaemonError::InUse {
                    dir: dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(failed(e)),
        }
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(failed)?;
        Ok(DataDir {
            path: dir.to_path_buf(),
            _lock: file,
        })
    }

    /// Where the daemon keeps its bare mirror of the remote.
    pub fn mirror(&self) -> PathBuf {
        self.path.join("mirror.git")
    }
}
