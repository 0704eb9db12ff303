//! kstatus-style conditions (`Ready` with a reason, a message and observedGeneration), and the
//! Events that announce their changes.

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
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == READY && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| to_time(now));
    Condition {
        type_: READY.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time,
    }
}

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
}
