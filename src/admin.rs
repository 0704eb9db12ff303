//! The admin's everyday commands against the cluster, also run as `kubectl usher …`:
//! `resend NAME` (a new invitation), `release TENANT` (let a held mass offboarding proceed) and
//! `status [TENANT]` (a tenant's people at a glance). Each does what the README's `kubectl
//! annotate` line does, or reads what `kubectl get` would, so that git stays the only place
//! where people are declared.

use std::collections::BTreeMap;
use std::io::Write;

use kube::api::{Api, Patch, PatchParams};

use crate::crd::{SystemUser, Tenant, UserPhase};
use crate::find::Scope;
use crate::plan::offboarding::ALLOW_ANNOTATION;
use crate::plan::system_user::RESEND_ANNOTATION;

/// What an admin command can fail at.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The object named does not exist.
    #[error("no {kind} {name:?} in namespace {namespace:?}")]
    NotFound {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
        /// The namespace searched.
        namespace: String,
    },
    /// No cluster configuration, or the API server refused or failed.
    #[error("cannot reach Kubernetes: {0}")]
    Kube(String),
}

impl From<crate::find::FindError> for AdminError {
    fn from(e: crate::find::FindError) -> Self {
        Self::Kube(e.to_string())
    }
}

async fn client() -> Result<kube::Client, AdminError> {
    kube::Client::try_default()
        .await
        .map_err(|e| AdminError::Kube(e.to_string()))
}

/// Set `annotation` to `value` on the object `name` of kind `K` in `namespace` (None: the
/// kubeconfig's), as `kubectl annotate --overwrite` does; returns the namespace used. Errors:
/// the object does not exist ([`AdminError::NotFound`]), or the cluster refused.
async fn annotate<K>(
    name: &str,
    namespace: Option<String>,
    annotation: &str,
    value: &str,
) -> Result<String, AdminError>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let client = client().await?;
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let patch = serde_json::json!({"metadata": {"annotations": {annotation: value}}});
    match Api::<K>::namespaced(client, &namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(namespace),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(AdminError::NotFound {
            kind: K::kind(&()).into_owned(),
            name: name.to_string(),
            namespace,
        }),
        Err(e) => Err(AdminError::Kube(e.to_string())),
    }
}

/// `resend NAME`: ask for a new invitation for the SystemUser `name` (the annotation
/// `usher.dev/resend-invitation` set to the time now, RFC 3339). Returns the line to print.
/// Errors: see [`AdminError`].
pub async fn resend(name: &str, namespace: Option<String>) -> Result<String, AdminError> {
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_default();
    let ns = annotate::<SystemUser>(name, namespace, RESEND_ANNOTATION, &now.to_string()).await?;
    Ok(format!(
        "systemuser/{name} in {ns}: a new invitation was requested ({RESEND_ANNOTATION}={now}); the old link stops working once it is sent\n"
    ))
}

/// `release TENANT`: let the offboardings the mass-offboarding guard holds for `tenant` proceed
/// (the annotation `usher.dev/allow-mass-offboarding` set to the Unix time now, in seconds).
/// Returns the line to print. Errors: see [`AdminError`].
pub async fn release(tenant: &str, namespace: Option<String>) -> Result<String, AdminError> {
    let now = jiff::Timestamp::now().as_second().to_string();
    let ns = annotate::<Tenant>(tenant, namespace, ALLOW_ANNOTATION, &now).await?;
    Ok(format!(
        "tenant/{tenant} in {ns}: offboardings requested until now may proceed ({ALLOW_ANNOTATION}={now}); later ones count against the hourly budget again\n"
    ))
}

/// `status [TENANT]`: for each tenant in `scope` (or only `tenant`), a line counting its people
/// by phase, then a table of those not Active with why. Errors: the cluster cannot be read, or
/// `tenant` does not exist in a one-namespace scope ([`AdminError::NotFound`]).
pub async fn status(tenant: Option<&str>, scope: &Scope) -> Result<String, AdminError> {
    let client = client().await?;
    let tenants: Vec<Tenant> = crate::find::list::<Tenant>(&client, scope).await?;
    let people: Vec<SystemUser> = crate::find::list::<SystemUser>(&client, scope).await?;
    let chosen: Vec<&Tenant> = tenants
        .iter()
        .filter(|t| tenant.is_none_or(|name| t.metadata.name.as_deref() == Some(name)))
        .collect();
    if let (Some(name), true) = (tenant, chosen.is_empty()) {
        return Err(AdminError::NotFound {
            kind: "Tenant".into(),
            name: name.to_string(),
            namespace: match scope {
                Scope::All => "any".into(),
                Scope::Namespace(ns) => ns
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_string()),
            },
        });
    }
    Ok(render(&chosen, &people))
}

/// Who belongs to `tenant`: the SystemUsers of its namespace that refer to it.
fn members<'a>(tenant: &Tenant, people: &'a [SystemUser]) -> Vec<&'a SystemUser> {
    let mut found: Vec<&SystemUser> = people
        .iter()
        .filter(|u| {
            u.metadata.namespace == tenant.metadata.namespace
                && Some(u.spec.tenant_ref.name.as_str()) == tenant.metadata.name.as_deref()
        })
        .collect();
    found.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    found
}

fn phase_name(user: &SystemUser) -> String {
    user.status
        .as_ref()
        .and_then(|s| s.phase)
        .map_or_else(|| "Unknown".to_string(), |p| format!("{p:?}"))
}

/// The status page of `tenants`: per tenant, its counts by phase, then its people who are not
/// Active (NAME, EMAIL, PHASE, REASON, MESSAGE), columns aligned as kubectl aligns them.
pub fn render(tenants: &[&Tenant], people: &[SystemUser]) -> String {
    let mut out = String::new();
    for tenant in tenants {
        let members = members(tenant, people);
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for u in &members {
            *counts.entry(phase_name(u)).or_default() += 1;
        }
        let counted: Vec<String> = counts.iter().map(|(p, n)| format!("{n} {p}")).collect();
        let name = tenant.metadata.name.as_deref().unwrap_or_default();
        let namespace = tenant.metadata.namespace.as_deref().unwrap_or_default();
        out.push_str(&format!(
            "Tenant {namespace}/{name} ({}): {} {}{}{}\n",
            tenant.spec.display_name,
            members.len(),
            if members.len() == 1 {
                "person"
            } else {
                "people"
            },
            if counted.is_empty() { "" } else { ": " },
            counted.join(", ")
        ));
        let waiting: Vec<&&SystemUser> = members
            .iter()
            .filter(|u| u.status.as_ref().and_then(|s| s.phase) != Some(UserPhase::Active))
            .collect();
        if waiting.is_empty() {
            out.push('\n');
            continue;
        }
        let mut table = tabwriter::TabWriter::new(Vec::new()).padding(3);
        let _ = writeln!(table, "  NAME\tEMAIL\tPHASE\tREASON\tMESSAGE");
        for u in waiting {
            let ready = u
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
            let cells = [
                u.metadata.name.clone().unwrap_or_default(),
                u.spec.email.clone(),
                phase_name(u),
                ready.map(|c| c.reason.clone()).unwrap_or_default(),
                ready.map(|c| c.message.clone()).unwrap_or_default(),
            ]
            .map(|c| c.replace(['\t', '\n', '\r'], " "));
            let _ = writeln!(table, "  {}", cells.join("\t"));
        }
        let bytes = table.into_inner().unwrap_or_default();
        out.push_str(&String::from_utf8_lossy(&bytes));
        out.push('\n');
    }
    if tenants.is_empty() {
        out.push_str("No Tenants found.\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;

    use super::*;
    use crate::crd::{ObjectRef, SystemUserSpec, SystemUserStatus, TenantSpec};

    fn tenant(name: &str) -> Tenant {
        let mut t = Tenant::new(
            name,
            TenantSpec {
                display_name: format!("{name} Charging"),
                contact: None,
                invitations: None,
                roles: None,
                store: None,
                offboarding: None,
            },
        );
        t.metadata.namespace = Some("ops".into());
        t
    }

    fn person(name: &str, tenant: &str, phase: Option<UserPhase>, reason: &str) -> SystemUser {
        let mut u = SystemUser::new(
            name,
            SystemUserSpec {
                tenant_ref: ObjectRef::new(tenant),
                email: format!("{name}@acme.example"),
                ..Default::default()
            },
        );
        u.metadata = ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ops".into()),
            ..Default::default()
        };
        u.status = phase.map(|phase| SystemUserStatus {
            phase: Some(phase),
            conditions: vec![crate::plan::condition::ready(
                phase == UserPhase::Active,
                reason,
                &format!("{reason}\tdetails\nsecond line"),
                None,
                &[],
                jiff::Timestamp::UNIX_EPOCH,
            )],
            ..Default::default()
        });
        u
    }

    #[test]
    fn status_counts_each_tenants_people_and_lists_who_is_not_active() {
        let (acme, globex) = (tenant("acme"), tenant("globex"));
        let people = [
            person("ann", "acme", Some(UserPhase::Active), "Active"),
            person("bob", "acme", Some(UserPhase::Pending), "InvitationSent"),
            person("cy", "acme", Some(UserPhase::Failed), "DuplicateEmail"),
            person("dee", "acme", None, ""),
            person("eve", "globex", Some(UserPhase::Active), "Active"),
        ];
        let page = render(&[&acme, &globex], &people);
        let lines: Vec<&str> = page.lines().collect();
        assert_eq!(
            lines[0],
            "Tenant ops/acme (acme Charging): 4 people: 1 Active, 1 Failed, 1 Pending, 1 Unknown"
        );
        assert!(
            lines[1].starts_with("  NAME") && lines[1].contains("REASON"),
            "{page}"
        );
        let listed: Vec<&str> = lines[2..5]
            .iter()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(listed, ["bob", "cy", "dee"], "{page}");
        assert!(lines[3].contains("DuplicateEmail") && lines[3].contains("details second line"));
        assert!(
            !page.contains("ann@"),
            "Active people are counted, not listed"
        );
        assert!(page.contains("Tenant ops/globex (globex Charging): 1 person: 1 Active\n"));
        assert!(!page.contains("eve@"));
        assert_eq!(render(&[], &people), "No Tenants found.\n");
    }
}
