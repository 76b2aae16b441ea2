//! The published JSON schemas of every MQTT payload (`host/fleet/schema/*.json`);
//! a test regenerates them and fails when the checked-in files are stale.

use schemars::{schema_for, Schema};

/// `(file name, schema)` for each message type on the wire.
pub fn all() -> Vec<(&'static str, Schema)> {
    vec![
        ("status.json", schema_for!(crate::messages::Status)),
        ("event.json", schema_for!(crate::messages::EventMessage)),
        ("job-request.json", schema_for!(crate::messages::JobRequest)),
        ("job-status.json", schema_for!(crate::messages::JobStatus)),
        ("bundle-manifest.json", schema_for!(crate::bundle::Manifest)),
        ("rollback-order.json", schema_for!(crate::messages::RollbackOrder)),
        ("command.json", schema_for!(crate::commands::SignedCommand)),
        ("command-body.json", schema_for!(crate::commands::Command)),
        ("command-reply.json", schema_for!(crate::commands::CommandReply)),
        ("signed.json", schema_for!(crate::signed::Envelope)),
    ]
}

/// Pretty JSON text of a schema, as checked in.
pub fn to_text(s: &Schema) -> String {
    let mut t = serde_json::to_string_pretty(s).unwrap_or_default();
    t.push('\n');
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn property_names(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::Object(props)) = m.get("properties") {
                    out.extend(props.keys().cloned());
                }
                for x in m.values() {
                    property_names(x, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| property_names(x, out)),
            _ => {}
        }
    }

    #[test]
    fn checked_in_schemas_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
        std::fs::create_dir_all(&dir).unwrap();
        let mut stale = vec![];
        for (name, schema) in all() {
            let path = dir.join(name);
            let want = to_text(&schema);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
                std::fs::write(&path, &want).unwrap();
                stale.push(name);
            }
        }
        assert!(stale.is_empty(), "schemas were stale and have been regenerated, review and commit them: {stale:?}");
    }

    #[test]
    fn no_message_has_a_field_for_biometric_data_pins_or_card_numbers() {
        let forbidden = ["face", "image", "crop", "template", "embedding", "photo", "biometric", "pin", "card", "card_number", "pan", "feature"];
        for (name, schema) in all() {
            let mut names = vec![];
            property_names(&serde_json::to_value(&schema).unwrap(), &mut names);
            assert!(!names.is_empty(), "{name} has no properties?");
            for n in names {
                let lower = n.to_ascii_lowercase();
                let parts: Vec<&str> = lower.split(|c: char| !c.is_ascii_alphanumeric()).collect();
                for f in forbidden {
                    assert!(!parts.contains(&f) && lower != f, "{name}: field {n:?} looks like {f}");
                }
            }
        }
    }
}
