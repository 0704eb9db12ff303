//! The Prometheus and Grafana side (`deploy/monitoring/`): the alert rules pass `promtool check
//! rules`, each alert fires on its cause and stays quiet when usher is healthy (`promtool test
//! rules`), every metric the rules and the dashboard read is one a running usher exports (with
//! the labels and label values they select), the ServiceMonitor reaches the port that serves
//! `/metrics`, and the gauges added for the alerts move with what they count: controllers
//! running, people by phase, offboardings held, a relay's untrusted certificate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use usher::crd::{SystemUser, Tenant};
use usher_testenv::{Smtp, SmtpTls};

use crate::support::{
    Usher, apply_yaml, client, documents, eventually, namespace, parse_metrics, repo, wait_for,
};

/// Where the runbooks are: the README, one heading per alert.
const RUNBOOKS: &str = "https://github.com/your-org/usher/blob/main/README.md#";

/// Labels a series gets from its target (the ServiceMonitor, Prometheus), not from usher.
const TARGET_LABELS: &[&str] = &[
    "job",
    "namespace",
    "instance",
    "pod",
    "service",
    "endpoint",
    "container",
];

/// Series Prometheus makes itself, which the rules may read.
const PROMETHEUS_OWN: &[&str] = &["up"];

fn dir() -> PathBuf {
    repo().join("deploy/monitoring")
}

/// The one document of a YAML file of `deploy/monitoring/`.
fn manifest(file: &str) -> serde_json::Value {
    let mut docs = documents(&dir().join(file));
    assert_eq!(docs.len(), 1, "{file} holds one object");
    docs.remove(0)
}

/// The alerting rules of the PrometheusRule.
fn alerts() -> Vec<serde_json::Value> {
    let rule = manifest("prometheusrule.yaml");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    let groups = rule["spec"]["groups"].as_array().expect("spec.groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter().cloned())
        .collect()
}

/// A fresh folder holding the PrometheusRule's `spec` as the plain rule file `rules.yaml`.
fn rules_dir() -> PathBuf {
    let scratch = usher_testenv::scratch_dir("promtool").expect("scratch dir");
    let spec = &manifest("prometheusrule.yaml")["spec"];
    let yaml = serde_yaml_ng::to_string(spec).expect("rules as YAML");
    std::fs::write(scratch.join("rules.yaml"), yaml).expect("writing rules.yaml");
    scratch
}

/// Run promtool in `cwd`; its output, after asserting it succeeded.
fn promtool(cwd: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool does not run ({e}); `make test-peers` installs it (Debian prometheus)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_rules_pass_promtool_and_each_alert_fires_on_its_cause_and_not_when_healthy() {
    let scratch = rules_dir();
    let checked = promtool(&scratch, &["check", "rules", "rules.yaml"]);
    let n = alerts().len();
    assert!(
        checked.contains(&format!("SUCCESS: {n} rules found")),
        "{checked}"
    );

    let tests = dir().join("tests");
    let files = crate::support::yaml_files(&tests);
    assert!(
        !files.is_empty(),
        "no promtool unit tests in {}",
        tests.display()
    );
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap().to_string();
        std::fs::copy(file, scratch.join(&name)).expect("copying the unit tests");
        let tested = promtool(&scratch, &["test", "rules", &name]);
        assert!(tested.contains("SUCCESS"), "{tested}");
    }

    // Each alert is shown firing at least once and quiet at least once.
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for file in &files {
        for doc in documents(file) {
            for group in doc["tests"].as_array().expect("tests") {
                for case in group["alert_rule_test"].as_array().into_iter().flatten() {
                    let alert = case["alertname"].as_str().expect("alertname").to_string();
                    match case["exp_alerts"].as_array() {
                        Some(a) if !a.is_empty() => fires.insert(alert),
                        _ => quiet.insert(alert),
                    };
                }
            }
        }
    }
    for rule in alerts() {
        let alert = rule["alert"].as_str().unwrap().to_string();
        assert!(fires.contains(&alert), "no unit test makes {alert} fire");
        assert!(quiet.contains(&alert), "no unit test shows {alert} quiet");
    }
}

/// A Prometheus duration (`5m`, `1h30m`), in seconds.
fn seconds(duration: &str) -> Option<u64> {
    let mut total = 0;
    let mut digits = String::new();
    for c in duration.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86400,
                _ => return None,
            };
            total += digits.parse::<u64>().ok()? * unit;
            digits.clear();
        }
    }
    (digits.is_empty() && total > 0).then_some(total)
}

#[test]
fn every_alert_has_a_severity_a_duration_and_a_runbook() {
    let rules = alerts();
    let mut names = BTreeSet::new();
    for rule in &rules {
        let alert = rule["alert"].as_str().expect("only alerting rules");
        assert!(names.insert(alert), "{alert} twice");
        assert!(
            alert.starts_with("Usher") && alert.chars().all(|c| c.is_ascii_alphanumeric()),
            "{alert}: alert names are UpperCamelCase and start with Usher"
        );
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning"].contains(&severity),
            "{alert}: severity {severity:?}"
        );
        let wait = rule["for"].as_str().and_then(seconds);
        assert!(
            wait.is_some_and(|s| s >= 300),
            "{alert}: `for` of at least 5m, so that one scrape or retry does not page"
        );
        for key in ["summary", "description", "runbook_url"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(!text.trim().is_empty(), "{alert}: no {key}");
        }
        assert_eq!(
            rule["annotations"]["runbook_url"],
            format!("{RUNBOOKS}{}", alert.to_lowercase()),
            "{alert}: the runbook is the README heading named after the alert"
        );
    }
    // The causes the alerts are for.
    for wanted in [
        "UsherDown",
        "UsherControllersNotRunning",
        "UsherInvitationsNotSent",
        "UsherStoreUnreachable",
        "UsherCredentialFailing",
        "UsherOffboardingThrottled",
        "UsherReconcileErrors",
    ] {
        assert!(names.contains(wanted), "no alert {wanted}");
    }
}

/// GitHub's anchor of a Markdown heading: lower case, spaces to dashes, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every runbook link lands on a heading of the README (the text in the monitoring section).
#[test]
fn every_runbook_is_a_heading_of_the_readme() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    for rule in alerts() {
        let url = rule["annotations"]["runbook_url"].as_str().unwrap();
        let target = url.rsplit_once('#').map(|(_, a)| a).unwrap_or_default();
        assert!(
            anchors.contains(target),
            "{url}: README.md has no heading #{target} (the runbook of {})",
            rule["alert"]
        );
    }
}

/// One series selector of a PromQL expression: the metric and its label matchers
/// `(label, op, value)`.
#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: Vec<(String, String, String)>,
}

/// What an expression reads: its selectors, and the labels it groups or matches by
/// (`by (…)`, `without (…)`, `on (…)`, `ignoring (…)`, `group_left (…)`).
#[derive(Debug, Default)]
struct Reads {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2"];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The selectors and grouping labels of a PromQL expression. A small lexer, enough for the
/// expressions of the rules and the dashboard: it panics on what it does not know rather than
/// skip it.
fn reads(expr: &str) -> Reads {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Reads::default();
    let mut i = 0;
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() || "()+-*/^%,=!<>".contains(c) {
            i += 1;
        } else if c == '[' {
            // A range or a subquery's window.
            while chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '"' || c == '\'' {
            i += 1;
            while chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_space(i);
            let paren = chars.get(next) == Some(&'(');
            if GROUPING.contains(&word.as_str()) {
                if paren {
                    let close = next + chars[next..].iter().position(|&c| c == ')').unwrap();
                    let list: String = chars[next + 1..close].iter().collect();
                    out.grouping.extend(
                        list.split(',')
                            .map(|l| l.trim().to_string())
                            .filter(|l| !l.is_empty()),
                    );
                    i = close + 1;
                }
            } else if paren
                || KEYWORDS.contains(&word.as_str())
                || AGGREGATIONS.contains(&word.as_str())
            {
                // A function, an aggregation or an operator.
            } else {
                let mut matchers = Vec::new();
                if chars.get(i) == Some(&'{') {
                    let close = i + chars[i..].iter().position(|&c| c == '}').unwrap();
                    let body: String = chars[i + 1..close].iter().collect();
                    for m in body.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                        let at = m.find(['=', '!']).unwrap_or_else(|| panic!("matcher {m}"));
                        let (label, rest) = m.split_at(at);
                        let op_len = if rest.starts_with("=~")
                            || rest.starts_with("!=")
                            || rest.starts_with("!~")
                        {
                            2
                        } else {
                            1
                        };
                        let (op, value) = rest.split_at(op_len);
                        matchers.push((
                            label.trim().to_string(),
                            op.to_string(),
                            value.trim().trim_matches('"').to_string(),
                        ));
                    }
                    i = close + 1;
                }
                out.selectors.push(Selector {
                    metric: word,
                    matchers,
                });
            }
        } else {
            panic!("unexpected {c:?} in {expr}");
        }
    }
    out
}

#[test]
fn the_promql_lexer_finds_metrics_matchers_and_grouping() {
    let r = reads(
        r#"histogram_quantile(0.9, sum by (le, op) (rate(usher_store_duration_seconds_bucket{namespace=~"$namespace", op!="ping"}[$__rate_interval]))) > 0.5 unless on (job) up{job="usher"} == 1"#,
    );
    let metrics: Vec<&str> = r.selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(metrics, ["usher_store_duration_seconds_bucket", "up"]);
    assert_eq!(r.grouping, ["le", "op", "job"]);
    assert_eq!(
        r.selectors[0].matchers[1],
        ("op".into(), "!=".into(), "ping".into())
    );
}

/// The expressions of the rules, and of the dashboard's targets and query variables.
fn expressions() -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = alerts()
        .iter()
        .map(|r| {
            (
                format!("alert {}", r["alert"].as_str().unwrap()),
                r["expr"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    all.extend(dashboard_targets());
    for var in dashboard()["templating"]["list"].as_array().unwrap() {
        if var["type"] == "query" {
            // label_values(<selector>, <label>): the selector is PromQL.
            let query = var["query"]["query"].as_str().expect("a query");
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap_or_else(|| panic!("unexpected variable query {query}"));
            let (selector, _label) = inner.rsplit_once(',').expect("label_values(m, label)");
            all.push((format!("variable {}", var["name"]), selector.to_string()));
        }
    }
    all
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(dir().join("grafana-dashboard.json")).expect("dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every non-row panel of the dashboard.
fn panels() -> Vec<serde_json::Value> {
    dashboard()["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
        .cloned()
        .collect()
}

/// `(panel title, expr)` of every target of the dashboard.
fn dashboard_targets() -> Vec<(String, String)> {
    panels()
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                (
                    format!("panel {title:?}"),
                    t["expr"].as_str().unwrap_or_default().to_string(),
                )
            })
        })
        .collect()
}

#[test]
fn the_dashboard_is_grafana_json_whose_queries_parse() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    assert_eq!(d["uid"], "usher");
    assert!(d["title"].is_string());
    let vars = d["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["name"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus data source variable"
    );
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "panel id twice"
        );
        // No two panels overlap on the 24-column grid.
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().expect("gridPos"));
        assert!(x + w <= 24, "{} is wider than the grid", p["title"]);
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "{} overlaps another panel",
                    p["title"]
                );
            }
        }
    }
    for p in panels() {
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{}: the data source variable",
            p["title"]
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}: no query", p["title"]);
        let refs: BTreeSet<_> = targets
            .iter()
            .map(|t| t["refId"].as_str().unwrap())
            .collect();
        assert_eq!(refs.len(), targets.len(), "{}: refIds", p["title"]);
    }

    // Each query, with Grafana's variables filled in, is PromQL Prometheus's own parser takes:
    // written as recording rules for `promtool check rules`.
    let scratch = usher_testenv::scratch_dir("dashboard").expect("scratch dir");
    let rules: Vec<serde_json::Value> = dashboard_targets()
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$namespace", ".*");
            serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expr})
        })
        .collect();
    let n = rules.len();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(
        scratch.join("dashboard.yaml"),
        serde_yaml_ng::to_string(&file).unwrap(),
    )
    .unwrap();
    let checked = promtool(&scratch, &["check", "rules", "dashboard.yaml"]);
    assert!(
        checked.contains(&format!("SUCCESS: {n} rules found")),
        "{checked}"
    );

    // What it is for: onboarding, pending people, mail and store latency, reconcile errors.
    let exprs: Vec<String> = dashboard_targets().into_iter().map(|(_, e)| e).collect();
    let has = |parts: &[&str]| exprs.iter().any(|e| parts.iter().all(|p| e.contains(p)));
    assert!(has(&["usher_invitations_sent_total"]), "onboarding rate");
    assert!(
        has(&["usher_invitations_redeemed_total"]),
        "onboarding rate"
    );
    assert!(
        has(&["usher_people", "phase=\"Pending\""]),
        "pending people"
    );
    assert!(
        has(&["histogram_quantile", "usher_mail_duration_seconds_bucket"]),
        "mail latency"
    );
    assert!(
        has(&[
            "histogram_quantile",
            "usher_store_duration_seconds_bucket",
            "op)"
        ]),
        "store latency by operation"
    );
    assert!(
        has(&["usher_reconciles_total", "result!=\"ok\""]),
        "reconcile errors"
    );
}

/// The sample names each `# TYPE` line of an OpenMetrics exposition stands for.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (family, kind) = rest.split_once(' ').expect("# TYPE name type");
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "gauge" | "unknown" => &[""],
            "histogram" => &["_bucket", "_count", "_sum"],
            "info" => &["_info"],
            other => panic!("unexpected metric type {other} of {family}"),
        };
        names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
    }
    names
}

/// The name and labels of a sample's series, `name{a="b",…}`.
fn series(s: &str) -> (String, BTreeMap<String, String>) {
    let Some((name, labels)) = s.split_once('{') else {
        return (s.to_string(), BTreeMap::new());
    };
    let mut map = BTreeMap::new();
    let mut rest = labels.strip_suffix('}').expect("closing brace");
    while !rest.is_empty() {
        let (label, after) = rest.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("closing quote") {
                (_, '\\') => value.push(chars.next().expect("escaped").1),
                (at, '"') => break at,
                (_, c) => value.push(c),
            }
        };
        map.insert(label.trim_start_matches(',').to_string(), value);
        rest = &after[end + 1..];
    }
    (name.to_string(), map)
}

async fn exposition(usher: &Usher) -> String {
    reqwest::get(format!("{}/metrics", usher.probe_url))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text")
}

/// One series' value, whatever the order of its labels; None when it is not exported.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    parse_metrics(text).into_iter().find_map(|(s, v)| {
        let (n, l) = series(&s);
        (n == name
            && labels
                .iter()
                .all(|(k, want)| l.get(*k).map(String::as_str) == Some(want)))
        .then_some(v)
    })
}

const TENANT: &str = "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec:\n  displayName: Acme\n  offboarding: {policy: Deactivate, maxPerHour: 1}\n";

fn person(name: &str) -> String {
    format!(
        "---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {{name: {name}}}\nspec: {{tenantRef: {{name: acme}}, email: {name}@acme.example}}\n"
    )
}

/// Start usher on a tenant of two people, and wait until the Tenant counts them Pending.
async fn two_pending(test: &str) -> (kube::Client, String, Usher) {
    let client = client().await;
    let ns = namespace(&client, test).await;
    let outbox = usher_testenv::scratch_dir("mail").expect("outbox");
    apply_yaml(
        &client,
        &ns,
        &(TENANT.to_string() + &person("ann") + &person("bo")),
    )
    .await;
    let usher = Usher::start(&ns, &format!("file://{}", outbox.display()), &[]).await;
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &ns);
    wait_for(&tenants, "acme", "2 pending", |t| {
        t.status
            .as_ref()
            .and_then(|s| s.users.as_ref())
            .is_some_and(|u| u.pending == 2)
    })
    .await;
    (client, ns, usher)
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_read_is_exported_by_a_running_usher() {
    let (_client, _ns, usher) = two_pending("monitoring-names").await;
    let text = exposition(&usher).await;
    let exported = exported_names(&text);
    let samples: Vec<(String, BTreeMap<String, String>)> = parse_metrics(&text)
        .iter()
        .map(|(s, _)| series(s))
        .collect();
    // Every sample is one a `# TYPE` line announced: the names above are the real ones.
    for (name, _) in &samples {
        assert!(exported.contains(name), "{name} has no # TYPE line");
    }
    let labels_of = |metric: &str| -> Vec<&BTreeMap<String, String>> {
        samples
            .iter()
            .filter(|(n, _)| n == metric)
            .map(|(_, l)| l)
            .collect()
    };

    let mut wrong = Vec::new();
    for (source, expr) in expressions() {
        let r = reads(&expr);
        assert!(!r.selectors.is_empty(), "{source}: no metric in {expr}");
        let mut known_labels: BTreeSet<String> =
            TARGET_LABELS.iter().map(|l| l.to_string()).collect();
        known_labels.insert("le".into());
        for s in &r.selectors {
            if PROMETHEUS_OWN.contains(&s.metric.as_str()) {
                continue;
            }
            if !s.metric.starts_with("usher_") || !exported.contains(&s.metric) {
                wrong.push(format!("{source}: {} is not exported", s.metric));
                continue;
            }
            let series = labels_of(&s.metric);
            known_labels.extend(series.iter().flat_map(|l| l.keys().cloned()));
            for (label, op, want) in &s.matchers {
                if TARGET_LABELS.contains(&label.as_str()) {
                    continue;
                }
                if !series.iter().any(|l| l.contains_key(label)) {
                    wrong.push(format!("{source}: {} has no label {label}", s.metric));
                    continue;
                }
                // Each value an equality or a plain alternation selects is one usher exports.
                // (An exclusion may name a value a healthy usher has not shown yet:
                // `result!~"ok|OffboardingThrottled"`, whose second value the guard test shows.)
                let plain = want
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '|');
                let values: Vec<&str> = match op.as_str() {
                    "=" | "!=" => vec![want.as_str()],
                    "=~" if plain => want.split('|').collect(),
                    _ => vec![],
                };
                for v in values {
                    if !series
                        .iter()
                        .any(|l| l.get(label).map(String::as_str) == Some(v))
                    {
                        wrong.push(format!("{source}: no {}{{{label}=\"{v}\"}}", s.metric));
                    }
                }
            }
        }
        for label in &r.grouping {
            if !known_labels.contains(label) {
                wrong.push(format!(
                    "{source}: groups by {label}, which none of its metrics has"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{}\n\nexported:\n{text}",
        wrong.join("\n")
    );

    // The build, the controllers and the people the Tenant counted.
    let build: Vec<_> = samples
        .iter()
        .filter(|(n, _)| n == "usher_build_info")
        .collect();
    assert_eq!(build.len(), 1, "{text}");
    assert_eq!(
        build[0].1.get("version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(build[0].1.get("revision").is_some_and(|r| !r.is_empty()));
    assert_eq!(value(&text, "usher_build_info", &[]), Some(1.0));
    assert_eq!(value(&text, "usher_controllers_running", &[]), Some(1.0));
    assert_eq!(
        value(&text, "usher_people", &[("phase", "Pending")]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "usher_people", &[("phase", "Active")]),
        Some(0.0)
    );
    assert_eq!(value(&text, "usher_offboardings_held", &[]), Some(0.0));
}

/// The ServiceMonitor selects the Service of `deploy/`, on the port that reaches the listener
/// serving `/metrics`; kustomize builds the folder into it, the rules and the dashboard.
#[test]
fn the_service_monitor_reaches_the_metrics_listener() {
    let deploy = repo().join("deploy");
    let monitor = manifest("servicemonitor.yaml");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "ServiceMonitor");
    let service = documents(&deploy.join("service.yaml")).remove(0);
    let namespace = service["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(monitor["metadata"]["namespace"], namespace);
    let names: Vec<&str> = monitor["spec"]["namespaceSelector"]["matchNames"]
        .as_array()
        .expect("namespaceSelector.matchNames")
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(names, [namespace]);
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "the Service lacks {k}={v}"
        );
    }
    // The series' job is the Service's label `jobLabel` names: the job the alerts select.
    let job_label = monitor["spec"]["jobLabel"].as_str().expect("jobLabel");
    let job = service["metadata"]["labels"][job_label]
        .as_str()
        .expect("the job label");
    for (source, expr) in expressions() {
        for s in reads(&expr).selectors {
            for (label, _, value) in s.matchers.iter().filter(|(l, _, _)| l == "job") {
                assert_eq!(
                    value, job,
                    "{source}: {label}={value}, but the series get job={job}"
                );
            }
        }
    }
    let endpoints = monitor["spec"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["path"], "/metrics");
    let port_name = endpoints[0]["port"].as_str().expect("a named port");
    let port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port_name)
        .unwrap_or_else(|| panic!("deploy/service.yaml has no port {port_name}"));

    // The Service's target port is a container port of the Deployment ...
    let deployment = documents(&deploy.join("deployment.yaml")).remove(0);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let container_port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port["targetPort"] || p["containerPort"] == port["targetPort"])
        .unwrap_or_else(|| panic!("no container port {}", port["targetPort"]))["containerPort"]
        .as_u64()
        .unwrap();
    // ... on which usher serves /metrics: --probe-listen when set, else --listen.
    let config = documents(&deploy.join("config.yaml")).remove(0);
    let listen = config["data"]["USHER_PROBE_LISTEN"]
        .as_str()
        .or_else(|| config["data"]["USHER_LISTEN"].as_str())
        .expect("a listen address in the ConfigMap");
    assert_eq!(
        listen.rsplit_once(':').map(|(_, p)| p),
        Some(container_port.to_string().as_str()),
        "the ServiceMonitor's port reaches container port {container_port}, and /metrics is on {listen}"
    );

    usher_testenv::ensure_binaries().expect("kubectl");
    let out = Command::new(usher_testenv::kubectl())
        .args(["kustomize"])
        .arg(dir())
        .output()
        .expect("kubectl kustomize runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_slice(&out.stdout)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML"))
        .collect();
    let kinds: BTreeSet<&str> = built.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["ConfigMap", "PrometheusRule", "ServiceMonitor"])
    );
    let map = built.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    let json = map["data"]["grafana-dashboard.json"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(json).unwrap(),
        dashboard()
    );
}

/// The guard holding a deletion shows in the gauges the alert reads, and a release clears them.
#[tokio::test]
async fn held_offboardings_show_in_the_gauges_until_released() {
    let (client, ns, usher) = two_pending("monitoring-guard").await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    // maxPerHour 1: one goes, the other waits.
    users
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await
        .expect("delete both");
    // The held deletion's reconciles fail as OffboardingThrottled, which UsherReconcileErrors
    // leaves to UsherOffboardingThrottled.
    let throttled = |text: &str| {
        value(
            text,
            "usher_reconciles_total",
            &[("kind", "SystemUser"), ("result", "OffboardingThrottled")],
        )
        .is_some_and(|n| n >= 1.0)
    };
    let held = eventually(Duration::from_secs(60), || async {
        let text = exposition(&usher).await;
        (value(&text, "usher_offboardings_held", &[]) == Some(1.0) && throttled(&text))
            .then_some(text)
    })
    .await
    .unwrap_or_else(|| panic!("one offboarding held within 60 s; log:\n{}", usher.log()));
    assert_eq!(
        value(&held, "usher_offboarding_throttled_tenants", &[]),
        Some(1.0)
    );

    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &ns);
    tenants
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"usher.dev/allow-mass-offboarding": "monitoring"}}})),
        )
        .await
        .expect("released");
    let released = eventually(Duration::from_secs(90), || async {
        let text = exposition(&usher).await;
        (value(&text, "usher_offboardings_held", &[]) == Some(0.0)).then_some(text)
    })
    .await
    .expect("nothing held within 90 s of the release");
    assert_eq!(
        value(&released, "usher_offboarding_throttled_tenants", &[]),
        Some(0.0)
    );
}

/// A relay whose certificate usher does not trust: the reconciles fail as `tls` at the mail
/// peer, which is what UsherCredentialFailing reads, and not as an outage or a refusal.
#[tokio::test]
async fn an_untrusted_relay_certificate_counts_as_a_mail_tls_failure() {
    let client = client().await;
    let ns = namespace(&client, "monitoring-tls").await;
    let smtp = Smtp::start_with(SmtpTls::Implicit).expect("TLS SMTP sink");
    apply_yaml(&client, &ns, &(TENANT.to_string() + &person("cy"))).await;
    // No USHER_MAIL_CA_FILE: the relay's certificate is from a CA usher does not know.
    let usher = Usher::start(&ns, &smtp.url(), &[]).await;
    let text = eventually(Duration::from_secs(60), || async {
        let text = exposition(&usher).await;
        value(
            &text,
            "usher_peer_errors_total",
            &[("peer", "mail"), ("reason", "tls")],
        )
        .is_some_and(|n| n >= 1.0)
        .then_some(text)
    })
    .await
    .unwrap_or_else(|| panic!("no mail tls failure counted; log:\n{}", usher.log()));
    for reason in ["auth", "unavailable", "refused", "other"] {
        assert_eq!(
            value(
                &text,
                "usher_peer_errors_total",
                &[("peer", "mail"), ("reason", reason)]
            ),
            Some(0.0),
            "{reason}"
        );
    }
    assert!(value(&text, "usher_mail_errors_total", &[]).is_some_and(|n| n >= 1.0));
    assert_eq!(value(&text, "usher_invitations_sent_total", &[]), Some(0.0));
    assert!(smtp.messages().is_empty());
}

/// A usher whose store never answers serves its metrics but runs no controllers: the signal of
/// UsherControllersNotRunning.
#[tokio::test]
async fn a_usher_waiting_for_its_store_runs_no_controllers() {
    let client = client().await;
    let ns = namespace(&client, "monitoring-wait").await;
    let outbox = usher_testenv::scratch_dir("mail").expect("outbox");
    // Nothing listens on port 1.
    let usher = Usher::start_unready(
        &ns,
        &format!("file://{}", outbox.display()),
        &["--store", "postgres://usher@127.0.0.1:1/usher"],
        &[],
    )
    .await;
    let text = eventually(Duration::from_secs(30), || async {
        let ready = reqwest::get(format!("{}/readyz", usher.probe_url))
            .await
            .ok()?;
        // Waiting, and saying so.
        if ready.status() != 503 {
            return None;
        }
        reqwest::get(format!("{}/metrics", usher.probe_url))
            .await
            .ok()?
            .text()
            .await
            .ok()
    })
    .await
    .unwrap_or_else(|| panic!("usher did not answer 503 on /readyz; log:\n{}", usher.log()));
    assert_eq!(value(&text, "usher_controllers_running", &[]), Some(0.0));
    assert_eq!(value(&text, "usher_build_info", &[]), Some(1.0));
}
