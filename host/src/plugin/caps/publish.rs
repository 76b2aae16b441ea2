//! `gate:plugin/publish`: integration plugins publish only under their own
//! topic prefix, within a rate and size limit. Messages are collected by the
//! host and leave through the event pipeline (replay output, MQTT link).

use super::SharedWindow;
use crate::clock::Clock;
use crate::plugin::bindings::integration::gate::plugin::publish::{Host, PublishError};

/// The publish capability of one integration plugin.
pub struct PublishCap {
    prefix: String,
    clock: Clock,
    window: SharedWindow,
    max_payload: usize,
    /// Messages published by the current call, full topic first.
    pub outbox: Vec<(String, Vec<u8>)>,
    /// Publishes the current call may make past the rate limit: set for a call handling an
    /// alarm, so an alarm is never dropped by the limit (a flood of access events spent it).
    pub alarm_allowance: u32,
    /// Publishes the rate limit refused during the current call.
    pub refused: u64,
}

impl PublishCap {
    /// `window` is the plugin's own, shared by all its instances.
    pub fn new(prefix: &str, clock: Clock, window: SharedWindow, max_payload: usize) -> Self {
        PublishCap { prefix: prefix.trim_end_matches('/').to_string(), clock, window, max_payload, outbox: Vec::new(), alarm_allowance: 0, refused: 0 }
    }
}

/// Checks a plugin-relative topic: no wildcards, no empty or climbing segments.
pub fn valid_relative_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 200
        && !topic.starts_with('/')
        && topic.split('/').all(|seg| !seg.is_empty() && seg != ".." && seg != ".")
        && !topic.contains(['+', '#', '\0'])
        && !topic.chars().any(crate::plugin::text::is_unsafe_char)
}

impl Host for PublishCap {
    fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<(), PublishError> {
        if !valid_relative_topic(&topic) {
            return Err(PublishError::InvalidTopic);
        }
        if payload.len() > self.max_payload {
            return Err(PublishError::PayloadTooLarge);
        }
        if !self.window.take(self.clock.now_ms()) {
            if self.alarm_allowance == 0 {
                self.refused = self.refused.saturating_add(1);
                return Err(PublishError::RateLimited);
            }
            self.alarm_allowance -= 1;
        }
        self.outbox.push((format!("{}/{topic}", self.prefix), payload));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_stay_under_the_prefix() {
        assert!(valid_relative_topic("access/north-gate"));
        for bad in ["", "/abs", "a/../b", "a/+/b", "a/#", "a//b", "..", "a\nb"] {
            assert!(!valid_relative_topic(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn publishes_are_prefixed_limited_and_sized() {
        let mut p = PublishCap::new("platform/", Clock::new(0, 0), super::super::SharedWindow::new(2), 4);
        assert!(p.publish("a".into(), b"1".to_vec()).is_ok());
        assert!(matches!(p.publish("a".into(), b"12345".to_vec()), Err(PublishError::PayloadTooLarge)));
        assert!(p.publish("b".into(), b"2".to_vec()).is_ok());
        assert!(matches!(p.publish("c".into(), b"3".to_vec()), Err(PublishError::RateLimited)));
        assert_eq!(p.outbox[0].0, "platform/a");
        assert_eq!(p.refused, 1);
        // A call handling an alarm publishes past the spent limit, within its allowance.
        p.alarm_allowance = 1;
        assert!(p.publish("alarm".into(), b"4".to_vec()).is_ok());
        assert!(matches!(p.publish("alarm".into(), b"5".to_vec()), Err(PublishError::RateLimited)));
    }
}
