//! Real servers the integration tests talk to, each a child process tied to the test's life:
//! an SMTP sink (aiosmtpd, from PyPI, in `target/venv`) and chromedriver (Debian's).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Error, Port, Supervised, io, repo_root, unique_name};

/// The Python of the test venv (`make test-peers` creates it).
pub fn venv_python() -> PathBuf {
    repo_root().join("target/venv/bin/python")
}

/// A fresh folder under `target/testenv/<pid>/` for one peer, never handed out twice.
pub fn scratch_dir(name: &str) -> Result<PathBuf, Error> {
    let dir = repo_root()
        .join("target/testenv")
        .join(std::process::id().to_string())
        .join(unique_name(name));
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    Ok(dir)
}

pub(crate) fn wait_for_port(child: &Supervised, port: u16, timeout: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    loop {
        child.check_alive()?;
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(child.not_ready(format!("port {port} not open after {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How an SMTP peer speaks TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP, no STARTTLS offered.
    None,
    /// STARTTLS offered (and required before anything else).
    StartTls,
    /// TLS from the first byte (smtps).
    Implicit,
}

/// An SMTP server on loopback that keeps every message it receives in a maildir.
pub struct Smtp {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Held while the sink lives, stopped or not, so no other test's server gets the port.
    _reserved: Port,
    tls: SmtpTls,
    files: Option<crate::pki::TlsFiles>,
    maildir: PathBuf,
    process: Option<Supervised>,
}

impl Smtp {
    /// Start aiosmtpd with its Mailbox handler, plain SMTP.
    pub fn start() -> Result<Self, Error> {
        Self::start_with(SmtpTls::None)
    }

    /// Start aiosmtpd speaking `tls`, with a certificate for localhost from a fresh CA.
    pub fn start_with(tls: SmtpTls) -> Result<Self, Error> {
        let python = venv_python();
        if !python.exists() {
            return Err(Error::Build(format!(
                "{} is missing; run `make test-peers` (a Python venv with aiosmtpd)",
                python.display()
            )));
        }
        let dir = scratch_dir("smtp")?;
        let maildir = dir.join("maildir");
        let reserved = Port::reserve()?;
        let files = match tls {
            SmtpTls::None => None,
            _ => Some(crate::pki::tls_files(&dir)?),
        };
        let mut smtp = Self {
            port: reserved.get(),
            _reserved: reserved,
            tls,
            files,
            maildir,
            process: None,
        };
        smtp.spawn(&dir)?;
        Ok(smtp)
    }

    fn spawn(&mut self, dir: &Path) -> Result<(), Error> {
        let mut cmd = Command::new(venv_python());
        cmd.args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{}", self.port),
        ]);
        if let Some(f) = &self.files {
            let (cert_flag, key_flag) = match self.tls {
                SmtpTls::Implicit => ("--smtpscert", "--smtpskey"),
                _ => ("--tlscert", "--tlskey"),
            };
            cmd.arg(cert_flag).arg(&f.cert).arg(key_flag).arg(&f.key);
        }
        cmd.args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&self.maildir);
        let process = Supervised::spawn("aiosmtpd", &mut cmd, dir)?;
        wait_for_port(&process, self.port, Duration::from_secs(20))?;
        self.process = Some(process);
        Ok(())
    }

    /// The CA a client must trust, when the server speaks TLS.
    pub fn ca(&self) -> Option<&Path> {
        self.files.as_ref().map(|f| f.ca.as_path())
    }

    /// The URL usher should send to: `smtp://127.0.0.1:<port>`, or for TLS
    /// `smtp://localhost:<port>?tls=required` / `smtps://localhost:<port>` (the certificate's name).
    pub fn url(&self) -> String {
        match self.tls {
            SmtpTls::None => format!("smtp://127.0.0.1:{}", self.port),
            SmtpTls::StartTls => format!("smtp://localhost:{}?tls=required", self.port),
            SmtpTls::Implicit => format!("smtps://localhost:{}", self.port),
        }
    }

    /// Stop the server (an outage); `resume` starts it again on the same port and maildir.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }

    /// Start again after `stop`.
    pub fn resume(&mut self) -> Result<(), Error> {
        let dir = self
            .maildir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        self.spawn(&dir)
    }

    /// How many messages arrived so far (cheaper than reading them).
    pub fn count(&self) -> usize {
        ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(self.maildir.join(sub)).ok())
            .map(|d| d.count())
            .sum()
    }

    /// Every message received so far, raw, oldest first.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(self.maildir.join(sub)).ok())
            .flatten()
            .flatten()
            .map(|e| {
                let modified = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (modified, e.path())
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, p)| std::fs::read(p).ok())
            .collect()
    }
}

/// A SCIM 2.0 server on loopback (scim2-server, from PyPI, in `target/venv`), in memory.
pub struct Scim {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The bearer token it accepts.
    pub token: String,
    _process: Supervised,
    _reserved: Port,
}

impl Scim {
    /// Start scim2-server. With `extension`, it also declares usher's User extension
    /// (`deploy/scim/usher-user-extension.json`), as a product would that stores it.
    pub fn start(extension: bool) -> Result<Self, Error> {
        let server = repo_root().join("target/venv/bin/scim2-server");
        if !server.exists() {
            return Err(Error::Build(format!(
                "{} is missing; run `make test-peers` (a Python venv with scim2-server)",
                server.display()
            )));
        }
        let dir = scratch_dir("scim")?;
        let reserved = Port::reserve()?;
        let port = reserved.get();
        let token = format!("t-{port}-{}", std::process::id());
        let mut cmd = Command::new(&server);
        cmd.args(["--hostname", "127.0.0.1", "--port", &port.to_string()])
            .args(["--bearer-token", &token]);
        if extension {
            // The server's defaults plus usher's extension, declared on the User type.
            let script = r#"
import json, os, sys, scim2_server
res = os.path.join(os.path.dirname(scim2_server.__file__), "resources")
ext = json.load(open(sys.argv[1]))
schemas = json.load(open(os.path.join(res, "default-schemas.json"))) + [ext]
types = json.load(open(os.path.join(res, "default-resource-types.json")))
for t in types:
    if t["id"] == "User":
        t.setdefault("schemaExtensions", []).append({"schema": ext["id"], "required": False})
json.dump(schemas, open(sys.argv[2], "w"))
json.dump(types, open(sys.argv[3], "w"))
"#;
            let (schemas, types) = (dir.join("schemas.json"), dir.join("resource-types.json"));
            let out = Command::new(venv_python())
                .arg("-c")
                .arg(script)
                .arg(repo_root().join("deploy/scim/usher-user-extension.json"))
                .arg(&schemas)
                .arg(&types)
                .output()
                .map_err(io("preparing the SCIM schemas"))?;
            if !out.status.success() {
                return Err(Error::Build(format!(
                    "preparing the SCIM schemas: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            cmd.arg("--schema").arg(&schemas);
            cmd.arg("--resource-type").arg(&types);
        }
        let process = Supervised::spawn("scim2-server", &mut cmd, &dir)?;
        wait_for_port(&process, port, Duration::from_secs(30))?;
        Ok(Self {
            port,
            token,
            _process: process,
            _reserved: reserved,
        })
    }

    /// The server's base, `http://127.0.0.1:<port>/v2`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}/v2", self.port)
    }

    /// The store URL usher takes: `scim+http://127.0.0.1:<port>/v2`.
    pub fn url(&self) -> String {
        format!("scim+{}", self.base())
    }
}

/// chromedriver on loopback, driving Debian's headless Chromium.
pub struct ChromeDriver {
    /// Its WebDriver URL.
    pub url: String,
    _process: Supervised,
    _reserved: Port,
}

impl ChromeDriver {
    /// Start chromedriver on a port reserved for it.
    pub fn start() -> Result<Self, Error> {
        let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| {
                Error::Build(
                    "chromedriver is missing; install Debian's chromium and chromium-driver (`make test-peers` does)"
                        .into(),
                )
            })?;
        let dir = scratch_dir("chromedriver")?;
        let reserved = Port::reserve()?;
        let port = reserved.get();
        let process = Supervised::spawn(
            "chromedriver",
            Command::new(driver).args([&format!("--port={port}"), "--allowed-ips=127.0.0.1"]),
            &dir,
        )?;
        wait_for_port(&process, port, Duration::from_secs(20))?;
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            _process: process,
            _reserved: reserved,
        })
    }
}
