//! `usher validate` in a CI pipeline: `kubectl kustomize DIR | usher validate - -o json|sarif`,
//! with the real kubectl's kustomize, each problem located on the line of the stream it is on.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::repo;

/// `usher validate - ARGS` fed `input` on stdin: (exit code, stdout, stderr).
fn validate_stdin(input: &[u8], args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_usher"))
        .args(["validate", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("usher runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("usher reads stdin");
    let out = child.wait_with_output().expect("usher ends");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The manifests of a `tests/validate` case, built by kustomize into one stream.
fn kustomized(case: &str) -> String {
    let dir = usher_testenv::scratch_dir("kustomize").expect("scratch dir");
    let source = repo().join("tests/validate").join(case);
    let mut resources = String::from("namespace: acme\nresources:\n");
    for entry in std::fs::read_dir(&source).expect("the case") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            std::fs::copy(&path, dir.join(&name)).unwrap();
            resources.push_str(&format!("  - {name}\n"));
        }
    }
    std::fs::write(dir.join("kustomization.yaml"), resources).unwrap();
    let out = Command::new(usher_testenv::kubectl())
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl kustomize runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The 1-based line of `needle` in `text`.
fn line_in(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.trim() == needle).expect(needle) + 1
}

#[test]
fn kustomize_build_piped_into_validate_is_located_in_json_and_sarif() {
    let stream = kustomized("10-duplicate-email");
    let expected_line = line_in(&stream, "name: alice2");

    let (code, out, err) = validate_stdin(stream.as_bytes(), &["-o", "json"]);
    assert_eq!(code, 1, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(report["errors"], 1, "{out}");
    let problem = &report["problems"][0];
    assert_eq!(problem["file"], "<stdin>");
    assert_eq!(problem["object"], "SystemUser/alice2");
    assert_eq!(problem["line"], expected_line, "{stream}");
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("DuplicateEmail")
    );

    let (code, out, _) = validate_stdin(stream.as_bytes(), &["-o", "sarif"]);
    assert_eq!(code, 1);
    let log: serde_json::Value = serde_json::from_str(&out).expect("SARIF is JSON");
    assert_eq!(log["version"], "2.1.0");
    let result = &log["runs"][0]["results"][0];
    assert_eq!(result["level"], "error");
    assert_eq!(
        result["locations"][0]["physicalLocation"]["region"]["startLine"],
        expected_line
    );

    // The text verdict is the one `usher validate DIR` gives on the files themselves.
    let (code, text, _) = validate_stdin(stream.as_bytes(), &[]);
    assert_eq!(code, 1);
    assert!(
        text.starts_with("<stdin>: SystemUser/alice2: DuplicateEmail"),
        "{text}"
    );

    // A clean stream: exit 0, an empty problem list.
    let (code, out, err) = validate_stdin(kustomized("01-clean-basic").as_bytes(), &["-o", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["problems"], serde_json::json!([]));
}
