//! `usher validate -o text|json|sarif`: the problems as people read them, as scripts read them,
//! and as CI systems annotate them (SARIF 2.1.0, which GitHub code scanning, GitLab and Azure
//! DevOps take), each problem with the line of the object it is about.

use serde::Serialize;
use serde_sarif::sarif;

use super::Problem;

/// How `usher validate` prints its verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `file: Kind/name: message`, one line per problem.
    #[default]
    Text,
    /// `{"problems": [{file, line, object, message, severity}], "errors", "warnings"}`.
    Json,
    /// A SARIF 2.1.0 log (OASIS), for code-scanning annotations.
    Sarif,
}

/// Rule of a problem that the cluster would refuse or fail on.
const INVALID: &str = "usher/invalid";
/// Rule of a problem that is worth a look but not wrong.
const WARNING: &str = "usher/warning";

/// One problem with where it is: `line` is 1-based, None when it cannot be told.
#[derive(Debug, Serialize)]
struct Located<'a> {
    file: &'a str,
    line: Option<usize>,
    object: &'a str,
    message: &'a str,
    severity: &'static str,
}

/// The problems in `format`. `sources` are the (file name, contents) that were validated; they
/// give each problem its line.
pub fn render(problems: &[Problem], sources: &[(String, Vec<u8>)], format: Format) -> String {
    let located: Vec<Located<'_>> = problems
        .iter()
        .map(|p| Located {
            file: &p.file,
            line: line_of(p, sources),
            object: &p.object,
            message: &p.message,
            severity: if p.warning { "warning" } else { "error" },
        })
        .collect();
    match format {
        Format::Text => problems.iter().map(|p| format!("{p}\n")).collect(),
        Format::Json => {
            let errors = problems.iter().filter(|p| !p.warning).count();
            let value = serde_json::json!({
                "problems": located,
                "errors": errors,
                "warnings": problems.len() - errors,
            });
            format!("{value:#}\n")
        }
        Format::Sarif => sarif_log(&located),
    }
}

fn sarif_log(problems: &[Located<'_>]) -> String {
    let rule = |id: &str, text: &str| {
        sarif::ReportingDescriptor::builder()
            .id(id)
            .short_description(
                sarif::MultiformatMessageString::builder()
                    .text(text)
                    .build(),
            )
            .build()
    };
    let results: Vec<sarif::Result> = problems
        .iter()
        .map(|p| {
            let artifact = sarif::ArtifactLocation::builder().uri(p.file).build();
            let physical = match p.line {
                Some(line) => sarif::PhysicalLocation::builder()
                    .artifact_location(artifact)
                    .region(sarif::Region::builder().start_line(line as i64).build())
                    .build(),
                None => sarif::PhysicalLocation::builder()
                    .artifact_location(artifact)
                    .build(),
            };
            let (rule_id, level) = if p.severity == "warning" {
                (WARNING, sarif::ResultLevel::Warning)
            } else {
                (INVALID, sarif::ResultLevel::Error)
            };
            sarif::Result::builder()
                .rule_id(rule_id)
                .level(level)
                .message(
                    sarif::Message::builder()
                        .text(format!("{}: {}", p.object, p.message))
                        .build(),
                )
                .locations(vec![
                    sarif::Location::builder()
                        .physical_location(physical)
                        .build(),
                ])
                .build()
        })
        .collect();
    let driver = sarif::ToolComponent::builder()
        .name("usher")
        .version(crate::version::VERSION)
        .rules(vec![
            rule(
                INVALID,
                "The cluster would refuse or fail on this object (admission, references, duplicate addresses, exclusivity).",
            ),
            rule(
                WARNING,
                "Accepted, and worth a look (a RoleBinding that has already expired).",
            ),
        ])
        .build();
    let log = sarif::Sarif::builder()
        .version(serde_json::json!("2.1.0"))
        .schema(sarif::SCHEMA_URL)
        .runs(vec![
            sarif::Run::builder()
                .tool(sarif::Tool::builder().driver(driver).build())
                .results(results)
                .build(),
        ])
        .build();
    let text = serde_json::to_string_pretty(&log).unwrap_or_default();
    format!("{text}\n")
}

/// The line a problem is about: a YAML error's own line, or the `name:` line of the object it
/// names (`Kind/name`) in its file, or the object's `kind:` line.
fn line_of(problem: &Problem, sources: &[(String, Vec<u8>)]) -> Option<usize> {
    if let Some(line) = yaml_error_line(&problem.message) {
        return Some(line);
    }
    let (kind, name) = problem.object.split_once('/')?;
    let text = sources
        .iter()
        .find(|(file, _)| *file == problem.file)
        .and_then(|(_, bytes)| std::str::from_utf8(bytes).ok())?;
    locate(text, kind, name)
}

/// The line serde_yaml_ng gives in its message: `… at line 3 column 5`.
fn yaml_error_line(message: &str) -> Option<usize> {
    let rest = &message[message.find("at line ")? + "at line ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// In a multi-document YAML text, the 1-based line of the `name:` of the document whose
/// top-level `kind:` is `kind` and whose metadata names `name` (block or flow style). A reading
/// of the lines, not of YAML: good for manifests as people and kustomize write them, and None
/// where it cannot tell.
fn locate(text: &str, kind: &str, name: &str) -> Option<usize> {
    let unquoted = |value: &str| value.trim().trim_matches(['"', '\'']).to_string();
    let separator = |line: &str| {
        line.strip_prefix("---")
            .is_some_and(|rest| rest.chars().next().is_none_or(char::is_whitespace))
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0;
    while start < lines.len() {
        let end = (start + 1..lines.len())
            .find(|&i| separator(lines[i]))
            .unwrap_or(lines.len());
        let doc = &lines[start..end];
        let number = |i: usize| start + i + 1;
        let is_kind = doc.iter().any(|l| {
            l.strip_prefix("kind:")
                .is_some_and(|value| unquoted(value) == kind)
        });
        if is_kind {
            let mut in_metadata = false;
            for (i, line) in doc.iter().enumerate() {
                if let Some(rest) = line.strip_prefix("metadata:") {
                    in_metadata = true;
                    let flow = rest.trim().trim_start_matches('{').trim_end_matches('}');
                    if flow.split(',').any(|part| {
                        part.trim()
                            .strip_prefix("name:")
                            .is_some_and(|value| unquoted(value) == name)
                    }) {
                        return Some(number(i));
                    }
                    continue;
                }
                if !line.starts_with([' ', '\t']) && !line.trim().is_empty() {
                    in_metadata = false;
                }
                if in_metadata
                    && line
                        .trim_start()
                        .strip_prefix("name:")
                        .is_some_and(|value| unquoted(value) == name)
                {
                    return Some(number(i));
                }
            }
        }
        start = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
apiVersion: usher.dev/v1alpha1
kind: Tenant
metadata: {name: acme}
spec: {displayName: Acme}
---
apiVersion: usher.dev/v1alpha1
kind: SystemUser
metadata:
  namespace: acme
  name: bob
spec:
  tenantRef: {name: acme}
---
# a comment first
metadata:
  name: \"carl\"
kind: SystemUser
spec: {}
";

    #[test]
    fn problems_point_at_the_name_line_of_their_object() {
        assert_eq!(locate(TEXT, "Tenant", "acme"), Some(3));
        assert_eq!(locate(TEXT, "SystemUser", "bob"), Some(10));
        assert_eq!(
            locate(TEXT, "SystemUser", "carl"),
            Some(16),
            "name before kind"
        );
        assert_eq!(locate(TEXT, "SystemUser", "acme"), None, "acme is a Tenant");
        assert_eq!(locate(TEXT, "RoleBinding", "bob"), None);
        assert_eq!(
            yaml_error_line("not valid YAML: did not find expected key at line 7 column 3"),
            Some(7)
        );
        assert_eq!(yaml_error_line("no line here"), None);
    }

    fn problems() -> (Vec<Problem>, Vec<(String, Vec<u8>)>) {
        let problems = vec![
            Problem {
                file: "people.yaml".into(),
                object: "SystemUser/bob".into(),
                message: "spec.email: Required value".into(),
                warning: false,
            },
            Problem {
                file: "people.yaml".into(),
                object: "Tenant/acme".into(),
                message: "looks odd".into(),
                warning: true,
            },
        ];
        (
            problems,
            vec![("people.yaml".into(), TEXT.as_bytes().to_vec())],
        )
    }

    #[test]
    fn json_gives_each_problem_its_line_and_severity() {
        let (problems, sources) = problems();
        let out: serde_json::Value =
            serde_json::from_str(&render(&problems, &sources, Format::Json)).unwrap();
        assert_eq!(out["errors"], 1);
        assert_eq!(out["warnings"], 1);
        assert_eq!(out["problems"][0]["line"], 10);
        assert_eq!(out["problems"][0]["severity"], "error");
        assert_eq!(out["problems"][1]["object"], "Tenant/acme");
        assert_eq!(out["problems"][1]["severity"], "warning");
    }

    #[test]
    fn sarif_is_a_2_1_0_log_with_a_located_result_per_problem() {
        let (problems, sources) = problems();
        let out: serde_json::Value =
            serde_json::from_str(&render(&problems, &sources, Format::Sarif)).unwrap();
        assert_eq!(out["version"], "2.1.0");
        assert!(out["$schema"].as_str().unwrap().contains("sarif"));
        let run = &out["runs"][0];
        assert_eq!(run["tool"]["driver"]["name"], "usher");
        let results = run["results"].as_array().unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0]["level"], "error");
        assert_eq!(results[0]["ruleId"], INVALID);
        let location = &results[0]["locations"][0]["physicalLocation"];
        assert_eq!(location["artifactLocation"]["uri"], "people.yaml");
        assert_eq!(location["region"]["startLine"], 10);
        assert!(
            results[0]["message"]["text"]
                .as_str()
                .unwrap()
                .starts_with("SystemUser/bob: ")
        );
        assert_eq!(results[1]["level"], "warning");
        // Every rule a result names is declared.
        let rules: Vec<&str> = run["tool"]["driver"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert!(
            results
                .iter()
                .all(|r| rules.contains(&r["ruleId"].as_str().unwrap()))
        );
        // No problems: a log with an empty result list, still valid.
        let empty: serde_json::Value =
            serde_json::from_str(&render(&[], &sources, Format::Sarif)).unwrap();
        assert_eq!(empty["runs"][0]["results"], serde_json::json!([]));
    }
}
