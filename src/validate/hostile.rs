//! Hostile and broken manifests: `usher validate` answers every one with problems that name the
//! file (and the object, when there is one), one line each, and never panics or hangs.
//!
//! Over 500 lines because it is a corpus: one short test per kind of hostile input.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use serde_json::{Value, json};

use super::*;

/// Proptest settings for this module: few enough cases that the unit suite stays quick, and no
/// regression files written into the source tree (a failure prints its minimal input).
fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// The YAML of examples/, one source per file, as a folder given to `usher validate` reads it.
fn examples() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    // The files of examples/ itself: products/ holds other tenants, each for its own namespace.
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// One source named `input.yaml`.
fn one(bytes: impl Into<Vec<u8>>) -> Vec<(String, Vec<u8>)> {
    vec![("input.yaml".to_string(), bytes.into())]
}

/// Every problem names a file it was given and something in it, on one line (the output is
/// one `file: Kind/name: problem` line per problem, and CI greps it).
fn well_formed(problems: &[Problem], sources: &[(String, Vec<u8>)]) -> Result<(), String> {
    for p in problems {
        if !sources.iter().any(|(f, _)| *f == p.file) {
            return Err(format!("names no given file: {p:?}"));
        }
        if p.object.is_empty() || p.message.trim().is_empty() {
            return Err(format!("says nothing: {p:?}"));
        }
        let line = p.to_string();
        if line.contains(['\n', '\r']) {
            return Err(format!("more than one line: {line:?}"));
        }
    }
    Ok(())
}

/// Validate, failing the test case on a malformed answer.
fn check(sources: &[(String, Vec<u8>)]) -> Result<Vec<Problem>, TestCaseError> {
    let problems = validate_sources(sources);
    well_formed(&problems, sources).map_err(TestCaseError::fail)?;
    Ok(problems)
}

/// Pieces that YAML parsers trip over, so random text reaches deep into the grammar.
fn yamlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("apiVersion: usher.dev/v1alpha1\n".to_string()),
        Just("kind: SystemUser\n".to_string()),
        Just("kind: Tenant\n".to_string()),
        Just("metadata: {name: a}\n".to_string()),
        Just("spec:\n".to_string()),
        Just("  email: a@b.example\n".to_string()),
        Just("---\n".to_string()),
        Just("...\n".to_string()),
        Just("- ".to_string()),
        Just(": ".to_string()),
        Just("? ".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just(", ".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("!!binary ".to_string()),
        Just("!<tag:yaml.org,2002:str> ".to_string()),
        Just("%YAML 1.2\n".to_string()),
        Just("|\n".to_string()),
        Just(">-\n".to_string()),
        Just("\"\\u0000\\x85\"".to_string()),
        Just("'".to_string()),
        Just("\t".to_string()),
        Just("\n  ".to_string()),
        Just("\u{feff}".to_string()),
        Just("\0".to_string()),
        Just("\r".to_string()),
        Just("1e999".to_string()),
        Just("-0x1F".to_string()),
        Just("18446744073709551616".to_string()),
        ".{0,12}",
    ];
    prop::collection::vec(piece, 0..48).prop_map(|v| v.concat())
}

/// A change to the bytes of a file.
#[derive(Clone, Debug)]
enum Edit {
    Delete(Index, usize),
    Insert(Index, Vec<u8>),
    Replace(Index, u8),
    Duplicate(Index, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let insert = prop_oneof![
        prop::collection::vec(any::<u8>(), 1..8),
        prop::sample::select(vec![
            "\n",
            ":",
            ": ",
            "- ",
            "{",
            "}",
            "[",
            "]",
            "\"",
            "'",
            "#",
            "&x ",
            "*x",
            "\t",
            "---\n",
            "null",
            "~",
            "true",
            "-1",
            "99999999999999999999",
            "\u{85}",
            "\u{2028}",
            "\0",
            "\"\\n\"",
            "<script>",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
    ];
    prop_oneof![
        (any::<Index>(), 1usize..16).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<Index>(), insert).prop_map(|(at, b)| Edit::Insert(at, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Edit::Replace(at, b)),
        (any::<Index>(), 1usize..64).prop_map(|(at, n)| Edit::Duplicate(at, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    if bytes.is_empty() {
        if let Edit::Insert(_, b) = edit {
            bytes.extend_from_slice(b);
        }
        return;
    }
    match edit {
        Edit::Delete(at, n) => {
            let at = at.index(bytes.len());
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
        }
        Edit::Insert(at, b) => {
            let at = at.index(bytes.len() + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Edit::Replace(at, b) => {
            let at = at.index(bytes.len());
            bytes[at] = *b;
        }
        Edit::Duplicate(at, n) => {
            let at = at.index(bytes.len());
            let end = (at + n).min(bytes.len());
            let copy = bytes[at..end].to_vec();
            bytes.splice(at..at, copy);
        }
    }
}

/// Every change below `spec` whose verdict the schema decides, as (path, what to put there or
/// Null to delete, the start of the problem admission must report): a wrong type, an unknown
/// field, a required field left out.
fn plantable(schema: &Value, value: &Value, path: &str, out: &mut Vec<(String, Value, String)>) {
    let shown = path.trim_start_matches('.');
    if let Some(expected) = schema.get("type").and_then(Value::as_str)
        && !shown.is_empty()
    {
        let wrong = match expected {
            "string" => json!(true),
            "object" | "array" => json!("x"),
            _ => json!({"x": 1}),
        };
        let actual = match expected {
            "string" => "boolean",
            "object" | "array" => "string",
            _ => "object",
        };
        out.push((
            shown.to_string(),
            wrong,
            format!("{shown}: Invalid value: {actual}: must be of type {expected}"),
        ));
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            if props.is_some() && !schema::open(schema) {
                let here = format!("{path}.zzUnknown")
                    .trim_start_matches('.')
                    .to_string();
                out.push((
                    here.clone(),
                    json!(1),
                    format!("{here}: unknown field \"{here}\""),
                ));
            }
            for req in schema::required(schema) {
                if map.contains_key(req) {
                    let here = format!("{path}.{req}").trim_start_matches('.').to_string();
                    out.push((here.clone(), Value::Null, format!("{here}: Required value")));
                }
            }
            for (key, child) in map {
                if path.is_empty() && key != "spec" {
                    continue; // the envelope is the API server's; status is not in git
                }
                if let Some(child_schema) = props.and_then(|p| p.get(key)) {
                    plantable(child_schema, child, &format!("{path}.{key}"), out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    plantable(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Set (or, with Null, remove) the field at a `a.b[0].c` path.
fn set_path(doc: &mut Value, path: &str, new: Value) {
    let mut steps: Vec<String> = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            steps.push(rest[..open].to_string());
            rest = &rest[open..];
            while let Some(close) = rest.find(']') {
                steps.push(rest[..=close].to_string());
                rest = &rest[close + 1..];
            }
        } else {
            steps.push(rest.to_string());
        }
    }
    let (last, parents) = steps.split_last().unwrap();
    let mut node = doc;
    for step in parents {
        node = match step.strip_prefix('[') {
            Some(i) => &mut node[i.trim_end_matches(']').parse::<usize>().unwrap()],
            None => &mut node[step.as_str()],
        };
    }
    match last.strip_prefix('[') {
        Some(i) => node[i.trim_end_matches(']').parse::<usize>().unwrap()] = new,
        None if new.is_null() => {
            node.as_object_mut().unwrap().remove(last.as_str());
        }
        None => node[last.as_str()] = new,
    }
}

fn schemas() -> HashMap<String, Value> {
    crd::all()
        .into_iter()
        .map(|c| {
            let schema = c.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .map(|s| serde_json::to_value(s).unwrap())
                .unwrap();
            (c.spec.names.kind.clone(), schema)
        })
        .collect()
}

/// The examples as (file, documents).
fn example_docs() -> Vec<(String, Vec<Value>)> {
    examples()
        .into_iter()
        .map(|(file, bytes)| {
            let text = String::from_utf8(bytes).unwrap();
            let docs = serde_yaml_ng::Deserializer::from_str(&text)
                .map(|d| Value::deserialize(d).unwrap())
                .filter(|v| !v.is_null())
                .collect();
            (file, docs)
        })
        .collect()
}

fn to_sources(files: &[(String, Vec<Value>)]) -> Vec<(String, Vec<u8>)> {
    files
        .iter()
        .map(|(file, docs)| {
            let text: Vec<String> = docs
                .iter()
                .map(|d| serde_yaml_ng::to_string(d).unwrap())
                .collect();
            (file.clone(), text.join("---\n").into_bytes())
        })
        .collect()
}

#[test]
fn the_examples_are_clean_and_survive_a_round_trip() {
    // The baseline the mutations below start from: any problem they find is theirs.
    assert_eq!(validate_sources(&examples()), []);
    assert_eq!(validate_sources(&to_sources(&example_docs())), []);
}

// Each case validates the examples in full (about 10 ms in a debug build), so the counts are
// kept to what runs in a few seconds.
proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        check(&one(text))?;
    }

    #[test]
    fn yaml_shaped_garbage_never_panics(text in yamlish()) {
        check(&one(text))?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_bad_utf8_is_named(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        let problems = check(&one(bytes.clone()))?;
        if std::str::from_utf8(&bytes).is_err() {
            prop_assert_eq!(problems.len(), 1, "{:?}", problems);
            prop_assert!(problems[0].message.starts_with("not UTF-8 text"), "{}", problems[0]);
        }
    }

    #[test]
    fn mutated_examples_never_panic(
        file in any::<Index>(),
        edits in prop::collection::vec(edit(), 1..8),
    ) {
        let mut sources = examples();
        let i = file.index(sources.len());
        for e in &edits {
            apply(&mut sources[i].1, e);
        }
        check(&sources)?;
    }

}

proptest! {
    #![proptest_config(config(64))]

    /// A known-bad change to one field of one example: the problem names file, object and field.
    #[test]
    fn a_planted_field_error_is_named(doc in any::<Index>(), change in any::<Index>()) {
        let schemas = schemas();
        let mut files = example_docs();
        let ours: Vec<(usize, usize)> = files
            .iter()
            .enumerate()
            .flat_map(|(f, (_, docs))| {
                docs.iter()
                    .enumerate()
                    .filter(|(_, d)| schemas.contains_key(d["kind"].as_str().unwrap_or_default()))
                    .map(move |(d, _)| (f, d))
            })
            .collect();
        let (f, d) = ours[doc.index(ours.len())];
        let target = &files[f].1[d];
        let mut changes = Vec::new();
        plantable(&schemas[target["kind"].as_str().unwrap()], target, "", &mut changes);
        let (path, new, expect) = changes[change.index(changes.len())].clone();
        let mut doc = target.clone();
        set_path(&mut doc, &path, new);
        let object = object_name(&doc);
        files[f].1[d] = doc;
        let sources = to_sources(&files);
        let problems = check(&sources)?;
        prop_assert!(
            problems.iter().any(|p| p.file == files[f].0
                && p.object == object
                && p.message.starts_with(&expect)),
            "expected {}: {}: {}…, got {:#?}", files[f].0, object, expect, problems
        );
    }

    /// A reference to something that is not there: the referring object is named.
    #[test]
    fn a_dangling_reference_is_named(doc in any::<Index>(), name in "[a-z][a-z0-9-]{0,20}[a-z0-9]") {
        let mut files = example_docs();
        const REFS: [&str; 4] = [
            "/spec/tenantRef/name",
            "/spec/parentRef/name",
            "/spec/userRef/name",
            "/spec/scope/locationGroup",
        ];
        let with_ref: Vec<(usize, usize, &str)> = files
            .iter()
            .enumerate()
            .flat_map(|(f, (_, docs))| {
                docs.iter().enumerate().flat_map(move |(d, v)| {
                    REFS.iter()
                        .filter(|r| v.pointer(r).is_some())
                        .map(move |r| (f, d, *r))
                })
            })
            .collect();
        let (f, d, pointer) = with_ref[doc.index(with_ref.len())];
        let missing = format!("missing-{name}");
        *files[f].1[d].pointer_mut(pointer).unwrap() = json!(missing);
        let object = object_name(&files[f].1[d]);
        let problems = check(&to_sources(&files))?;
        prop_assert!(
            problems.iter().any(|p| p.file == files[f].0 && p.object == object),
            "nothing said about {} after {} := {}: {:#?}", object, pointer, missing, problems
        );
    }
}

/// Each hostile input must be answered within this time (they are all refused early).
const PROMPT: Duration = Duration::from_secs(20);

fn answered(name: &str, sources: &[(String, Vec<u8>)]) -> Vec<Problem> {
    let started = Instant::now();
    let problems = validate_sources(sources);
    let took = started.elapsed();
    well_formed(&problems, sources).unwrap();
    assert!(took < PROMPT, "{name} took {took:?}");
    assert!(!problems.is_empty(), "{name}: no problem reported");
    problems
}

fn mentions(problems: &[Problem], what: &str) -> bool {
    problems.iter().any(|p| p.to_string().contains(what))
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    for (name, text) in [
        ("100,000 [", "[".repeat(100_000)),
        (
            "100,000 [ closed",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        ),
        ("100,000 {", "{".repeat(100_000)),
        ("100,000 - ", "- ".repeat(100_000)),
        (
            "nesting in a spec",
            format!(
                "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: a}}\nspec: {{displayName: {}{}}}\n",
                "[".repeat(10_000),
                "]".repeat(10_000)
            ),
        ),
    ] {
        let problems = answered(name, &one(text));
        assert!(
            mentions(&problems, "not valid YAML"),
            "{name}: {problems:#?}"
        );
    }
}

/// `{a: ` nested 100,000 deep kept libyaml busy for half a minute, and the time grows with the
/// square of the depth; the parse now has a deadline. (A short one here: the abandoned parse
/// goes on in the background, so the input is kept small enough to finish within a second.)
#[test]
fn quadratic_nesting_is_given_up_on_at_the_deadline() {
    let nested = "{a: ".repeat(20_000).into_bytes();
    let sources = vec![
        ("a.yaml".to_string(), b"kind: ConfigMap\n".to_vec()),
        ("b.yaml".to_string(), nested),
        ("c.yaml".to_string(), b"kind: ConfigMap\n".to_vec()),
    ];
    let started = Instant::now();
    let problems = validate_within(&sources, Duration::from_millis(50));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    well_formed(&problems, &sources).unwrap();
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "b.yaml: -: not valid YAML: still parsing after 0.05 s; are flow collections ([ or {) nested thousands deep?",
            "c.yaml: -: not checked: parsing stopped at b.yaml",
        ]
    );
    // The deadline `usher validate` uses leaves plain YAML of any size ample time.
    assert_eq!(parse_deadline(0), Duration::from_secs(10));
    assert_eq!(parse_deadline(100 << 20), Duration::from_secs(110));
}

#[test]
fn an_alias_bomb_is_refused() {
    // Billion laughs: nine levels of nine aliases each, 9^9 strings if expanded.
    let mut text = String::from(
        "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: a}\nspec:\n  displayName: x\n  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..10 {
        let p = i - 1;
        text.push_str(&format!(
            "  l{i}: &l{i} [*l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}]\n"
        ));
    }
    let problems = answered("billion laughs", &one(text));
    assert!(
        mentions(&problems, "not valid YAML: repetition limit exceeded"),
        "{problems:#?}"
    );
}

#[test]
fn ten_megabyte_documents_are_answered_promptly() {
    let big = "x".repeat(10 << 20);
    let comment = format!(
        "apiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {{name: a}}\nspec:\n  tenantRef: {{name: t}}\n  email: a@b.example\n  comments: {big}\n"
    );
    let problems = answered("10 MB comment", &one(comment));
    assert!(
        mentions(&problems, "SystemUser/a: spec.comments: Too long"),
        "{problems:#?}"
    );

    // About 10 MB of locations, far past maxItems, each id distinct.
    let mut group = String::from(
        "apiVersion: usher.dev/v1alpha1\nkind: LocationGroup\nmetadata: {name: g}\nspec:\n  tenantRef: {name: t}\n  displayName: G\n  locations:\n",
    );
    let mut i = 0;
    while group.len() < 10 << 20 {
        group.push_str(&format!("  - {{id: loc-{i}, name: Location {i}}}\n"));
        i += 1;
    }
    let problems = answered("10 MB list", &one(group));
    assert!(
        mentions(&problems, "LocationGroup/g: spec.locations: Too many"),
        "{problems:#?}"
    );

    // A 10 MB key is no better.
    let problems = answered("10 MB key", &one(format!("{big}: 1\n")));
    assert!(!mentions(&problems, &big[..1000]), "the key is echoed");
}

#[test]
fn nul_bytes_are_refused() {
    let raw = b"apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: a\0b}\nspec: {displayName: A}\n";
    let problems = answered("raw NUL", &one(raw.to_vec()));
    assert!(mentions(&problems, "not valid YAML"), "{problems:#?}");

    // Escaped in a double-quoted scalar, YAML yields the NUL character itself.
    let escaped = "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: \"a\\0b\\nBcc: x\"}\nspec: {displayName: \"A\\0\"}\n";
    let problems = answered("escaped NUL", &one(escaped));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].to_string().starts_with(
            r#"input.yaml: Tenant/"a\u0000b\nBcc: x": metadata.name: Invalid value: "a\u0000b\nBcc: x": a lowercase RFC 1123 subdomain"#
        ),
        "{}",
        problems[0]
    );
}
