//! What build this is, for `usher version`, the `usher_build_info` metric and bug reports.

/// The crate's version (SemVer), e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit it was built from (12 hex digits), or `unknown` when built outside a git
/// checkout; `USHER_REVISION` at build time overrides it
/// (container builds without `.git`).
pub const REVISION: &str = env!("USHER_REVISION");

/// The API versions of the usher.dev kinds this build serves and reads.
pub const API_VERSIONS: &[&str] = &["usher.dev/v1alpha1"];

/// `usher version`: one line for people, `usher 0.1.0 (revision 0123456789ab)`.
pub fn line() -> String {
    format!("usher {VERSION} (revision {REVISION})\n")
}

/// `usher version -o json`: `{"version", "revision", "apiVersions"}`.
pub fn json() -> String {
    let value = serde_json::json!({
        "version": VERSION,
        "revision": REVISION,
        "apiVersions": API_VERSIONS,
    });
    format!("{value:#}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_the_crates_and_the_revision_is_known_or_says_so() {
        assert!(line().starts_with(&format!("usher {} (revision ", env!("CARGO_PKG_VERSION"))));
        let parsed: serde_json::Value = serde_json::from_str(&json()).unwrap();
        assert_eq!(parsed["version"], VERSION);
        assert_eq!(parsed["apiVersions"][0], "usher.dev/v1alpha1");
        assert!(
            REVISION == "unknown" || REVISION.chars().all(|c| c.is_ascii_hexdigit()),
            "{REVISION}"
        );
    }
}
