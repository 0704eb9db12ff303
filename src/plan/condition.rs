//! kstatus-style conditions (`Ready` with a reason, a message and observedGeneration, and the
//! abnormal-true `Reconciling` and `Stalled` beside it), and the Events that announce their
//! changes.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::READY;

/// The Ready condition. Its lastTransitionTime moves only when its status flips, so the same
/// state gives the same condition and a no-op reconcile writes nothing.
pub fn ready(
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = since(previous, READY, status, now);
    Condition {
        type_: READY.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Ready=False reasons usher waits out by itself (something it depends on is not there or not
/// ready yet, a mail is being retried, an offboarding is being finished): kstatus
/// `Reconciling=True`, "in progress".
const WAITS: &[&str] = &[
    "TenantNotFound",
    "TenantTerminating",
    "InvitationNotSent",
    "OffboardingIncomplete",
    "ParentNotFound",
    "ParentNotReady",
    "UserNotFound",
    "GroupNotFound",
    "GroupNotReady",
    "StoreUnavailable",
];

/// Ready=False reasons that are the state git declares, not a fault: a RoleBinding past its
/// `expiresAt`. Neither Reconciling nor Stalled.
const DECLARED: &[&str] = &["BindingExpired"];

/// An object's conditions: [`ready`], then, when it is False, the kstatus condition that says
/// what kind of not-ready it is — `Reconciling=True` for a wait usher resolves by itself,
/// `Stalled=True` for what needs a person (a conflict, a refused address, an expired
/// invitation). kstatus readers (Flux's health checks, `kubectl wait`, cli-utils) look at these
/// two rather than at Ready; Argo CD's checks in `deploy/argocd/` read both. Ready stays first.
pub fn conditions(
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Vec<Condition> {
    let ready = ready(ok, reason, message, generation, previous, now);
    let abnormal = match () {
        _ if ok || DECLARED.contains(&reason) => None,
        _ if WAITS.contains(&reason) => Some(RECONCILING),
        _ => Some(STALLED),
    };
    let mut out = vec![ready];
    if let Some(kind) = abnormal {
        let last_transition_time = since(previous, kind, "True", now);
        out.push(Condition {
            type_: kind.to_string(),
            status: "True".into(),
            reason: reason.to_string(),
            message: message.to_string(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out
}

/// When condition `kind` took `status`: its previous transition time if it already had that
/// status, else `now` (so that a condition that holds does not move, and patches nothing).
pub fn since(previous: &[Condition], kind: &str, status: &str, now: Timestamp) -> Time {
    previous
        .iter()
        .find(|c| c.type_ == kind && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| to_time(now))
}

/// kstatus: the object is being worked on.
pub const RECONCILING: &str = "Reconciling";
/// kstatus: the object cannot progress without someone changing something.
pub const STALLED: &str = "Stalled";

/// A timestamp as the API server keeps it: whole seconds.
pub fn to_time(ts: Timestamp) -> Time {
    Time(Timestamp::from_second(ts.as_second()).unwrap_or(ts))
}

/// An Event to publish about a transition (Kubernetes Event: type, reason, note).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Warning rather than Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What happened, for people.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_survives_while_status_holds() {
        let t0: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-11-22T11:00:00.5Z".parse().unwrap();
        let first = ready(true, "InvitationSent", "m", Some(1), &[], t0);
        let again = ready(
            true,
            "Active",
            "other",
            Some(2),
            std::slice::from_ref(&first),
            t1,
        );
        assert_eq!(again.last_transition_time, first.last_transition_time);
        let flipped = ready(false, "InvitationExpired", "m", Some(2), &[again], t1);
        assert_eq!(
            flipped.last_transition_time.0.to_string(),
            "2026-11-22T11:00:00Z"
        );
    }

    #[test]
    fn not_ready_says_whether_usher_waits_or_someone_must_act() {
        let t0: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let kinds = |c: &[Condition]| -> Vec<(String, String)> {
            c.iter()
                .map(|c| (c.type_.clone(), c.status.clone()))
                .collect()
        };
        let pair = |t: &str, s: &str| (t.to_string(), s.to_string());
        assert_eq!(
            kinds(&conditions(true, "Active", "m", Some(1), &[], t0)),
            [pair("Ready", "True")]
        );
        let waiting = conditions(false, "TenantNotFound", "no tenant", Some(1), &[], t0);
        assert_eq!(
            kinds(&waiting),
            [pair("Ready", "False"), pair("Reconciling", "True")]
        );
        assert_eq!(waiting[1].message, "no tenant");
        let stuck = conditions(false, "DuplicateEmail", "taken", Some(1), &[], t0);
        assert_eq!(
            kinds(&stuck),
            [pair("Ready", "False"), pair("Stalled", "True")]
        );
        assert_eq!(
            kinds(&conditions(false, "BindingExpired", "m", Some(1), &[], t0)),
            [pair("Ready", "False")]
        );
        // Still stalled later: the same transition time, so a repeat patches nothing.
        let t1: Timestamp = "2026-11-22T12:00:00Z".parse().unwrap();
        let later = conditions(false, "DuplicateEmail", "taken", Some(1), &stuck, t1);
        assert_eq!(later, stuck);
    }
}
