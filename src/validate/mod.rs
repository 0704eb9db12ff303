//! `usher validate PATH...`: the checks of admission and of the controllers, offline, for git CI.
//!
//! Per object: the CRD's OpenAPI schema and CEL rules (what the API server rejects). Across
//! objects: references, cycles, duplicate emails and exclusivity, decided by the very functions
//! the controllers use ([`crate::plan`]). Objects without a namespace are taken to share one
//! (kustomize or Flux usually sets it). Files are applied together, so their objects share one
//! creation time, and the tie-break the controllers use (creation time, then name) comes down to
//! the name, as it does in the cluster for objects created in the same second: the verdict never
//! depends on the order of documents or files.
//!
//! Over 500 lines because it is one pipeline (read files, check each object, check across
//! objects, print) whose steps share the problem type; the schema and the hostile-input tests
//! live in their own files.

#[cfg(test)]
mod hostile;
pub mod report;
mod schema;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use serde::Deserialize;
use serde_json::Value;

use crate::crd::{self, BindingPhase, LocationGroup, RoleBinding, SystemUser, Tenant};
use crate::plan::groups::GroupState;
use crate::plan::system_user;
use crate::plan::world::{Namespace, peers};

/// One problem, printed as `file: Kind/name: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file it is in.
    pub file: String,
    /// `Kind/name`, or what stands for it when the document cannot be read.
    pub object: String,
    /// What is wrong.
    pub message: String,
    /// Worth a look, not wrong: the cluster accepts it and nothing fails (a RoleBinding whose
    /// `expiresAt` has passed). Warnings alone leave `usher validate`'s exit status 0.
    pub warning: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let warning = if self.warning { "warning: " } else { "" };
        write!(
            f,
            "{}: {}: {warning}{}",
            self.file, self.object, self.message
        )
    }
}

struct Doc {
    file: String,
    value: Value,
}

/// The YAML files named by `paths` (folders are walked), sorted; unreadable paths are problems.
fn files(paths: &[PathBuf], problems: &mut Vec<Problem>) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>, problems: &mut Vec<Problem>) {
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for e in entries.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p, out, problems);
                    } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                        out.push(p);
                    }
                }
            }
            Err(e) => problems.push(Problem {
                file: dir.display().to_string(),
                object: "-".into(),
                message: format!("cannot read: {e}"),
                warning: false,
            }),
        }
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found, problems);
            found.sort();
            out.extend(found);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            problems.push(Problem {
                file: p.display().to_string(),
                object: "-".into(),
                message: "no such file or folder".into(),
                warning: false,
            });
        }
    }
    out
}

/// The documents of the YAML files under `paths`, each with its file, for tools that read what
/// git declares (`usher import`); what cannot be read or parsed is left out (`usher validate`
/// reports it).
pub(crate) fn documents(paths: &[PathBuf]) -> Vec<(String, Value)> {
    let mut ignored = Vec::new();
    files(paths, &mut ignored)
        .into_iter()
        .filter_map(|f| Some((f.display().to_string(), std::fs::read_to_string(&f).ok()?)))
        .flat_map(|(file, text)| {
            parse(&text)
                .into_iter()
                .filter_map(Result::ok)
                .map(move |v| (file.clone(), v))
        })
        .collect()
}

fn object_name(v: &Value) -> String {
    format!(
        "{}/{}",
        printable(v["kind"].as_str().unwrap_or("?")),
        printable(v["metadata"]["name"].as_str().unwrap_or("?"))
    )
}

/// Text from a manifest as it may appear in a problem line: quoted and cut short when it has
/// control characters (a newline would forge a second problem line) or is very long.
fn printable(text: &str) -> String {
    const SHORT: usize = 64;
    if text.len() <= 253 && !text.chars().any(char::is_control) {
        return text.to_string();
    }
    let head: String = text.chars().take(SHORT).collect();
    let more = if head.len() < text.len() { "…" } else { "" };
    format!("{}{more}", Value::from(head))
}

/// The API server's rule for an object's name: an RFC 1123 subdomain.
fn name_problem(name: &str) -> Option<String> {
    let label = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if name.len() > 253 {
        return Some(format!(
            "metadata.name: Invalid value: {}: must be no more than 253 characters",
            printable(name)
        ));
    }
    (!name.split('.').all(label)).then(|| {
        format!(
            "metadata.name: Invalid value: {}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            Value::from(name)
        )
    })
}

/// The API server's rules for `metadata.labels` and `metadata.annotations` (apimachinery's
/// `ValidateLabels` and `ValidateAnnotations`): keys are qualified names (`name` or
/// `prefix/name`), label values at most 63 characters of the same alphabet or empty, all of
/// them strings.
fn metadata_problems(meta: &Value) -> Vec<String> {
    fn is_name(s: &str) -> bool {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    }
    fn qualified(key: &str) -> bool {
        match key.split_once('/') {
            None => is_name(key),
            Some((prefix, name)) => {
                !prefix.is_empty() && name_problem(prefix).is_none() && is_name(name)
            }
        }
    }
    const KEY: &str = "must be a qualified name: letters, digits, '-', '_' or '.', starting and ending with a letter or digit, at most 63 characters, with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')";
    let mut out = Vec::new();
    for (field, labels) in [("labels", true), ("annotations", false)] {
        match &meta[field] {
            Value::Null => {}
            Value::Object(map) => {
                for (key, value) in map {
                    let checked = if labels {
                        key.clone()
                    } else {
                        key.to_lowercase()
                    };
                    if !qualified(&checked) {
                        out.push(format!(
                            "metadata.{field}: Invalid value: {}: {KEY}",
                            printable(&Value::from(key.as_str()).to_string())
                        ));
                    }
                    match value {
                        Value::String(v) => {
                            if labels && !v.is_empty() && !is_name(v) {
                                out.push(format!(
                                    "metadata.labels: Invalid value: {}: a label value must be empty or at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
                                    printable(&Value::from(v.as_str()).to_string())
                                ));
                            }
                        }
                        other => out.push(format!(
                            "metadata.{field}.{}: Invalid value: {}: must be a string; put it in quotes",
                            printable(key),
                            printable(&other.to_string())
                        )),
                    }
                }
            }
            other => out.push(format!(
                "metadata.{field}: Invalid value: {}: must be a map of strings",
                printable(&other.to_string())
            )),
        }
    }
    out
}

/// Validate the manifests under `paths`; every problem found, in file order.
pub fn validate(paths: &[PathBuf]) -> Vec<Problem> {
    let (sources, mut problems) = read_sources(paths, std::io::empty());
    problems.extend(validate_sources(&sources));
    problems.sort_by(|a, b| a.file.cmp(&b.file));
    problems
}

/// The name stdin goes by in problems (`usher validate -`).
pub const STDIN: &str = "<stdin>";

/// The (file name, contents) of the YAML files under `paths` (folders are walked), and `stdin`'s
/// contents as [`STDIN`] where a path is `-` (`kustomize build | usher validate -`); what cannot
/// be read is a problem.
pub fn read_sources(
    paths: &[PathBuf],
    mut stdin: impl std::io::Read,
) -> (Vec<(String, Vec<u8>)>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut sources = Vec::new();
    let (dash, named): (Vec<PathBuf>, Vec<PathBuf>) =
        paths.iter().cloned().partition(|p| p.as_os_str() == "-");
    for file in files(&named, &mut problems) {
        let shown = file.display().to_string();
        match std::fs::read(&file) {
            Ok(bytes) => sources.push((shown, bytes)),
            Err(e) => problems.push(Problem {
                file: shown,
                object: "-".into(),
                message: format!("cannot read: {e}"),
                warning: false,
            }),
        }
    }
    if !dash.is_empty() {
        let mut bytes = Vec::new();
        match stdin.read_to_end(&mut bytes) {
            Ok(_) => sources.push((STDIN.to_string(), bytes)),
            Err(e) => problems.push(Problem {
                file: STDIN.into(),
                object: "-".into(),
                message: format!("cannot read: {e}"),
                warning: false,
            }),
        }
    }
    (sources, problems)
}

/// Validate manifests given as (file name, contents); every problem found, in file order.
pub fn validate_sources(sources: &[(String, Vec<u8>)]) -> Vec<Problem> {
    let bytes: usize = sources.iter().map(|(_, b)| b.len()).sum();
    validate_within(sources, parse_deadline(bytes))
}

/// How long parsing `bytes` of YAML may take: ten times what the slowest build needs for that
/// much plain YAML (it reads tens of MB a second), far less than the pathological cases take.
fn parse_deadline(bytes: usize) -> Duration {
    Duration::from_secs(10 + (bytes >> 20) as u64)
}

/// What `kubectl apply` applies of one document: the document, or the items of a list (`kind:
/// List` or `SystemUserList` with `items`, what `kubectl get -o yaml` writes), each on its own;
/// nothing for an empty document.
fn applied(value: Value) -> Vec<Value> {
    let is_list = value["kind"].as_str().is_some_and(|k| k.ends_with("List"));
    match value {
        Value::Null => Vec::new(),
        Value::Object(mut map) if is_list && map.get("items").is_some_and(Value::is_array) => {
            match map.remove("items") {
                Some(Value::Array(items)) => items.into_iter().flat_map(applied).collect(),
                _ => Vec::new(),
            }
        }
        other => vec![other],
    }
}

/// The documents of one text (the items of a list each on its own), up to its first YAML error.
fn parse(text: &str) -> Vec<Result<Value, String>> {
    let mut out = Vec::new();
    // A byte-order mark (what Windows editors save) is no part of the YAML: kubectl reads past it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        match Value::deserialize(doc) {
            Ok(value) => out.extend(applied(value).into_iter().map(Ok)),
            Err(e) => {
                out.push(Err(format!("not valid YAML: {e}")));
                break;
            }
        }
    }
    out
}

/// Parse the texts on a thread and wait for it at most until `deadline`. libyaml's scanner is
/// quadratic in the nesting of flow collections (`{a: ` 100,000 times, 400 KB, takes half a
/// minute; 10 MB would take hours), and no scan short of YAML's own can tell real nesting from
/// brackets in strings and comments. On time out the thread is left to finish in the
/// background: `usher validate` exits right after answering.
fn parse_all(
    texts: Vec<(usize, String)>,
    deadline: Duration,
) -> HashMap<usize, Vec<Result<Value, String>>> {
    let texts = std::sync::Arc::new(texts);
    let (tx, rx) = std::sync::mpsc::channel();
    let shared = texts.clone();
    let worker = std::thread::Builder::new()
        .name("yaml".into())
        .spawn(move || {
            for (i, text) in shared.iter() {
                if tx.send((*i, parse(text))).is_err() {
                    return;
                }
            }
        });
    let Ok(worker) = worker else {
        // No thread to be had: parse here, without the deadline.
        return texts.iter().map(|(i, t)| (*i, parse(t))).collect();
    };
    let until = Instant::now() + deadline;
    let mut parsed = HashMap::new();
    while parsed.len() < texts.len() {
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok((i, docs)) => {
                parsed.insert(i, docs);
            }
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => {
                if let Err(panic) = worker.join() {
                    std::panic::resume_unwind(panic);
                }
                break;
            }
        }
    }
    parsed
}

/// [`validate_sources`] with a deadline for parsing.
fn validate_within(sources: &[(String, Vec<u8>)], deadline: Duration) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut texts = Vec::new();
    for (i, (shown, bytes)) in sources.iter().enumerate() {
        match std::str::from_utf8(bytes) {
            Ok(t) => texts.push((i, t.to_string())),
            Err(e) => problems.push(Problem {
                file: shown.clone(),
                object: "-".into(),
                message: format!("not UTF-8 text: invalid byte at offset {}", e.valid_up_to()),
                warning: false,
            }),
        }
    }
    let order: Vec<usize> = texts.iter().map(|(i, _)| *i).collect();
    let mut parsed = parse_all(texts, deadline);
    let mut docs = Vec::new();
    let mut stuck: Option<&str> = None;
    for i in order {
        let file = &sources[i].0;
        let problem = |message: String| Problem {
            file: file.clone(),
            object: "-".into(),
            message,
            warning: false,
        };
        let Some(results) = parsed.remove(&i) else {
            problems.push(problem(match stuck {
                None => format!(
                    "not valid YAML: still parsing after {} s; are flow collections ([ or {{) nested thousands deep?",
                    deadline.as_secs_f64()
                ),
                Some(first) => format!("not checked: parsing stopped at {first}"),
            }));
            stuck.get_or_insert(file);
            continue;
        };
        for result in results {
            match result {
                Ok(value) => docs.push(Doc {
                    file: file.clone(),
                    value,
                }),
                Err(message) => problems.push(problem(message)),
            }
        }
    }

    // Per object: what admission would reject.
    let schemas: HashMap<String, (Value, CompiledSchema)> = crd::all()
        .into_iter()
        .filter_map(|c| {
            let schema = serde_json::to_value(
                c.spec.versions[0]
                    .schema
                    .as_ref()?
                    .open_api_v3_schema
                    .as_ref()?,
            )
            .ok()?;
            let compiled = compile_schema(&schema);
            Some((c.spec.names.kind.clone(), (schema, compiled)))
        })
        .collect();
    let cel = Validator::new();
    let mut admitted: Vec<&Doc> = Vec::new();
    for doc in &docs {
        let v = &doc.value;
        if v["apiVersion"]
            .as_str()
            .is_none_or(|a| !a.starts_with(crd::GROUP))
        {
            continue; // not ours: Namespaces, kustomizations, …
        }
        let report = |message: String| Problem {
            file: doc.file.clone(),
            object: object_name(v),
            message,
            warning: false,
        };
        let kind = v["kind"].as_str().unwrap_or_default();
        if v["apiVersion"] != format!("{}/{}", crd::GROUP, crd::VERSION) {
            problems.push(report(format!(
                "apiVersion {} is not served; use {}/{}",
                v["apiVersion"],
                crd::GROUP,
                crd::VERSION
            )));
            continue;
        }
        let Some((schema, compiled)) = schemas.get(kind) else {
            problems.push(report(format!("unknown kind {kind:?}; usher.dev has Tenant, LocationGroup, SystemUser and RoleBinding")));
            continue;
        };
        let Some(name) = v["metadata"]["name"].as_str().filter(|n| !n.is_empty()) else {
            let name = &v["metadata"]["name"];
            problems.push(report(if name.is_null() || name == "" {
                "metadata.name: Required value".into()
            } else {
                format!(
                    "metadata.name: Invalid value: {}: must be a string; put it in quotes",
                    printable(&name.to_string())
                )
            }));
            continue;
        };
        if let Some(message) = name_problem(name) {
            problems.push(report(message));
            continue;
        }
        let before = problems.len();
        problems.extend(metadata_problems(&v["metadata"]).into_iter().map(report));
        let mut found = Vec::new();
        schema::check(schema, v, "", &mut found);
        problems.extend(
            found
                .into_iter()
                .map(|p| report(format!("{}: {}", p.path, p.message))),
        );
        if problems.len() == before
            && let Err(errors) = cel.validate_compiled(compiled, v, None)
        {
            for e in errors.into_vec() {
                let path = e.field_path.trim_start_matches('.').to_string();
                problems.push(report(if path.is_empty() {
                    e.message
                } else {
                    format!("{path}: {}", e.message)
                }));
            }
        }
        if problems.len() == before {
            admitted.push(doc);
        }
    }

    // Across objects, per namespace: what the controllers would show as not Ready.
    let mut by_ns: BTreeMap<String, Vec<&Doc>> = BTreeMap::new();
    for doc in admitted {
        let ns = doc.value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        by_ns.entry(ns).or_default().push(doc);
    }
    for docs in by_ns.values() {
        check_namespace(docs, &mut problems);
    }
    problems.sort_by(|a, b| a.file.cmp(&b.file));
    problems
}

/// The one creation time of every object read from files (applied together).
fn created() -> Time {
    Time(Timestamp::from_second(1_700_000_000).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The object as the controllers read it, or what the cluster says of one they cannot: the API
/// server admitted it, and usher skips it with a Warning Event `Unreadable` (the words of
/// [`crd::unreadable`]).
fn decode<K: serde::de::DeserializeOwned + kube::Resource>(doc: &Doc) -> Result<K, String> {
    let mut obj: K = serde_path_to_error::deserialize(&doc.value).map_err(|e| {
        let kind = doc.value["kind"].as_str().unwrap_or_default();
        format!(
            "Unreadable: {}",
            crd::unreadable(kind, &format!("{}: {}", e.path(), e.inner()))
        )
    })?;
    obj.meta_mut().creation_timestamp = Some(created());
    Ok(obj)
}

fn check_namespace(docs: &[&Doc], problems: &mut Vec<Problem>) {
    let mut seen: HashMap<(String, String), &Doc> = HashMap::new();
    let mut file_of: HashMap<(String, String), String> = HashMap::new();
    let mut tenants = Vec::new();
    let mut groups_list = Vec::new();
    let mut users = Vec::new();
    let mut bindings_list = Vec::new();
    for doc in docs {
        let key = (
            doc.value["kind"].as_str().unwrap_or_default().to_string(),
            doc.value["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        if let Some(first) = seen.get(&key) {
            problems.push(Problem {
                file: doc.file.clone(),
                object: object_name(&doc.value),
                message: format!("defined twice in this namespace (first in {})", first.file),
                warning: false,
            });
            continue;
        }
        seen.insert(key.clone(), doc);
        file_of.insert(key, doc.file.clone());
        let unreadable = match doc.value["kind"].as_str() {
            Some("Tenant") => decode::<Tenant>(doc).map(|o| tenants.push(o)),
            Some("LocationGroup") => decode::<LocationGroup>(doc).map(|o| groups_list.push(o)),
            Some("SystemUser") => decode::<SystemUser>(doc).map(|o| users.push(o)),
            Some("RoleBinding") => decode::<RoleBinding>(doc).map(|o| bindings_list.push(o)),
            _ => Ok(()),
        };
        if let Err(message) = unreadable {
            problems.push(Problem {
                file: doc.file.clone(),
                object: object_name(&doc.value),
                message,
                warning: false,
            });
        }
    }
    let mut report = |kind: &str, name: &str, message: String, warning: bool| {
        problems.push(Problem {
            file: file_of
                .get(&(kind.to_string(), name.to_string()))
                .cloned()
                .unwrap_or_default(),
            object: format!("{kind}/{name}"),
            message,
            warning,
        });
    };

    let world = Namespace::build(
        &tenants,
        &groups_list,
        &users,
        &bindings_list,
        jiff::Timestamp::now(),
    );
    for (name, (_, state)) in &world.groups {
        if let GroupState::NotReady { reason, message } = state {
            report("LocationGroup", name, format!("{reason}: {message}"), false);
        }
    }

    // Duplicate emails: each user competes only with the users of its address.
    let mut by_email: HashMap<String, Vec<&SystemUser>> = HashMap::new();
    for u in &users {
        by_email
            .entry(u.spec.email.to_lowercase())
            .or_default()
            .push(u);
    }
    let tenant_by_name: HashMap<String, &Tenant> =
        tenants.iter().map(|t| (t.name_any(), t)).collect();
    for u in &users {
        let peers = peers(u, by_email[&u.spec.email.to_lowercase()].iter().copied());
        let tenant = tenant_by_name.get(&u.spec.tenant_ref.name).copied();
        if let Some(blocked) = system_user::blocked(u, tenant, &peers) {
            report(
                "SystemUser",
                &u.name_any(),
                format!("{}: {}", blocked.reason(), blocked.message(&u.spec.email)),
                false,
            );
        }
    }

    for (name, v) in &world.verdicts {
        if v.phase != BindingPhase::Bound {
            // Past its end: the cluster shows it Expired and grants nothing, which is right;
            // only the file is left to clean up.
            report(
                "RoleBinding",
                name,
                format!("{:?} ({}): {}", v.phase, v.reason, v.message),
                v.phase == BindingPhase::Expired,
            );
        }
    }
}

#[cfg(test)]
mod order {
    use super::*;

    /// The objects at fault, as `Kind/name`, whatever the order of documents.
    fn verdict(docs: &[&str]) -> Vec<String> {
        let text = docs.join("---\n");
        let mut found: Vec<String> = validate_sources(&[("all.yaml".into(), text.into_bytes())])
            .into_iter()
            .map(|p| p.object)
            .collect();
        found.sort();
        found
    }

    /// Issue 14, kind 4: the file (zoe and the Technician binding first) and every
    /// other order of its documents give one verdict: the name decides among objects applied
    /// together.
    #[test]
    fn the_order_of_documents_never_changes_the_verdict() {
        let tenant = "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {displayName: Acme}\n";
        let user = |name: &str, email: &str| {
            format!(
                "apiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {{name: {name}}}\nspec: {{tenantRef: {{name: acme}}, email: {email}}}\n"
            )
        };
        let binding = |name: &str, role: &str| {
            format!(
                "apiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {{name: {name}}}\nspec: {{userRef: {{name: rita}}, role: {role}}}\n"
            )
        };
        let docs = [
            tenant.to_string(),
            user("zoe", "shared@acme.example"),
            user("adam", "Shared@acme.example"),
            user("rita", "rita@acme.example"),
            binding("zz-rita-technician", "Technician"),
            binding("aa-rita-manager", "Manager"),
            // A third holder and a third exclusive binding: every pair competes.
            user("mia", "SHARED@acme.example"),
            binding("mm-rita-technician", "Technician"),
        ];
        let expected = [
            "RoleBinding/mm-rita-technician",
            "RoleBinding/zz-rita-technician",
            "SystemUser/mia",
            "SystemUser/zoe",
        ];
        // Every rotation, and each rotation reversed.
        for shift in 0..docs.len() {
            let mut order: Vec<&str> = docs.iter().map(String::as_str).collect();
            order.rotate_left(shift);
            assert_eq!(verdict(&order), expected, "rotated by {shift}");
            order.reverse();
            assert_eq!(verdict(&order), expected, "rotated by {shift}, reversed");
        }
    }
}

#[cfg(test)]
mod addresses {
    use super::*;

    /// What `usher validate` says of one file holding `text`.
    fn messages(text: String) -> Vec<String> {
        validate_sources(&[("p.yaml".into(), text.into_bytes())])
            .into_iter()
            .map(|p| p.message)
            .collect()
    }

    fn problems(email: &str) -> Vec<String> {
        messages(format!(
            "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: acme}}\nspec: {{displayName: Acme}}\n---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {{name: p}}\nspec: {{tenantRef: {{name: acme}}, email: {}}}\n",
            serde_json::to_string(email).unwrap()
        ))
    }

    /// Issue 14, kind 5: what admission (the CRD's CEL rule, run here as the API server runs
    /// it) lets through, the mailer can address, or else it is EmailUndeliverable; real
    /// addresses, international ones included, pass both.
    #[test]
    fn admission_and_the_mailer_agree_on_addresses() {
        for good in crate::plan::system_user::examples::REAL_ADDRESSES
            .iter()
            .copied()
        {
            assert_eq!(problems(good), Vec::<String>::new(), "{good}");
            assert!(good.parse::<lettre::Address>().is_ok(), "{good}");
        }
        // Refused at admission, naming the field.
        let malformed = crate::plan::system_user::examples::MALFORMED_ADDRESSES;
        for bad in malformed.iter().copied().chain([
            "x@acme-.example",
            "x@acme",
            "\"quoted\"@acme.example",
            "x@[127.0.0.1]",
        ]) {
            let found = problems(bad);
            assert!(
                found
                    .iter()
                    .any(|m| m.starts_with("spec.email: must be an email address")),
                "{bad}: {found:?}"
            );
        }
        // Admitted, but no mail can carry them: refused after admission, in words.
        let long_local = format!("{}@acme.example", "a".repeat(65));
        let long_label = format!("ana@{}.example", "d".repeat(64));
        for bad in [long_local.as_str(), long_label.as_str()] {
            let found = problems(bad);
            assert!(
                found.iter().any(|m| m.starts_with("EmailUndeliverable")),
                "{bad}: {found:?}"
            );
        }
    }

    fn from_problems(from: &str) -> Vec<String> {
        messages(format!(
            "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: acme}}\nspec: {{displayName: Acme, invitations: {{from: {}}}}}\n",
            serde_json::to_string(from).unwrap()
        ))
    }

    /// Kind 5 for the other address a manifest gives the mailer: the Tenant's From header. What
    /// admission lets through, the mailer can parse; before, `Acme <no-reply@acme.example.>`
    /// was admitted and every invitation of the tenant failed, retried for ever.
    #[test]
    fn admission_and_the_mailer_agree_on_the_from_header() {
        for address in crate::plan::system_user::examples::REAL_ADDRESSES {
            for good in [
                address.to_string(),
                format!("Acme Portal <{address}>"),
                format!("Müller & Söhne GmbH <{address}>"),
                format!("<{address}>"),
                format!("\"Acme, Inc.\" <{address}>"),
            ] {
                assert_eq!(from_problems(&good), Vec::<String>::new(), "{good}");
                assert!(
                    good.parse::<lettre::message::Mailbox>().is_ok(),
                    "{good}: admitted, and the mailer cannot parse it"
                );
            }
        }
        for address in crate::plan::system_user::examples::MALFORMED_ADDRESSES {
            for bad in [address.to_string(), format!("Acme <{address}>")] {
                let found = from_problems(&bad);
                assert!(
                    found
                        .iter()
                        .any(|m| m.starts_with("spec.invitations.from: must be an address")),
                    "{bad}: {found:?}"
                );
            }
        }
        for bad in [
            "Acme <no-reply@acme.example",
            "Acme no-reply@acme.example>",
            "Acme\r\nBcc: x@evil.example <no-reply@acme.example>",
            "<no-reply@acme.example> <x@evil.example>",
        ] {
            assert!(!from_problems(bad).is_empty(), "{bad} admitted");
        }
        // Whatever the rule admits as a display name, the mailer parses: each of the specials
        // and their neighbours alone, first, inside a word, quoted and escaped in quotes.
        let alphabet: Vec<char> = " \t!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~aZ0éß日"
            .chars()
            .collect();
        let mut names: Vec<String> = Vec::new();
        for a in &alphabet {
            names.push(a.to_string());
            names.push(format!("{a}Acme"));
            names.push(format!("Acme{a}x"));
            names.push(format!("\"{a}\""));
            names.push(format!("\"\\{a}\""));
        }
        for name in &names {
            let from = format!("{name} <no-reply@acme.example>");
            if from_problems(&from).is_empty() {
                assert!(
                    from.parse::<lettre::message::Mailbox>().is_ok(),
                    "{from:?}: admitted, and the mailer cannot parse it"
                );
            }
        }
        for good in [
            "\"Acme, Inc.\"",
            "\"Acme (Support)\"",
            "\"Acme \\\" x\"",
            "Acme Inc.",
            "O'Brien & Söhne",
            "日本",
        ] {
            let from = format!("{good} <no-reply@acme.example>");
            assert_eq!(from_problems(&from), Vec::<String>::new(), "{from}");
        }
        for bad in [
            "Acme, Inc.",
            "Acme (Support)",
            "Acme [x]",
            ".Acme",
            "Acme@x",
            "\"Acme",
        ] {
            let from = format!("{bad} <no-reply@acme.example>");
            assert!(!from_problems(&from).is_empty(), "{from} admitted");
        }
    }
}

#[cfg(test)]
mod parity {
    //! Inputs on which `usher validate` and the API server (kube-openapi's validators, the
    //! apiextensions strategy, kubectl's list flattening) or usher's controllers must agree.
    use super::*;

    const TENANT: &str = "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {displayName: Acme}\n";
    const USER: &str = "apiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: bob}\nspec: {tenantRef: {name: acme}, email: bob@acme.example}\n";

    fn messages(text: &str) -> Vec<String> {
        validate_sources(&[("all.yaml".into(), text.as_bytes().to_vec())])
            .into_iter()
            .map(|p| format!("{}: {}", p.object, p.message))
            .collect()
    }

    fn binding_until(at: &str) -> Vec<String> {
        messages(&format!(
            "{TENANT}---\n{USER}---\napiVersion: usher.dev/v1alpha1\nkind: RoleBinding\nmetadata: {{name: bob-m}}\nspec: {{userRef: {{name: bob}}, role: Manager, expiresAt: {}}}\n",
            serde_json::to_string(at).unwrap()
        ))
    }

    /// kube-openapi counts a string's length in characters (runes), not bytes: a name of 70
    /// accented letters (140 bytes) fits `maxLength: 100`.
    #[test]
    fn lengths_are_counted_in_characters_as_the_api_server_does() {
        let user = |first: &str| {
            messages(&format!(
                "{TENANT}---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {{name: ana}}\nspec: {{tenantRef: {{name: acme}}, email: ana@acme.example, firstName: {first}}}\n"
            ))
        };
        assert_eq!(user(&"é".repeat(70)), Vec::<String>::new());
        assert_eq!(user(&"字".repeat(100)), Vec::<String>::new());
        let too_long = user(&"é".repeat(101));
        assert!(
            too_long
                .iter()
                .any(|m| m.contains("spec.firstName: Too long")),
            "{too_long:?}"
        );
    }

    /// `format: date-time` is checked by the API server (kube-openapi's `IsDateTime`): what it
    /// refuses, `usher validate` refuses, naming the field.
    #[test]
    fn expires_at_is_refused_where_the_api_server_refuses_it() {
        for bad in [
            "tomorrow",
            "2027-03-31",
            "2027-03-31 23:59:59Z",
            "2027-03-31T23:59:60Z",
            "2027-03-31T24:00:00Z",
            "2027-02-30T10:00:00Z",
            "2027-03-31T23:59:59",
            "2027-03-31T23:59Z",
            "2027-03-31T23:59:59+0100",
            "2027-03-31T23:59:59+01:00[Europe/Paris]",
            "20270331T235959Z",
            "",
        ] {
            let found = binding_until(bad);
            assert!(
                found
                    .iter()
                    .any(|m| m.contains("spec.expiresAt") && m.contains("date-time")),
                "{bad:?}: {found:?}"
            );
        }
        for good in [
            "2027-03-31T23:59:59Z",
            "2027-03-31t23:59:59z",
            "2027-03-31T23:59:59.5+02:00",
            "2027-03-31T23:59:59.123456789-05:30",
        ] {
            assert_eq!(binding_until(good), Vec::<String>::new(), "{good:?}");
        }
    }

    /// What the API server admits but usher's controllers cannot read is, in the cluster, a
    /// Warning Event `Unreadable` and an object usher skips; `usher validate` must not call it
    /// clean.
    #[test]
    fn what_the_controllers_cannot_read_is_a_problem() {
        for unreadable in [
            "2027-03-31T23:59:59.1234567890Z",
            "2027-03-31T23:59:59+99:00",
            "2027-03-31T23:59:59ZTnoon",
            "9999-12-31T23:59:59Z",
        ] {
            let found = binding_until(unreadable);
            assert!(
                found
                    .iter()
                    .any(|m| m.starts_with("RoleBinding/bob-m: ") && m.contains("expiresAt")),
                "{unreadable:?}: {found:?}"
            );
        }
    }

    /// Label and annotation keys and values the API server refuses are refused here too.
    #[test]
    fn labels_and_annotations_are_checked_as_the_api_server_does() {
        let with = |meta: &str| {
            messages(&format!(
                "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: acme, {meta}}}\nspec: {{displayName: Acme}}\n"
            ))
        };
        for good in [
            "labels: {sharding.fluxcd.io/key: shard1, app: '', a_b.c-d: X.y_z}",
            "annotations: {example.com/Note: 'any text at all: ok', kustomize.config.k8s.io/id: \"1\"}",
        ] {
            assert_eq!(with(good), Vec::<String>::new(), "{good}");
        }
        for bad in [
            "labels: {'bad key!': v}",
            "labels: {team: 'two words'}",
            "labels: {team: -x}",
            "labels: {shard: 1}",
            "labels: {'Example.com/x': v}",
            "labels: {'/x': v}",
            "annotations: {'a b': v}",
            "annotations: {n: 12}",
        ] {
            let found = with(bad);
            assert!(
                found
                    .iter()
                    .any(|m| m.starts_with("Tenant/acme: metadata.")),
                "{bad}: {found:?}"
            );
        }
    }

    /// A UTF-8 byte-order mark before the first document is read past, as kubectl does.
    #[test]
    fn a_byte_order_mark_is_no_part_of_the_yaml() {
        assert_eq!(messages(&format!("\u{feff}{TENANT}")), Vec::<String>::new());
    }

    /// A name YAML reads as a number is named as such, not as missing.
    #[test]
    fn a_name_that_is_not_a_string_is_said_to_be_one() {
        let found = messages(
            "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: 123}\nspec: {displayName: Acme}\n",
        );
        assert!(
            found
                .iter()
                .any(|m| m.contains("metadata.name: Invalid value: 123: must be a string")),
            "{found:?}"
        );
    }

    /// `kubectl apply -f` applies each item of a List (what `kubectl get -o yaml` writes), so
    /// `usher validate` checks them too.
    #[test]
    fn the_items_of_a_list_are_checked() {
        let item = |text: &str| {
            text.lines()
                .enumerate()
                .map(|(i, l)| format!("{}{l}\n", if i == 0 { "- " } else { "  " }))
                .collect::<String>()
        };
        let bad_user = "apiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: ana}\nspec: {tenantRef: {name: acme}, email: not-an-address}\n";
        for kind in ["List", "SystemUserList"] {
            let api = if kind == "List" {
                "v1"
            } else {
                "usher.dev/v1alpha1"
            };
            let text = format!(
                "apiVersion: {api}\nkind: {kind}\nitems:\n{}{}",
                item(TENANT),
                item(bad_user)
            );
            let found = messages(&text);
            assert!(
                found
                    .iter()
                    .any(|m| m.starts_with("SystemUser/ana: spec.email")),
                "{kind}: {found:?}"
            );
        }
    }
}
