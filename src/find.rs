//! `usher find WORD [-n NS | -A]`: the SystemUsers whose name, email, company, address or phone
//! contain a word ([`crate::plan::find::matches`]), read from the cluster and printed as a table
//! the way `kubectl get` prints one.

use std::io::Write;

use kube::api::ListParams;

use crate::crd::SystemUser;
use crate::plan::find::{matches, row};

/// Where to look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One namespace; None: the kubeconfig's.
    Namespace(Option<String>),
    /// Every namespace (`-A`).
    All,
}

/// What `usher find` can fail at.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    /// No cluster configuration, or the API server refused or failed.
    #[error("cannot list SystemUsers: {0}")]
    Kube(String),
}

/// Every object of kind `K` in `scope`, read with the kubeconfig's client. Errors: the cluster
/// cannot be reached or refuses the list ([`FindError::Kube`]).
pub(crate) async fn list<K>(client: &kube::Client, scope: &Scope) -> Result<Vec<K>, FindError>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let namespace = match scope {
        Scope::All => None,
        Scope::Namespace(ns) => Some(
            ns.clone()
                .unwrap_or_else(|| client.default_namespace().to_string()),
        ),
    };
    crate::controller::scoped_api::<K>(client, namespace.as_deref())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| FindError::Kube(e.to_string()))
}

/// The SystemUsers in `scope` that match `word`, sorted by namespace and name. Errors: the
/// cluster cannot be reached or refuses the list ([`FindError::Kube`]).
pub async fn find(word: &str, scope: &Scope) -> Result<Vec<SystemUser>, FindError> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| FindError::Kube(e.to_string()))?;
    let mut found: Vec<SystemUser> = list::<SystemUser>(&client, scope)
        .await?
        .into_iter()
        .filter(|u| matches(u, word))
        .collect();
    found.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    Ok(found)
}

/// The table of `users`: NAME, EMAIL, FULL NAME, COMPANY, CITY, PHONE, PHASE, with a NAMESPACE
/// column first when `all_namespaces`; columns aligned with three spaces, as kubectl does.
pub fn table(users: &[SystemUser], all_namespaces: bool) -> String {
    let mut out = tabwriter::TabWriter::new(Vec::new()).padding(3);
    let header = [
        "NAMESPACE",
        "NAME",
        "EMAIL",
        "FULL NAME",
        "COMPANY",
        "CITY",
        "PHONE",
        "PHASE",
    ];
    let skip = usize::from(!all_namespaces);
    let _ = writeln!(out, "{}", header[skip..].join("\t"));
    for u in users {
        // A tab or a line break inside a value would break the columns.
        let cells = row(u).map(|c| c.replace(['\t', '\n', '\r'], " "));
        let _ = writeln!(out, "{}", cells[skip..].join("\t"));
    }
    let bytes = out.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}
