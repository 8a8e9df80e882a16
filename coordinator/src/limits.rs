//! Limits that keep an attacker from turning refusals into work or noise.
//!
//! - [`FailedJoins`]: failed joins per source address in a sliding window; past the limit an
//!   address is refused before its token is even looked at, so guessing tokens is slow.
//! - [`LogBudget`]: a token bucket for refusal log lines; lines over budget are counted and the
//!   count is reported with the next line that fits, so a flood costs one line a second.
//!
//! - [`MessageBudget`]: a token bucket for one session's control messages. One authenticated
//!   node spamming job reports or renewals (each can cost a decision and a write) must not
//!   stall the coordinator for everyone: past its budget its control stream is simply not
//!   read until the bucket refills, so QUIC's flow control slows the node down and nothing it
//!   sent is dropped.
//!
//! Plain structs driven by `now`, like the detector.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failed joins allowed per address per window.
pub const FAILED_JOINS_ALLOWED: u32 = 10;
/// The window.
pub const FAILED_JOINS_WINDOW: Duration = Duration::from_secs(60);

/// Failed joins per source address.
#[derive(Debug, Default)]
pub struct FailedJoins {
    by_ip: HashMap<IpAddr, (Instant, u32)>,
}

impl FailedJoins {
    /// `Err(wait)` when `ip` used up its failures in the current window.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.by_ip.get(&ip) {
            Some((start, n))
                if now.duration_since(*start) < FAILED_JOINS_WINDOW
                    && *n >= FAILED_JOINS_ALLOWED =>
            {
                Err(FAILED_JOINS_WINDOW - now.duration_since(*start))
            }
            _ => Ok(()),
        }
    }

    /// Records a failed join from `ip`.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        if self.by_ip.len() > 100_000 {
            self.by_ip
                .retain(|_, (start, _)| now.duration_since(*start) < FAILED_JOINS_WINDOW);
        }
        let e = self.by_ip.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= FAILED_JOINS_WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
    }
}

/// A token bucket for log lines.
#[derive(Debug)]
pub struct LogBudget {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogBudget {
    /// `per_second` lines on average, bursts up to `burst`.
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self {
            per_second,
            burst,
            tokens: burst,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(lines suppressed since the last allowed one)` if a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if let Some(last) = self.last {
            self.tokens = (self.tokens + now.duration_since(last).as_secs_f64() * self.per_second)
                .min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_joins_block_an_address_for_the_rest_of_the_window() {
        let t0 = Instant::now();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        let mut f = FailedJoins::default();
        for i in 0..FAILED_JOINS_ALLOWED {
            assert!(f.check(ip, t0).is_ok(), "failure {i} still allowed");
            f.failed(ip, t0);
        }
        let wait = f.check(ip, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(
            f.check(other, t0).is_ok(),
            "other addresses are not affected"
        );
        assert!(
            f.check(ip, t0 + FAILED_JOINS_WINDOW).is_ok(),
            "a new window starts clean"
        );
    }

    #[test]
    fn log_budget_counts_what_it_suppresses() {
        let t0 = Instant::now();
        let mut b = LogBudget::new(1.0, 3.0);
        assert_eq!(b.allow(t0), Some(0));
        assert_eq!(b.allow(t0), Some(0));
        assert_eq!(b.allow(t0), Some(0));
        assert_eq!(b.allow(t0), None);
        assert_eq!(b.allow(t0), None);
        assert_eq!(b.allow(t0 + Duration::from_secs(1)), Some(2));
    }
}

/// Control messages a session may send per second on average.
pub const MESSAGES_PER_SECOND: f64 = 200.0;
/// ... and at once (a node with many jobs reports them all after a start-up).
pub const MESSAGES_BURST: f64 = 2_000.0;
/// Certificate renewals a session may ask for at most this often (certificates live at least
/// 10 s and are renewed at 60-70 % of their life, so an honest agent never asks sooner).
pub const RENEWAL_EVERY: Duration = Duration::from_secs(5);

/// A token bucket for one session's control messages.
#[derive(Debug)]
pub struct MessageBudget {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    last_renewal: Option<Instant>,
}

impl MessageBudget {
    /// A full bucket at `now`.
    pub fn new(per_second: f64, burst: f64, now: Instant) -> Self {
        Self {
            per_second,
            burst,
            tokens: burst,
            last: now,
            last_renewal: None,
        }
    }

    /// Takes one message's token. `None`: read on; `Some(wait)`: read nothing more for
    /// `wait` (this message is still handled).
    pub fn take(&mut self, now: Instant) -> Option<Duration> {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.per_second).min(self.burst) - 1.0;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.per_second))
    }

    /// Whether a certificate renewal may be served now (at most one per [`RENEWAL_EVERY`]).
    pub fn renewal(&mut self, now: Instant) -> bool {
        match self.last_renewal {
            Some(t) if now.saturating_duration_since(t) < RENEWAL_EVERY => false,
            _ => {
                self.last_renewal = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut b = MessageBudget::new(100.0, 10.0, t0);
        for _ in 0..10 {
            assert_eq!(b.take(t0), None);
        }
        let wait = b.take(t0).expect("over the burst");
        assert!((wait.as_secs_f64() - 0.01).abs() < 1e-6, "{wait:?}");
        // After the wait one more message fits.
        let t1 = t0 + Duration::from_millis(20);
        assert_eq!(b.take(t1), None);
        // A second of silence refills the burst, no more.
        let t2 = t1 + Duration::from_secs(1);
        for _ in 0..10 {
            assert_eq!(b.take(t2), None);
        }
        assert!(b.take(t2).is_some());
    }

    #[test]
    fn renewals_are_served_once_per_interval() {
        let t0 = Instant::now();
        let mut b = MessageBudget::new(100.0, 10.0, t0);
        assert!(b.renewal(t0));
        assert!(!b.renewal(t0 + Duration::from_secs(4)));
        assert!(b.renewal(t0 + RENEWAL_EVERY));
    }
}
