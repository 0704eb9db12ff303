//! One person, one SCIM User, however many tenants they belong to. A product that serves several
//! tenants from one SCIM server has one userName space: the contractor `pat@contractor.example`
//! of tenants `acme` and `globex` is one User there, as multi-organisation products model a
//! person, with access in each tenant through that tenant's role Groups.
//!
//! usher keeps one account per SystemUser (per tenant) in its local store, with its own
//! invitations, assignments and state, and an [`Identity`] is the SCIM User with the accounts
//! that share it. The rules, in one place (pure, tested below):
//!
//! - **Who writes the User.** Its *owner*, the account whose key is the User's `externalId` (on
//!   a server that keeps none, the heir below): its profile is the person's. The others'
//!   profiles stay in git and usher's record, and are not taken for drift. An owner that leaves,
//!   or is deactivated while another account is active, hands the User to its heir: the oldest
//!   active account, else the oldest.
//! - **Active.** The User is active while any of its accounts is; each account reads as active
//!   only when it is itself (so suspending one tenant's account is done, and stays quiet, while
//!   another tenant's keeps the User active). With no account active, the server's word is read,
//!   so that a User activated by hand is seen and deactivated.
//! - **Role Groups.** An account of a shared User is in its tenant's role Groups only while it is
//!   active: the User being active for another tenant must not open this one before its
//!   invitation is redeemed, nor after it is suspended. A User of one account keeps them as
//!   before (it is inactive while its account is).
//! - **One change at a time, taking away first.** Each change of a User's accounts is read,
//!   decided and written under that User's lock (a redemption racing a suspension, or two
//!   tenants' reconciles, never decide from what the other is changing). A change takes access
//!   away before the User's `active` follows, and gives it after; what it takes away is every
//!   role the account holds, not only what was last written, so that a change that failed
//!   half-way leaves nothing behind.
//! - **Leaving.** An account that leaves (offboarded, or re-addressed) takes only its tenant's
//!   Groups with it; the User is deleted or deactivated with its last account.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::plan::records::{Assignment, UserFields, UserRecord};
use crate::plan::system_user::same_address;

/// One account of an [`Identity`]: its local record and its role assignments.
#[derive(Clone, Debug)]
pub(super) struct Account {
    pub record: UserRecord,
    pub assignments: Vec<Assignment>,
}

/// A SCIM User (`scim_id`) and the accounts, oldest first, that share it.
#[derive(Clone, Debug)]
pub(super) struct Identity {
    pub scim_id: String,
    pub accounts: Vec<Account>,
}

/// The role assignments of each account that reach the SCIM Groups, by account id, with the
/// account's tenant.
pub(super) type Written = BTreeMap<String, (String, Vec<Assignment>)>;

impl Identity {
    /// Whether more than one account shares the User.
    pub fn shared(&self) -> bool {
        self.accounts.len() > 1
    }

    /// The account `id`, if it is one of these.
    pub fn account(&self, id: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.record.id == id)
    }

    /// Whether the User should be active: any of its accounts is.
    pub fn any_active(&self) -> bool {
        self.accounts.iter().any(|a| a.record.active)
    }

    /// The account whose key the User carries as `externalId`, else (a server that keeps none)
    /// the [`Self::heir`], which is who a hand-over writes the User for.
    pub fn owner(&self, user: &Value) -> Option<&Account> {
        let by_key = user["externalId"]
            .as_str()
            .and_then(|key| self.accounts.iter().find(|a| a.record.external_id == key));
        by_key.or(self.heir())
    }

    /// The account to hand the User to when its owner goes: the oldest active, else the oldest.
    pub fn heir(&self) -> Option<&Account> {
        let active = self.accounts.iter().find(|a| a.record.active);
        active.or(self.accounts.first())
    }

    /// Whether `user` (as the server answers for `scim_id`) is still this person's: it carries
    /// one of the accounts' keys as `externalId`, or, on a server that keeps none, one of their
    /// addresses as `userName`. Anything else (the id reused, the User re-provisioned by another
    /// client) is not usher's to update, deactivate or delete.
    pub fn holds(&self, user: &Value) -> bool {
        match user["externalId"].as_str() {
            Some(stored) => self.accounts.iter().any(|a| a.record.external_id == stored),
            None => user["userName"].as_str().is_some_and(|name| {
                self.accounts
                    .iter()
                    .any(|a| same_address(name, &a.record.email))
            }),
        }
    }

    /// What each account's role Groups hold (see the module's rules).
    pub fn written(&self) -> Written {
        let shared = self.shared();
        self.accounts
            .iter()
            .map(|a| {
                let open = !shared || a.record.active;
                let held = if open {
                    a.assignments.clone()
                } else {
                    Vec::new()
                };
                (a.record.id.clone(), (a.record.tenant.clone(), held))
            })
            .collect()
    }

    /// The identity with a new, inactive account `id` for `fields`, holding no role yet.
    pub fn with_account(&self, id: &str, fields: &UserFields) -> Identity {
        let mut next = self.clone();
        next.accounts.push(Account {
            record: UserRecord::created(id.to_string(), fields),
            assignments: Vec::new(),
        });
        next
    }

    /// The identity with the account `id` gone.
    pub fn without(&self, id: &str) -> Identity {
        let mut next = self.clone();
        next.accounts.retain(|a| a.record.id != id);
        next
    }

    /// The identity with the account `id` active or not.
    pub fn with_active(&self, id: &str, active: bool) -> Identity {
        let mut next = self.clone();
        for a in next.accounts.iter_mut().filter(|a| a.record.id == id) {
            a.record.active = active;
        }
        next
    }

    /// The identity with the account `id` holding `assignments`.
    pub fn with_assignments(&self, id: &str, assignments: &[Assignment]) -> Identity {
        let mut next = self.clone();
        for a in next.accounts.iter_mut().filter(|a| a.record.id == id) {
            a.assignments = assignments.to_vec();
        }
        next
    }

    /// The record of account `account` (as the local store has it), given `server`, the record
    /// the SCIM User reads as: the server's profile and address for the owner, the account's own
    /// for the others, and the account's own state (see the module's rules).
    pub fn view(&self, user: &Value, server: UserRecord, account: &UserRecord) -> UserRecord {
        let owner = self.owner(user).is_some_and(|o| o.record.id == account.id);
        let others_active = self
            .accounts
            .iter()
            .any(|a| a.record.id != account.id && a.record.active);
        let mut out = if owner {
            UserRecord {
                tenant: account.tenant.clone(),
                external_id: account.external_id.clone(),
                ..server.clone()
            }
        } else {
            account.clone()
        };
        out.id = account.id.clone();
        out.active = seen_active(server.active, account.active, others_active);
        out.activated_at = account.activated_at;
        out
    }
}

/// Whether one account of a User reads as active: its own state while another account keeps the
/// User active (the server's `active` is theirs then); otherwise the server's, so that a User
/// deactivated or activated in the product by hand is seen and repaired. For a User of one
/// account this is the server's word, as it always was.
pub(super) fn seen_active(server: bool, mine: bool, others_active: bool) -> bool {
    if mine || others_active {
        mine && server
    } else {
        server
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn account(id: &str, tenant: &str, active: bool, roles: &[&str]) -> Account {
        Account {
            record: UserRecord {
                id: id.into(),
                tenant: tenant.into(),
                external_id: format!("{tenant}-pat"),
                email: "pat@contractor.example".into(),
                profile: Default::default(),
                active,
                activated_at: None,
            },
            assignments: roles
                .iter()
                .map(|r| Assignment {
                    binding: format!("{tenant}/{r}"),
                    role: r.to_string(),
                    group: None,
                })
                .collect(),
        }
    }

    fn identity(accounts: Vec<Account>) -> Identity {
        Identity {
            scim_id: "u1".into(),
            accounts,
        }
    }

    #[test]
    fn a_user_of_one_account_reads_as_the_server_says() {
        for (server, mine) in [(true, true), (true, false), (false, true), (false, false)] {
            assert_eq!(seen_active(server, mine, false), server, "{server} {mine}");
        }
    }

    #[test]
    fn a_shared_user_reads_as_each_accounts_own_state() {
        // Another tenant keeps the User active: a suspended account reads suspended (quiet).
        assert!(!seen_active(true, false, true));
        assert!(seen_active(true, true, true));
        // Deactivated in the product by hand: the active account sees it and repairs it.
        assert!(!seen_active(false, true, true));
        // Nobody active, yet the product has the User active: seen, so it is deactivated.
        assert!(seen_active(true, false, false));
    }

    #[test]
    fn role_groups_of_a_shared_user_open_only_to_active_accounts() {
        let lone = identity(vec![account("a", "acme/acme", false, &["Manager"])]);
        assert_eq!(
            lone.written()["a"].1.len(),
            1,
            "a lone pending account keeps its Groups"
        );
        let shared = identity(vec![
            account("a", "acme/acme", true, &["Manager"]),
            account("g", "globex/globex", false, &["Technician"]),
        ]);
        let w = shared.written();
        assert_eq!(w["a"].1.len(), 1);
        assert!(w["g"].1.is_empty(), "pending in globex: no globex role yet");
        let redeemed = shared.with_active("g", true).written();
        assert_eq!(redeemed["g"].1[0].role, "Technician");
        assert_eq!(redeemed["g"].0, "globex/globex");
        // acme leaves: globex alone again keeps its Groups whatever its state.
        let left = shared.without("a");
        assert!(!left.shared());
        assert_eq!(left.written()["g"].1.len(), 1);
    }

    #[test]
    fn the_owner_is_the_account_the_user_names_else_the_oldest() {
        let both = identity(vec![
            account("a", "acme/acme", true, &[]),
            account("g", "globex/globex", true, &[]),
        ]);
        let named = json!({"externalId": "globex/globex-pat"});
        assert_eq!(both.owner(&named).unwrap().record.id, "g");
        assert_eq!(both.owner(&json!({})).unwrap().record.id, "a");
        assert!(both.holds(&named));
        assert!(!both.holds(&json!({"externalId": "initech/initech-pat"})));
        assert!(both.holds(&json!({"userName": "PAT@contractor.example"})));
        assert!(!both.holds(&json!({"userName": "sam@contractor.example"})));
    }

    #[test]
    fn only_the_owner_reads_the_servers_profile() {
        let both = identity(vec![
            account("a", "acme/acme", true, &[]),
            account("g", "globex/globex", false, &[]),
        ]);
        let user = json!({"externalId": "acme/acme-pat"});
        let mut server = both.accounts[0].record.clone();
        server.profile.first_name = Some("Patricia".into());
        server.id = "u1".into();
        let owner = both.view(&user, server.clone(), &both.accounts[0].record);
        assert_eq!(owner.profile.first_name.as_deref(), Some("Patricia"));
        assert_eq!(owner.id, "a");
        assert!(owner.active);
        let other = both.view(&user, server, &both.accounts[1].record);
        assert_eq!(other.profile.first_name, None, "globex's own profile");
        assert_eq!((other.id.as_str(), other.active), ("g", false));
        assert_eq!(other.external_id, "globex/globex-pat");
    }
}
