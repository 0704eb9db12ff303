//! `usher review [-n NS | -A] [-o table|csv|json] [--days N]`: the access review of each tenant
//! ([`crate::plan::review`]), read from the cluster, as a table to read, CSV for a spreadsheet, or
//! JSON for a script.

use std::io::Write;

use kube::{Resource, ResourceExt};

use crate::crd::{LocationGroup, RoleBinding, SystemUser, Tenant};
use crate::find::{FindError, Scope, list};
use crate::plan::review::{TenantReview, review};

/// How the review is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Sections of aligned columns, per tenant.
    Table,
    /// One row per finding, with a `section` column; RFC 4180.
    Csv,
    /// The reviews as a JSON array.
    Json,
}

/// The reviews of every tenant in `scope`, sorted by namespace and tenant; `days` as in
/// [`review`]. Errors: the cluster cannot be reached or refuses a list.
pub async fn reviews(scope: &Scope, days: i64) -> Result<Vec<TenantReview>, FindError> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| FindError::Kube(e.to_string()))?;
    let tenants: Vec<Tenant> = list(&client, scope).await?;
    let groups: Vec<LocationGroup> = list(&client, scope).await?;
    let users: Vec<SystemUser> = list(&client, scope).await?;
    let bindings: Vec<RoleBinding> = list(&client, scope).await?;
    let namespaces: std::collections::BTreeSet<String> =
        tenants.iter().filter_map(|t| t.namespace()).collect();
    let now = jiff::Timestamp::now();
    let mut out = Vec::new();
    for ns in &namespaces {
        fn within<K: Resource + Clone>(objects: &[K], ns: &str) -> Vec<K> {
            objects
                .iter()
                .filter(|o| o.meta().namespace.as_deref() == Some(ns))
                .cloned()
                .collect()
        }
        let mut r = review(
            ns,
            &within(&tenants, ns),
            &within(&groups, ns),
            &within(&users, ns),
            &within(&bindings, ns),
            now,
            days,
        );
        r.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        out.extend(r);
    }
    Ok(out)
}

/// `reviews` printed as `format`.
pub fn render(reviews: &[TenantReview], format: Format, days: i64) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(reviews).unwrap_or_default() + "\n",
        Format::Csv => csv_of(reviews),
        Format::Table => table_of(reviews, days),
    }
}

fn csv_of(reviews: &[TenantReview]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record([
        "namespace",
        "tenant",
        "section",
        "person",
        "email",
        "phase",
        "role",
        "scope",
        "reaches",
        "permissions",
        "date",
        "days",
    ]);
    for r in reviews {
        let base = |section: &str| vec![r.namespace.clone(), r.tenant.clone(), section.to_string()];
        for (section, grants) in [("access", &r.access), ("expiring", &r.expiring)] {
            for g in grants {
                let mut row = base(section);
                row.extend([
                    g.person.clone(),
                    g.email.clone(),
                    g.phase.clone(),
                    g.role.clone(),
                    g.scope.clone(),
                    g.reaches.join(" "),
                    g.permissions.join(" "),
                    g.expires_at.clone().unwrap_or_default(),
                    String::new(),
                ]);
                let _ = w.write_record(&row);
            }
        }
        for s in &r.stale_invitations {
            let mut row = base("stale-invitation");
            row.extend([
                s.person.clone(),
                s.email.clone(),
                s.phase.clone(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                s.since.clone(),
                s.days.to_string(),
            ]);
            let _ = w.write_record(&row);
        }
        for p in &r.suspended {
            let mut row = base("suspended");
            row.extend([p.person.clone(), p.email.clone()]);
            row.extend(std::iter::repeat_n(String::new(), 7));
            let _ = w.write_record(&row);
        }
    }
    String::from_utf8_lossy(&w.into_inner().unwrap_or_default()).into_owned()
}

fn table_of(reviews: &[TenantReview], days: i64) -> String {
    let mut out = String::new();
    let cell = |s: &str| {
        if s.is_empty() {
            "<none>".to_string()
        } else {
            s.replace(['\t', '\n', '\r'], " ")
        }
    };
    let block = |header: &[&str], rows: Vec<Vec<String>>| {
        let mut tw = tabwriter::TabWriter::new(Vec::new()).padding(3);
        let _ = writeln!(tw, "  {}", header.join("\t"));
        for row in rows {
            let _ = writeln!(tw, "  {}", row.join("\t"));
        }
        String::from_utf8_lossy(&tw.into_inner().unwrap_or_default()).into_owned()
    };
    for r in reviews {
        out.push_str(&format!(
            "TENANT {}/{} ({})\n",
            r.namespace, r.tenant, r.display_name
        ));
        out.push_str(&format!("Access ({} roles in effect):\n", r.access.len()));
        out.push_str(&block(
            &[
                "PERSON",
                "EMAIL",
                "PHASE",
                "ROLE",
                "SCOPE",
                "REACHES",
                "PERMISSIONS",
                "UNTIL",
            ],
            r.access
                .iter()
                .map(|g| {
                    vec![
                        cell(&g.person),
                        cell(&g.email),
                        cell(&g.phase),
                        cell(&g.role),
                        cell(&g.scope),
                        cell(&g.reaches.join(",")),
                        cell(&g.permissions.join(",")),
                        cell(g.expires_at.as_deref().unwrap_or("")),
                    ]
                })
                .collect(),
        ));
        out.push_str(&format!(
            "Invitations waiting more than {days} days: {}\n",
            r.stale_invitations.len()
        ));
        if !r.stale_invitations.is_empty() {
            out.push_str(&block(
                &["PERSON", "EMAIL", "PHASE", "SINCE", "DAYS"],
                r.stale_invitations
                    .iter()
                    .map(|s| {
                        vec![
                            cell(&s.person),
                            cell(&s.email),
                            cell(&s.phase),
                            cell(&s.since),
                            s.days.to_string(),
                        ]
                    })
                    .collect(),
            ));
        }
        out.push_str(&format!("Suspended: {}\n", r.suspended.len()));
        if !r.suspended.is_empty() {
            out.push_str(&block(
                &["PERSON", "EMAIL"],
                r.suspended
                    .iter()
                    .map(|p| vec![cell(&p.person), cell(&p.email)])
                    .collect(),
            ));
        }
        out.push_str(&format!(
            "Access ending within {days} days: {}\n",
            r.expiring.len()
        ));
        if !r.expiring.is_empty() {
            out.push_str(&block(
                &["PERSON", "ROLE", "SCOPE", "UNTIL"],
                r.expiring
                    .iter()
                    .map(|g| {
                        vec![
                            cell(&g.person),
                            cell(&g.role),
                            cell(&g.scope),
                            cell(g.expires_at.as_deref().unwrap_or("")),
                        ]
                    })
                    .collect(),
            ));
        }
        out.push('\n');
    }
    out
}
