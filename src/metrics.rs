//! Prometheus metrics, served at `/metrics`. Labels are low-cardinality: kinds, results and
//! error categories, never names or emails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::crd::UserCounts;

/// The values of the `phase` label of `usher_people`: the phases a SystemUser shows in
/// `status.phase`.
pub const PHASES: [&str; 5] = ["Pending", "Active", "Expired", "Suspended", "Failed"];

/// The values of the `kind` label of `usher_invalid_objects_total`: the four usher kinds.
pub const KINDS: [&str; 4] = ["SystemUser", "Tenant", "LocationGroup", "RoleBinding"];

/// The values of the `peer` label of `usher_peer_errors_total`: the mail relay, the user store
/// and the Kubernetes API server.
pub const PEERS: [&str; 3] = ["mail", "store", "kubernetes"];

/// The values of the `reason` label of `usher_peer_errors_total`:
/// - `tls`: the TLS connection failed (a certificate not trusted, expired or for another name; a
///   relay that does not offer the TLS usher requires);
/// - `auth`: the peer refused usher's credentials or permissions (SMTP 530/534/535/538/454 or an
///   x.7.x status, HTTP 401/403, a PostgreSQL authentication or permission error);
/// - `unavailable`: the peer could not be reached, timed out or answered that it is unavailable
///   (SMTP 421, HTTP 408/429/5xx);
/// - `refused`: the peer answered and refused this one request (a recipient the relay does not
///   take, a SCIM 4xx, a record gone), which says nothing about the others;
/// - `other`: anything else.
pub const PEER_REASONS: [&str; 5] = ["tls", "auth", "unavailable", "refused", "other"];

/// Labels of a reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// Tenant, SystemUser, …
    pub kind: &'static str,
    /// "ok" or an error category.
    pub result: &'static str,
}

/// Labels naming a kind only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Tenant, SystemUser, …
    pub kind: &'static str,
}

/// Labels of a user store call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// The store operation: user_by_external_id, record_invitation, …
    pub op: &'static str,
}

/// Labels of a Kubernetes API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// GET, POST, PATCH, PUT or DELETE (a watch is a GET); OTHER for anything else.
    pub method: &'static str,
}

/// Labels of a reconcile that failed at a peer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// One of [`PEERS`].
    pub peer: &'static str,
    /// One of [`PEER_REASONS`].
    pub reason: &'static str,
}

/// Labels of a count of people.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// One of [`PHASES`].
    pub phase: &'static str,
}

/// Labels of `usher_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The crate version ([`crate::version::VERSION`]).
    pub version: &'static str,
    /// The git revision ([`crate::version::REVISION`]); `unknown` outside a git build.
    pub revision: &'static str,
}

impl BuildLabels {
    /// The labels of this build, as `usher version` prints them.
    pub fn current() -> Self {
        Self {
            version: crate::version::VERSION,
            revision: crate::version::REVISION,
        }
    }
}

/// What one tenant adds to the tenant gauges: its people by phase (in [`PHASES`] order) and the
/// offboardings the guard holds back.
#[derive(Clone, Copy, Debug, Default)]
struct TenantFigures {
    people: [i64; 5],
    held: i64,
}

/// Every metric usher exports.
pub struct Metrics {
    registry: Registry,
    /// Reconciles by kind and result.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Reconcile duration by kind.
    pub reconcile_seconds: Family<KindLabels, Histogram>,
    /// Invitations recorded in the store (a new token).
    pub invitations_issued: Counter,
    /// Invitation mails handed to the mail transport.
    pub invitations_sent: Counter,
    /// Tokens redeemed.
    pub invitations_redeemed: Counter,
    /// Invitations seen expired.
    pub invitations_expired: Counter,
    /// User store call latency by operation (its count is the number of calls).
    pub store_seconds: Family<StoreLabels, Histogram>,
    /// Writes to the user store.
    pub store_writes: Counter,
    /// Writes to the Kubernetes API (status patches, Secrets, Events excluded).
    pub api_writes: Counter,
    /// Every request to the Kubernetes API, reads and watches included, by method.
    pub kube_requests: Family<MethodLabels, Counter>,
    /// Failed mail deliveries.
    pub mail_errors: Counter,
    /// How long handing one mail to the relay takes, failures included: with
    /// `--mail-concurrency 1` its mean bounds onboarding at one person per that time.
    pub mail_seconds: Histogram,
    /// Failed store calls.
    pub store_errors: Counter,
    /// Objects that do not decode against usher's types, skipped, by kind.
    pub invalid_objects: Family<KindLabels, Counter>,
    /// Store changes made behind usher's back and repaired.
    pub drift_corrected: Counter,
    /// Reconciles that failed at a peer, by peer ([`PEERS`]) and reason ([`PEER_REASONS`]);
    /// every combination is exported from the start, at 0.
    pub peer_errors: Family<PeerLabels, Counter>,
    /// 1 while this process runs the controllers, 0 while it waits (for the store at start,
    /// the CRDs, the token key or the leader Lease): see [`Metrics::controllers_running`].
    controllers: Gauge,
    /// People by phase, summed over the tenants whose reconcile this process ran.
    people: Family<PhaseLabels, Gauge>,
    /// Tenants whose offboardings the mass-offboarding guard holds back now.
    throttled_tenants: Gauge,
    /// Offboardings the mass-offboarding guard holds back now, over all tenants.
    offboardings_held: Gauge,
    /// The figures the tenant gauges sum, by tenant key (`namespace/name`). Kept in memory
    /// only: tenant names never become labels.
    tenants: Mutex<HashMap<String, TenantFigures>>,
}

/// While alive, `usher_controllers_running` is 1 (see [`Metrics::controllers_running`]).
pub struct ControllersRunning(Arc<Metrics>);

impl Drop for ControllersRunning {
    fn drop(&mut self) {
        self.0.controllers.set(0);
        // What a process that no longer reconciles counted is stale: the one that takes over
        // counts it now.
        let mut tenants = self.0.tenants.lock().unwrap_or_else(|p| p.into_inner());
        tenants.clear();
        self.0.publish(&tenants);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("usher");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let reconcile_seconds = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        let store_seconds = Family::<StoreLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        let m = Self {
            store_seconds,
            reconciles,
            reconcile_seconds,
            invitations_issued: Counter::default(),
            invitations_sent: Counter::default(),
            invitations_redeemed: Counter::default(),
            invitations_expired: Counter::default(),
            store_writes: Counter::default(),
            api_writes: Counter::default(),
            kube_requests: Family::default(),
            mail_errors: Counter::default(),
            mail_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            store_errors: Counter::default(),
            drift_corrected: Counter::default(),
            invalid_objects: Family::default(),
            peer_errors: Family::default(),
            controllers: Gauge::default(),
            people: Family::default(),
            throttled_tenants: Gauge::default(),
            offboardings_held: Gauge::default(),
            tenants: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        // Series that exist from the start, at 0, so that a rule or a panel reads 0 rather than
        // no data, and a rate sees the first increase.
        for peer in PEERS {
            for reason in PEER_REASONS {
                let _ = m.peer_errors.get_or_create(&PeerLabels { peer, reason });
            }
        }
        for phase in PHASES {
            let _ = m.people.get_or_create(&PhaseLabels { phase });
        }
        for kind in KINDS {
            let _ = m.invalid_objects.get_or_create(&KindLabels { kind });
        }
        registry.register(
            "reconciles",
            "Reconciles by kind and result",
            m.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration by kind",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "invitations_issued",
            "Invitation tokens recorded",
            m.invitations_issued.clone(),
        );
        registry.register(
            "invitations_sent",
            "Invitation mails sent",
            m.invitations_sent.clone(),
        );
        registry.register(
            "invitations_redeemed",
            "Invitation tokens redeemed",
            m.invitations_redeemed.clone(),
        );
        registry.register(
            "invitations_expired",
            "Invitations that expired unused",
            m.invitations_expired.clone(),
        );
        registry.register(
            "store_duration_seconds",
            "User store call latency by operation",
            m.store_seconds.clone(),
        );
        registry.register(
            "store_writes",
            "Writes to the user store",
            m.store_writes.clone(),
        );
        registry.register(
            "api_writes",
            "Writes to the Kubernetes API",
            m.api_writes.clone(),
        );
        registry.register(
            "kube_requests",
            "Requests to the Kubernetes API by method",
            m.kube_requests.clone(),
        );
        registry.register(
            "mail_errors",
            "Failed mail deliveries",
            m.mail_errors.clone(),
        );
        registry.register(
            "mail_duration_seconds",
            "Time to hand one mail to the relay",
            m.mail_seconds.clone(),
        );
        registry.register(
            "store_errors",
            "Failed user store calls",
            m.store_errors.clone(),
        );
        registry.register(
            "drift_corrected",
            "Store changes made behind usher's back that a reconcile repaired",
            m.drift_corrected.clone(),
        );
        registry.register(
            "invalid_objects",
            "Objects skipped because they do not decode against usher's types",
            m.invalid_objects.clone(),
        );
        registry.register(
            "peer_errors",
            "Reconciles that failed at a peer (mail, store, kubernetes), by reason (tls, auth, unavailable, refused, other)",
            m.peer_errors.clone(),
        );
        registry.register(
            "build",
            "The usher build: version and source revision",
            Info::new(BuildLabels::current()),
        );
        registry.register(
            "controllers_running",
            "1 while this process runs the controllers (leading, or without leader election); 0 while it waits for the store, the CRDs, the token key or the Lease",
            m.controllers.clone(),
        );
        registry.register(
            "people",
            "People (SystemUsers) by phase, as their Tenants' reconciles count them",
            m.people.clone(),
        );
        registry.register(
            "offboarding_throttled_tenants",
            "Tenants whose offboardings the mass-offboarding guard holds back now (OffboardingThrottled=True)",
            m.throttled_tenants.clone(),
        );
        registry.register(
            "offboardings_held",
            "Offboardings the mass-offboarding guard holds back now, over all tenants",
            m.offboardings_held.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Mark the controllers as running in this process: `usher_controllers_running` is 1 until
    /// the returned guard drops, when it goes back to 0 and the tenant gauges (people by phase,
    /// offboardings held) are emptied, since another process counts them from then on.
    #[must_use = "the gauge goes back to 0 when the guard drops"]
    pub fn controllers_running(self: &Arc<Self>) -> ControllersRunning {
        self.controllers.set(1);
        ControllersRunning(self.clone())
    }

    /// Whether this process runs the controllers now (`usher_controllers_running` is 1).
    pub fn runs_controllers(&self) -> bool {
        self.controllers.get() > 0
    }

    /// Record the people of tenant `tenant` (its key, `namespace/name`) by phase, as its
    /// reconcile counted them; `usher_people{phase}` sums every tenant's latest count.
    pub fn set_tenant_people(&self, tenant: &str, people: &UserCounts) {
        let by_phase = [
            people.pending,
            people.active,
            people.expired,
            people.suspended,
            people.failed,
        ]
        .map(i64::from);
        self.update_tenant(tenant, |f| f.people = by_phase);
    }

    /// Record how many offboardings (people) the mass-offboarding guard holds back for tenant
    /// `tenant` now, 0 when none; `usher_offboardings_held` sums them and
    /// `usher_offboarding_throttled_tenants` counts the tenants with any.
    pub fn set_offboardings_held(&self, tenant: &str, held: usize) {
        let held = i64::try_from(held).unwrap_or(i64::MAX);
        self.update_tenant(tenant, |f| f.held = held);
    }

    /// Forget tenant `tenant`, removed from the store: it no longer adds to the tenant gauges.
    pub fn forget_tenant(&self, tenant: &str) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        tenants.remove(tenant);
        self.publish(&tenants);
    }

    fn update_tenant(&self, tenant: &str, change: impl FnOnce(&mut TenantFigures)) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        change(tenants.entry(tenant.to_string()).or_default());
        self.publish(&tenants);
    }

    /// Set the tenant gauges to the sums of `tenants` (called with the map locked, so that two
    /// updates cannot publish out of order).
    fn publish(&self, tenants: &HashMap<String, TenantFigures>) {
        let mut people = [0_i64; 5];
        let (mut throttled, mut held) = (0, 0);
        for f in tenants.values() {
            for (sum, n) in people.iter_mut().zip(f.people) {
                *sum += n;
            }
            if f.held > 0 {
                throttled += 1;
                held += f.held;
            }
        }
        for (phase, n) in PHASES.into_iter().zip(people) {
            self.people.get_or_create(&PhaseLabels { phase }).set(n);
        }
        self.throttled_tenants.set(throttled);
        self.offboardings_held.set(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The samples of `name` (with labels) in the exposition, in order.
    fn samples(m: &Metrics, name: &str) -> Vec<String> {
        m.encode()
            .lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .map(str::to_string)
            .collect()
    }

    fn counts(pending: i32, active: i32) -> UserCounts {
        UserCounts {
            total: pending + active,
            pending,
            active,
            ..UserCounts::default()
        }
    }

    #[test]
    fn build_info_carries_the_crate_version() {
        let m = Metrics::default();
        let lines = samples(&m, "usher_build_info");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
                && lines[0].ends_with(" 1"),
            "{lines:?}"
        );
    }

    #[test]
    fn people_sum_the_latest_count_of_each_tenant_and_forget_removed_ones() {
        let m = Metrics::default();
        // Every phase reads 0 before any tenant is seen.
        assert!(samples(&m, "usher_people").contains(&"usher_people{phase=\"Pending\"} 0".into()));
        m.set_tenant_people("a/acme", &counts(3, 1));
        m.set_tenant_people("b/bolt", &counts(2, 0));
        m.set_tenant_people("a/acme", &counts(1, 3));
        let people = samples(&m, "usher_people");
        assert!(
            people.contains(&"usher_people{phase=\"Pending\"} 3".into()),
            "{people:?}"
        );
        assert!(
            people.contains(&"usher_people{phase=\"Active\"} 3".into()),
            "{people:?}"
        );
        assert!(
            people.contains(&"usher_people{phase=\"Failed\"} 0".into()),
            "{people:?}"
        );
        m.forget_tenant("b/bolt");
        let people = samples(&m, "usher_people");
        assert!(
            people.contains(&"usher_people{phase=\"Pending\"} 1".into()),
            "{people:?}"
        );
    }

    #[test]
    fn held_offboardings_count_tenants_and_people_and_clear() {
        let m = Metrics::default();
        m.set_tenant_people("a/acme", &counts(5, 0));
        m.set_offboardings_held("a/acme", 4);
        m.set_offboardings_held("b/bolt", 2);
        m.set_offboardings_held("c/corp", 0);
        assert_eq!(
            samples(&m, "usher_offboarding_throttled_tenants"),
            ["usher_offboarding_throttled_tenants 2"]
        );
        assert_eq!(
            samples(&m, "usher_offboardings_held"),
            ["usher_offboardings_held 6"]
        );
        // Holding kept the people count, and releasing keeps it too.
        m.set_offboardings_held("a/acme", 0);
        assert_eq!(
            samples(&m, "usher_offboardings_held"),
            ["usher_offboardings_held 2"]
        );
        assert!(samples(&m, "usher_people").contains(&"usher_people{phase=\"Pending\"} 5".into()));
    }

    #[test]
    fn the_controllers_gauge_follows_the_guard_which_empties_the_tenant_gauges() {
        let m = Arc::new(Metrics::default());
        assert_eq!(
            samples(&m, "usher_controllers_running"),
            ["usher_controllers_running 0"]
        );
        let running = m.controllers_running();
        m.set_tenant_people("a/acme", &counts(2, 0));
        m.set_offboardings_held("a/acme", 1);
        assert_eq!(
            samples(&m, "usher_controllers_running"),
            ["usher_controllers_running 1"]
        );
        drop(running);
        assert_eq!(
            samples(&m, "usher_controllers_running"),
            ["usher_controllers_running 0"]
        );
        assert_eq!(
            samples(&m, "usher_offboardings_held"),
            ["usher_offboardings_held 0"]
        );
        assert!(samples(&m, "usher_people").contains(&"usher_people{phase=\"Pending\"} 0".into()));
    }

    #[test]
    fn the_kinds_exported_from_the_start_are_the_usher_kinds() {
        use crate::crd::{LocationGroup, RoleBinding, SystemUser, Tenant};
        use kube::Resource;
        assert_eq!(
            KINDS.map(String::from),
            [
                SystemUser::kind(&()),
                Tenant::kind(&()),
                LocationGroup::kind(&()),
                RoleBinding::kind(&()),
            ]
            .map(|k| k.to_string())
        );
        let lines = samples(&Metrics::default(), "usher_invalid_objects_total");
        assert_eq!(lines.len(), 4, "{lines:?}");
    }

    #[test]
    fn every_peer_and_reason_is_exported_from_the_start() {
        let m = Metrics::default();
        let lines = samples(&m, "usher_peer_errors_total");
        assert_eq!(lines.len(), PEERS.len() * PEER_REASONS.len(), "{lines:?}");
        assert!(lines.iter().all(|l| l.ends_with(" 0")), "{lines:?}");
    }
}
