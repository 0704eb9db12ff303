//! How long a failed reconcile waits before it tries again.
//!
//! An outage (mail server, store, API server) fails every object at once. Each object's wait
//! doubles with its consecutive failures, so that an hour-long outage costs a handful of tries
//! per object rather than one every few seconds, and is spread by a jitter derived from the
//! object, so that thousands of them do not come back in one burst.

use std::time::Duration;

/// The first retry's wait.
pub const FIRST: Duration = Duration::from_secs(1);

/// The wait never grows beyond this: a healed outage is noticed within it.
pub const CAP: Duration = Duration::from_secs(300);

/// The wait after the `failures`-th consecutive failure (1 for the first) of the object whose
/// key is `key`: `FIRST` doubled per earlier failure, capped at `CAP`, stretched by up to a
/// quarter by the key so that objects failing together spread out.
pub fn backoff(failures: u32, key: &str) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let base = FIRST.saturating_mul(1 << doublings).min(CAP);
    // FNV-1a: stable across runs and processes, unlike the std hasher.
    let hash = key
        .bytes()
        .chain(failures.to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let stretch = (hash % 1024) as f64 / 4096.0; // [0, 0.25)
    base.mul_f64(1.0 + stretch).min(CAP)
}

/// The waits between tries to record that a mail went out. Failing to record it means the
/// next reconcile mails the person again, so a store hiccup right after a send is waited out
/// (6.3 s in all) before usher gives up and accepts the duplicate.
pub const MARK_SENT_WAITS: [Duration; 6] = [
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
    Duration::from_millis(1600),
    Duration::from_millis(3200),
];

/// The tries within `window` of one object that fails throughout: the bound an outage test
/// holds usher to.
pub fn tries_within(window: Duration) -> u32 {
    let mut elapsed = Duration::ZERO;
    let mut tries: u32 = 1; // the first attempt, which found the outage
    loop {
        // The shortest possible wait (no stretch) gives the most tries.
        let wait = FIRST
            .saturating_mul(1 << tries.min(20).saturating_sub(1))
            .min(CAP);
        elapsed += wait;
        if elapsed > window {
            return tries;
        }
        tries += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_up_to_the_cap() {
        let waits: Vec<u64> = (1..=12).map(|n| backoff(n, "a/b").as_secs()).collect();
        for (n, w) in waits.iter().enumerate() {
            let base = (1u64 << n).min(300);
            assert!(
                (base..=base + base / 4).contains(w) || *w == 300,
                "failure {}: waited {w}s, expected {base}s..{}s",
                n + 1,
                base + base / 4
            );
        }
        assert_eq!(
            backoff(u32::MAX, "a/b"),
            CAP,
            "huge counts must not overflow"
        );
        assert_eq!(
            backoff(0, "a/b").as_secs(),
            1,
            "no failure yet: the first wait"
        );
    }

    #[test]
    fn objects_failing_together_come_back_at_different_times() {
        let waits: std::collections::BTreeSet<Duration> = (0..100)
            .map(|i| backoff(5, &format!("ns/user-{i}")))
            .collect();
        assert!(
            waits.len() > 50,
            "only {} distinct waits of 100",
            waits.len()
        );
        assert_eq!(backoff(5, "ns/x"), backoff(5, "ns/x"), "stable per object");
    }

    #[test]
    fn tries_within_counts_the_schedule() {
        // Tries at 0, 1, 3, 7, 15, 31 s: six fit in 40 s.
        assert_eq!(tries_within(Duration::from_secs(40)), 6);
        assert_eq!(tries_within(Duration::ZERO), 1);
        // An hour: ten tries by 511 s, then one per 300 s.
        assert_eq!(
            tries_within(Duration::from_secs(3600)),
            10 + (3600 - 511) / 300
        );
    }
}
