//! LocationGroup: its place in the tree, written to the store while Ready.

use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::snapshot::snapshot;
use super::{Context, Error, apply_status, publish, reconcile_with};
use crate::crd::{LocationGroup, LocationGroupStatus};
use crate::plan::condition::ready;
use crate::plan::groups::GroupState;
use crate::plan::records::{GroupRecord, object_key};

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
    ctx.store
        .delete_group(&object_key(&ns, &group.name_any()))
        .await?;
    Ok(Action::await_change())
}

async fn apply(group: &LocationGroup, ctx: &Context) -> Result<Action, Error> {
    let ns = group.namespace().ok_or(Error::Malformed("no namespace"))?;
    let name = group.name_any();
    let snap = snapshot(ctx, &ns, None);
    let Some((tenant, state)) = snap.groups.get(&name) else {
        // Gone from the cache: deleted meanwhile.
        return Ok(Action::await_change());
    };
    let key = object_key(&ns, &name);
    let stored = ctx.store.group(&key).await?;
    let generation = group.metadata.generation;
    let previous = group
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let now = Timestamp::now();
    let locations = group.spec.locations.len() as i32;
    let status = match state {
        GroupState::Ready { path } => {
            let desired = GroupRecord {
                key,
                tenant: object_key(&ns, tenant),
                parent: group
                    .spec
                    .parent_ref
                    .as_ref()
                    .map(|p| object_key(&ns, &p.name)),
                display_name: group.spec.display_name.clone(),
                path: path.join("/"),
                locations: group.spec.locations.clone(),
            };
            if stored.as_ref() != Some(&desired) {
                ctx.store.put_group(&desired).await?;
            }
            LocationGroupStatus {
                observed_generation: generation,
                path: Some(desired.path.clone()),
                depth: Some(path.len() as i32),
                locations: Some(locations),
                conditions: vec![ready(
                    true,
                    "Reconciled",
                    &format!("{} with {locations} locations", desired.path),
                    generation,
                    previous,
                    now,
                )],
            }
        }
        GroupState::NotReady { reason, message } => {
            // Nothing may be granted through a group that is not Ready.
            if stored.is_some() {
                ctx.store.delete_group(&key).await?;
            }
            LocationGroupStatus {
                observed_generation: generation,
                path: None,
                depth: None,
                locations: Some(locations),
                conditions: vec![ready(false, reason, message, generation, previous, now)],
            }
        }
    };
    let old_reason = group
        .status
        .as_ref()
        .and_then(|s| s.conditions.first())
        .map(|c| c.reason.clone());
    apply_status(ctx, group, group.status.as_ref(), &status).await?;
    if let Some(c) = status.conditions.first()
        && old_reason.as_deref() != Some(c.reason.as_str())
        && c.status == "False"
    {
        publish(ctx, group, EventType::Warning, &c.reason, c.message.clone()).await;
    }
    Ok(Action::requeue(ctx.settings.resync))
}
