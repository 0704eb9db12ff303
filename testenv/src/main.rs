//! `control-plane up DIR` runs a throwaway control plane in the foreground until SIGTERM/SIGINT;
//! `control-plane wait DIR` waits until one started in the background is ready;
//! `control-plane down DIR` stops it. Used by `make control-plane`, `make run` and benchmarks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use usher_testenv::ControlPlane;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, dir) = match args.as_slice() {
        [cmd, dir] => (cmd.as_str(), PathBuf::from(dir)),
        _ => {
            eprintln!("usage: control-plane up|wait|down DIR");
            return ExitCode::from(2);
        }
    };
    let result = match cmd {
        "up" => up(&dir),
        "wait" => wait(&dir),
        "down" => down(&dir),
        _ => Err(format!("unknown command {cmd:?}; use up, wait or down")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("control-plane: {err}");
            ExitCode::FAILURE
        }
    }
}

fn up(dir: &Path) -> Result<(), String> {
    // Block the stop signals before any thread or child exists; sigwait picks them up below.
    // Children get an empty mask from std's spawn.
    let set = stop_signals();
    // SAFETY: plain libc signal-mask calls on a valid set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    std::fs::write(dir.join("pid"), std::process::id().to_string())
        .map_err(|e| format!("writing pid file: {e}"))?;
    let mut cp = ControlPlane::start(dir).map_err(|e| e.to_string())?;
    std::fs::write(&ready, &cp.server).map_err(|e| format!("writing ready file: {e}"))?;
    println!(
        "control plane ready at {}\n  export KUBECONFIG={}",
        cp.server,
        cp.kubeconfig.display()
    );

    let mut sig = 0;
    // SAFETY: waits for one of the blocked signals.
    unsafe { libc::sigwait(&set, &mut sig) };
    println!("control plane stopping (signal {sig})");
    cp.stop();
    let _ = std::fs::remove_file(&ready);
    let _ = std::fs::remove_file(dir.join("pid"));
    Ok(())
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

fn read_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn wait(dir: &Path) -> Result<(), String> {
    // A cold first run also builds kube-apiserver, which takes minutes.
    let deadline = Instant::now() + Duration::from_secs(30 * 60);
    while Instant::now() < deadline {
        if dir.join("ready").exists() {
            println!("export KUBECONFIG={}", dir.join("kubeconfig").display());
            return Ok(());
        }
        if let Some(pid) = read_pid(dir)
            && !usher_testenv::Supervised::pid_is_alive(pid)
        {
            return Err(format!(
                "the control plane exited before it was ready; see {}",
                dir.join("log").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err("timed out waiting for the control plane".into())
}

fn down(dir: &Path) -> Result<(), String> {
    let Some(pid) = read_pid(dir) else {
        println!("no control plane running in {}", dir.display());
        return Ok(());
    };
    // SAFETY: signalling the process named in our own pid file.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while usher_testenv::Supervised::pid_is_alive(pid) {
        if Instant::now() > deadline {
            // SAFETY: as above; it ignored SIGTERM for 30 s.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(dir.join("pid"));
    let _ = std::fs::remove_file(dir.join("ready"));
    println!("control plane stopped");
    Ok(())
}
