//! A throwaway Kubernetes control plane on loopback for usher's tests: etcd, kube-apiserver and
//! kube-controller-manager (garbage collector, namespace and service-account controllers), with
//! generated certificates and an admin kubeconfig.
//!
//! kube-apiserver, kube-controller-manager and kubectl are built once per machine from the Go module proxy
//! by `tests/k8s/build.sh` and cached under `target/k8s/`; etcd comes from the
//! `etcd-bin-vendored` crate. Each start uses ports reserved for it alone ([`Port`]) and a fresh
//! directory under `target/testenv/`, so another test's server or the leftovers of a killed run
//! never stop the next one.
//!
//! Every child process is started with `PR_SET_PDEATHSIG`, so it dies with the thread that spawned
//! it: when a test binary ends — passing, failing or on Ctrl-C — its control plane ends too.

mod better_auth_scim;
mod django_scim;
mod peers;
mod pki;
mod port;
mod postgres;
mod process;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use better_auth_scim::BetterAuthScim;
pub use django_scim::DjangoScim;
pub use peers::{ChromeDriver, Scim, Smtp, SmtpTls, scratch_dir, venv_python};
pub use port::{Port, unique_name};
pub use postgres::{OwnPostgres, Postgres, postgres};
pub use process::Supervised;

/// Everything that can go wrong bringing a control plane up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `tests/k8s/build.sh` failed: Go missing, too old, or the build broke.
    #[error("building the control plane binaries failed (tests/k8s/build.sh):\n{0}")]
    Build(String),
    /// A file could not be written or read.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Certificates could not be generated.
    #[error("generating certificates: {0}")]
    Pki(#[from] rcgen::Error),
    /// A component exited or did not become ready in time.
    #[error("{component} did not become ready: {reason}\n--- last lines of {log} ---\n{tail}")]
    NotReady {
        /// etcd, kube-apiserver or kube-controller-manager.
        component: &'static str,
        /// What we observed.
        reason: String,
        /// Its log file.
        log: String,
        /// The end of its log.
        tail: String,
    },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The root of the usher repository (this crate lives in `<root>/testenv`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testenv has a parent folder")
        .to_path_buf()
}

/// Where the cached kube-apiserver, kube-controller-manager and kubectl live.
pub fn bin_dir() -> PathBuf {
    repo_root().join("target").join("k8s")
}

/// The kubectl built beside the API server, so its version always matches.
pub fn kubectl() -> PathBuf {
    bin_dir().join("kubectl")
}

/// Build (or confirm the cache of) kube-apiserver, kube-controller-manager and kubectl.
///
/// Cheap when the cache matches `tests/k8s/go.mod`, `go.sum` and the Go version.
pub fn ensure_binaries() -> Result<(), Error> {
    let script = repo_root().join("tests/k8s/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(io(format!("running {}", script.display())))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Build(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// A running control plane. Dropping it stops every component.
pub struct ControlPlane {
    /// The folder holding certificates, data, logs and the kubeconfig.
    pub dir: PathBuf,
    /// An admin (system:masters) kubeconfig.
    pub kubeconfig: PathBuf,
    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub server: String,
    /// etcd's client URL, `http://127.0.0.1:<port>`, for tests that must write behind the API
    /// server's back (objects admission would refuse).
    pub etcd: String,
    /// etcd, then the controller manager.
    children: Vec<Supervised>,
    apiserver: Option<Supervised>,
    apiserver_args: Vec<String>,
    run: PathBuf,
    /// etcd client and peer, API server, controller manager: held until the last component
    /// stops, so that a restarted API server finds its port still free.
    _ports: [Port; 4],
}

impl ControlPlane {
    /// Start etcd, kube-apiserver and kube-controller-manager with their state in `dir`, and wait
    /// until the API server answers `/readyz`. Every port is reserved for this control plane
    /// ([`Port`]) for as long as it lives.
    pub fn start(dir: &Path) -> Result<Self, Error> {
        ensure_binaries()?;
        // The kubeconfig names certificate files by path; relative ones would resolve against
        // the kubeconfig's folder, not ours.
        let dir = &std::path::absolute(dir).map_err(io(format!("resolving {}", dir.display())))?;
        Self::launch(dir, &dir.join("run"))
    }

    fn launch(dir: &Path, run: &Path) -> Result<Self, Error> {
        let _ = std::fs::remove_dir_all(run);
        std::fs::create_dir_all(run).map_err(io(format!("creating {}", run.display())))?;
        let pki = pki::Pki::generate(run)?;
        let ports = [
            Port::reserve()?,
            Port::reserve()?,
            Port::reserve()?,
            Port::reserve()?,
        ];
        let [etcd_port, etcd_peer_port, api_port, kcm_port] = ports.each_ref().map(Port::get);
        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, pki.kubeconfig(&server))
            .map_err(io(format!("writing {}", kubeconfig.display())))?;

        let mut children = Vec::new();
        let etcd_bin = etcd_bin_vendored_linux_amd64::etcd_bin_path().expect("infallible");
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let etcd = Supervised::spawn(
            "etcd",
            Command::new(etcd_bin).args([
                "--data-dir",
                &run.join("etcd").display().to_string(),
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer_port}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer_port}"),
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{etcd_peer_port}"),
                // Tests need speed, not durability: the data dies with the run.
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ]),
            run,
        )?;
        children.push(etcd);
        wait_until(&children[0], Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", etcd_port)).is_ok()
        })?;

        let p = |name: &str| run.join(name).display().to_string();
        let apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={api_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--api-audiences=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--authorization-mode=RBAC".into(),
            // Loopback is not a valid endpoint for the `kubernetes` Service; nothing needs it.
            "--endpoint-reconciler-type=none".into(),
            "--allow-privileged=true".into(),
            format!("--cert-dir={}", p("certs")),
            "--v=0".into(),
        ];
        let apiserver = Self::spawn_apiserver(&apiserver_args, run, &kubeconfig)?;

        let kcm = Supervised::spawn(
            "kube-controller-manager",
            Command::new(bin_dir().join("kube-controller-manager")).args([
                &format!("--kubeconfig={}", kubeconfig.display()),
                &format!("--authentication-kubeconfig={}", kubeconfig.display()),
                &format!("--authorization-kubeconfig={}", kubeconfig.display()),
                "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                &format!("--secure-port={kcm_port}"),
                &format!("--root-ca-file={}", p("ca.crt")),
                "--v=0",
            ]),
            run,
        )?;
        children.push(kcm);
        // The controller manager has no cheap readiness signal we need; make sure it did not
        // exit at once on a bad flag.
        std::thread::sleep(Duration::from_millis(500));
        children[1].check_alive()?;

        Ok(Self {
            dir: dir.to_path_buf(),
            kubeconfig,
            server,
            etcd: etcd_url,
            children,
            apiserver: Some(apiserver),
            apiserver_args,
            run: run.to_path_buf(),
            _ports: ports,
        })
    }

    fn spawn_apiserver(
        args: &[String],
        run: &Path,
        kubeconfig: &Path,
    ) -> Result<Supervised, Error> {
        let apiserver = Supervised::spawn(
            "kube-apiserver",
            Command::new(bin_dir().join("kube-apiserver")).args(args),
            run,
        )?;
        let readyz = || {
            Command::new(kubectl())
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(["get", "--raw", "/readyz", "--request-timeout=2s"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        wait_until(&apiserver, Duration::from_secs(90), readyz)?;
        Ok(apiserver)
    }

    /// Stop the API server only (an outage of the control plane; etcd keeps the state).
    pub fn stop_apiserver(&mut self) {
        if let Some(mut p) = self.apiserver.take() {
            p.stop();
        }
    }

    /// Start the API server again after `stop_apiserver`, on the same port, and wait until it
    /// is ready.
    pub fn start_apiserver(&mut self) -> Result<(), Error> {
        if self.apiserver.is_none() {
            self.apiserver = Some(Self::spawn_apiserver(
                &self.apiserver_args,
                &self.run,
                &self.kubeconfig,
            )?);
        }
        Ok(())
    }

    /// Stop every component (controller manager, API server, then etcd).
    pub fn stop(&mut self) {
        if let Some(mut kcm) = self.children.pop() {
            kcm.stop();
        }
        self.stop_apiserver();
        while let Some(mut child) = self.children.pop() {
            child.stop();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_until(
    child: &Supervised,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    loop {
        child.check_alive()?;
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(child.not_ready(format!("not ready after {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a test binary needs to reach its shared control plane.
#[derive(Clone, Debug)]
pub struct Shared {
    /// An admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The API server's URL.
    pub server: String,
    /// etcd's client URL.
    pub etcd: String,
    /// The folder with the components' logs.
    pub dir: PathBuf,
}

/// The control plane of this test binary, started on first use and kept until the process ends.
///
/// It is started from a thread that never ends, because `PR_SET_PDEATHSIG` fires when the
/// spawning *thread* ends, and each test runs on a thread of its own. When the process exits the
/// kernel kills the components; the next run sweeps the folders of runs that are gone.
///
/// Panics with the reason when it cannot start: integration tests must not silently skip.
pub fn shared() -> &'static Shared {
    static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
    let result = SHARED.get_or_init(|| {
        kept_alive("control-plane", || {
            let runs = repo_root().join("target").join("testenv");
            sweep_stale_runs(&runs);
            let dir = runs.join(std::process::id().to_string());
            let cp = ControlPlane::start(&dir)?;
            let shared = Shared {
                kubeconfig: cp.kubeconfig.clone(),
                server: cp.server.clone(),
                etcd: cp.etcd.clone(),
                dir: cp.dir.clone(),
            };
            Ok((shared, cp))
        })
    });
    match result {
        Ok(shared) => shared,
        Err(err) => panic!("the test control plane could not start: {err}"),
    }
}

/// Run `start` on a thread that never ends and keep what it returns second (the children) on
/// that thread until the process exits; the first part is handed back. `PR_SET_PDEATHSIG` fires
/// when the spawning *thread* ends, and each test runs on a thread of its own.
pub(crate) fn kept_alive<T, Keep>(
    name: &str,
    start: impl FnOnce() -> Result<(T, Keep), Error> + Send + 'static,
) -> Result<T, String>
where
    T: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || match start() {
            Ok((shared, keep)) => {
                let _ = tx.send(Ok(shared));
                let _keep = keep;
                loop {
                    std::thread::park();
                }
            }
            Err(err) => {
                let _ = tx.send(Err(err.to_string()));
            }
        })
        .map_err(|e| format!("cannot spawn the {name} thread: {e}"))?;
    rx.recv().map_err(|_| format!("the {name} thread died"))?
}

/// Remove the folders of earlier test runs whose process is gone.
fn sweep_stale_runs(runs: &Path) {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return;
    };
    for entry in entries.flatten() {
        let alive = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
            .is_some_and(process::pid_alive);
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn run_build_script(path: &str) -> (i32, String) {
        let out = Command::new("/usr/bin/bash")
            .arg(repo_root().join("tests/k8s/build.sh"))
            .env("PATH", path)
            .output()
            .expect("bash runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn build_script_says_what_to_install_when_go_is_missing() {
        let (code, stderr) = run_build_script("/usr/bin:/bin");
        assert_eq!(code, 3, "{stderr}");
        assert!(stderr.contains("Go is not installed"), "{stderr}");
        assert!(stderr.contains("install Go 1.26"), "{stderr}");
    }

    #[test]
    fn build_script_refuses_a_go_that_is_too_old() {
        let dir = repo_root().join("target/testenv-unit/old-go");
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("go");
        std::fs::write(&fake, "#!/bin/sh\necho go1.24.3\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (code, stderr) = run_build_script(&format!("{}:/usr/bin:/bin", dir.display()));
        assert_eq!(code, 3, "{stderr}");
        assert!(stderr.contains("go1.24.3 is too old"), "{stderr}");
    }

    #[test]
    fn sweep_removes_runs_of_dead_processes_only() {
        let runs = repo_root().join("target/testenv-unit/runs");
        let _ = std::fs::remove_dir_all(&runs);
        let mine = runs.join(std::process::id().to_string());
        // pid_max is at most 2^22 on Linux, so this pid cannot exist.
        let dead = runs.join("99999999");
        std::fs::create_dir_all(&mine).unwrap();
        std::fs::create_dir_all(&dead).unwrap();
        sweep_stale_runs(&runs);
        assert!(mine.exists(), "the live run was removed");
        assert!(!dead.exists(), "the dead run was kept");
    }
}
