//! A Tenant's own store (`spec.store`): its credential read from the Secret the Tenant names, by
//! name only, and the tenant attached to that store in [`crate::store::Stores`]. Every reconcile
//! that touches a tenant's people, groups or catalogue gets its store from [`store_of`].

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;

use super::{Context, Error};
use crate::crd::{SecretKeyRef, Tenant};
use crate::plan::records::object_key;
use crate::store::UserStore;

/// The name of the Secret usher's installed RBAC lets it read in any namespace, for tenant
/// store credentials.
pub const CREDENTIALS_SECRET: &str = "usher-store";

/// The store of the tenant `tenant_name` in namespace `ns`, as its Tenant (from the cache)
/// declares it: its own store, attached now if it is not yet, or the operator's. A Tenant that
/// is gone leaves the store it was last attached to in this process (for offboarding its
/// people). Errors: [`Error::TenantStore`] when the tenant's credential cannot be read or used;
/// nothing of the tenant is then written anywhere.
pub(crate) async fn store_of(
    ctx: &Context,
    ns: &str,
    tenant_name: &str,
) -> Result<Arc<dyn UserStore>, Error> {
    let key = object_key(ns, tenant_name);
    let Some(tenant) = ctx.tenants.get(&ObjectRef::new(tenant_name).within(ns)) else {
        return Ok(ctx.stores.remembered(&key));
    };
    let declared = tenant.spec.store.as_ref().map(|s| s.url.as_str());
    if let Ok(store) = ctx.stores.of(&key, declared) {
        return Ok(store);
    }
    attach(ctx, &tenant).await?;
    Ok(ctx.stores.of(&key, declared)?)
}

/// Read the credential `tenant` names and attach it to its store (a no-op for a Tenant without
/// `spec.store`, and a reconnect only when the credential changed). Errors:
/// [`Error::TenantStore`], saying which Secret or key is missing or unreadable.
pub(crate) async fn attach(ctx: &Context, tenant: &Tenant) -> Result<(), Error> {
    let Some(spec) = &tenant.spec.store else {
        return Ok(());
    };
    let ns = tenant.namespace().ok_or(Error::Malformed("no namespace"))?;
    let key = object_key(&ns, &tenant.name_any());
    let credential = match &spec.credentials_secret_ref {
        None => None,
        Some(reference) => {
            let default_key = if spec.url.starts_with("scim+") {
                "token"
            } else {
                "password"
            };
            match read(ctx, &key, &ns, reference, default_key).await {
                Ok(value) => Some(value),
                Err(e) => {
                    ctx.stores.unattached(&key, &spec.url, &e.to_string());
                    return Err(e);
                }
            }
        }
    };
    ctx.stores
        .attach(&key, &spec.url, credential.as_deref())
        .map_err(|e| Error::TenantStore(format!("Tenant {key}'s store: {e}")))
}

/// One key of a Secret in `ns`, read by name.
async fn read(
    ctx: &Context,
    tenant: &str,
    ns: &str,
    reference: &SecretKeyRef,
    default_key: &str,
) -> Result<String, Error> {
    let field = reference.key.as_deref().unwrap_or(default_key);
    let name = &reference.name;
    let secret = match Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get(name)
        .await
    {
        Ok(s) => s,
        Err(kube::Error::Api(e)) if e.code == 404 => {
            return Err(Error::TenantStore(format!(
                "Tenant {tenant}'s store: the Secret {ns}/{name} (spec.store.credentialsSecretRef) does not exist"
            )));
        }
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return Err(Error::TenantStore(format!(
                "Tenant {tenant}'s store: usher may not read the Secret {ns}/{name}; its RBAC lets it read Secrets named {CREDENTIALS_SECRET} only (name the Secret so, or grant get on this one)"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(field))
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
        .filter(|v| !v.is_empty());
    value.ok_or_else(|| {
        Error::TenantStore(format!(
            "Tenant {tenant}'s store: the Secret {ns}/{name} has no key {field:?}"
        ))
    })
}
