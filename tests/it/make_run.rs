//! The README's first command, `make run`, done the way the README tells a newcomer: run the
//! script, open a mail from the outbox, follow its link, accept, watch `kubectl` show the person
//! Active, and press Ctrl-C.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{eventually, recipient, repo};

/// The processes whose command line names `needle` (the run's own folder).
fn processes_naming(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(needle)
                .then(|| format!("{}: {cmd}", e.file_name().to_string_lossy()))
        })
        .collect()
}

/// The processes still in process group `pgid`.
fn group_members(pgid: i32) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid pgrp ...; comm may hold spaces, so split after ')'.
            let (_, rest) = stat.rsplit_once(") ")?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            (fields.get(2)?.parse::<i32>().ok()? == pgid && fields.first()? != &"Z")
                .then(|| stat.trim().to_string())
        })
        .collect()
}

/// Kills a process group when a failing assertion unwinds past it: the script is not tied to
/// this process as the harness's own children are, and must not leave its cluster running. (On
/// success the test has already checked that the group is gone.)
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: signalling the process group of our own child.
            unsafe { libc::kill(-self.0, libc::SIGKILL) };
        }
    }
}

fn first_eml(outbox: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(outbox)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    files.into_iter().next()
}

#[tokio::test]
async fn make_run_as_the_readme_says_then_ctrl_c_leaves_nothing_behind() {
    let control_plane = repo().join("target/debug/control-plane");
    assert!(
        control_plane.exists(),
        "{} is missing: `make test` builds it (cargo build --workspace) before the tests",
        control_plane.display()
    );
    let dir = usher_testenv::scratch_dir("make-run").unwrap();
    let (run_dir, outbox) = (dir.join("run"), dir.join("outbox"));
    let port = usher_testenv::Port::reserve().unwrap();
    let probe_port = usher_testenv::Port::reserve().unwrap();
    let url = format!("http://127.0.0.1:{}", port.get());
    let stdout = dir.join("stdout");
    let mut script = Command::new("bash");
    script
        .arg(repo().join("hack/run.sh"))
        .env("USHER_RUN_DIR", &run_dir)
        .env("USHER_OUTBOX", &outbox)
        .env("USHER_LISTEN", format!("127.0.0.1:{}", port.get()))
        .env(
            "USHER_PROBE_LISTEN",
            format!("127.0.0.1:{}", probe_port.get()),
        )
        .env("USHER_PUBLIC_URL", &url)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        // Its own process group, as a terminal's foreground job: Ctrl-C signals all of it.
        .process_group(0);
    let mut child = script.spawn().expect("bash runs hack/run.sh");
    let pgid = child.id() as i32;
    let _group = GroupGuard(pgid);
    let log = || {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            std::fs::read_to_string(&stdout).unwrap_or_default(),
            std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
        )
    };

    // 1. The export line it prints for a second terminal.
    let kubeconfig = eventually(Duration::from_secs(180), || async {
        let out = std::fs::read_to_string(&stdout).ok()?;
        out.lines()
            .find_map(|l| l.trim().strip_prefix("export KUBECONFIG="))
            .map(PathBuf::from)
    })
    .await
    .unwrap_or_else(|| panic!("no `export KUBECONFIG=` line:\n{}", log()));
    assert!(
        kubeconfig.is_absolute() && kubeconfig.exists(),
        "{kubeconfig:?}"
    );

    // 2. A mail in the outbox, read as `cat` shows it: the link whole on one line.
    let eml = eventually(Duration::from_secs(60), || async { first_eml(&outbox) })
        .await
        .unwrap_or_else(|| panic!("no mail in {}:\n{}", outbox.display(), log()));
    let raw = std::fs::read(&eml).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let prefix = format!("{url}/accept?token=");
    let link = text
        .split_whitespace()
        .find(|w| w.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no whole link in the raw mail:\n{text}"))
        .to_string();
    let token = &link[prefix.len()..];
    assert!(
        token.len() >= 43 && !token.contains('='),
        "the token is cut or encoded: {link}"
    );
    let email = recipient(&raw);

    // 3. Follow the link over HTTP and accept on the page, as the form posts it. (reqwest is
    // built without a crypto provider, and this test makes no Kubernetes client that installs one.)
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let page = http.get(&link).send().await.expect("the page answers");
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains(token), "the form is not prefilled:\n{page}");
    let accepted = http
        .post(format!("{url}/accept"))
        .form(&[("token", token)])
        .send()
        .await
        .expect("the form posts");
    assert_eq!(accepted.status(), 200, "{}", accepted.text().await.unwrap());

    // 4. `kubectl get systemusers -n acme`, in a terminal with the printed KUBECONFIG.
    let kubectl = repo().join("target/k8s/kubectl");
    let last = std::sync::Mutex::new(String::new());
    let active = eventually(Duration::from_secs(30), || async {
        let out = Command::new(&kubectl)
            .args(["get", "systemusers", "-n", "acme"])
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .ok()?;
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        *last.lock().unwrap() = table.clone();
        table
            .lines()
            .any(|l| l.contains(&email) && l.split_whitespace().any(|w| w == "Active"))
            .then_some(())
    })
    .await;
    assert!(
        active.is_some(),
        "{email} never showed Active:\n{}",
        last.lock().unwrap()
    );

    // 5. Ctrl-C: SIGINT to the whole foreground group.
    // SAFETY: signalling the process group of our own child.
    unsafe { libc::kill(-pgid, libc::SIGINT) };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the script did not stop on Ctrl-C:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let run = run_dir.display().to_string();
    let left = eventually(Duration::from_secs(30), || async {
        let left = [group_members(pgid), processes_naming(&run)].concat();
        left.is_empty().then_some(())
    })
    .await;
    assert!(
        left.is_some(),
        "processes left behind after Ctrl-C:\n{}\n{}",
        [group_members(pgid), processes_naming(&run)]
            .concat()
            .join("\n"),
        log()
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port.get())).is_err(),
        "usher still answers on its port"
    );
}
