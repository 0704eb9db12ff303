//! A small in-memory token-bucket limiter: a few redemption tries per client and per token,
//! refilled slowly, so guessing tokens is hopeless and a typo costs nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets by key.
pub struct Limiter {
    capacity: f64,
    refill_every: Duration,
    max_keys: usize,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Limiter {
    /// `capacity` tries at once, one more every `refill_every`.
    pub fn new(capacity: u32, refill_every: Duration) -> Self {
        Self {
            capacity: f64::from(capacity),
            refill_every,
            max_keys: 100_000,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one try for `key`; false when its bucket is empty.
    pub fn try_take(&self, key: &str) -> bool {
        self.try_take_at(key, Instant::now())
    }

    fn try_take_at(&self, key: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= self.max_keys {
            // Full buckets carry no information; drop them to bound memory.
            let (cap, every) = (self.capacity, self.refill_every);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() / every.as_secs_f64() < cap
            });
            // Still full (a flood of distinct keys): start over rather than grow without bound.
            if buckets.len() >= self.max_keys {
                buckets.clear();
            }
        }
        let (tokens, at) = buckets
            .entry(key.to_string())
            .or_insert((self.capacity, now));
        let refilled = now.duration_since(*at).as_secs_f64() / self.refill_every.as_secs_f64();
        *tokens = (*tokens + refilled).min(self.capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_refills_slowly() {
        let limiter = Limiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!((0..3).all(|_| limiter.try_take_at("a", t0)));
        assert!(!limiter.try_take_at("a", t0));
        assert!(limiter.try_take_at("b", t0), "keys are independent");
        assert!(!limiter.try_take_at("a", t0 + Duration::from_secs(5)));
        assert!(limiter.try_take_at("a", t0 + Duration::from_secs(11)));
    }
}
