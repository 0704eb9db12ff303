//! LocationGroup: its place in the tree, written to the store while Ready.

use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::snapshot::snapshot;
use super::{Context, Error, publish, reconcile_with, replace_status};
use crate::crd::LocationGroup;
use crate::plan::groups;
use crate::plan::records::object_key;

#[tracing::instrument(skip_all, fields(kind = "LocationGroup", namespace = group.namespace().unwrap_or_default(), object = group.name_any()))]
pub(super) async fn reconcile(
    group: Arc<LocationGroup>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    reconcile_with(
        "LocationGroup",
        group,
        &ctx,
        |o| {
            let ctx = &ctx;
            async move { apply(&o, ctx).await }
        },
        |o| {
            let ctx = &ctx;
            async move { cleanup(&o, ctx).await }
        },
    )
    .await
}

/// Gone from git: out of the store, so nothing is granted through it. Children and bindings
/// that named it turn ParentNotFound and Waiting on their own.
async fn cleanup(group: &LocationGroup, ctx: &Context) -> Result<Action, Error> {
    let ns = group.namespace().ok_or(Error::Malformed("no namespace"))?;
    super::tenant_store::store_of(ctx, &ns, &group.spec.tenant_ref.name)
        .await?
        .delete_group(&object_key(&ns, &group.name_any()))
        .await?;
    Ok(Action::await_change())
}

async fn apply(group: &LocationGroup, ctx: &Context) -> Result<Action, Error> {
    let ns = group.namespace().ok_or(Error::Malformed("no namespace"))?;
    let name = group.name_any();
    let snap = snapshot(ctx, &ns, None, jiff::Timestamp::now());
    let Some((tenant, state)) = snap.groups.get(&name) else {
        // Gone from the cache: deleted meanwhile.
        return Ok(Action::await_change());
    };
    let todo = groups::decide(group, &ns, tenant, state, Timestamp::now());
    let key = object_key(&ns, &name);
    let store = super::tenant_store::store_of(ctx, &ns, &group.spec.tenant_ref.name).await?;
    let stored = store.group(&key).await?;
    match &todo.record {
        Some(desired) if stored.as_ref() != Some(desired) => store.put_group(desired).await?,
        None if stored.is_some() => store.delete_group(&key).await?,
        _ => {}
    }
    replace_status(ctx, group, group.status.as_ref(), &todo.status).await?;
    if let Some(note) = todo.event {
        publish(ctx, group, EventType::Warning, note.reason, note.message).await;
    }
    // Nothing falls due: the paced resync looks again.
    Ok(Action::await_change())
}
