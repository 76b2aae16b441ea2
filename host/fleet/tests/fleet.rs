//! Integration tests against a real Mosquitto broker (installed by `cargo xtask setup`).

mod support;

use gate_fleet::bundle::Bundle;
use gate_fleet::commands::CommandAction;
use gate_fleet::deploy::PluginSlot;
use gate_fleet::keys::OperatorKey;
use gate_fleet::messages::{JobState, JobStatus};
use gate_fleet::operator::{Operator, Target};
use gate_fleet::testing::{TestGateway, TestGatewayOptions};
use std::time::{Duration, Instant};
use support::*;

const T: Duration = Duration::from_secs(10);

/// An operator whose inventory holds `gws` (only what they sign is believed).
async fn operator(cfg: &gate_fleet::link::BrokerConfig, gws: &[&TestGateway]) -> Operator {
    let mut op = Operator::connect(cfg, &format!("op-{}", rand_id()), T).await.unwrap();
    let mut inv = gate_fleet::inventory::Inventory::default();
    for g in gws {
        g.enroll(&mut inv);
    }
    op.set_inventory(inv);
    op
}

async fn wait_connected(gw: &TestGateway, connects: u64) {
    gw.handle.wait_for(T, |s| s.connected && s.connects >= connects).await.unwrap_or_else(|s| panic!("gateway did not connect: {s:?}"));
}

async fn deploy_one(op: &mut Operator, gw: &TestGateway, b: &Bundle) -> (JobStatus, Vec<JobStatus>) {
    let target = Target::Gateway { site: gw.site.clone(), gateway: gw.gateway.clone() };
    let mut seen = vec![];
    let res = op.deploy(&target, b, T, &mut |_, s| seen.push(s.clone())).await.unwrap();
    let last = res.into_iter().next().and_then(|(_, s)| s).expect("no job status from the gateway");
    (last, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_birth_and_last_will_mark_a_killed_gateway_offline() {
    let broker = broker();
    let gw = TestGateway::start(broker.tls(), "oak-court", "north", TestGatewayOptions::default()).unwrap();
    wait_connected(&gw, 1).await;
    gw.announce();
    let mut op = operator(&broker.tls(), &[&gw]).await;
    let mut online = None;
    for _ in 0..50 {
        let rows = op.fleet_status(Some("oak-court"), Duration::from_millis(200)).await.unwrap();
        if let Some(r) = rows.iter().find(|r| r.gateway == "north") {
            online = r.status.as_ref().map(|s| s.online);
            break;
        }
    }
    assert_eq!(online, Some(true), "birth message not seen over TLS");

    gw.crash();
    let mut offline = false;
    for _ in 0..50 {
        let rows = op.fleet_status(Some("oak-court"), Duration::from_millis(200)).await.unwrap();
        if rows.iter().any(|r| r.gateway == "north" && r.status.as_ref().is_some_and(|s| !s.online)) {
            offline = true;
            break;
        }
    }
    assert!(offline, "last will did not mark the killed gateway offline");
    op.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_rejects_a_broker_signed_by_another_ca() {
    let broker = broker();
    let other = support::broker(); // its own, different CA
    let mut cfg = broker.tls();
    if let Some(t) = cfg.tls.as_mut() {
        t.ca = other.ca.clone();
    }
    let err = Operator::connect(&cfg, "op-wrong-ca", Duration::from_secs(2)).await.err().expect("connected to a broker the CA did not sign");
    assert!(err.to_string().contains("could not connect"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_goes_active_and_bad_bundles_are_rejected_with_visible_reasons() {
    let broker = broker();
    let gw = TestGateway::start(broker.plain(), "oak-court", "north", TestGatewayOptions::default()).unwrap();
    wait_connected(&gw, 1).await;
    let mut op = operator(&broker.plain(), &[&gw]).await;
    let key = &gw.operator_key;

    let good = bundle(key, "resident-policy", "1.0.0", 10);
    let started = Instant::now();
    let (s, seen) = deploy_one(&mut op, &gw, &good).await;
    let latency = started.elapsed();
    assert_eq!(s.state, JobState::Succeeded, "{s:?}");
    assert!(seen.iter().any(|x| x.state == JobState::InProgress), "no progress seen: {seen:?}");
    assert_eq!(gw.slot.lock().unwrap().plugins()[0].version.to_string(), "1.0.0");
    eprintln!("deployment latency publish -> active (one gateway, incl. subscribe): {latency:?}");

    // Tampered: component changed after signing.
    let mut tampered = bundle(key, "resident-policy", "1.1.0", 11);
    tampered.component = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(component("evil"))
    };
    // Unsigned.
    let mut unsigned = bundle(key, "resident-policy", "1.1.0", 12);
    unsigned.signature = None;
    // Signed by a key the gateway does not trust (same id, different key).
    let impostor = OperatorKey::generate("test-operator").unwrap();
    let wrong_key = bundle(&impostor, "resident-policy", "1.1.0", 13);
    // Replayed: the accepted bundle again.
    let replayed = good.clone();
    // Downgrade without rollback flag.
    let downgrade = bundle(key, "resident-policy", "0.9.0", 14);

    for (b, code) in [(&tampered, "hash-mismatch"), (&unsigned, "unsigned"), (&wrong_key, "bad-signature"), (&replayed, "replayed"), (&downgrade, "downgrade")] {
        let (s, _) = deploy_one(&mut op, &gw, b).await;
        assert_eq!(s.state, JobState::Rejected, "{code}: {s:?}");
        assert_eq!(s.code.as_deref(), Some(code), "{s:?}");
        assert!(s.reason.as_deref().is_some_and(|r| !r.is_empty()));
    }
    assert_eq!(gw.slot.lock().unwrap().plugins()[0].version.to_string(), "1.0.0", "a rejected bundle changed the active plugin");

    // Fleet status: which version runs, and the last job with its reason.
    let rows = op.fleet_status(Some("oak-court"), Duration::from_millis(300)).await.unwrap();
    let row = rows.iter().find(|r| r.gateway == "north").expect("gateway in fleet status");
    assert!(row.trust.is_genuine(), "{row:?}");
    let status = row.status.as_ref().expect("a genuine status");
    assert!(status.online);
    assert_eq!(status.plugins[0].version.to_string(), "1.0.0");
    assert_eq!(status.last_job.as_ref().and_then(|j| j.code.as_deref()), Some("downgrade"));
    op.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_that_keeps_failing_rolls_back_by_itself_and_says_so() {
    let broker = broker();
    let gw = TestGateway::start(broker.plain(), "oak-court", "north", TestGatewayOptions::default()).unwrap();
    wait_connected(&gw, 1).await;
    let mut op = operator(&broker.plain(), &[&gw]).await;
    let (s1, _) = deploy_one(&mut op, &gw, &bundle(&gw.operator_key, "resident-policy", "1.0.0", 1)).await;
    assert_eq!(s1.state, JobState::Succeeded);
    let (s2, _) = deploy_one(&mut op, &gw, &bundle(&gw.operator_key, "resident-policy", "2.0.0", 2)).await;
    assert_eq!(s2.state, JobState::Succeeded);
    // v1 has been fine for long; v2 traps on every event.
    assert!(gw.report_failure("resident-policy").is_none());
    assert!(gw.report_failure("resident-policy").is_none());
    let rolled = gw.report_failure("resident-policy").expect("third failure should roll back");
    assert_eq!(rolled.state, JobState::RolledBack);
    assert_eq!(gw.slot.lock().unwrap().plugins()[0].version.to_string(), "1.0.0");

    // The deployment and the rollback each change the plugins, and the link reconnects each
    // time to refresh its will; on a loaded machine a reconnect can take a back-off, hence a
    // longer wait than T.
    let seen = op.job_status("oak-court", "north", &s2.job_id, 3 * T, |s| s.state == JobState::RolledBack).await.unwrap().unwrap();
    assert_eq!(seen.state, JobState::RolledBack, "{seen:?}; link: {:?}", gw.handle.snapshot());
    assert!(seen.reason.unwrap().contains("rolled back to 1.0.0"));
    op.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_rollback_and_commands_are_authorised_and_answered() {
    let broker = broker();
    let gw = TestGateway::start(broker.plain(), "oak-court", "north", TestGatewayOptions::default()).unwrap();
    wait_connected(&gw, 1).await;
    let mut op = operator(&broker.plain(), &[&gw]).await;
    let target = Target::Gateway { site: "oak-court".into(), gateway: "north".into() };
    deploy_one(&mut op, &gw, &bundle(&gw.operator_key, "resident-policy", "1.0.0", 1)).await;
    deploy_one(&mut op, &gw, &bundle(&gw.operator_key, "resident-policy", "1.1.0", 2)).await;
    let res = op.rollback(&gw.operator_key, &target, "resident-policy", 3, T, &mut |_, _| {}).await.unwrap();
    let s = res[0].1.clone().unwrap();
    assert_eq!((s.state, s.version.map(|v| v.to_string())), (JobState::Succeeded, Some("1.0.0".into())));

    let reply = op.command(&gw.operator_key, "oak-court", "north", CommandAction::OpenDoorOnce { door: "lobby".into() }, T).await.unwrap();
    assert!(reply.ok, "{reply:?}");
    assert_eq!(reply.sender.as_deref(), Some("test-operator"));
    assert_eq!(gw.executed.lock().unwrap().len(), 1);

    let stranger = OperatorKey::generate("stranger").unwrap();
    let reply =
        op.command(&stranger, "oak-court", "north", CommandAction::RotateUnitPin { door: "b3-unit-1201".into(), reply_key: gate_fleet::commands::ReplyKey::generate().public_b64() }, T).await.unwrap();
    assert!(!reply.ok);
    assert_eq!(reply.code, "unauthorised");
    assert_eq!(gw.executed.lock().unwrap().len(), 1, "an unauthorised command was executed");

    // The log keeps what a trusted key sent; a refusal is answered but not stored
    // (anyone with a broker account could fill the disk with them).
    let log = gw.agent.lock().unwrap().deployer().store().command_log().unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].sender.as_deref(), Some("test-operator"));
    assert!(log[0].action.contains("open-door-once"), "{:?}", log[0]);
    op.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_produced_while_the_broker_is_down_all_arrive_in_order_after_it_returns() {
    let mut broker = broker();
    let relay = Relay::start(broker.port).await;
    let mut gw = TestGateway::start(relay.config(&broker.plain()), "oak-court", "north", TestGatewayOptions::default()).unwrap();
    wait_connected(&gw, 1).await;
    let rec = Recorder::start(&broker.plain(), "gate/v1/oak-court/north/events").await;

    for _ in 0..10 {
        gw.append_events(50).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A burst right before the kill, so some events are in flight (sent, not acknowledged).
    let mut last = *gw.append_events(5000).unwrap().end();
    tokio::time::sleep(Duration::from_millis(30)).await;
    // The gateway loses the broker first; then the broker dies. (A broker keeping no
    // sessions loses what it acknowledged but had not yet passed on when it is killed:
    // that is the broker's loss, not the gateway's, so the test lets it pass on first.)
    relay.cut();
    let cursor_at_kill = gw.handle.snapshot().cursor;
    let deadline = Instant::now() + Duration::from_secs(10);
    while (rec.first_arrivals().len() as i64) < cursor_at_kill && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.kill();
    // Events keep coming while the broker is gone.
    for _ in 0..20 {
        last = *gw.append_events(50).unwrap().end();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!gw.handle.snapshot().connected);
    eprintln!("cursor at kill {cursor_at_kill}, events so far {last}");
    broker.restart().unwrap();
    // The broker keeps no sessions: let the gateway back only once the consumer listens again.
    rec.wait_subscribed(2).await;
    relay.set_open(true);
    for _ in 0..10 {
        last = *gw.append_events(50).unwrap().end();
    }
    gw.handle.wait_for(Duration::from_secs(30), |s| s.cursor >= last).await.unwrap_or_else(|s| panic!("outbox did not drain: {s:?}, last {last}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while rec.first_arrivals().len() < last as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let arrivals = rec.first_arrivals();
    assert_eq!(arrivals.len(), last as usize, "events lost");
    assert!(arrivals.windows(2).all(|w| w[0] < w[1]), "events out of order");
    assert_eq!(arrivals.first(), Some(&1));
    assert!(gw.handle.snapshot().connects >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_password_and_client_certificates_are_enforced_by_the_broker() {
    let broker = broker();
    let gw = TestGateway::start(broker.password(), "oak-court", "south", TestGatewayOptions::default()).unwrap();
    wait_connected(&gw, 1).await;

    let mut wrong = broker.password();
    wrong.password = Some("guess".into());
    assert!(Operator::connect(&wrong, "op-wrong-password", Duration::from_secs(2)).await.is_err(), "wrong password accepted");

    let mut no_cert = broker.tls();
    if let Some(t) = no_cert.tls.as_mut() {
        t.client_cert = None;
        t.client_key = None;
    }
    assert!(Operator::connect(&no_cert, "op-no-cert", Duration::from_secs(2)).await.is_err(), "TLS without client certificate accepted");
    let ok = Operator::connect(&broker.tls(), "op-cert", Duration::from_secs(5)).await.expect("TLS with client certificate refused");
    ok.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_publish_only_under_their_prefix_and_oversized_bundles_are_rejected() {
    let broker = broker();
    let opts = TestGatewayOptions { max_bundle_bytes: 64 * 1024, ..Default::default() };
    let gw = TestGateway::start(broker.plain(), "oak-court", "north", opts).unwrap();
    wait_connected(&gw, 1).await;
    let rec = Recorder::start(&broker.plain(), "gate/v1/#").await;
    gw.handle.plugin_publish("platform-bridge", "doors/lobby", b"{\"open\":true}".to_vec()).unwrap();
    assert!(gw.handle.plugin_publish("platform-bridge", "../../status", b"{}".to_vec()).is_err());
    assert!(gw.handle.plugin_publish("platform-bridge", "#", b"{}".to_vec()).is_err());
    let deadline = Instant::now() + T;
    while rec.got.lock().unwrap().iter().all(|(t, _)| !t.contains("/out/")) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outs: Vec<String> = rec.got.lock().unwrap().iter().filter(|(t, _)| t.contains("/out/")).map(|(t, _)| t.clone()).collect();
    assert_eq!(outs, vec!["gate/v1/oak-court/north/out/platform-bridge/doors/lobby".to_string()]);

    let mut op = operator(&broker.plain(), &[&gw]).await;
    let big = gate_fleet::bundle::sign_bundle(&gw.operator_key, manifest("resident-policy", "1.0.0", 1), &[gate_fleet::deploy::COMPONENT_HEADER, &[0u8; 100_000][..]].concat()).unwrap();
    let (s, _) = deploy_one(&mut op, &gw, &big).await;
    assert_eq!((s.state, s.code.as_deref()), (JobState::Rejected, Some("too-large")), "{s:?}");
    assert!(gw.slot.lock().unwrap().plugins().is_empty(), "something was installed");
    op.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_deployment_reaches_every_gateway_of_the_site() {
    let broker = broker();
    let a = TestGateway::start(broker.plain(), "elm-park", "east", TestGatewayOptions::default()).unwrap();
    let b = TestGateway::start(broker.plain(), "elm-park", "west", TestGatewayOptions::default()).unwrap();
    let other = TestGateway::start(broker.plain(), "oak-court", "north", TestGatewayOptions::default()).unwrap();
    for g in [&a, &b, &other] {
        wait_connected(g, 1).await;
        g.announce();
    }
    // Each test gateway trusts only its own key "test-operator" (a different key pair each),
    // so one bundle signed with east's key must go to both elm-park gateways, succeed on east,
    // be rejected on west, and never reach oak-court.
    let mut op = operator(&broker.plain(), &[&a, &b, &other]).await;
    let rows = op.fleet_status(Some("elm-park"), Duration::from_millis(300)).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.gateway.as_str()).collect::<Vec<_>>(), vec!["east", "west"]);
    let mut progress_lines = vec![];
    let res = op
        .deploy(&Target::Site("elm-park".into()), &bundle(&a.operator_key, "resident-policy", "1.0.0", 1), T, &mut |gw, s| progress_lines.push(gate_fleet::operator::format_progress(gw, s)))
        .await
        .unwrap();
    let by_gw: std::collections::BTreeMap<_, _> = res.into_iter().map(|(g, s)| (g, s.unwrap())).collect();
    assert_eq!(by_gw["east"].state, JobState::Succeeded);
    // west does not trust east's key: the same job is rejected there, with the reason.
    assert_eq!((by_gw["west"].state, by_gw["west"].code.as_deref()), (JobState::Rejected, Some("bad-signature")));
    assert!(progress_lines.iter().any(|l| l.starts_with("east: in-progress")), "{progress_lines:?}");
    assert!(other.slot.lock().unwrap().plugins().is_empty(), "a gateway of another site got the job");
    op.disconnect().await;
}

/// Issue 12: the link never stops for good. When its own storage fails it starts over
/// after a back-off, the events staying in the outbox, and publishes again once the
/// storage is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_whose_storage_fails_starts_over_and_publishes_again() {
    let broker = broker();
    let mut gw = TestGateway::start(broker.plain(), "oak-court", "north", TestGatewayOptions::default()).unwrap();
    wait_connected(&gw, 1).await;
    let rec = Recorder::start(&broker.plain(), "gate/v1/oak-court/north/events").await;
    let fleet = rusqlite::Connection::open(&gw.fleet_db).unwrap();
    fleet.busy_timeout(Duration::from_secs(5)).unwrap();
    fleet.execute_batch("ALTER TABLE outbox_state RENAME TO outbox_state_away").unwrap();
    gw.append_events(10).unwrap();
    gw.handle.wait_for(T, |s| s.restarts >= 1).await.unwrap_or_else(|s| panic!("the link did not notice its storage failing: {s:?}"));
    fleet.execute_batch("ALTER TABLE outbox_state_away RENAME TO outbox_state").unwrap();
    let last = *gw.append_events(10).unwrap().end();
    gw.handle.wait_for(Duration::from_secs(30), |s| s.connected && s.cursor >= last).await.unwrap_or_else(|s| panic!("the link did not recover: {s:?}"));
    let deadline = Instant::now() + T;
    while rec.first_arrivals().len() < last as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rec.first_arrivals(), (1..=last).collect::<Vec<_>>(), "events lost or out of order across the restart");
}

/// A raw MQTT client (no gate key) that publishes `(topic, retain, payload)` in order
/// and waits until the broker has taken each one (or shut the connection).
async fn publish_raw(cfg: &gate_fleet::link::BrokerConfig, msgs: Vec<(String, bool, Vec<u8>)>) {
    let mut opts = gate_fleet::link::mqtt_options(cfg, &format!("raw-{}", rand_id())).unwrap();
    opts.set_max_packet_size(64 << 20, 64 << 20);
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 100);
    let n = msgs.len();
    for (t, r, p) in msgs {
        client.publish(t, rumqttc::QoS::AtLeastOnce, r, p).await.unwrap();
    }
    let mut acked = 0;
    let deadline = Instant::now() + T;
    while acked < n && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(2), el.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let _ = client.disconnect().await;
}

/// Issue 12, item 5: the shipped ACL, on a TLS listener with a certificate per client.
/// A gateway's certificate publishes under its own topics only: not another gateway's,
/// not commands, not jobs; and the real link works within it (birth, events, a job).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_acl_keeps_each_gateway_to_its_own_topics() {
    let broker = broker();
    let ops = broker.identity("gate-operator").unwrap();
    let rec = Recorder::start(&ops, "gate/v1/#").await;
    let north = broker.identity("north").unwrap();
    let own = "gate/v1/oak-court/north/status".to_string();
    // Mosquitto ends a connection whose publish the ACL denies: one connection each.
    for forbidden in ["gate/v1/oak-court/south/status", "gate/v1/oak-court/south/events", "gate/v1/oak-court/north/cmd/c1", "gate/v1/oak-court/north/jobs/j1", "gate/v1/oak-court/north/cmd/c1/reply/x"]
    {
        publish_raw(&north, vec![(forbidden.into(), false, b"not allowed".to_vec())]).await;
    }
    publish_raw(&north, vec![(own.clone(), false, b"mine".to_vec())]).await;
    let deadline = Instant::now() + T;
    while !rec.got.lock().unwrap().iter().any(|(t, _)| *t == own) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got: Vec<String> = rec.got.lock().unwrap().iter().map(|(t, _)| t.clone()).collect();
    assert_eq!(got, vec![own], "the gateway's certificate published outside its own topics; broker log:\n{}", broker.log());

    // The real gateway under its certificate: birth, events, and a job from an operator.
    let mut gw = TestGateway::start(north, "oak-court", "north", TestGatewayOptions::default()).unwrap();
    wait_connected(&gw, 1).await;
    let last = *gw.append_events(20).unwrap().end();
    gw.handle.wait_for(T, |s| s.cursor >= last).await.unwrap_or_else(|s| panic!("events not acknowledged under the ACL: {s:?}"));
    let mut op = operator(&ops, &[&gw]).await;
    let (s, _) = deploy_one(&mut op, &gw, &bundle(&gw.operator_key, "resident-policy", "1.0.0", 1)).await;
    assert_eq!(s.state, JobState::Succeeded, "{s:?}");
    // A consumer reads, and may publish nothing.
    let consumer = broker.identity("gate-consumer").unwrap();
    publish_raw(&consumer, vec![("gate/v1/oak-court/north/cmd/c2".into(), false, b"x".to_vec())]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!rec.got.lock().unwrap().iter().any(|(t, _)| t.ends_with("cmd/c2")), "a consumer published a command");
    op.disconnect().await;
}

/// Issue 12, item 2: a broker client with no key forges a status, progress and replies.
/// The operator believes none of it: a forged status shows as forged (its gateway's
/// state unknown), an unknown gateway's as unverified, an erased one as missing; the
/// genuine reply and progress win over forged ones that arrive first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_status_progress_and_replies_are_flagged_and_never_believed() {
    use gate_fleet::signed::Trust;
    let broker = broker();
    let gw = TestGateway::start(broker.plain(), "oak-court", "north", TestGatewayOptions::default()).unwrap();
    wait_connected(&gw, 1).await;
    gw.announce();
    let mut op = operator(&broker.plain(), &[&gw]).await;
    let row = |rows: &[gate_fleet::operator::GatewayView], g: &str| rows.iter().find(|r| r.gateway == g).cloned();
    let mut rows = vec![];
    for _ in 0..50 {
        rows = op.fleet_status(Some("oak-court"), Duration::from_millis(200)).await.unwrap();
        if row(&rows, "north").is_some_and(|r| r.trust.is_genuine()) {
            break;
        }
    }
    assert_eq!(row(&rows, "north").map(|r| r.trust), Some(Trust::Genuine), "{rows:?}");

    // An attacker answers every command and job first, unsigned and signed with its own key.
    let attacker_key = gate_fleet::signed::DeviceKey::generate();
    let (client, mut el) = rumqttc::AsyncClient::new(gate_fleet::link::mqtt_options(&broker.plain(), "attacker").unwrap(), 100);
    client.subscribe("gate/v1/oak-court/#", rumqttc::QoS::AtLeastOnce).await.unwrap();
    let attacker = tokio::spawn(async move {
        loop {
            let Ok(ev) = el.poll().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev else { continue };
            let parts: Vec<&str> = p.topic.split('/').collect();
            let (topic, body) = match parts.as_slice() {
                [.., "cmd", id] => (format!("{}/reply", p.topic), format!(r#"{{"id":"{id}","ok":true,"code":"done","detail":"forged","at_ms":0}}"#)),
                [.., "jobs", id] if !p.payload.is_empty() => {
                    (format!("{}/progress", p.topic), format!(r#"{{"job_id":"{id}","gateway":"{}","state":"succeeded","reason":"forged","at_ms":0}}"#, parts[3]))
                }
                _ => continue,
            };
            let _ = client.publish(topic.clone(), rumqttc::QoS::AtLeastOnce, false, body.clone().into_bytes()).await;
            let kind = if topic.ends_with("/reply") { gate_fleet::signed::Kind::Reply } else { gate_fleet::signed::Kind::JobProgress };
            let _ = client.publish(topic.clone(), rumqttc::QoS::AtLeastOnce, false, attacker_key.seal(kind, &topic, &body)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // North answers (genuinely) and a gateway nobody enrolled does not: only the forger
    // answers for it. Waiting for it lets every forged reply arrive and be judged.
    let gws = [("oak-court".to_string(), "north".to_string()), ("oak-court".to_string(), "ghost".to_string())];
    let res = op.command_many(&gw.operator_key, &gws, CommandAction::OpenDoorOnce { door: "lobby".into() }, Duration::from_secs(3)).await.unwrap();
    let north_reply = res[0].2.as_ref().expect("north's genuine reply");
    assert!(north_reply.ok && north_reply.detail != "forged", "{north_reply:?}");
    assert!(matches!(res[1].2, Err(gate_fleet::operator::OperatorError::NoReply(_))), "a forged reply was taken for ghost's: {:?}", res[1].2);
    let ignored = op.take_ignored();
    assert!(ignored.iter().any(|i| matches!(i.trust, Trust::Forged(_)) && i.topic.contains("/north/cmd/")), "{ignored:?}");
    assert!(ignored.iter().any(|i| matches!(i.trust, Trust::Unverified(_)) && i.topic.contains("/ghost/cmd/")), "{ignored:?}");
    // A bundle the gateway refuses is reported refused, whatever the attacker says first.
    let (s, seen) = deploy_one(&mut op, &gw, &bundle(&OperatorKey::generate("stranger").unwrap(), "resident-policy", "1.0.0", 1)).await;
    assert_eq!((s.state, s.code.as_deref()), (JobState::Rejected, Some("unknown-key")), "{s:?}");
    assert!(seen.iter().all(|s| s.reason.as_deref() != Some("forged")), "{seen:?}");
    attacker.abort();

    // Forged retained statuses: north (enrolled) and a gateway nobody enrolled.
    let fake = |g: &str| format!(r#"{{"site":"oak-court","gateway":"{g}","online":true,"host_version":"9.9.9","plugins":[],"at_ms":0}}"#).into_bytes();
    publish_raw(&broker.plain(), vec![("gate/v1/oak-court/north/status".into(), true, fake("north")), ("gate/v1/oak-court/ghost/status".into(), true, fake("ghost"))]).await;
    let rows = op.fleet_status(Some("oak-court"), Duration::from_millis(300)).await.unwrap();
    let n = row(&rows, "north").unwrap();
    assert!(matches!(n.trust, Trust::Forged(_)) && n.status.is_none(), "a forged status was believed: {n:?}");
    let g = row(&rows, "ghost").unwrap();
    assert!(matches!(g.trust, Trust::Unverified(_)), "{g:?}");
    let table = gate_fleet::operator::format_status_table(&rows);
    assert!(table.contains("oak-court\tnorth\tunknown") && table.contains("forged"), "{table}");
    // Erased: north is still listed, as unknown.
    publish_raw(&broker.plain(), vec![("gate/v1/oak-court/north/status".into(), true, vec![])]).await;
    let rows = op.fleet_status(Some("oak-court"), Duration::from_millis(300)).await.unwrap();
    let n = row(&rows, "north").expect("an enrolled gateway with no status vanished from the status");
    assert!(matches!(n.trust, Trust::Missing(_)) && n.status.is_none(), "{n:?}");
    // A site-wide job still goes to it, and its genuine answer counts.
    let res = op.deploy(&Target::Site("oak-court".into()), &bundle(&gw.operator_key, "resident-policy", "1.0.0", 2), T, &mut |_, _| {}).await.unwrap();
    assert_eq!(res.len(), 1, "the job went to gateways not enrolled: {res:?}");
    assert_eq!(res[0].1.as_ref().map(|s| s.state), Some(JobState::Succeeded), "{res:?}");
    op.disconnect().await;
}

/// Issue 12, item 3: every event is signed; a consumer holding the gateway's key tells
/// its events from forged ones with future ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_verify_against_the_gateways_key_and_forged_ones_do_not() {
    let broker = broker();
    let mut gw = TestGateway::start(broker.plain(), "oak-court", "north", TestGatewayOptions::default()).unwrap();
    wait_connected(&gw, 1).await;
    let rec = Recorder::start(&broker.plain(), "gate/v1/oak-court/north/events").await;
    let topic = "gate/v1/oak-court/north/events".to_string();
    let forged = |id: i64| format!(r#"{{"id":"north-ev-{id}","seq":{id},"at_ms":0,"kind":"decision","body":{{"decision":"grant"}}}}"#).into_bytes();
    publish_raw(&broker.plain(), (1..=5).map(|i| (topic.clone(), false, forged(i))).collect()).await;
    let last = *gw.append_events(5).unwrap().end();
    gw.handle.wait_for(T, |s| s.cursor >= last).await.unwrap();
    let deadline = Instant::now() + T;
    while rec.got.lock().unwrap().len() < 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let inv = gw.inventory();
    let verdicts: Vec<String> = rec.got.lock().unwrap().iter().map(|(t, p)| inv.open(t, p).0.label().to_string()).collect();
    assert_eq!(verdicts.iter().filter(|v| *v == "genuine").count(), 5, "{verdicts:?}");
    assert_eq!(verdicts.iter().filter(|v| *v == "forged").count(), 5, "{verdicts:?}");
}

/// Issue 12, item 1: one 42 MB retained message on a command topic. The broker's limit
/// (the shipped `max_packet_size`, which the tests' broker uses) refuses it, so it is
/// never retained nor offered to the gateway: the link stays up and keeps publishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_42_mb_retained_command_is_refused_at_the_broker_and_the_link_stays_up() {
    let broker = broker();
    let mut gw = TestGateway::start(broker.plain(), "oak-court", "north", TestGatewayOptions::default()).unwrap();
    wait_connected(&gw, 1).await;
    let connects = gw.handle.snapshot().connects;
    publish_raw(&broker.plain(), vec![("gate/v1/oak-court/north/cmd/big".into(), true, vec![b'x'; 42_000_000])]).await;
    let rec = Recorder::start(&broker.plain(), "gate/v1/oak-court/north/cmd/+").await;
    let last = *gw.append_events(10).unwrap().end();
    let s = gw.handle.wait_for(T, |s| s.cursor >= last).await.unwrap_or_else(|s| panic!("the link stopped publishing: {s:?}"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rec.got.lock().unwrap().is_empty(), "the oversized message was retained");
    assert_eq!((gw.handle.snapshot().connects, s.oversize), (connects, 0), "the link reconnected");
}

/// Issue 12, item 1, with a broker that has no packet limit of its own (a default
/// Mosquitto; or EMQX set larger): the broker takes and retains a 42 MB command. The
/// gateway's MQTT 5 CONNECT states its Maximum Packet Size, so the broker drops the message
/// for it instead of sending it, and says so in its log once per delivery (one connect,
/// one subscription: once). The link never reconnects, keeps publishing events, and a
/// genuine signed command sent after it is carried out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_42_mb_retained_command_is_dropped_by_a_broker_without_a_limit_and_the_link_stays_up() {
    let broker = gate_fleet::testing::Broker::start_without_packet_limit().unwrap_or_else(|e| panic!("{e}"));
    publish_raw(&broker.plain(), vec![("gate/v1/oak-court/north/cmd/big".into(), true, vec![b'x'; 42_000_000])]).await;
    // Retained at the broker: a client with no limit gets it whole.
    let whole = retained_size(&broker.plain(), "gate/v1/oak-court/north/cmd/big").await;
    assert_eq!(whole, Some(42_000_000), "the broker did not keep the message, so this test proves nothing");
    // The gateway meets it at its first subscription.
    let mut gw = TestGateway::start(broker.plain(), "oak-court", "north", TestGatewayOptions::default()).unwrap();
    wait_connected(&gw, 1).await;
    let drop_line = "Dropping too large outgoing PUBLISH for gate-oak-court-north";
    let deadline = Instant::now() + T;
    while !broker.log().contains(drop_line) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = *gw.append_events(10).unwrap().end();
    let s = gw.handle.wait_for(T, |s| s.cursor >= last).await.unwrap_or_else(|s| panic!("the link stopped publishing: {s:?}"));
    let mut op = operator(&broker.plain(), &[&gw]).await;
    let reply = op.command(&gw.operator_key, "oak-court", "north", CommandAction::OpenDoorOnce { door: "lobby".into() }, T).await.unwrap();
    assert!(reply.ok, "{reply:?}");
    let s2 = gw.handle.snapshot();
    assert_eq!((s.connects, s2.connects, s2.oversize), (1, 1, 0), "the link reconnected over the message");
    assert_eq!(broker.log().matches(drop_line).count(), 1, "one delivery attempt, one drop line; broker log:\n{}", broker.log());
    op.disconnect().await;
}

/// The size of the retained message on `topic`, read by a 3.1.1 client with no limit.
async fn retained_size(cfg: &gate_fleet::link::BrokerConfig, topic: &str) -> Option<usize> {
    let mut opts = gate_fleet::link::mqtt_options(cfg, &format!("big-reader-{}", rand_id())).unwrap();
    opts.set_max_packet_size(64 << 20, 64 << 20);
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 10);
    client.subscribe(topic, rumqttc::QoS::AtMostOnce).await.unwrap();
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        if let Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) = tokio::time::timeout(Duration::from_secs(2), el.poll()).await {
            let _ = client.disconnect().await;
            return Some(p.payload.len());
        }
    }
    None
}

/// Publishes `msgs` in order over one keyless connection, as fast as the broker takes
/// them (the event loop runs beside), and waits until the broker acknowledged them all.
async fn flood_raw(cfg: &gate_fleet::link::BrokerConfig, msgs: Vec<(String, Vec<u8>)>) {
    let mut opts = gate_fleet::link::mqtt_options(cfg, &format!("flood-{}", rand_id())).unwrap();
    opts.set_inflight(1000);
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 1000);
    let n = msgs.len();
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < n {
            match tokio::time::timeout(Duration::from_secs(20), el.poll()).await {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("the flooding client lost its connection: {e}"),
                Err(_) => panic!("the broker stopped acknowledging after {acked} of {n}"),
            }
        }
    });
    for (t, p) in msgs {
        client.publish(t, rumqttc::QoS::AtLeastOnce, false, p).await.unwrap();
    }
    acks.await.unwrap();
    let _ = client.disconnect().await;
}

/// Issue 12, item 1 (second part): a keyless client floods `cmd/…` and `jobs/…` with
/// 10,000 messages: garbage, unsigned well-formed requests, requests "signed" with the
/// operator's key id but a forged signature, and replays of a genuine command. In the
/// middle of the same stream come three genuine signed commands and a signed deployment.
/// Every genuine one is acted on (once); the junk is shed and counted, nothing of it is
/// stored, and the link still publishes afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genuine_commands_and_a_deployment_get_through_a_junk_flood() {
    use gate_fleet::commands::{sign_command, Command};
    let broker = broker();
    let mut gw = TestGateway::start(broker.plain(), "oak-court", "north", TestGatewayOptions::default()).unwrap();
    wait_connected(&gw, 1).await;
    let base = "gate/v1/oak-court/north";
    let now = gate_fleet::messages::now_ms();
    let command = |id: &str| Command {
        id: id.into(),
        site: "oak-court".into(),
        gateway: "north".into(),
        issued_at_ms: now,
        expires_at_ms: now + 120_000,
        action: CommandAction::OpenDoorOnce { door: "lobby".into() },
    };
    let signed = |id: &str| serde_json::to_vec(&sign_command(&gw.operator_key, &command(id)).unwrap()).unwrap();
    let forged = |id: &str| {
        let mut s = sign_command(&gw.operator_key, &command(id)).unwrap();
        s.command = s.command.replace("lobby", "vault");
        serde_json::to_vec(&s).unwrap()
    };
    let junk = |i: usize| -> (String, Vec<u8>) {
        match i % 5 {
            0 => (format!("{base}/cmd/junk"), b"junk {".to_vec()),
            1 => (format!("{base}/jobs/junk"), b"junk {".to_vec()),
            2 => (format!("{base}/cmd/u-{i}"), format!(r#"{{"command":"{{\"id\":\"u-{i}\"}}","signature":{{"key_id":"test-operator","ed25519":"AAAA"}}}}"#).into_bytes()),
            3 => (
                format!("{base}/jobs/j-{i}"),
                format!(r#"{{"job_id":"j-{i}","action":{{"type":"rollback","order":{{"order":"{{}}","signature":{{"key_id":"nobody","ed25519":"AAAA"}}}}}},"at_ms":0}}"#).into_bytes(),
            ),
            _ if i % 25 == 4 => (format!("{base}/cmd/f-{i}"), forged(&format!("f-{i}"))),
            _ => (format!("{base}/cmd/genuine-1"), signed("genuine-1")),
        }
    };
    let job =
        gate_fleet::messages::JobRequest { job_id: "deploy-1".into(), action: gate_fleet::messages::JobAction::Deploy { bundle: bundle(&gw.operator_key, "resident-policy", "1.0.0", 1) }, at_ms: now };
    // The deployment comes last of the genuine ones: once live, the gateway reconnects so
    // its will names the new version, and a clean session loses what arrives in that gap.
    let mut msgs: Vec<(String, Vec<u8>)> = (0..5_000).map(junk).collect();
    msgs.push((format!("{base}/cmd/genuine-1"), signed("genuine-1")));
    msgs.push((format!("{base}/cmd/genuine-2"), signed("genuine-2")));
    msgs.extend((5_000..7_500).map(junk));
    msgs.push((format!("{base}/cmd/genuine-3"), signed("genuine-3")));
    msgs.push((format!("{base}/jobs/deploy-1"), serde_json::to_vec(&job).unwrap()));
    msgs.extend((7_500..10_000).map(junk));
    let genuine = 4;
    let total = msgs.len();
    flood_raw(&broker.plain(), msgs).await;

    let s = gw.handle.wait_for(T, |s| s.inbound_genuine >= genuine && s.inbound_shed > 0).await.unwrap_or_else(|s| panic!("genuine messages lost in the flood: {s:?}"));
    let deadline = Instant::now() + T;
    while (gw.executed.lock().unwrap().len() < 3 || gw.slot.lock().unwrap().active("resident-policy").is_none()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ids: Vec<String> = gw.executed.lock().unwrap().iter().map(|c| c.command.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["genuine-1", "genuine-2", "genuine-3"], "each genuine command carried out once");
    let active = gw.slot.lock().unwrap().active("resident-policy").map(|a| a.version.to_string());
    assert_eq!(active.as_deref(), Some("1.0.0"), "the deployment in the flood did not go live");
    eprintln!("{total} messages: {} genuine verified, {} shed", s.inbound_genuine, s.inbound_shed);
    assert!(s.inbound_shed >= 5_000, "the junk was not shed: {s:?}");
    // Nothing of the junk was stored: the log holds the three genuine commands, the jobs
    // table the one genuine deployment.
    let fleet = rusqlite::Connection::open_with_flags(&gw.fleet_db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let rows = |t: &str| fleet.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!((rows("fleet_jobs"), rows("fleet_command_log")), (1, 3), "junk was stored");
    // And the link still publishes.
    let last = *gw.append_events(10).unwrap().end();
    gw.handle.wait_for(T, |s| s.cursor >= last).await.unwrap_or_else(|s| panic!("the link stopped publishing: {s:?}"));
}
