//! One token bucket for every network-side rate in the fleet layer: plugin publishes,
//! inbound jobs and commands, and refusal replies. It runs on the process's monotonic
//! time: these bound what the network may cost, never compare with an event's time.

use std::time::Instant;

/// A rate with a burst: `per_second` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// A token bucket at `rate`, full when made.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: Rate) -> Self {
        Self { rate, tokens: rate.burst as f64, at: Instant::now() }
    }

    /// Takes one token at `now` if there is one.
    pub fn take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate.per_second as f64).min(self.rate.burst as f64);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Takes one token now if there is one.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }
}

/// Counts what a limit shed and says so in the log at most once per `every`, with the count.
#[derive(Debug)]
pub struct ShedLog {
    what: &'static str,
    every: std::time::Duration,
    last: Option<Instant>,
    unreported: u64,
    /// Everything shed so far.
    pub total: u64,
}

impl ShedLog {
    pub fn new(what: &'static str, every: std::time::Duration) -> Self {
        Self { what, every, last: None, unreported: 0, total: 0 }
    }

    /// One more shed, with the reason; logs when the last report is older than `every`.
    pub fn shed(&mut self, reason: &'static str) {
        self.total = self.total.saturating_add(1);
        self.unreported = self.unreported.saturating_add(1);
        self.report(reason);
    }

    /// Reports what was shed since the last report once `every` has passed (call it
    /// now and then, so the tail of a flood is reported too).
    pub fn flush(&mut self) {
        self.report("since the last report");
    }

    fn report(&mut self, reason: &'static str) {
        let now = Instant::now();
        if self.unreported > 0 && self.last.is_none_or(|l| now.saturating_duration_since(l) >= self.every) {
            tracing::warn!(what = self.what, reason, shed = self.unreported, total = self.total, "inbound messages shed");
            self.unreported = 0;
            self.last = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket { rate: Rate { per_second: 10, burst: 3 }, tokens: 3.0, at: t0 };
        assert_eq!((0..5).filter(|_| b.take_at(t0)).count(), 3);
        assert!(!b.take_at(t0 + Duration::from_millis(50)));
        assert!(b.take_at(t0 + Duration::from_millis(100)));
        // A long pause saves up no more than the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.take_at(later)).count(), 3);
    }
}
