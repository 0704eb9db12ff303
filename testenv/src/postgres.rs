//! A throwaway PostgreSQL server (Debian's `postgresql` package) on a loopback port with its
//! own data folder, one per test binary; each test takes a fresh database from it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{Error, Port, Supervised, io, kept_alive, unique_name};

/// The running server.
#[derive(Clone, Debug)]
pub struct Postgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    /// Who the processes run as (PostgreSQL refuses root).
    user: Option<(u32, u32)>,
}

/// The PostgreSQL of this test binary, started on first use. Panics with the reason when it
/// cannot start: integration tests must not silently skip.
pub fn postgres() -> &'static Postgres {
    static PG: OnceLock<Result<Postgres, String>> = OnceLock::new();
    match PG.get_or_init(|| kept_alive("postgres", Postgres::start)) {
        Ok(pg) => pg,
        Err(err) => panic!("the test PostgreSQL could not start: {err}"),
    }
}

/// The newest `/usr/lib/postgresql/<major>/bin`.
fn bin_dir() -> Result<PathBuf, Error> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        Error::Build(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres); run `make test-peers` (apt-get install postgresql)".into(),
        )
    })
}

/// uid and gid of the `postgres` account, when we are root.
fn unprivileged() -> Result<Option<(u32, u32)>, Error> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(io("reading /etc/passwd"))?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .map(Some)
        .ok_or_else(|| {
            Error::Build(
                "running as root, and there is no `postgres` account to run PostgreSQL as".into(),
            )
        })
}

impl Postgres {
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn start() -> Result<(Self, (Supervised, Port)), Error> {
        let (pg, dir, reserved) = Self::init()?;
        let process = pg.launch(&dir)?;
        Ok((pg, (process, reserved)))
    }

    /// A fresh data folder, and a port reserved for the server for as long as the [`Port`]
    /// is kept.
    fn init() -> Result<(Self, PathBuf, Port), Error> {
        let reserved = Port::reserve()?;
        let pg = Self {
            port: reserved.get(),
            bin: bin_dir()?,
            user: unprivileged()?,
        };
        // Outside target/: the postgres account must own the folder and reach it.
        let dir = std::env::temp_dir().join(unique_name("usher-pg"));
        let data = dir.join("data");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .map_err(io("opening the PostgreSQL folder"))?;
        let init = pg
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .output()
            .map_err(io("running initdb"))?;
        if !init.status.success() {
            return Err(Error::Build(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&init.stderr)
            )));
        }
        Ok((pg, dir, reserved))
    }

    /// Run the server on the data folder in `dir` until it accepts connections.
    fn launch(&self, dir: &Path) -> Result<Supervised, Error> {
        let process = Supervised::spawn(
            "postgres",
            self.command("postgres")
                .arg("-D")
                .arg(dir.join("data"))
                .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
                .arg(dir)
                // Tests need speed, not durability: the data dies with the run.
                .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off", "-c", "max_connections=200"]),
            dir,
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.accepts(dir) {
            process.check_alive()?;
            if Instant::now() > deadline {
                return Err(process.not_ready("no connection after 30 s".into()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(process)
    }

    fn accepts(&self, dir: &Path) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .env("PGHOST", dir)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// A new, empty database with a fresh name; its URL.
    pub fn database(&self, prefix: &str) -> Result<String, Error> {
        self.create(&unique_name(prefix).replace('-', "_"))
    }

    /// Create database `name`; its URL.
    pub fn create(&self, name: &str) -> Result<String, Error> {
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg(name)
            .output()
            .map_err(io("running createdb"))?;
        if !out.status.success() {
            return Err(Error::Build(format!(
                "createdb {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(self.url(name))
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

/// A PostgreSQL server of one test's own, which the test can stop and start again: a store
/// outage. Stopped with the server when dropped.
pub struct OwnPostgres {
    /// The server, for URLs and databases.
    pub server: Postgres,
    dir: PathBuf,
    process: Option<Supervised>,
    /// Held through outages, so the server comes back on its own port.
    _reserved: Port,
}

impl OwnPostgres {
    /// Start a server on a fresh data folder.
    pub fn start() -> Result<Self, Error> {
        let (server, dir, reserved) = Postgres::init()?;
        let process = Some(server.launch(&dir)?);
        Ok(Self {
            server,
            dir,
            process,
            _reserved: reserved,
        })
    }

    /// Shut the server down ("fast": open connections are cut, as in an outage).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = self
                .server
                .command("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "fast", "-w"])
                .output();
            p.stop();
        }
    }

    /// Start again on the same port and data after `stop`.
    pub fn resume(&mut self) -> Result<(), Error> {
        if self.process.is_none() {
            self.process = Some(self.server.launch(&self.dir)?);
        }
        Ok(())
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
