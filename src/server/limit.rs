//! Redemption limits by key (a client address, a token, an invited address): a burst of tries,
//! then one more per period, so that guessing is hopeless and a typo costs nothing. The
//! arithmetic is `governor`'s GCRA; this wrapper adds only a bound on memory that fails closed.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// Keys a [`Limiter`] tracks at most. Past this, buckets back at full are dropped (a sweep, at
/// most once per [`MAX_KEYS`] / 100 tries, so that a flood does not buy a sweep per request);
/// if every bucket is still in use, [`Full`] says what happens.
const MAX_KEYS: usize = 100_000;

/// What a [`Limiter`] full of buckets in use does with a try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// Refuse it: for a count that guards a secret (a token, an address's short code), whose
    /// reset would give a guesser fresh tries.
    Refuse,
    /// Admit it uncounted: for a count that only spreads load (per client), where refusing
    /// would shut everyone out under a flood of addresses. The counts that guard secrets still
    /// apply.
    Admit,
}

/// Tries by key: `burst` at once, then one more every `period`.
pub struct Limiter<C: Clock = DefaultClock> {
    inner: RateLimiter<String, DashMapStateStore<String>, C, NoOpMiddleware<C::Instant>>,
    max_keys: usize,
    full: Full,
    /// Tries since the last sweep.
    since_sweep: std::sync::atomic::AtomicUsize,
}

impl Limiter {
    /// `burst` tries at once (at least 1), one more every `period` (at least 1 ns); `full` when
    /// [`MAX_KEYS`] keys are all in use.
    pub fn new(burst: u32, period: Duration, full: Full) -> Self {
        Self::with_clock(burst, period, DefaultClock::default(), MAX_KEYS, full)
    }
}

impl<C: Clock> Limiter<C> {
    fn with_clock(burst: u32, period: Duration, clock: C, max_keys: usize, full: Full) -> Self {
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .expect("a period of at least 1 ns")
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Self {
            inner: RateLimiter::dashmap_with_clock(quota, clock),
            max_keys,
            full,
            since_sweep: Default::default(),
        }
    }

    /// Take one try for `key`; false when its tries are used up (or, under a flood of distinct
    /// keys with [`Full::Refuse`], when no bucket could be freed for it).
    pub fn try_take(&self, key: &str) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.inner.len() >= self.max_keys {
            let every = (self.max_keys / 100).max(1);
            if self.since_sweep.fetch_add(1, Relaxed) + 1 >= every {
                self.since_sweep.store(0, Relaxed);
                // A bucket back at full carries no information: dropping it forgets nothing.
                self.inner.retain_recent();
                self.inner.shrink_to_fit();
            }
            if self.inner.len() >= self.max_keys {
                return self.full == Full::Admit;
            }
        }
        self.inner.check_key(&key.to_string()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn allows_a_burst_then_refills_slowly() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock(
            3,
            Duration::from_secs(10),
            clock.clone(),
            MAX_KEYS,
            Full::Refuse,
        );
        assert!((0..3).all(|_| limiter.try_take("a")));
        assert!(!limiter.try_take("a"));
        assert!(limiter.try_take("b"), "keys are independent");
        clock.advance(Duration::from_secs(5));
        assert!(!limiter.try_take("a"));
        clock.advance(Duration::from_secs(6));
        assert!(limiter.try_take("a"), "one more after a period");
        assert!(!limiter.try_take("a"), "and only one");
    }

    #[test]
    fn a_flood_of_keys_never_forgets_a_bucket_in_use() {
        let clock = FakeRelativeClock::default();
        let limiter =
            Limiter::with_clock(2, Duration::from_secs(60), clock.clone(), 3, Full::Refuse);
        assert!(limiter.try_take("guessed") && limiter.try_take("guessed"));
        assert!(!limiter.try_take("guessed"));
        assert!(limiter.try_take("k1") && limiter.try_take("k2"));
        // Full of buckets in use: new keys are refused, and "guessed" stays empty.
        assert!(!limiter.try_take("k3"));
        assert!(!limiter.try_take("guessed"));
        // Once buckets are back at full, they are dropped and room is made.
        clock.advance(Duration::from_secs(121));
        assert!(limiter.try_take("k3"));
        assert!(limiter.try_take("guessed"));
    }

    #[test]
    fn a_count_that_only_spreads_load_admits_uncounted_under_a_flood() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock(1, Duration::from_secs(60), clock, 2, Full::Admit);
        assert!(limiter.try_take("a") && limiter.try_take("b"));
        // Full of buckets in use: a new client is let in, and so is every other try.
        assert!(limiter.try_take("c"));
        assert!(limiter.try_take("a"));
    }
}
