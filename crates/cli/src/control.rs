//! Running `send`/`serve` processes of one state directory, so `gateway
//! stop` can send them USER_STOP (SIGTERM: state saved, resumable).
//!
//! Each such process writes `STATE/run/<pid>.json` while it runs (removed on
//! exit; a file whose process is gone, or is no longer gateway, is stale and
//! ignored).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What a running process says about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Running {
    pub(crate) pid: u32,
    /// "send" or "serve".
    pub(crate) command: String,
    /// The file or directory sent, or the directory received into.
    pub(crate) path: String,
    pub(crate) started_ms: i64,
}

/// Removes this process's file when dropped.
pub(crate) struct Registration(PathBuf);

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("run")
}

/// Announces this process (best effort: a read-only state dir only loses `stop`).
pub(crate) fn register(state_dir: &Path, command: &str, path: &Path) -> Option<Registration> {
    let dir = run_dir(state_dir);
    std::fs::create_dir_all(&dir).ok()?;
    let me = Running {
        pid: std::process::id(),
        command: command.into(),
        path: path.display().to_string(),
        started_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    };
    let file = dir.join(format!("{}.json", me.pid));
    std::fs::write(&file, serde_json::to_vec(&me).ok()?).ok()?;
    Some(Registration(file))
}

/// Whether `pid` is a live gateway process (not a recycled pid).
fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let argv0 = c.split(|&b| b == 0).next().unwrap_or_default();
        Path::new(std::str::from_utf8(argv0).unwrap_or_default())
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("gateway"))
    })
}

/// The live processes of this state directory; stale files are removed.
pub(crate) fn list(state_dir: &Path) -> Vec<Running> {
    let Ok(rd) = std::fs::read_dir(run_dir(state_dir)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        let r: Option<Running> = std::fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        match r {
            Some(r) if r.pid != std::process::id() && alive(r.pid) => out.push(r),
            Some(r) if r.pid == std::process::id() => {}
            _ => {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    out.sort_by_key(|r| r.started_ms);
    out
}

/// Sends USER_STOP (SIGTERM) to the matching processes and waits up to
/// `wait` for them to save and exit. Returns (stopped, still running).
pub(crate) fn stop(targets: &[Running], wait: Duration) -> Result<(Vec<Running>, Vec<Running>)> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for r in targets {
        kill(Pid::from_raw(r.pid as i32), Signal::SIGTERM)
            .with_context(|| format!("cannot signal {} (pid {})", r.command, r.pid))?;
    }
    let deadline = Instant::now() + wait;
    loop {
        let (gone, left): (Vec<_>, Vec<_>) = targets.iter().cloned().partition(|r| !alive(r.pid));
        if left.is_empty() || Instant::now() >= deadline {
            return Ok((gone, left));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
