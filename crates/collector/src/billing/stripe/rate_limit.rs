//! A client-side token bucket, so a sync burst stays under Stripe's meter event
//! limit (1,000 requests/s in live mode, far less in test mode) instead of
//! collecting 429s.

use std::time::{Duration, Instant};

/// `rate` tokens per second, at most `burst` saved up. Pure: the caller passes the
/// time in.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Starts full. `rate` must be positive; `burst` is at least one token.
    pub fn new(rate: f64, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: rate.max(f64::MIN_POSITIVE),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token if one is there (`None`), else says how long until one is.
    pub fn try_take(&mut self, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// The bucket shared by all of a client's requests.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: std::sync::Mutex<TokenBucket>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            bucket: std::sync::Mutex::new(TokenBucket::new(rate, burst, Instant::now())),
        }
    }

    /// Waits until the request may go.
    pub async fn acquire(&self) {
        loop {
            let wait = self
                .bucket
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .try_take(Instant::now());
            match wait {
                None => return,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_a_burst_then_paces_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3, t0);
        for _ in 0..3 {
            assert_eq!(bucket.try_take(t0), None);
        }
        let wait = bucket.try_take(t0).unwrap();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert_eq!(bucket.try_take(t0 + Duration::from_millis(100)), None);
        assert!(bucket.try_take(t0 + Duration::from_millis(100)).is_some());
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(100.0, 2, t0);
        bucket.try_take(t0);
        bucket.try_take(t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(bucket.try_take(later), None);
        assert_eq!(bucket.try_take(later), None);
        assert!(bucket.try_take(later).is_some());
    }

    #[tokio::test]
    async fn the_limiter_spaces_requests_beyond_the_burst() {
        let limiter = RateLimiter::new(50.0, 1);
        let start = Instant::now();
        for _ in 0..4 {
            limiter.acquire().await;
        }
        // One from the burst, then three at 20 ms each.
        assert!(
            start.elapsed() >= Duration::from_millis(55),
            "{:?}",
            start.elapsed()
        );
    }
}
