//! RoleBinding: Bound, Conflict, Invalid or Waiting, decided for all bindings of the namespace
//! at once. The store's assignments are written by the SystemUser reconcile, which owns the
//! person's account; this controller only shows the verdict.

use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::snapshot::snapshot;
use super::{Context, Error, apply_status, publish, reconcile_plain};
use crate::crd::{BindingPhase, RoleBinding, RoleBindingStatus};
use crate::plan::condition::ready;

#[tracing::instrument(skip_all, fields(kind = "RoleBinding", namespace = binding.namespace().unwrap_or_default(), object = binding.name_any()))]
pub(super) async fn reconcile(
    binding: Arc<RoleBinding>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    // No finalizer: the person's assignments are derived by their SystemUser reconcile, which a
    // binding's deletion wakes (and which runs for everyone at start), so a binding deleted
    // while usher is down is also taken out of the store. One write and one reconcile fewer
    // per binding.
    reconcile_plain("RoleBinding", binding, &ctx, |o| {
        let ctx = &ctx;
        async move { apply(&o, ctx).await }
    })
    .await
}

async fn apply(binding: &RoleBinding, ctx: &Context) -> Result<Action, Error> {
    let ns = binding
        .namespace()
        .ok_or(Error::Malformed("no namespace"))?;
    let snap = snapshot(ctx, &ns, Some(&binding.spec.user_ref.name));
    let Some(verdict) = snap.verdicts.get(&binding.name_any()) else {
        return Ok(Action::await_change());
    };
    let generation = binding.metadata.generation;
    let previous = binding
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let status = RoleBindingStatus {
        observed_generation: generation,
        phase: Some(verdict.phase),
        conflicts_with: verdict.conflicts_with.clone(),
        exclusive: verdict.exclusive,
        conditions: vec![ready(
            verdict.phase == BindingPhase::Bound,
            verdict.reason,
            &verdict.message,
            generation,
            previous,
            Timestamp::now(),
        )],
    };
    let old_phase = binding.status.as_ref().and_then(|s| s.phase);
    apply_status(ctx, binding, binding.status.as_ref(), &status).await?;
    if old_phase != Some(verdict.phase) {
        let type_ = match verdict.phase {
            BindingPhase::Bound | BindingPhase::Waiting => EventType::Normal,
            BindingPhase::Conflict | BindingPhase::Invalid => EventType::Warning,
        };
        publish(ctx, binding, type_, verdict.reason, verdict.message.clone()).await;
    }
    Ok(Action::requeue(ctx.settings.resync))
}
