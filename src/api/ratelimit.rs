//! Token-bucket rate limiting for endpoints ruma marks as rate-limited.
//!
//! Kept in memory on purpose: limits are per process and approximate by nature, and a restart
//! forgiving every client is harmless. Keys are user ids, or the peer address without a token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::RateLimitConfig;
use crate::error::{Error, Result};

/// Per-key token buckets.
pub struct RateLimiter {
    enabled: bool,
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter with the configured rate.
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            enabled: config.enabled,
            per_second: config.per_second,
            burst: config.burst as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`, or answers 429 with the wait until the next token.
    pub fn check(&self, key: &str) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            // Full buckets carry no information; dropping them bounds memory.
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - *tokens) / self.per_second * 1000.0).ceil() as u64;
            Err(Error::limit_exceeded(wait.max(1)))
        }
    }
}
