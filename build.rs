//! The schema migrations are embedded at compile time (`sqlx::migrate!`); a new or changed file
//! under migrations/ must rebuild the crate, which cargo does not know by itself.
//!
//! The git revision is embedded for `usher version` and `usher_build_info`: from
//! `USHER_REVISION` when the build sets it (a container build without `.git`), else from git,
//! else `unknown`. The build reruns when HEAD moves.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=USHER_REVISION");
    let revision = std::env::var("USHER_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=USHER_REVISION={revision}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn git_revision() -> Option<String> {
    let dir = git(&["rev-parse", "--git-dir"])?;
    // HEAD, and the branch file it points to, change with every commit and checkout. (A path
    // that does not exist would rerun the build every time, so only existing ones are named.)
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for file in std::iter::once("HEAD".to_string()).chain(branch) {
        let path = std::path::Path::new(&dir).join(file);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}
