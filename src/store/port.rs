//! The user store's ports, one small trait per concern: [`Accounts`], [`Invitations`],
//! [`Catalogue`], [`OffboardingLedger`] and [`Health`]. [`UserStore`] is all of them together:
//! what a backend implements and what the controllers and the HTTP server hold
//! (`Arc<dyn UserStore>`).
//!
//! Each port is declared once, by `port!`, with every method marked `read` or `write`. The
//! declaration expands to the `#[async_trait]` trait (each return type wrapped in
//! `Result<_, StoreError>`) and to the trait's metered implementation for [`StoreHandle`]: the call
//! is timed under the method's name (`store_seconds{op="<method>"}`), a failure counts in
//! `store_errors`, a success of a `write` method in `store_writes`. Whether a call writes is thus
//! said in one place, next to its signature, and the wrapper cannot drift from the trait: a method
//! is measured as soon as it is declared.
//!
//! Shared by every method of every port: times are [`Timestamp`]s, kept to the microsecond; keys
//! are the `<namespace>/<name>` of the Kubernetes object a record stems from; a failure is a
//! [`StoreError`] — [`StoreError::Backend`] when the store cannot be reached or fails,
//! [`StoreError::Refused`] when the store refuses the request (a SCIM 4xx; a second account
//! for a (tenant, address) a SQL store already has, as 409), [`StoreError::NotFound`] where a
//! method says so.

use async_trait::async_trait;
use jiff::Timestamp;

use super::registry::TenantStore;
use super::{StoreError, StoreHandle};
use crate::plan::records::{
    Assignment, Grant, GroupRecord, InvitationRecord, RedeemRefusal, Redeemed, RoleRecord,
    TenantRecord, UserFields, UserRecord,
};
use crate::token::TokenHash;

/// Declares ports: for each, the `#[async_trait]` trait (`Send + Sync`, every method `async`,
/// its return type `T` becoming `Result<T, StoreError>`, `()` when none is written) and the
/// metered `impl` of it for [`StoreHandle`], and the one for [`TenantStore`] that names the
/// tenant in every error. Each method is marked `read` or `write`; only a
/// successful `write` counts in `store_writes`. Attributes (doc comments) of the traits and
/// methods are kept.
macro_rules! port {
    (@writes read) => {
        false
    };
    (@writes write) => {
        true
    };
    (@returns) => {
        ()
    };
    (@returns $ret:ty) => {
        $ret
    };
    ($(
        $(#[$meta:meta])*
        pub trait $port:ident {
            $(
                $(#[$method_meta:meta])*
                $kind:ident fn $method:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) $(-> $ret:ty)?;
            )*
        }
    )*) => {
        $(
            $(#[$meta])*
            #[async_trait]
            pub trait $port: Send + Sync {
                $(
                    $(#[$method_meta])*
                    async fn $method(&self $(, $arg: $ty)*)
                        -> Result<port!(@returns $($ret)?), StoreError>;
                )*
            }

            #[async_trait]
            impl $port for StoreHandle {
                $(
                    async fn $method(&self $(, $arg: $ty)*)
                        -> Result<port!(@returns $($ret)?), StoreError> {
                        let s = self.inner()?;
                        self.call(stringify!($method), port!(@writes $kind), s.$method($($arg),*))
                            .await
                    }
                )*
            }

            #[async_trait]
            impl $port for TenantStore {
                $(
                    async fn $method(&self $(, $arg: $ty)*)
                        -> Result<port!(@returns $($ret)?), StoreError> {
                        self.store.$method($($arg),*).await.map_err(|e| e.of_tenant(&self.tenant))
                    }
                )*
            }
        )*

        /// Every method of every port as `(op label, whether it counts as a write)`, for tests.
        #[cfg(test)]
        const OPS: &[(&str, bool)] = &[$($((stringify!($method), port!(@writes $kind)),)*)*];
    };
}

port! {
    /// Whether the store answers at all, for `/readyz`.
    pub trait Health {
        /// Whether the store answers (readiness). Errors: [`StoreError::Backend`] (or, SCIM,
        /// [`StoreError::Refused`]) saying why not.
        read fn ping(&self);
    }

    /// The accounts of people: one per SystemUser (`external_id` = its `<namespace>/<name>`),
    /// under the `id` the store gives it (random hex in SQL, the User's `id` in SCIM), inactive
    /// until an invitation is redeemed.
    pub trait Accounts {
        /// An account by its SystemUser key.
        read fn user_by_external_id(&self, external_id: &str) -> Option<UserRecord>;
        /// Create an inactive account.
        write fn create_user(&self, fields: &UserFields) -> UserRecord;
        /// Change an account's details. Errors: [`StoreError::NotFound`] when the account is
        /// gone.
        write fn update_user(&self, id: &str, fields: &UserFields) -> UserRecord;
        /// The accounts of a tenant.
        read fn users_of_tenant(&self, tenant: &str) -> Vec<UserRecord>;
        /// An account of a tenant by email, case-insensitive (to restore an archived person).
        read fn user_by_email(&self, tenant: &str, email: &str) -> Option<UserRecord>;
        /// Delete an account with its invitations and assignments.
        write fn delete_user(&self, id: &str);
        /// Activate or deactivate an account.
        write fn set_active(&self, id: &str, active: bool, now: Timestamp);
        /// The SystemUser spec fields (`phone`, `address`, `firstName`, …) this store was seen
        /// not to keep: a SCIM product that drops them. They stay in git and in usher's own
        /// record, are not taken for drift, and the person's status says so. Sorted.
        read fn unkept_fields(&self) -> Vec<String>;
    }

    /// Invitations of accounts, kept by the hash of their token (never the token): one open at a
    /// time per account, numbered by `attempt`, redeemed once.
    pub trait Invitations {
        /// The invitation with the highest attempt of an account.
        read fn latest_invitation(&self, user_id: &str) -> Option<InvitationRecord>;
        /// The token hashes of the newest invitations (at most [`ADDRESS_LOOKUP_LIMIT`], newest
        /// first, in any state) of every account with this address, compared case-insensitively,
        /// in any tenant: the candidates a short code is checked against.
        read fn invitations_for_address(&self, email: &str) -> Vec<TokenHash>;
        /// Record a new invitation, revoking the account's other open invitations, atomically.
        write fn record_invitation(&self, invitation: &InvitationRecord);
        /// Replace the token of an invitation whose mail was never sent. False when it was sent,
        /// used or revoked meanwhile.
        write fn rotate_unsent(
            &self,
            user_id: &str,
            attempt: i32,
            new_hash: &TokenHash,
            expires_at: Timestamp,
        ) -> bool;
        /// Mark an invitation's mail as sent.
        write fn mark_sent(&self, hash: &TokenHash, at: Timestamp);
        /// Revoke every open invitation of an account; returns how many.
        write fn revoke_open(&self, user_id: &str, at: Timestamp) -> u64;
        /// Redeem a token: single use, atomic; the account becomes active. A token that is
        /// unknown, used, revoked or expired is refused ([`RedeemRefusal`], the inner `Err`);
        /// the outer `Err` is a store failure.
        write fn redeem(&self, hash: &TokenHash, now: Timestamp) -> Result<Redeemed, RedeemRefusal>;
    }

    /// What the tenants' objects declare and accounts are granted by: tenants, their location
    /// groups (a tree, by `parent`), their role catalogues, and the role assignments of accounts
    /// (one per Bound RoleBinding, `binding` = its `<namespace>/<name>`).
    pub trait Catalogue {
        /// A tenant by key.
        read fn tenant(&self, key: &str) -> Option<TenantRecord>;
        /// Create or update a tenant.
        write fn put_tenant(&self, tenant: &TenantRecord);
        /// Delete a tenant with its groups and catalogue (its accounts are offboarded first).
        write fn delete_tenant(&self, key: &str);
        /// A location group by key.
        read fn group(&self, key: &str) -> Option<GroupRecord>;
        /// Create or update a location group.
        write fn put_group(&self, group: &GroupRecord);
        /// Remove a location group (grants no longer reach through it).
        write fn delete_group(&self, key: &str);
        /// A tenant's role catalogue, sorted by name.
        read fn roles(&self, tenant: &str) -> Vec<RoleRecord>;
        /// Replace a tenant's role catalogue.
        write fn put_roles(&self, tenant: &str, roles: &[RoleRecord]);
        /// An account's role assignments, sorted.
        read fn assignments(&self, user_id: &str) -> Vec<Assignment>;
        /// Replace an account's role assignments, atomically.
        write fn set_assignments(&self, user_id: &str, assignments: &[Assignment]);
        /// Remove the assignment a RoleBinding made, wherever it is.
        write fn remove_assignment(&self, binding: &str);
        /// Every (role, group) an account holds, a group's descendants included; sorted.
        read fn grants(&self, user_id: &str) -> Vec<Grant>;
    }

    /// The mass-offboarding guard's ledger: when people of a tenant were offboarded, and the
    /// release that lets more go at once.
    pub trait OffboardingLedger {
        /// Record that a person of the tenant was offboarded at `at`.
        write fn record_offboarding(&self, tenant: &str, at: Timestamp);
        /// How many people of the tenant were offboarded since `since` (inclusive).
        read fn offboardings_since(&self, tenant: &str, since: Timestamp) -> u64;
        /// Record a release of the mass-offboarding guard unless `value` is the one recorded;
        /// returns the release in effect.
        // Writes only when the value is new; counted as a read, as it usually is one.
        read fn release(&self, tenant: &str, value: &str, at: Timestamp) -> Timestamp;
    }
}

/// The most invitations [`Invitations::invitations_for_address`] returns: a person has one open
/// invitation per tenant that invited them, so this is far more than any real address holds.
pub const ADDRESS_LOOKUP_LIMIT: i64 = 20;

/// The user store, as the controllers and the HTTP server use it: every port at once. Nothing
/// implements it by hand; every type that implements the ports is one (a backend, or
/// [`StoreHandle`] measuring one). Through `dyn UserStore` the methods of every port are callable
/// as they are; on a concrete store, bring the ports whose methods are called into scope. Shapes,
/// units and errors are those of each port.
pub trait UserStore:
    Health + Accounts + Invitations + Catalogue + OffboardingLedger + 'static
{
}

impl<T> UserStore for T where
    T: Health + Accounts + Invitations + Catalogue + OffboardingLedger + 'static
{
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::Metrics;
    use crate::plan::records::Profile;
    use crate::store::SqlStore;

    #[test]
    fn the_writes_are_the_calls_that_change_the_store() {
        let mut writes: Vec<&str> = OPS.iter().filter(|(_, w)| *w).map(|(op, _)| *op).collect();
        writes.sort_unstable();
        // As StoreHandle counted them when it delegated by hand; `release` is a read although it
        // writes when the value is new (it usually is not).
        assert_eq!(
            writes,
            [
                "create_user",
                "delete_group",
                "delete_tenant",
                "delete_user",
                "mark_sent",
                "put_group",
                "put_roles",
                "put_tenant",
                "record_invitation",
                "record_offboarding",
                "redeem",
                "remove_assignment",
                "revoke_open",
                "rotate_unsent",
                "set_active",
                "set_assignments",
                "update_user",
            ]
        );
        let mut all: Vec<&str> = OPS.iter().map(|(op, _)| *op).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 31, "one op label per method, none twice");
    }

    #[tokio::test]
    async fn the_handle_times_every_call_and_counts_writes_and_failures() {
        let metrics = Arc::new(Metrics::default());
        let store =
            StoreHandle::ready(Arc::new(SqlStore::memory().await.unwrap()), metrics.clone());
        let tenant = TenantRecord {
            key: "team/acme".into(),
            display_name: "Acme".into(),
        };
        store.put_tenant(&tenant).await.unwrap();
        assert_eq!(store.tenant("team/acme").await.unwrap(), Some(tenant));
        store
            .release("team/acme", "once", Timestamp::now())
            .await
            .unwrap();
        let fields = UserFields {
            tenant: "team/acme".into(),
            external_id: "team/ada".into(),
            email: "ada@example.com".into(),
            profile: Profile::default(),
        };
        let gone = store.update_user("no-such-account", &fields).await;
        assert!(matches!(gone, Err(StoreError::NotFound(_))), "{gone:?}");
        assert_eq!(metrics.store_writes.get(), 1, "put_tenant only");
        assert_eq!(metrics.store_errors.get(), 1, "update_user");
        let exposed = metrics.encode();
        for op in ["put_tenant", "tenant", "release", "update_user"] {
            assert!(exposed.contains(&format!("op=\"{op}\"")), "{op}: {exposed}");
        }
    }
}
