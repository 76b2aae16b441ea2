//! The versioned MQTT topic scheme, `gate/v1/{site}/{gateway}/…`, and the checks
//! that keep every name a single literal level and every plugin inside its prefix.
//!
//! | topic                                        | who publishes | retained | payload            |
//! |----------------------------------------------|---------------|----------|--------------------|
//! | `gate/v1/{site}/{gw}/status`                 | gateway (+LWT)| yes      | [`crate::messages::Status`] |
//! | `gate/v1/{site}/{gw}/events`                 | gateway       | no       | [`crate::messages::EventMessage`] |
//! | `gate/v1/{site}/{gw}/alarms`                 | gateway       | no       | [`crate::messages::EventMessage`] |
//! | `gate/v1/{site}/{gw}/jobs/{job}`             | operator      | yes      | [`crate::messages::JobRequest`] |
//! | `gate/v1/{site}/{gw}/jobs/{job}/progress`    | gateway       | yes      | [`crate::messages::JobStatus`] |
//! | `gate/v1/{site}/{gw}/cmd/{id}`               | operator      | no       | [`crate::commands::SignedCommand`] |
//! | `gate/v1/{site}/{gw}/cmd/{id}/reply`         | gateway       | no       | [`crate::commands::CommandReply`] |
//! | `gate/v1/{site}/{gw}/out/{plugin-prefix}/…`  | integration plugins, through the host | no | plugin bytes |

use thiserror::Error;

/// First two levels of every topic; bumped with any incompatible change of topics or payloads.
pub const ROOT: &str = "gate/v1";

/// Longest name accepted for one topic level (site, gateway, job id, …).
pub const MAX_LEVEL_LEN: usize = 64;

/// Longest topic a plugin may publish under its prefix (bytes, relative part).
pub const MAX_PLUGIN_TOPIC_LEN: usize = 256;

/// Why a topic or topic level was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} contains {bad:?}; only letters, digits, '-', '_' and '.' are allowed")]
    BadChar { what: &'static str, value: String, bad: char },
    #[error("{what} {value:?} is longer than {max} bytes")]
    TooLong { what: &'static str, value: String, max: usize },
    #[error("{what} {value:?} climbs out of its prefix ('.' or '..' level)")]
    Climbs { what: &'static str, value: String },
    #[error("period {value:?} is not a month as YYYY-MM")]
    BadPeriod { value: String },
    #[error("topic {0:?} is not under {ROOT}/{{site}}/{{gateway}}/ or has an unknown suffix")]
    Unknown(String),
}

/// Checks one topic level that we build from configuration or operator input:
/// non-empty, at most [`MAX_LEVEL_LEN`] bytes, `[A-Za-z0-9._-]` only, not `.`/`..`.
pub fn check_level(what: &'static str, value: &str) -> Result<(), TopicError> {
    if value.is_empty() {
        return Err(TopicError::Empty { what });
    }
    if value.len() > MAX_LEVEL_LEN {
        return Err(TopicError::TooLong { what, value: value.into(), max: MAX_LEVEL_LEN });
    }
    if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(TopicError::BadChar { what, value: value.into(), bad });
    }
    if value == "." || value == ".." {
        return Err(TopicError::Climbs { what, value: value.into() });
    }
    Ok(())
}

/// The topics of one gateway; built once from validated names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayTopics {
    site: String,
    gateway: String,
    base: String,
}

impl GatewayTopics {
    /// Validates `site` and `gateway` as single literal levels.
    pub fn new(site: &str, gateway: &str) -> Result<Self, TopicError> {
        check_level("site", site)?;
        check_level("gateway", gateway)?;
        Ok(Self { site: site.into(), gateway: gateway.into(), base: format!("{ROOT}/{site}/{gateway}") })
    }
    pub fn site(&self) -> &str {
        &self.site
    }
    pub fn gateway(&self) -> &str {
        &self.gateway
    }
    /// Retained birth / death status.
    pub fn status(&self) -> String {
        format!("{}/status", self.base)
    }
    /// Access decisions and other non-alarm events.
    pub fn events(&self) -> String {
        format!("{}/events", self.base)
    }
    /// The newest audit checkpoint (retained): the gateway's signed statement of its audit
    /// chain's length and head, so cutting the chain on the device is detectable from outside.
    pub fn audit_checkpoint(&self) -> String {
        format!("{}/audit/checkpoint", self.base)
    }
    /// The gateway's transparency report for one month `YYYY-MM` (retained, signed), which
    /// `gate fleet report --site` combines across a site's gateways.
    pub fn report(&self, period: &str) -> Result<String, TopicError> {
        check_period(period)?;
        Ok(format!("{}/report/{period}", self.base))
    }
    /// Held-open / forced / fire alarms.
    pub fn alarms(&self) -> String {
        format!("{}/alarms", self.base)
    }
    /// A deployment job request (retained, so an offline gateway gets it on reconnect).
    pub fn job(&self, job_id: &str) -> Result<String, TopicError> {
        check_level("job id", job_id)?;
        Ok(format!("{}/jobs/{job_id}", self.base))
    }
    /// Progress and final state of a job (retained).
    pub fn job_progress(&self, job_id: &str) -> Result<String, TopicError> {
        check_level("job id", job_id)?;
        Ok(format!("{}/jobs/{job_id}/progress", self.base))
    }
    /// A remote command.
    pub fn command(&self, id: &str) -> Result<String, TopicError> {
        check_level("command id", id)?;
        Ok(format!("{}/cmd/{id}", self.base))
    }
    /// The reply to a remote command (same correlation id as the command).
    pub fn command_reply(&self, id: &str) -> Result<String, TopicError> {
        check_level("command id", id)?;
        Ok(format!("{}/cmd/{id}/reply", self.base))
    }
    /// Subscription filter for job requests (not their progress).
    pub fn jobs_filter(&self) -> String {
        format!("{}/jobs/+", self.base)
    }
    /// Subscription filter for commands (not their replies).
    pub fn commands_filter(&self) -> String {
        format!("{}/cmd/+", self.base)
    }
    /// Where an integration plugin with `prefix` publishes `relative` (checked by [`plugin_topic`]).
    pub fn plugin_out(&self, prefix: &str, relative: &str) -> Result<String, TopicError> {
        plugin_topic(&format!("{}/out", self.base), prefix, relative)
    }

    /// Classifies a topic received on this gateway's subscriptions.
    pub fn parse_inbound<'t>(&self, topic: &'t str) -> Result<Inbound<'t>, TopicError> {
        let rest = topic.strip_prefix(self.base.as_str()).and_then(|r| r.strip_prefix('/')).ok_or_else(|| TopicError::Unknown(topic.into()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["jobs", id] if check_level("job id", id).is_ok() => Ok(Inbound::Job(id)),
            ["cmd", id] if check_level("command id", id).is_ok() => Ok(Inbound::Command(id)),
            _ => Err(TopicError::Unknown(topic.into())),
        }
    }
}

/// A topic this gateway subscribes to, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound<'t> {
    Job(&'t str),
    Command(&'t str),
}

/// Site-wide filter for the retained status of every gateway (`gate/v1/{site}/+/status`).
pub fn site_status_filter(site: &str) -> Result<String, TopicError> {
    check_level("site", site)?;
    Ok(format!("{ROOT}/{site}/+/status"))
}

/// A month as a topic level: `YYYY-MM`.
fn check_period(period: &str) -> Result<(), TopicError> {
    let b = period.as_bytes();
    let ok = b.len() == 7
        && b[4] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || c.is_ascii_digit())
        && matches!(&period[5..], "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12");
    if ok {
        Ok(())
    } else {
        Err(TopicError::BadPeriod { value: period.chars().take(32).collect() })
    }
}

/// Site-wide filter for every gateway's report of `period` (`gate/v1/{site}/+/report/{period}`).
pub fn site_report_filter(site: &str, period: &str) -> Result<String, TopicError> {
    check_level("site", site)?;
    check_period(period)?;
    Ok(format!("{ROOT}/{site}/+/report/{period}"))
}

/// Splits `gate/v1/{site}/{gateway}/report/{period}` into its site, gateway and period.
pub fn parse_report_topic(topic: &str) -> Option<(&str, &str, &str)> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let mut it = rest.split('/');
    let (site, gw, what, period) = (it.next()?, it.next()?, it.next()?, it.next()?);
    (what == "report" && it.next().is_none()).then_some((site, gw, period))
}

/// Fleet-wide filter for every gateway's retained status (`gate/v1/+/+/status`).
pub fn fleet_status_filter() -> String {
    format!("{ROOT}/+/+/status")
}

/// Splits `gate/v1/{site}/{gateway}/status` into its site and gateway.
pub fn parse_status_topic(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let mut it = rest.split('/');
    let (site, gw, last) = (it.next()?, it.next()?, it.next()?);
    (last == "status" && it.next().is_none()).then_some((site, gw))
}

/// Joins an integration plugin's `relative` topic under `{out_base}/{prefix}`, refusing
/// anything that could escape it: empty levels, wildcards (`+`, `#`), `.`/`..`, NUL,
/// a leading `/`, `$` (broker-internal topics) or more than [`MAX_PLUGIN_TOPIC_LEN`] bytes.
/// The host's `publish` capability maps any error to `publish-error::invalid-topic`.
pub fn plugin_topic(out_base: &str, prefix: &str, relative: &str) -> Result<String, TopicError> {
    check_level("plugin prefix", prefix)?;
    if relative.is_empty() {
        return Err(TopicError::Empty { what: "plugin topic" });
    }
    if relative.len() > MAX_PLUGIN_TOPIC_LEN {
        return Err(TopicError::TooLong { what: "plugin topic", value: relative.into(), max: MAX_PLUGIN_TOPIC_LEN });
    }
    for level in relative.split('/') {
        if level.is_empty() {
            return Err(TopicError::Empty { what: "plugin topic level" });
        }
        if level == "." || level == ".." {
            return Err(TopicError::Climbs { what: "plugin topic", value: relative.into() });
        }
        if let Some(bad) = level.chars().find(|c| matches!(c, '+' | '#' | '\0' | '$') || c.is_control()) {
            return Err(TopicError::BadChar { what: "plugin topic", value: relative.into(), bad });
        }
    }
    Ok(format!("{out_base}/{prefix}/{relative}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw() -> GatewayTopics {
        GatewayTopics::new("oak-court", "north-gate").unwrap()
    }

    #[test]
    fn builds_the_documented_scheme() {
        let t = gw();
        assert_eq!(t.status(), "gate/v1/oak-court/north-gate/status");
        assert_eq!(t.events(), "gate/v1/oak-court/north-gate/events");
        assert_eq!(t.alarms(), "gate/v1/oak-court/north-gate/alarms");
        assert_eq!(t.job("j-1").unwrap(), "gate/v1/oak-court/north-gate/jobs/j-1");
        assert_eq!(t.job_progress("j-1").unwrap(), "gate/v1/oak-court/north-gate/jobs/j-1/progress");
        assert_eq!(t.command("c9").unwrap(), "gate/v1/oak-court/north-gate/cmd/c9");
        assert_eq!(t.command_reply("c9").unwrap(), "gate/v1/oak-court/north-gate/cmd/c9/reply");
        assert_eq!(t.plugin_out("bridge", "door/a").unwrap(), "gate/v1/oak-court/north-gate/out/bridge/door/a");
    }

    #[test]
    fn names_with_wildcards_or_separators_are_refused() {
        for bad in ["", "a/b", "+", "#", "a+b", "..", ".", "ga te", "$SYS"] {
            assert!(GatewayTopics::new(bad, "g").is_err(), "site {bad:?} accepted");
            assert!(GatewayTopics::new("s", bad).is_err(), "gateway {bad:?} accepted");
            assert!(gw().job(bad).is_err(), "job id {bad:?} accepted");
        }
        assert!(matches!(check_level("site", &"x".repeat(65)), Err(TopicError::TooLong { .. })));
    }

    #[test]
    fn plugin_topics_cannot_leave_their_prefix() {
        let base = "gate/v1/s/g/out";
        assert_eq!(plugin_topic(base, "p", "a/b-c/d.e").unwrap(), "gate/v1/s/g/out/p/a/b-c/d.e");
        for bad in ["", "/a", "a/", "a//b", "../x", "a/../../other", "a/./b", "a/+", "#", "a/b#", "$SYS/x", "a\0b"] {
            assert!(plugin_topic(base, "p", bad).is_err(), "{bad:?} accepted");
        }
        assert!(plugin_topic(base, "p", &"a".repeat(257)).is_err());
        assert!(plugin_topic(base, "../p", "x").is_err());
    }

    #[test]
    fn inbound_topics_are_classified() {
        let t = gw();
        assert_eq!(t.parse_inbound("gate/v1/oak-court/north-gate/jobs/j1").unwrap(), Inbound::Job("j1"));
        assert_eq!(t.parse_inbound("gate/v1/oak-court/north-gate/cmd/c1").unwrap(), Inbound::Command("c1"));
        assert!(t.parse_inbound("gate/v1/oak-court/north-gate/jobs/j1/progress").is_err());
        assert!(t.parse_inbound("gate/v1/oak-court/south-gate/jobs/j1").is_err());
        assert_eq!(parse_status_topic("gate/v1/s/g/status"), Some(("s", "g")));
        assert_eq!(parse_status_topic("gate/v1/s/g/events"), None);
    }
}
