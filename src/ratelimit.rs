//! Token-bucket rate limits: the general limit on endpoints ruma marks as rate-limited, and the
//! limits that make guessing passwords and mass registration slow (Synapse's `rc_login` and
//! `rc_registration`, with its defaults).
//!
//! An admin may give one user a rate of their own (`override_ratelimit`, stored in the
//! database): it is read through a short-lived cache, so another process applies a change
//! within [`OVERRIDE_TTL`], this process at once.
//!
//! Kept in memory on purpose: limits are per process and approximate by nature, and a restart
//! forgiving every client is harmless. Keys are user ids, or client addresses (see
//! `api::extract::client_ip` for how a reverse proxy's address is looked through).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{Bucket, RateLimitConfig};
use crate::error::{Error, Result};
use crate::storage::Db;
use crate::storage::user_overrides::RateOverride;

/// How long a user's rate override (or its absence) is trusted before it is read again.
pub const OVERRIDE_TTL: Duration = Duration::from_secs(5);

/// Most keys a limiter remembers; beyond it, full buckets (which carry no information) are
/// dropped, and if that is not enough, the oldest half.
const MAX_KEYS: usize = 100_000;

/// Per-key token buckets of one rate.
pub struct RateLimiter {
    enabled: bool,
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter with `bucket`'s rate; a disabled one allows everything.
    pub fn new(enabled: bool, bucket: Bucket) -> Self {
        Self {
            enabled,
            per_second: bucket.per_second,
            burst: f64::from(bucket.burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`, or answers 429 with the wait until the next token.
    pub fn check(&self, key: &str) -> Result<()> {
        self.apply(key, |tokens| {
            if *tokens >= 1.0 {
                *tokens -= 1.0;
                true
            } else {
                false
            }
        })
    }

    /// Answers 429 if `key` has no token left, without taking one: for limits that count only
    /// some outcomes (a failed password, a completed registration), taken with [`Self::record`].
    pub fn peek(&self, key: &str) -> Result<()> {
        self.apply(key, |tokens| *tokens >= 1.0)
    }

    /// Takes one token for `key` if it has one.
    pub fn record(&self, key: &str) {
        let _ = self.check(key);
    }

    /// As [`Self::check`], at a rate other than the limiter's own (a per-user override).
    pub fn check_at(&self, key: &str, per_second: f64, burst: f64) -> Result<()> {
        self.apply_at(key, per_second, burst, |tokens| {
            if *tokens >= 1.0 {
                *tokens -= 1.0;
                true
            } else {
                false
            }
        })
    }

    fn apply(&self, key: &str, take: impl FnOnce(&mut f64) -> bool) -> Result<()> {
        self.apply_at(key, self.per_second, self.burst, take)
    }

    fn apply_at(&self, key: &str, per_second: f64, burst: f64, take: impl FnOnce(&mut f64) -> bool) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let rate = per_second;
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_KEYS {
                let mut ages: Vec<Instant> = buckets.values().map(|(_, at)| *at).collect();
                let (_, median, _) = ages.select_nth_unstable(MAX_KEYS / 2);
                let median = *median;
                buckets.retain(|_, (_, at)| *at > median);
            }
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_second).min(burst);
        *at = now;
        if take(tokens) {
            Ok(())
        } else {
            let wait = ((1.0 - *tokens) / per_second * 1000.0).ceil() as u64;
            Err(Error::limit_exceeded(wait.max(1)))
        }
    }
}

/// The limits the client API applies, built once from `[rate_limits]`.
pub struct Limits {
    /// Writes to endpoints ruma marks as rate-limited, per user (or per address without a token).
    pub requests: RateLimiter,
    /// Login attempts per client address.
    pub login_address: RateLimiter,
    /// Login attempts per account.
    pub login_account: RateLimiter,
    /// Registrations per client address (taken when one completes).
    pub registration: RateLimiter,
    /// The buckets of users with a rate override (kept apart: their rates differ).
    overridden: RateLimiter,
    /// Users' overrides as last read, with when they were read.
    overrides: Mutex<HashMap<String, (Option<RateOverride>, Instant)>>,
}

impl Limits {
    /// The limiters of `config`.
    pub fn new(config: &RateLimitConfig) -> Self {
        let on = config.enabled;
        Self {
            requests: RateLimiter::new(on, Bucket { per_second: config.per_second, burst: config.burst }),
            login_address: RateLimiter::new(on, config.login_address),
            login_account: RateLimiter::new(on, config.login_account),
            registration: RateLimiter::new(on, config.registration),
            overridden: RateLimiter::new(on, Bucket { per_second: config.per_second, burst: config.burst }),
            overrides: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request token of `user_id`, at the rate an admin set for them if there is
    /// one (0/0: not limited), at the configured rate otherwise.
    pub async fn check_user_request(&self, db: &Db, user_id: &str) -> Result<()> {
        if !self.requests.enabled {
            return Ok(());
        }
        let cached = {
            let overrides = self.overrides.lock().unwrap_or_else(|e| e.into_inner());
            overrides.get(user_id).filter(|(_, at)| at.elapsed() < OVERRIDE_TTL).map(|(o, _)| *o)
        };
        let rate = match cached {
            Some(rate) => rate,
            None => {
                let rate = db.ratelimit_override(user_id).await?;
                let mut overrides = self.overrides.lock().unwrap_or_else(|e| e.into_inner());
                if overrides.len() >= MAX_KEYS {
                    overrides.retain(|_, (_, at)| at.elapsed() < OVERRIDE_TTL);
                    if overrides.len() >= MAX_KEYS {
                        overrides.clear();
                    }
                }
                overrides.insert(user_id.to_owned(), (rate, Instant::now()));
                rate
            }
        };
        match rate {
            None => self.requests.check(user_id),
            Some(RateOverride { messages_per_second: 0, burst_count: 0 }) => Ok(()),
            Some(RateOverride { messages_per_second, burst_count }) => {
                // A bucket of 0 would refuse everything; a rate of 0 (with a burst) never refills.
                let per_second = (messages_per_second as f64).max(f64::MIN_POSITIVE);
                self.overridden.check_at(user_id, per_second, (burst_count as f64).max(1.0))
            }
        }
    }

    /// Forgets the cached override of `user_id` (it was just changed here) and its bucket.
    pub fn forget_override(&self, user_id: &str) {
        self.overrides.lock().unwrap_or_else(|e| e.into_inner()).remove(user_id);
        self.overridden.buckets.lock().unwrap_or_else(|e| e.into_inner()).remove(user_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_empties_and_refills() {
        let limiter = RateLimiter::new(true, Bucket { per_second: 1000.0, burst: 2 });
        assert!(limiter.check("a").is_ok() && limiter.check("a").is_ok());
        assert!(limiter.check("a").is_err());
        assert!(limiter.check("b").is_ok(), "keys are independent");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(limiter.check("a").is_ok());
    }

    #[test]
    fn peek_does_not_take_and_record_does() {
        let limiter = RateLimiter::new(true, Bucket { per_second: 0.001, burst: 1 });
        assert!(limiter.peek("a").is_ok() && limiter.peek("a").is_ok());
        limiter.record("a");
        assert!(limiter.peek("a").is_err());
    }

    #[test]
    fn keys_stay_bounded() {
        let limiter = RateLimiter::new(true, Bucket { per_second: 0.001, burst: 5 });
        for i in 0..(MAX_KEYS * 2) {
            let _ = limiter.check(&i.to_string());
        }
        assert!(limiter.buckets.lock().unwrap().len() <= MAX_KEYS);
    }
}
