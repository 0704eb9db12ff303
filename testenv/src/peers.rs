//! Real servers the integration tests talk to, each a child process tied to the test's life:
//! an SMTP sink (aiosmtpd, from PyPI, in `target/venv`) and chromedriver (Debian's).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Error, Supervised, free_port, io, repo_root};

/// The Python of the test venv (`make test-peers` creates it).
pub fn venv_python() -> PathBuf {
    repo_root().join("target/venv/bin/python")
}

/// A fresh folder under `target/testenv/<pid>/` for one peer.
pub fn scratch_dir(name: &str) -> Result<PathBuf, Error> {
    let dir = repo_root()
        .join("target/testenv")
        .join(std::process::id().to_string())
        .join(format!("{name}-{}", free_port()?));
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    Ok(dir)
}

fn wait_for_port(child: &Supervised, port: u16, timeout: Duration) -> Result<(), Error> {
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
        let port = free_port()?;
        let files = match tls {
            SmtpTls::None => None,
            _ => Some(crate::pki::tls_files(&dir)?),
        };
        let mut smtp = Self {
            port,
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

/// chromedriver on loopback, driving Debian's headless Chromium.
pub struct ChromeDriver {
    /// Its WebDriver URL.
    pub url: String,
    _process: Supervised,
}

impl ChromeDriver {
    /// Start chromedriver on a free port.
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
        let port = free_port()?;
        let process = Supervised::spawn(
            "chromedriver",
            Command::new(driver).args([&format!("--port={port}"), "--allowed-ips=127.0.0.1"]),
            &dir,
        )?;
        wait_for_port(&process, port, Duration::from_secs(20))?;
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            _process: process,
        })
    }
}
