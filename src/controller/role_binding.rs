//! RoleBinding: Bound, Conflict, Invalid or Waiting, decided for all bindings of the namespace
//! at once. The store's assignments are written by the SystemUser reconcile, which owns the
//! person's account; this controller only shows the verdict.

use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::snapshot::snapshot;
use super::{Context, Error, publish_note, reconcile_plain, replace_status};
use crate::crd::{BindingPhase, RoleBinding};
use crate::plan::bindings;

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
    let now = Timestamp::now();
    let snap = snapshot(ctx, &ns, Some(&binding.spec.user_ref.name), now);
    let Some(verdict) = snap.verdicts.get(&binding.name_any()) else {
        return Ok(Action::await_change());
    };
    let (status, note) = bindings::report(binding, verdict, now);
    replace_status(ctx, binding, binding.status.as_ref(), &status).await?;
    if let Some(note) = note {
        publish_note(ctx, binding, note).await;
    }
    // A Bound binding with an end is looked at again right then, not at the next resync.
    let ends = (verdict.phase == BindingPhase::Bound)
        .then(|| binding.spec.expires_at.as_ref().map(|t| t.0))
        .flatten();
    let horizon = ctx.settings.horizon();
    Ok(super::after(
        bindings::wait_until(ends, now, horizon),
        horizon,
    ))
}
