//! Host capabilities a plugin may import, one self-contained unit each
//! (the "factor" pattern): adding a capability touches this folder and the
//! one line in `runtime.rs` that links it.

pub mod clock;
pub mod config;
pub mod kv;
pub mod log;
pub mod publish;

/// A per-second budget over the gateway's clock (virtual in replay), so the
/// same trace always drops the same lines.
#[derive(Debug, Clone)]
pub(crate) struct RateWindow {
    per_sec: u32,
    window_start_ms: i64,
    used: u32,
}

impl RateWindow {
    pub(crate) fn new(per_sec: u32) -> Self {
        RateWindow { per_sec, window_start_ms: i64::MIN, used: 0 }
    }

    /// Takes one unit of budget at `now_ms`; false when the second's budget is spent.
    pub(crate) fn take(&mut self, now_ms: i64) -> bool {
        if now_ms.saturating_sub(self.window_start_ms) >= 1000 {
            self.window_start_ms = now_ms;
            self.used = 0;
        }
        if self.used < self.per_sec {
            self.used += 1;
            true
        } else {
            false
        }
    }
}

/// A [`RateWindow`] shared by every instance of one plugin: a call that traps and
/// re-instantiates the plugin does not get a fresh budget.
#[derive(Debug, Clone)]
pub struct SharedWindow(std::sync::Arc<std::sync::Mutex<RateWindow>>);

impl SharedWindow {
    /// A budget of `per_sec` units per second.
    pub fn new(per_sec: u32) -> Self {
        SharedWindow(std::sync::Arc::new(std::sync::Mutex::new(RateWindow::new(per_sec))))
    }

    /// Takes one unit of budget at `now_ms`; false when the second's budget is spent.
    pub fn take(&self, now_ms: i64) -> bool {
        // A poisoned lock still holds a valid window (it is two integers).
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::{RateWindow, SharedWindow};

    #[test]
    fn a_shared_budget_is_not_refilled_by_a_second_holder() {
        let first = SharedWindow::new(2);
        assert!(first.take(0));
        // What a re-instantiated plugin gets: the same window, not a new one.
        let second = first.clone();
        assert!(second.take(1));
        assert!(!second.take(2));
        assert!(!first.take(3));
        assert!(second.take(1000));
    }

    #[test]
    fn budget_resets_each_second() {
        let mut w = RateWindow::new(2);
        assert!(w.take(0));
        assert!(w.take(10));
        assert!(!w.take(999));
        assert!(w.take(1000));
    }
}
