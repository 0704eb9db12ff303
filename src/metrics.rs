//! Prometheus metrics, served at `/metrics`. Labels are low-cardinality: kinds, results and
//! error categories, never names or emails.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
            registry: Registry::default(),
        };
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
}
