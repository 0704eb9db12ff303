//! `usher import people.csv --tenant T -n NS [--role R] [--group G] --out DIR`: a list of people
//! (a spreadsheet export) becomes the manifests to commit — one file per person, a SystemUser and,
//! with `--role`, its RoleBinding.
//!
//! Real exports are messy, so the reader (the `csv` crate) takes a UTF-8 byte-order mark, or
//! Windows-1252 text (`encoding_rs`), `,` `;` or tab separators (whichever the header line uses
//! most), quoted fields, blank lines and columns in any order, named as people name them
//! ("E-mail", "Last name", "ZIP", …).
//!
//! Each row is checked as `usher validate` checks a manifest (the same function, on the manifest
//! the row would become, beside the tenant found in DIR), and a bad row is refused with its line
//! number and that reason. Names are stable (from the address), so a re-run writes the same
//! files; a person already declared under DIR (same tenant and address, any case) is reported and
//! skipped, never written twice.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// What to import, and where.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The Tenant the people belong to.
    pub tenant: String,
    /// Their namespace, written into each manifest unless the Tenant's file in DIR has none (then
    /// kustomize or Flux sets it for the folder, and the people's files leave it out too).
    pub namespace: String,
    /// A role to bind each person to, tenant-wide or on `group`.
    pub role: Option<String>,
    /// The LocationGroup the role applies on (needs `role`).
    pub group: Option<String>,
    /// The folder the manifests go to (created if missing); it is also searched for the Tenant
    /// and for people already declared.
    pub out: PathBuf,
}

/// What an import did, row by row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Files written: (line, file).
    pub written: Vec<(usize, String)>,
    /// People already declared: (line, why).
    pub skipped: Vec<(usize, String)>,
    /// Rows refused: (line, why).
    pub refused: Vec<(usize, String)>,
    /// Said once, about the whole import (no Tenant found in DIR, say).
    pub notes: Vec<String>,
}

/// What stops an import as a whole (a bad row only refuses that row).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The CSV cannot be read at all.
    #[error("{file}: {reason}")]
    Csv {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A manifest cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Where.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The spec field a column holds, from the names spreadsheets give them.
fn field_of(header: &str) -> Option<&'static str> {
    let key: String = header
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect();
    Some(match key.as_str() {
        "email" | "emailaddress" | "mail" => "email",
        "firstname" | "givenname" | "forename" | "first" => "firstName",
        "lastname" | "surname" | "familyname" | "last" => "lastName",
        "phone" | "phonenumber" | "telephone" | "tel" | "mobile" => "phone",
        "company" | "organisation" | "organization" | "employer" => "company",
        "accountingid" | "accountid" | "customernumber" => "accountingId",
        "street" | "address" | "streetaddress" => "street",
        "city" | "town" => "city",
        "region" | "state" | "province" => "region",
        "postalcode" | "postcode" | "zip" | "zipcode" => "postalCode",
        "country" => "country",
        "comments" | "comment" | "notes" => "comments",
        _ => return None,
    })
}

/// The separator the header line uses most: `,`, `;` or a tab.
fn separator(text: &str) -> u8 {
    let header = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    [b',', b';', b'\t']
        .into_iter()
        .max_by_key(|s| header.bytes().filter(|b| b == s).count())
        .unwrap_or(b',')
}

/// `text` as a DNS label's worth: lowercase ASCII letters and digits, any run of anything else
/// one `-`, none at either end, at most 40 characters (a name has room for a suffix).
fn label(text: &str) -> String {
    let mut slug = String::new();
    for c in text.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.truncate(40);
    slug.trim_end_matches('-').to_string()
}

/// A stable object name for an address: its local part as a DNS label, and 6 hex characters of
/// the address's SHA-256 so that two addresses never share a name.
pub fn name_for(email: &str) -> String {
    let email = email.trim().to_lowercase();
    let local = label(email.split('@').next().unwrap_or_default());
    let hash = hex::encode(Sha256::digest(email.as_bytes()));
    if local.is_empty() {
        format!("person-{}", &hash[..6])
    } else {
        format!("{local}-{}", &hash[..6])
    }
}

/// The line a record's text starts on. The reader reports where it began reading the record,
/// which is before any blank lines it skipped on the way.
fn content_line(text: &str, mut byte: usize, mut line: usize) -> usize {
    while let Some(rest) = text.get(byte..) {
        let end = rest.find('\n').map_or(rest.len(), |i| i + 1);
        if !rest[..end].trim().is_empty() || end == 0 {
            break;
        }
        byte += end;
        line += 1;
    }
    line
}

/// One parsed row: its line and its spec fields.
struct Row {
    line: usize,
    fields: HashMap<&'static str, String>,
}

/// Read the rows of a CSV export. Errors: no header with an email column, or an unreadable file.
fn rows(file: &str, bytes: &[u8]) -> Result<Vec<Row>, ImportError> {
    // Spreadsheets in Western locales still save "CSV" as Windows-1252: what is not UTF-8 is
    // read as that (the WHATWG decoder), rather than turned into replacement characters.
    // A byte-order mark says UTF-8 whatever follows (a stray byte is then replaced, not the
    // whole file misread).
    let text = match (
        bytes.strip_prefix(b"\xEF\xBB\xBF"),
        std::str::from_utf8(bytes),
    ) {
        (Some(rest), _) => String::from_utf8_lossy(rest),
        (None, Ok(text)) => std::borrow::Cow::Borrowed(text),
        (None, Err(_)) => encoding_rs::WINDOWS_1252.decode(bytes).0,
    };
    let text: &str = &text;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(separator(text))
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let csv_error = |e: csv::Error| ImportError::Csv {
        file: file.into(),
        reason: e.to_string(),
    };
    let columns: Vec<Option<&'static str>> = reader
        .headers()
        .map_err(csv_error)?
        .iter()
        .map(field_of)
        .collect();
    if !columns.contains(&Some("email")) {
        return Err(ImportError::Csv {
            file: file.into(),
            reason: "no email column in the header line (one named email, e-mail or mail)".into(),
        });
    }
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(csv_error)?;
        let line = record.position().map_or(0, |p| {
            content_line(text, p.byte() as usize, p.line() as usize)
        });
        let fields: HashMap<&'static str, String> = columns
            .iter()
            .zip(record.iter())
            .filter_map(|(c, v)| Some((c.as_ref().copied()?, v.to_string())))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        if !fields.is_empty() {
            out.push(Row { line, fields });
        }
    }
    Ok(out)
}

/// The manifests of one row: its SystemUser and, with a role, its RoleBinding.
fn manifests(row: &Row, name: &str, opts: &ImportOptions) -> Vec<Value> {
    let f = |k: &str| row.fields.get(k).cloned();
    let mut spec = json!({"tenantRef": {"name": opts.tenant}, "email": f("email")});
    for key in [
        "firstName",
        "lastName",
        "phone",
        "company",
        "accountingId",
        "comments",
    ] {
        if let Some(v) = f(key) {
            spec[key] = json!(v);
        }
    }
    let mut address = serde_json::Map::new();
    for key in ["street", "city", "region", "postalCode", "country"] {
        if let Some(v) = f(key) {
            address.insert(key.into(), json!(v));
        }
    }
    if !address.is_empty() {
        spec["address"] = Value::Object(address);
    }
    let mut docs = vec![json!({
        "apiVersion": "usher.dev/v1alpha1",
        "kind": "SystemUser",
        "metadata": {"name": name, "namespace": opts.namespace},
        "spec": spec,
    })];
    if let Some(role) = &opts.role {
        let mut binding = json!({"userRef": {"name": name}, "role": role});
        if let Some(group) = &opts.group {
            binding["scope"] = json!({"locationGroup": group});
        }
        docs.push(json!({
            "apiVersion": "usher.dev/v1alpha1",
            "kind": "RoleBinding",
            "metadata": {"name": format!("{name}-{}", label(role)), "namespace": opts.namespace},
            "spec": binding,
        }));
    }
    docs
}

fn yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml_ng::to_string(d).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Import the CSV `bytes` (read from `file`) under `opts`: write the manifests of every good,
/// new row, and say what happened to each row. Errors: the CSV as a whole cannot be read
/// ([`ImportError::Csv`]), or a file cannot be written ([`ImportError::Write`]).
pub fn import(file: &str, bytes: &[u8], opts: &ImportOptions) -> Result<ImportReport, ImportError> {
    let mut report = ImportReport::default();
    let rows = rows(file, bytes)?;
    // What git already declares under DIR: the tenant, and the addresses of its people.
    let declared = if opts.out.exists() {
        crate::validate::documents(std::slice::from_ref(&opts.out))
    } else {
        Vec::new()
    };
    let tenant_doc = declared
        .iter()
        .find(|(_, v)| v["kind"] == "Tenant" && v["metadata"]["name"] == opts.tenant.as_str())
        .map(|(_, v)| v.clone());
    // Objects already declared by name (any kind): a file for one of them is never written.
    let names: HashMap<String, String> = declared
        .iter()
        .filter_map(|(file, v)| Some((v["metadata"]["name"].as_str()?.to_string(), file.clone())))
        .collect();
    let known: HashMap<String, (String, String)> = declared
        .iter()
        .filter(|(_, v)| {
            v["kind"] == "SystemUser" && v["spec"]["tenantRef"]["name"] == opts.tenant.as_str()
        })
        .filter_map(|(file, v)| {
            Some((
                v["spec"]["email"].as_str()?.to_lowercase(),
                (v["metadata"]["name"].as_str()?.to_string(), file.clone()),
            ))
        })
        .collect();
    let found_tenant = tenant_doc.is_some();
    let mut tenant_doc = tenant_doc.unwrap_or_else(|| {
        report.notes.push(format!(
            "no Tenant {:?} found under {}: rows are checked against the default role catalogue and no domain rules",
            opts.tenant,
            opts.out.display()
        ));
        json!({"apiVersion": "usher.dev/v1alpha1", "kind": "Tenant",
               "metadata": {"name": opts.tenant}, "spec": {"displayName": opts.tenant}})
    });

    // The files follow the Tenant file's convention: with a namespace when it has one, without
    // when kustomize or Flux sets it for the folder.
    if let Some(ns) = tenant_doc["metadata"]["namespace"]
        .as_str()
        .filter(|ns| *ns != opts.namespace)
    {
        report.notes.push(format!(
            "the Tenant {:?} in DIR is in namespace {ns}, not {}: its people must be in its namespace",
            opts.tenant, opts.namespace
        ));
    }
    let namespaced = tenant_doc["metadata"]["namespace"].is_string() || !found_tenant;
    if namespaced {
        tenant_doc["metadata"]["namespace"] = json!(opts.namespace);
    }

    // The rows to check: new people, each address once (the first line keeps it).
    let mut first_line: HashMap<String, usize> = HashMap::new();
    let mut candidates: Vec<(&Row, String, Vec<Value>)> = Vec::new();
    for row in &rows {
        let Some(email) = row.fields.get("email") else {
            report
                .refused
                .push((row.line, "no email address in this row".into()));
            continue;
        };
        let key = email.to_lowercase();
        if let Some((name, file)) = known.get(&key) {
            report.skipped.push((
                row.line,
                format!("{email} is already declared as SystemUser {name} in {file}"),
            ));
            continue;
        }
        if let Some(first) = first_line.get(&key) {
            report.refused.push((
                row.line,
                format!("DuplicateEmail: {email} is also on line {first}; it is imported once"),
            ));
            continue;
        }
        first_line.insert(key, row.line);
        let name = name_for(email);
        if let Some(file) = names.get(&name) {
            report.skipped.push((
                row.line,
                format!("an object named {name} is already declared in {file}; its address was changed there, or it is another tenant's"),
            ));
            continue;
        }
        let mut docs = manifests(row, &name, opts);
        if !namespaced {
            for d in &mut docs {
                if let Some(meta) = d["metadata"].as_object_mut() {
                    meta.remove("namespace");
                }
            }
        }
        candidates.push((row, name, docs));
    }

    // Checked as `usher validate` checks them, beside the tenant: one source per row, so that each
    // problem names its line.
    let mut sources = vec![("tenant".to_string(), yaml(&[tenant_doc]).into_bytes())];
    // Keyed by position, not by line: a file with bare CR line ends reports one line for all.
    for (i, (_, _, docs)) in candidates.iter().enumerate() {
        sources.push((format!("row {i}"), yaml(docs).into_bytes()));
    }
    let mut problems: HashMap<String, Vec<String>> = HashMap::new();
    for p in crate::validate::validate_sources(&sources) {
        // The group of --group lives elsewhere in git: its absence here is no fault of a row.
        if p.warning || p.message.contains("GroupNotFound") {
            continue;
        }
        problems
            .entry(p.file.clone())
            .or_default()
            .push(format!("{}: {}", p.object, p.message));
    }
    if let Some(tenant) = problems.remove("tenant") {
        report.notes.extend(tenant);
    }
    std::fs::create_dir_all(&opts.out).map_err(|source| ImportError::Write {
        path: opts.out.display().to_string(),
        source,
    })?;
    for (i, (row, name, docs)) in candidates.into_iter().enumerate() {
        if let Some(why) = problems.remove(&format!("row {i}")) {
            report.refused.push((row.line, why.join("; ")));
            continue;
        }
        let path = opts.out.join(format!("{name}.yaml"));
        // Never over a file that is there: what a person edited in it stays.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, yaml(&docs).as_bytes()));
        match written {
            Ok(()) => report.written.push((row.line, path.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => report.skipped.push((
                row.line,
                format!("{} exists already; it is left as it is", path.display()),
            )),
            Err(source) => {
                return Err(ImportError::Write {
                    path: path.display().to_string(),
                    source,
                });
            }
        }
    }
    report.refused.sort();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn opts(out: &Path) -> ImportOptions {
        ImportOptions {
            tenant: "acme".into(),
            namespace: "acme".into(),
            role: Some("Technician".into()),
            group: None,
            out: out.to_path_buf(),
        }
    }

    #[test]
    fn a_messy_export_imports_its_good_rows_and_refuses_each_bad_one_by_line() {
        let dir = tempfile::tempdir().unwrap();
        // A BOM, `;` separators, quoted fields with a `;` and a quote inside, blank lines, columns
        // named as a spreadsheet names them, in another order, a duplicate in another case, a
        // row without an address and one with an address no mail can carry.
        let csv = "\u{feff}Last name;E-Mail;First Name;ZIP;Phone\n\
                   \n\
                   \"Lee; Jr.\";dana@acme.example;Dana;93701;+1 559 555 0100\n\
                   Álvarez;José@Acme.example;José;93702;\n\
                   ;;;;\n\
                   Dup;DANA@acme.example;Dana;;\n\
                   \"O\"\"Brien\";;Pat;;\n\
                   Bad;ben..ito@acme.example;Ben;;\n";
        let report = import("people.csv", csv.as_bytes(), &opts(dir.path())).unwrap();
        let lines = |v: &[(usize, String)]| v.iter().map(|(l, _)| *l).collect::<Vec<_>>();
        assert_eq!(lines(&report.written), [3, 4], "{report:#?}");
        assert_eq!(lines(&report.refused), [6, 7, 8], "{report:#?}");
        assert!(report.refused[0].1.contains("line 3"), "{report:#?}");
        assert!(report.refused[1].1.contains("no email"), "{report:#?}");
        assert!(report.refused[2].1.contains("spec.email"), "{report:#?}");
        let dana = std::fs::read_to_string(&report.written[0].1).unwrap();
        assert!(
            dana.contains("lastName: Lee; Jr.") && dana.contains("postalCode: '93701'"),
            "{dana}"
        );
        assert!(
            dana.contains("kind: RoleBinding") && dana.contains("role: Technician"),
            "{dana}"
        );

        // A re-run writes nothing new: both are declared now, the duplicate row with them.
        let again = import("people.csv", csv.as_bytes(), &opts(dir.path())).unwrap();
        assert!(again.written.is_empty(), "{again:#?}");
        assert_eq!(lines(&again.skipped), [3, 4, 6]);
        assert_eq!(lines(&again.refused), [7, 8]);
    }

    #[test]
    fn an_edited_file_is_never_overwritten_and_bare_cr_rows_are_each_checked() {
        let dir = tempfile::tempdir().unwrap();
        // Old Mac line ends (CR only): every row still gets its own verdict.
        let csv = "email,first name\rann@acme.example,Ann\rbad..dot@acme.example,Bad\rcy@acme.example,Cy\r";
        let report = import("people.csv", csv.as_bytes(), &opts(dir.path())).unwrap();
        assert_eq!(report.written.len(), 2, "{report:#?}");
        assert_eq!(report.refused.len(), 1, "{report:#?}");
        assert!(report.refused[0].1.contains("bad-dot"), "{report:#?}");
        // A person fixes Ann's address in her file; importing the old list again keeps the fix.
        let ann = report
            .written
            .iter()
            .find(|(_, p)| p.contains("ann-"))
            .unwrap()
            .1
            .clone();
        let fixed = std::fs::read_to_string(&ann)
            .unwrap()
            .replace("ann@acme.example", "ann.lee@acme.example");
        std::fs::write(&ann, &fixed).unwrap();
        let again = import("people.csv", csv.as_bytes(), &opts(dir.path())).unwrap();
        assert!(again.written.is_empty(), "{again:#?}");
        assert_eq!(std::fs::read_to_string(&ann).unwrap(), fixed);
        assert!(
            again
                .skipped
                .iter()
                .any(|(_, why)| why.contains("already declared")),
            "{again:#?}"
        );
    }

    #[test]
    fn a_windows_1252_export_keeps_its_accents() {
        let dir = tempfile::tempdir().unwrap();
        // "José;Müller" as Excel saves it in a Western locale: é = 0xE9, ü = 0xFC.
        let mut csv = b"email;first name;last name\njose@acme.example;Jos".to_vec();
        csv.extend([0xE9, b';', b'M', 0xFC]);
        csv.extend(b"ller\n");
        let report = import("people.csv", &csv, &opts(dir.path())).unwrap();
        let written = std::fs::read_to_string(&report.written[0].1).unwrap();
        assert!(
            written.contains("firstName: José") && written.contains("lastName: Müller"),
            "{written}"
        );
        assert!(
            written.contains("name: jose-") && written.contains("-technician"),
            "{written}"
        );
    }

    #[test]
    fn names_are_stable_labels_and_two_addresses_never_share_one() {
        assert_eq!(
            name_for("Dana.Lee@Acme.example"),
            name_for(" dana.lee@acme.example ")
        );
        let n = name_for("Dana.Lee@Acme.example");
        assert!(
            n.starts_with("dana-lee-") && n.len() == "dana-lee-".len() + 6,
            "{n}"
        );
        assert_ne!(
            name_for("dana@acme.example"),
            name_for("dana@globex.example")
        );
        assert!(name_for("用户@例子.广告").starts_with("person-"));
        for email in ["a..b@x.example", "-x-@x.example", "ÄÖ@x.example"] {
            let n = name_for(email);
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !n.starts_with('-'),
                "{n}"
            );
        }
    }

    #[test]
    fn the_separator_is_the_one_the_header_uses() {
        assert_eq!(separator("email,name\n"), b',');
        assert_eq!(separator("\n\nemail;name;city\n"), b';');
        assert_eq!(separator("email\tname\n"), b'\t');
    }
}
