//! One component of the control plane as a child process tied to the spawning thread's life.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, io};

/// A child process with its log file, killed when dropped or when its spawning thread ends.
pub struct Supervised {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Supervised {
    /// Spawn `cmd` with stdout and stderr appended to `<dir>/<name>.log`.
    pub fn spawn(name: &'static str, cmd: &mut Command, dir: &Path) -> Result<Self, Error> {
        let log = dir.join(format!("{name}.log"));
        // Appended, so a restarted process keeps the earlier run's lines.
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io(format!("creating {}", log.display())))?;
        let err = out.try_clone().map_err(io("duplicating a log handle"))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: prctl and getppid are async-signal-safe; nothing here allocates.
        unsafe {
            cmd.pre_exec(|| {
                // Die with the spawning thread, so no component outlives its test run.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may already be gone between fork and prctl.
                if libc::getppid() == 1 {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(io(format!("starting {name}")))?;
        Ok(Self { name, child, log })
    }

    /// An error unless the process is still running.
    pub fn check_alive(&self) -> Result<(), Error> {
        // try_wait needs &mut; a signal-0 probe does not.
        let pid = self.child.id() as i32;
        if Self::pid_is_alive(pid) {
            Ok(())
        } else {
            Err(self.not_ready("exited".into()))
        }
    }

    /// A NotReady error carrying the end of the log.
    pub fn not_ready(&self, reason: String) -> Error {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        Error::NotReady {
            component: self.name,
            reason,
            log: self.log.display().to_string(),
            tail,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait up to `timeout` for the exit code (None: it had to be killed).
    pub fn terminate(mut self, timeout: Duration) -> Option<i32> {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// SIGKILL at once, as a crash would; no cleanup runs in the child.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether a process with this pid runs (not a zombie).
    pub fn pid_is_alive(pid: i32) -> bool {
        pid_alive(pid) && !is_zombie(pid)
    }

    /// SIGTERM, a few seconds' grace, then SIGKILL.
    pub fn stop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: sending a signal to our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Whether a process with this pid exists (zombies included).
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}
