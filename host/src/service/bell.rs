//! One wake-up for the service loop. Every thread that hands the loop work (the policy
//! thread, the face thread, the fleet link, GPIO edge threads, the camera, signals) rings
//! it, so the loop sleeps until something happens or its next timer is due: no polling.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A cloneable doorbell: `ring` from any thread, `wait` on the loop.
#[derive(Clone, Default)]
pub struct Bell {
    inner: Arc<(Mutex<bool>, Condvar)>,
    /// Set with every ring, so a short spin can see it without the lock.
    rung: Arc<AtomicBool>,
}

impl Bell {
    /// A bell nobody has rung yet.
    pub fn new() -> Bell {
        Bell::default()
    }

    /// Wakes the loop (or makes its next wait return at once).
    pub fn ring(&self) {
        self.rung.store(true, Ordering::Release);
        let (rung, cv) = &*self.inner;
        *rung.lock().unwrap_or_else(PoisonError::into_inner) = true;
        cv.notify_all();
    }

    /// Sleeps until the bell rings or `timeout` passes; true when it rang. Clears the ring.
    pub fn wait(&self, timeout: Duration) -> bool {
        let (rung, cv) = &*self.inner;
        let guard = rung.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut guard, _) = cv.wait_timeout_while(guard, timeout, |r| !*r).unwrap_or_else(PoisonError::into_inner);
        self.rung.store(false, Ordering::Release);
        std::mem::replace(&mut *guard, false)
    }

    /// Like [`Bell::wait`], but first watches the bell for up to `spin` without sleeping:
    /// when an answer is due within microseconds (a plugin decides in about one), the loop
    /// takes it without paying a sleep and a wake-up of its thread.
    pub fn wait_spinning(&self, timeout: Duration, spin: Duration) -> bool {
        let until = Instant::now() + spin.min(timeout);
        while Instant::now() < until {
            if self.rung.load(Ordering::Acquire) {
                break;
            }
            std::hint::spin_loop();
        }
        self.wait(if self.rung.load(Ordering::Acquire) { Duration::ZERO } else { timeout.saturating_sub(spin) })
    }

    /// A closure that rings this bell, for threads that only know "call this when done".
    pub fn waker(&self) -> impl Fn() + Send + Sync + 'static {
        let bell = self.clone();
        move || bell.ring()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_before_the_wait_is_not_lost_and_is_taken_once() {
        let bell = Bell::new();
        bell.ring();
        assert!(bell.wait(Duration::from_secs(5)), "the earlier ring wakes the wait");
        assert!(!bell.wait(Duration::from_millis(1)), "and is cleared by it");
    }

    #[test]
    fn a_ring_from_another_thread_wakes_the_waiter() {
        let bell = Bell::new();
        let w = bell.waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            w();
        });
        assert!(bell.wait(Duration::from_secs(30)));
        t.join().expect("ringer");
    }

    #[test]
    fn a_spinning_wait_takes_a_ring_and_times_out_without_one() {
        let bell = Bell::new();
        let w = bell.waker();
        let t = std::thread::spawn(w);
        t.join().expect("ringer");
        assert!(bell.wait_spinning(Duration::from_secs(30), Duration::from_millis(1)));
        assert!(!bell.wait_spinning(Duration::from_millis(2), Duration::from_millis(1)), "no ring: it times out");
    }
}
