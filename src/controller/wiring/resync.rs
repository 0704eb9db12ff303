//! The resync: each controller visits every object it caches, one at a time, pass after pass
//! ([`paced`]). The first pass after a start is the catch-up: it begins once every cache is
//! filled and hands the objects out as fast as the controller takes them, never more than an
//! [`Intake`]'s window ahead. The watches do not wake anything for the objects of their first
//! list ([`super::feed::Feed::changes`]): kube's queue keeps the capacity it once needed for
//! the life of the process, and a start among 10,000 people that queued them all held about
//! 4 MiB a controller after it was done (BENCHMARKS.md, the restarted process).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use kube::Resource;
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{Notify, watch};

/// How long a catch-up waits for a controller to report any of its keys handled before it
/// stops waiting for them: a request can end without a report (a queue error names no
/// object), and a resync must not stop for that.
const STALL: Duration = Duration::from_secs(10);

/// The keys a controller was handed by its resync ([`paced`]) and has not yet reported
/// handled (its results, through [`Intake::handled`]), at most `window` of them.
pub(super) struct Intake {
    window: usize,
    keys: Mutex<HashSet<(String, String)>>,
    handled: Notify,
}

impl Intake {
    /// At most `window` keys (at least one) handed out and not yet handled: twice a
    /// controller's concurrency keeps it busy.
    pub(super) fn new(window: usize) -> Arc<Self> {
        Arc::new(Self {
            window: window.max(1),
            keys: Mutex::default(),
            handled: Notify::new(),
        })
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until fewer than `window` keys are out, then count `ns`/`name` as out. After
    /// [`STALL`] without any key handled, the keys out are forgotten.
    async fn admit(&self, ns: &str, name: &str) {
        loop {
            let handled = self.handled.notified();
            tokio::pin!(handled);
            handled.as_mut().enable();
            {
                let mut keys = self.keys();
                if keys.len() < self.window {
                    keys.insert((ns.to_string(), name.to_string()));
                    return;
                }
            }
            if tokio::time::timeout(STALL, handled).await.is_err() {
                tracing::info!(
                    out = self.window,
                    "no resync visit reported handled for a while; not waiting for them"
                );
                self.keys().clear();
            }
        }
    }

    /// What a controller's results stream is consumed with (`for_each`): each result, a
    /// reconcile's or an object no longer cached, hands its key back.
    pub(super) fn handled<K, E, Q>(
        self: &Arc<Self>,
    ) -> impl FnMut(Outcome<K, E, Q>) -> futures::future::Ready<()> + use<K, E, Q>
    where
        K: Resource,
    {
        let intake = self.clone();
        move |result| {
            let key = match &result {
                Ok((key, _)) => Some((key.namespace.as_deref(), key.name.as_str())),
                Err(
                    controller::Error::ObjectNotFound(key)
                    | controller::Error::ReconcilerFailed(_, key),
                ) => Some((key.namespace.as_deref(), key.name.as_str())),
                Err(_) => None,
            };
            if let Some((ns, name)) = key {
                let owned = (ns.unwrap_or_default().to_string(), name.to_string());
                if intake.keys().remove(&owned) {
                    intake.handled.notify_waiters();
                }
            }
            futures::future::ready(())
        }
    }
}

/// One result of a controller's `run` stream: the key it reconciled, or why it could not.
type Outcome<K, E, Q> = Result<(ObjectRef<K>, Action), controller::Error<E, Q>>;

/// Every watch's first list: complete once each of them is.
#[derive(Clone)]
pub(super) struct Listed(pub(super) Vec<watch::Receiver<bool>>);

impl Listed {
    /// Wait until every watch has listed once (for ever if one never does: its controllers
    /// could not reconcile on a partial cache anyway).
    async fn wait(mut self) {
        for listed in &mut self.0 {
            if listed.wait_for(|l| *l).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Every object cached in `store`, one at a time. The first pass starts once every watch has
/// listed (`listed`) and goes as fast as `intake` admits; each later pass is spread evenly
/// over `period`: with `n` objects, one every `period / n`, in the order of their keys. This
/// is the resync (`--resync`): an object is looked at again at most two periods after its
/// last visit (one when none arrive meanwhile), without a timer of its own in a controller's
/// queue (0.4 KB an object, for every object; README, "Where the memory goes"), and without the
/// burst a resync of everything at once would be. A deadline sooner than that keeps its own
/// timer ([`crate::controller::after`]).
pub(super) fn paced<K>(
    store: Store<K>,
    period: Duration,
    listed: Listed,
    intake: Arc<Intake>,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    // A pass holds the keys only (each namespace once), not the objects: an object updated
    // meanwhile would otherwise be kept twice until its turn.
    type Pass = VecDeque<(Arc<str>, Box<str>)>;
    // Each visit is due at a fixed point of its pass (the k-th of n at start + period * k / n),
    // not a step after the one before: a step waited after each visit would add every delay
    // of a busy runtime (and tokio's rounding up to the millisecond) to all visits after it,
    // and a pass of 60,000 objects at one a millisecond would outlast its period.
    struct Round {
        pass: Pass,
        start: tokio::time::Instant,
        n: usize,
        catch_up: bool,
    }
    struct State<K: Resource<DynamicType = ()> + 'static> {
        store: Store<K>,
        listed: Option<Listed>,
        intake: Arc<Intake>,
        round: Round,
    }
    let state = State {
        store,
        listed: Some(listed),
        intake,
        round: Round {
            pass: Pass::new(),
            start: tokio::time::Instant::now(),
            n: 0,
            catch_up: false,
        },
    };
    futures::stream::unfold(state, move |mut state| async move {
        let mut first = match state.listed.take() {
            Some(listed) => {
                listed.wait().await;
                true
            }
            None => false,
        };
        let round = &mut state.round;
        let (ns, name) = loop {
            if let Some(next) = round.pass.pop_front() {
                break next;
            }
            let mut keys: Vec<(String, String)> = state
                .store
                .state()
                .iter()
                .map(|o| {
                    let m = o.meta();
                    (
                        m.namespace.clone().unwrap_or_default(),
                        m.name.clone().unwrap_or_default(),
                    )
                })
                .collect();
            // Only the pass begun right after the first lists: a store empty then has nothing
            // to catch up on.
            round.catch_up = std::mem::take(&mut first);
            if keys.is_empty() {
                tokio::time::sleep(period).await;
                continue;
            }
            keys.sort_unstable();
            round.n = keys.len();
            round.start = tokio::time::Instant::now();
            let mut current: Arc<str> = Arc::from("");
            for (ns, name) in keys {
                if *current != *ns {
                    current = Arc::from(ns);
                }
                round
                    .pass
                    .push_back((current.clone(), name.into_boxed_str()));
            }
        };
        if !round.catch_up {
            // usize → f64 loses nothing below 2^53 objects.
            #[allow(clippy::cast_precision_loss)]
            let done = (round.n - round.pass.len()) as f64 / round.n as f64;
            tokio::time::sleep_until(round.start + period.mul_f64(done)).await;
        }
        state.intake.admit(&ns, &name).await;
        let key = ObjectRef::new(&name);
        let key = if ns.is_empty() { key } else { key.within(&ns) };
        Some((key, state))
    })
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use kube::runtime::reflector;
    use kube::runtime::watcher;

    use super::*;
    use crate::crd::Tenant;

    /// A cache holding `tenants`, its first list complete.
    fn listed_store(
        tenants: impl IntoIterator<Item = Tenant>,
    ) -> (Store<Tenant>, reflector::store::Writer<Tenant>) {
        let (reader, mut writer) = reflector::store::<Tenant>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for t in tenants {
            writer.apply_watcher_event(&watcher::Event::InitApply(t));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        (reader, writer)
    }

    fn listed() -> Listed {
        let (tx, rx) = watch::channel(true);
        std::mem::forget(tx);
        Listed(vec![rx])
    }

    fn named(key: &ObjectRef<Tenant>) -> String {
        format!(
            "{}/{}",
            key.namespace.as_deref().unwrap_or_default(),
            key.name
        )
    }

    /// What a controller reports when it is done with `key`.
    fn report(intake: &Arc<Intake>, key: &ObjectRef<Tenant>) {
        let mut handled = intake.handled::<Tenant, std::io::Error, std::io::Error>();
        drop(handled(Ok((key.clone(), Action::await_change()))));
    }

    /// The next `n` visits, each reported handled, with the whole seconds since `start`.
    async fn visit(
        visits: &mut (impl Stream<Item = ObjectRef<Tenant>> + Unpin),
        intake: &Arc<Intake>,
        start: tokio::time::Instant,
        n: usize,
    ) -> Vec<(String, u64)> {
        let mut seen = Vec::new();
        for _ in 0..n {
            let key = visits.next().await.unwrap();
            report(intake, &key);
            seen.push((named(&key), start.elapsed().as_secs()));
        }
        seen
    }

    /// The next visit within a second, if any.
    async fn within_a_second(
        visits: &mut (impl Stream<Item = ObjectRef<Tenant>> + Unpin),
    ) -> Option<ObjectRef<Tenant>> {
        tokio::time::timeout(Duration::from_secs(1), visits.next())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_catch_up_each_pass_visits_each_object_once_spread_evenly_and_finds_new_ones()
    {
        let (reader, mut writer) = listed_store(
            [("b", "x"), ("a", "y"), ("a", "x"), ("c", "z")].map(|(ns, n)| Tenant::named(ns, n)),
        );
        let period = Duration::from_secs(40);
        let intake = Intake::new(8);
        let start = tokio::time::Instant::now();
        let mut visits = Box::pin(paced(reader, period, listed(), intake.clone()));
        let at = |v: [(&str, u64); 4]| v.map(|(k, s)| (k.to_string(), s)).to_vec();
        // The catch-up, at once, in key order.
        assert_eq!(
            visit(&mut visits, &intake, start, 4).await,
            at([("a/x", 0), ("a/y", 0), ("b/x", 0), ("c/z", 0)])
        );
        // Then one every period / 4.
        assert_eq!(
            visit(&mut visits, &intake, start, 4).await,
            at([("a/x", 10), ("a/y", 20), ("b/x", 30), ("c/z", 40)])
        );
        // An object that arrived during a pass is in the next one; a deleted one is not.
        writer.apply_watcher_event(&watcher::Event::Apply(Tenant::named("a", "w")));
        writer.apply_watcher_event(&watcher::Event::Delete(Tenant::named("c", "z")));
        assert_eq!(
            visit(&mut visits, &intake, start, 4).await,
            at([("a/w", 50), ("a/x", 60), ("a/y", 70), ("b/x", 80)])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_catch_up_waits_for_every_first_list_and_keeps_a_window_out() {
        let (reader, _writer) =
            listed_store((0..10).map(|i| Tenant::named("acme", &format!("t{i}"))));
        let (users_listed, users) = watch::channel(false);
        let (groups_listed, groups) = watch::channel(false);
        let intake = Intake::new(3);
        let mut visits = Box::pin(paced(
            reader,
            Duration::from_secs(3600),
            Listed(vec![users, groups]),
            intake.clone(),
        ));
        assert!(
            within_a_second(&mut visits).await.is_none(),
            "not before the lists"
        );
        groups_listed.send_replace(true);
        assert!(
            within_a_second(&mut visits).await.is_none(),
            "not before every list"
        );
        users_listed.send_replace(true);
        let out: Vec<ObjectRef<Tenant>> = [
            within_a_second(&mut visits).await.unwrap(),
            within_a_second(&mut visits).await.unwrap(),
            within_a_second(&mut visits).await.unwrap(),
        ]
        .into();
        assert!(
            within_a_second(&mut visits).await.is_none(),
            "a window of three"
        );
        report(&intake, &out[1]);
        let fourth = within_a_second(&mut visits).await.unwrap();
        assert_eq!(named(&fourth), "acme/t3");
        assert!(within_a_second(&mut visits).await.is_none());
        // A controller that never reports does not stop the resync for good, but holds it
        // until the stall time has passed.
        tokio::time::sleep(STALL - Duration::from_secs(3)).await;
        assert!(within_a_second(&mut visits).await.is_none());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            named(&within_a_second(&mut visits).await.unwrap()),
            "acme/t4"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_empty_at_the_start_has_no_catch_up_and_its_first_pass_is_spread() {
        let (reader, mut writer) = listed_store([]);
        let period = Duration::from_secs(40);
        let intake = Intake::new(8);
        let start = tokio::time::Instant::now();
        let mut visits = Box::pin(paced(reader, period, listed(), intake.clone()));
        assert!(within_a_second(&mut visits).await.is_none());
        for name in ["w", "x", "y", "z"] {
            writer.apply_watcher_event(&watcher::Event::Apply(Tenant::named("a", name)));
        }
        let at = |v: [(&str, u64); 4]| v.map(|(k, s)| (k.to_string(), s)).to_vec();
        assert_eq!(
            visit(&mut visits, &intake, start, 4).await,
            at([("a/w", 50), ("a/x", 60), ("a/y", 70), ("a/z", 80)])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_of_many_objects_fits_its_period_though_each_step_is_under_a_millisecond() {
        let (reader, _writer) =
            listed_store((0..5_000).map(|i| Tenant::named(&format!("ns{i:04}"), "t")));
        let period = Duration::from_secs(1);
        let intake = Intake::new(usize::MAX);
        let visits = paced(reader, period, listed(), intake);
        // The catch-up first, at once; then the pass measured.
        let mut visits = Box::pin(visits.skip(5_000));
        let start = tokio::time::Instant::now();
        let visited: Vec<_> = (&mut visits).take(5_000).collect().await;
        assert_eq!(visited.len(), 5_000);
        // A step of 0.2 ms waited after each visit would take at least 5 s (tokio's timer
        // counts whole milliseconds).
        let took = start.elapsed();
        assert!(
            took <= period + Duration::from_millis(2),
            "a pass of 5,000 took {took:?}"
        );
    }
}
