//! platform-bridge: maps gate events to a property platform's JSON and publishes them:
//! access events to `access/{door}`, alarms to `alarm/{door}` (relative to the plugin's
//! topic prefix). Payloads carry what the platform needs and nothing more: no face score.

use gate_plugin_sdk::publish::PublishError;
use gate_plugin_sdk::types::Alarm;
use gate_plugin_sdk::types::{DecidedAccess, Decision, Escalation, GateEvent};
use gate_plugin_sdk::Handler;
use serde::Serialize;

/// An access event as the platform sees it; field order is the JSON key order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AccessMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    event_id: &'a str,
    door: &'a str,
    direction: &'static str,
    time: i64,
    credential: &'static str,
    subject: Option<&'a str>,
    result: &'static str,
    reason: Option<&'a str>,
    decided_by: &'a str,
}

/// An alarm raised or cleared; field order is the JSON key order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AlarmMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    event_id: &'a str,
    door: &'a str,
    #[serde(rename = "kind")]
    alarm: &'static str,
    active: bool,
    time: i64,
}

/// One message to publish: topic relative to the plugin's prefix, JSON payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// e.g. `access/gate-north`.
    pub topic: String,
    /// Compact JSON, keys in a fixed order.
    pub payload: Vec<u8>,
}

/// Maps one gate event to its platform message (pure and deterministic).
pub fn to_message(event: &GateEvent) -> Result<Message, serde_json::Error> {
    match event {
        GateEvent::Access(a) => access_message(a),
        GateEvent::Alarm(a) => alarm_message(a),
    }
}

fn access_message(a: &DecidedAccess) -> Result<Message, serde_json::Error> {
    let reason = match &a.decision {
        Decision::Deny(r) => Some(r.as_str()),
        Decision::Escalate(Escalation::CallGuard) => Some("call-guard"),
        Decision::Escalate(Escalation::CallResident(_)) => Some("call-resident"),
        Decision::Grant(_) | Decision::NeedFactor(_) => None,
    };
    let msg = AccessMessage {
        kind: "access",
        event_id: &a.event_id,
        door: &a.door,
        direction: a.direction.as_str(),
        time: a.time.unix_ms,
        credential: a.credential.as_str(),
        subject: a.subject_id.as_deref(),
        result: a.decision.result_name(),
        reason,
        decided_by: &a.decided_by,
    };
    Ok(Message { topic: format!("access/{}", topic_segment(&a.door)), payload: serde_json::to_vec(&msg)? })
}

fn alarm_message(a: &Alarm) -> Result<Message, serde_json::Error> {
    let msg = AlarmMessage { kind: "alarm", event_id: &a.event_id, door: &a.door, alarm: a.kind.as_str(), active: a.active, time: a.time.unix_ms };
    Ok(Message { topic: format!("alarm/{}", topic_segment(&a.door)), payload: serde_json::to_vec(&msg)? })
}

/// A door id made safe as one MQTT topic level: anything but `[A-Za-z0-9._-]` becomes `_`
/// (so `/`, `+`, `#` can neither add levels nor act as wildcards); empty becomes `_`.
pub fn topic_segment(door: &str) -> String {
    let s: String = door.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    if s.is_empty() {
        "_".to_string()
    } else {
        s
    }
}

/// The WIT spelling of a publish error, for the error string the host logs.
fn publish_error_name(e: &PublishError) -> &'static str {
    match e {
        PublishError::InvalidTopic => "invalid-topic",
        PublishError::RateLimited => "rate-limited",
        PublishError::PayloadTooLarge => "payload-too-large",
    }
}

struct PlatformBridge;

impl Handler for PlatformBridge {
    fn on_event(event: GateEvent) -> Result<(), String> {
        let msg = to_message(&event).map_err(|e| format!("platform-bridge: cannot encode event: {e}"))?;
        gate_plugin_sdk::publish::publish(&msg.topic, &msg.payload).map_err(|e| format!("platform-bridge: publishing to `{}` failed: {}", msg.topic, publish_error_name(&e)))
    }
}

gate_plugin_sdk::export_integration!(PlatformBridge);

#[cfg(test)]
mod tests {
    use super::*;
    use gate_plugin_sdk::types::{AlarmKind, CredentialKind, Direction, Role, Timestamp};

    fn at() -> Timestamp {
        Timestamp { unix_ms: 1_760_000_000_000, weekday: 2, minute_of_day: 480 }
    }

    fn access(decision: Decision) -> GateEvent {
        GateEvent::Access(DecidedAccess {
            event_id: "ev-42".into(),
            door: "gate-north".into(),
            direction: Direction::Entry,
            time: at(),
            credential: CredentialKind::Card,
            subject_id: Some("s-7f3a".into()),
            role: Some(Role::Resident),
            decision,
            decided_by: "plugin:resident-policy".into(),
        })
    }

    fn text(m: &Message) -> &str {
        std::str::from_utf8(&m.payload).unwrap_or("<not utf-8>")
    }

    #[test]
    fn granted_access_maps_to_the_platform_shape_in_a_fixed_key_order() {
        let m = to_message(&access(Decision::Grant(5000))).unwrap();
        assert_eq!(m.topic, "access/gate-north");
        assert_eq!(
            text(&m),
            r#"{"type":"access","eventId":"ev-42","door":"gate-north","direction":"entry","time":1760000000000,"credential":"card","subject":"s-7f3a","result":"granted","reason":null,"decidedBy":"plugin:resident-policy"}"#
        );
    }

    #[test]
    fn denials_escalations_and_factor_requests_carry_their_result_and_reason() {
        let deny = to_message(&access(Decision::deny("outside schedule"))).unwrap();
        assert!(text(&deny).contains(r#""result":"denied","reason":"outside schedule""#), "{}", text(&deny));
        let esc = to_message(&access(Decision::Escalate(Escalation::CallResident("s-1".into())))).unwrap();
        assert!(text(&esc).contains(r#""result":"escalated","reason":"call-resident""#), "{}", text(&esc));
        let nf = to_message(&access(Decision::NeedFactor(vec![CredentialKind::Pin]))).unwrap();
        assert!(text(&nf).contains(r#""result":"need-factor","reason":null"#), "{}", text(&nf));
    }

    #[test]
    fn unknown_subject_is_null_and_no_face_score_is_sent() {
        let mut e = access(Decision::deny("unknown credential"));
        if let GateEvent::Access(a) = &mut e {
            a.subject_id = None;
            a.credential = CredentialKind::Face;
        }
        let m = to_message(&e).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["subject"], serde_json::Value::Null);
        assert_eq!(v["credential"], "face");
        let keys: Vec<&str> = v.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
        assert!(!keys.iter().any(|k| k.contains("score") || k.contains("role")), "{keys:?}");
    }

    #[test]
    fn alarms_go_to_the_alarm_topic() {
        let e = GateEvent::Alarm(Alarm { event_id: "al-1".into(), door: "gate-north".into(), time: at(), kind: AlarmKind::HeldOpen, active: true });
        let m = to_message(&e).unwrap();
        assert_eq!(m.topic, "alarm/gate-north");
        assert_eq!(text(&m), r#"{"type":"alarm","eventId":"al-1","door":"gate-north","kind":"held-open","active":true,"time":1760000000000}"#);
    }

    #[test]
    fn door_ids_cannot_escape_their_topic_level() {
        assert_eq!(topic_segment("gate/../#"), "gate_..__");
        assert_eq!(topic_segment("lane +1"), "lane__1");
        assert_eq!(topic_segment(""), "_");
        assert_eq!(topic_segment("vehicle-east.2"), "vehicle-east.2");
    }
}
