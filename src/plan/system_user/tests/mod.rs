//! The SystemUser decisions, unit-tested by concern; the fixtures they share are here.

mod blocked;
mod decide;
mod report;
mod writes;

use std::collections::BTreeMap;

use jiff::ToSpan;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;

use super::*;
use crate::crd::{
    InvitationPolicy, ObjectRef, SystemUserSpec, SystemUserStatus, TenantSpec, UserPhase,
};
use crate::plan::records::Profile;
use crate::plan::records::{InvitationRecord, UserRecord};
use crate::token::TokenHash;

fn now() -> Timestamp {
    "2026-11-22T10:00:00Z".parse().unwrap()
}

fn user(name: &str, email: &str) -> SystemUser {
    SystemUser {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("acme".into()),
            generation: Some(1),
            creation_timestamp: Some(Time(now())),
            ..Default::default()
        },
        spec: SystemUserSpec {
            tenant_ref: ObjectRef::new("acme"),
            email: email.into(),
            first_name: Some("Alice".into()),
            ..Default::default()
        },
        status: None,
    }
}

fn tenant(policy: Option<InvitationPolicy>) -> Tenant {
    Tenant::new(
        "acme",
        TenantSpec {
            display_name: "Acme".into(),
            contact: None,
            invitations: policy,
            roles: None,
            store: None,
            offboarding: None,
        },
    )
}

fn account(active: bool, accepted: bool) -> UserRecord {
    UserRecord {
        id: "u1".into(),
        tenant: "acme/acme".into(),
        external_id: "acme/alice".into(),
        email: "alice@acme.example".into(),
        profile: Profile {
            first_name: Some("Alice".into()),
            ..Default::default()
        },
        active,
        activated_at: accepted.then(now),
    }
}

fn invitation(attempt: i32) -> InvitationRecord {
    InvitationRecord {
        token_hash: TokenHash::of("t"),
        user_id: "u1".into(),
        attempt,
        trigger: None,
        created_at: now(),
        expires_at: now() + 48.hours(),
        sent_at: Some(now()),
        used_at: None,
        revoked_at: None,
    }
}

fn peer(name: &str, email: &str, created: Timestamp) -> Peer {
    Peer {
        name: name.into(),
        tenant: "acme".into(),
        email: email.into(),
        created: Some(created),
    }
}

fn status_of(
    u: &SystemUser,
    account: Option<&UserRecord>,
    latest: Option<&InvitationRecord>,
    at: Timestamp,
) -> SystemUserStatus {
    status(&StatusInput {
        user: u,
        blocked: None,
        account,
        latest,
        secret_name: None,
        now: at,
    })
}
