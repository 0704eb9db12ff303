//! A product's SCIM endpoint as Node products embed it: Better Auth with its SCIM plugin
//! (`@better-auth/scim`, npm) in a minimal app (`testenv/peers/better-auth-scim/server.mjs`) on a
//! SQLite file, with the plugin's defaults and one code-defined connection whose bearer token is
//! the peer's. Its packages are installed by `make test-peers` into `target/better-auth-scim/`
//! (`npm ci` of the app's lockfile); the script is copied beside them at each start, so that
//! Node resolves its imports there and the repository stays clean.
//!
//! It runs with `NODE_ENV=production`, as a product does, so Better Auth's defaults for
//! production hold, its rate limiter among them.
//!
//! Every SCIM exchange is logged by the app as one JSON line (method, path, status, request body,
//! answer body): [`BetterAuthScim::exchanges`] reads them back, so a test can show what usher
//! sent and what the server answered.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::peers::wait_for_port;
use crate::{Error, Port, Supervised, io, repo_root, scratch_dir, unique_name};

/// Where the app's sources live in the repository.
fn app_sources() -> PathBuf {
    repo_root().join("testenv/peers/better-auth-scim")
}

/// Where `make test-peers` installs the app's packages (and the script is copied at each start).
pub fn app_dir() -> PathBuf {
    repo_root().join("target/better-auth-scim")
}

/// The name of the app's log in its scratch folder ([`Supervised`] names it after the process).
const NAME: &str = "better-auth-scim";

/// Better Auth's SCIM plugin in a minimal Node product on loopback, answering under
/// `/api/auth/scim/v2`.
pub struct BetterAuthScim {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The bearer token it accepts (the static credential of its one connection).
    pub token: String,
    dir: PathBuf,
    _process: Supervised,
    _reserved: Port,
}

impl BetterAuthScim {
    /// Start the app on a port reserved for it, with a fresh SQLite file (its migrations run at
    /// start), and wait until it listens.
    ///
    /// Errors: [`Error::Build`] when Node or the installed packages are missing or older than the
    /// app's lockfile (`make test-peers`); [`Error::NotReady`] when the app exits or does not
    /// listen.
    pub fn start() -> Result<Self, Error> {
        let app = app_dir();
        check_installed(&app)?;
        let script = install_script(&app)?;
        let dir = scratch_dir("better-auth-scim")?;
        let reserved = Port::reserve()?;
        let port = reserved.get();
        let token = format!("ba-{port}-{}", std::process::id());
        let mut cmd = Command::new("node");
        cmd.arg(&script)
            .current_dir(&app)
            // As a product runs it: among other things, Better Auth's rate limiter is on (100
            // requests per 10 s and path, answered 429 with `X-Retry-After`).
            .env("NODE_ENV", "production")
            .env("SCIM_PORT", port.to_string())
            .env("SCIM_TOKEN", &token)
            .env("SCIM_DATABASE", dir.join("app.db"));
        let process = Supervised::spawn(NAME, &mut cmd, &dir)?;
        wait_for_port(&process, port, Duration::from_secs(60))?;
        Ok(Self {
            port,
            token,
            dir,
            _process: process,
            _reserved: reserved,
        })
    }

    /// The SCIM base, `http://127.0.0.1:<port>/api/auth/scim/v2`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}/api/auth/scim/v2", self.port)
    }

    /// The store URL usher takes: `scim+http://127.0.0.1:<port>/api/auth/scim/v2`.
    pub fn url(&self) -> String {
        format!("scim+{}", self.base())
    }

    /// The app's log: its start line, then one JSON line per SCIM exchange.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{NAME}.log"))).unwrap_or_default()
    }

    /// Every SCIM exchange so far, oldest first, as the JSON lines the app logged:
    /// `{"method", "path", "status", "request", "response"}` (`path` with its query).
    pub fn exchanges(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(str::to_string)
            .collect()
    }
}

/// Node on the PATH and the app's packages installed from the current lockfile.
fn check_installed(app: &Path) -> Result<(), Error> {
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Err(Error::Build(
            "node is missing; install Node.js 20 or later with npm".into(),
        ));
    }
    let hint = "run `make test-peers` (npm ci of testenv/peers/better-auth-scim into target/better-auth-scim)";
    if !app.join("node_modules/@better-auth/scim").exists()
        || !app.join("node_modules/better-sqlite3").exists()
    {
        return Err(Error::Build(format!(
            "{} is missing; {hint}",
            app.join("node_modules").display()
        )));
    }
    let lock = |dir: &Path| std::fs::read(dir.join("package-lock.json")).ok();
    if lock(app) != lock(&app_sources()) {
        return Err(Error::Build(format!(
            "{} was installed from another package-lock.json than {}; {hint}",
            app.join("node_modules").display(),
            app_sources().display()
        )));
    }
    Ok(())
}

/// Copy the app's script beside its packages (written under a unique name and renamed, so
/// tests starting at once never run a half-written copy); its path.
fn install_script(app: &Path) -> Result<PathBuf, Error> {
    let source = app_sources().join("server.mjs");
    let text = std::fs::read(&source).map_err(io(format!("reading {}", source.display())))?;
    let target = app.join("server.mjs");
    let partial = app.join(format!("{}.partial", unique_name("server")));
    std::fs::write(&partial, text).map_err(io(format!("writing {}", partial.display())))?;
    std::fs::rename(&partial, &target).map_err(io(format!("writing {}", target.display())))?;
    Ok(target)
}
