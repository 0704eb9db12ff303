//! A product's SCIM endpoint as Django products embed it: django-scim2 (PyPI) in a minimal Django
//! app on django.contrib.auth users and groups, with bearer auth and `externalId` added to its
//! filters (`testenv/peers/django-scim/`). Django and django-scim2 come from the test venv
//! (`target/venv`, `make test-peers`); the data is a SQLite file in a fresh folder.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::peers::wait_for_port;
use crate::{Error, Port, Supervised, io, repo_root, scratch_dir, venv_python};

/// django-scim2 in a minimal Django product on loopback, answering under `/scim/v2`.
pub struct DjangoScim {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The bearer token it accepts.
    pub token: String,
    dir: PathBuf,
    _process: Supervised,
    _reserved: Port,
}

impl DjangoScim {
    /// Create the product's database (`manage.py migrate`) and serve it with Django's
    /// development server (`runserver --noreload`) on a port reserved for it, `externalId`
    /// filterable on Users and Groups.
    ///
    /// Errors: [`Error::Build`] when the venv lacks Django or django-scim2; [`Error::NotReady`]
    /// when migrating fails or the server does not listen.
    pub fn start() -> Result<Self, Error> {
        Self::launch(false)
    }

    /// The same product with django-scim2's filters as shipped: a filter on `externalId` (or
    /// any attribute they do not know) matches nothing, and Groups can be filtered on nothing.
    pub fn start_with_shipped_filters() -> Result<Self, Error> {
        Self::launch(true)
    }

    fn launch(shipped_filters: bool) -> Result<Self, Error> {
        let python = venv_python();
        let has_django = python.exists()
            && Command::new(&python)
                .args(["-c", "import django, django_scim"])
                .output()
                .is_ok_and(|o| o.status.success());
        if !has_django {
            return Err(Error::Build(format!(
                "{} lacks Django or django-scim2; run `make test-peers` (a Python venv with django and django-scim2 0.23)",
                python.display()
            )));
        }
        let app = repo_root().join("testenv/peers/django-scim");
        let dir = scratch_dir("django-scim")?;
        let reserved = Port::reserve()?;
        let port = reserved.get();
        let token = format!("t-{port}-{}", std::process::id());
        let manage = |args: &[&str]| {
            let mut cmd = Command::new(&python);
            cmd.arg(app.join("manage.py"))
                .args(args)
                .current_dir(&app)
                .env("DJANGO_SETTINGS_MODULE", "product.settings")
                .env("DJANGO_SCIM_DATA", &dir)
                .env("DJANGO_SCIM_TOKEN", &token)
                .env("DJANGO_SCIM_NETLOC", format!("127.0.0.1:{port}"))
                .env(
                    "DJANGO_SCIM_SHIPPED_FILTERS",
                    if shipped_filters { "1" } else { "0" },
                )
                // No __pycache__ in the source tree.
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .env("PYTHONUNBUFFERED", "1");
            cmd
        };
        // Short and waited for, so not supervised; its output is kept beside the server's log.
        let migrated = manage(&["migrate", "--no-input"])
            .output()
            .map_err(io("running manage.py migrate"))?;
        let log = dir.join("django-scim-migrate.log");
        std::fs::write(&log, [&migrated.stdout[..], &migrated.stderr[..]].concat())
            .map_err(io(format!("writing {}", log.display())))?;
        if !migrated.status.success() {
            return Err(migrate_failed(&log, migrated.status.code()));
        }
        let process = Supervised::spawn(
            "django-scim",
            &mut manage(&["runserver", "--noreload", &format!("127.0.0.1:{port}")]),
            &dir,
        )?;
        wait_for_port(&process, port, Duration::from_secs(30))?;
        Ok(Self {
            port,
            token,
            dir,
            _process: process,
            _reserved: reserved,
        })
    }

    /// The SCIM base, `http://127.0.0.1:<port>/scim/v2`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}/scim/v2", self.port)
    }

    /// The store URL usher takes: `scim+http://127.0.0.1:<port>/scim/v2`.
    pub fn url(&self) -> String {
        format!("scim+{}", self.base())
    }

    /// The server's log so far: django-scim2 logs each SCIM request (path, method, body) and its
    /// answer (body, status), and the server one access line per request.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("django-scim.log")).unwrap_or_default()
    }
}

/// The error of a `migrate` that did not succeed, with the end of its log.
fn migrate_failed(log: &Path, code: Option<i32>) -> Error {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    Error::NotReady {
        component: "django-scim",
        reason: format!("manage.py migrate ended with {code:?}"),
        log: log.display().to_string(),
        tail: lines[lines.len().saturating_sub(25)..].join("\n"),
    }
}
