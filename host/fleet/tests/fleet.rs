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

async fn operator(cfg: &gate_fleet::link::BrokerConfig) -> Operator {
    Operator::connect(cfg, &format!("op-{}", rand_id()), T).await.unwrap()
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
    let mut op = operator(&broker.tls()).await;
    let mut online = None;
    for _ in 0..50 {
        let rows = op.fleet_status(Some("oak-court"), Duration::from_millis(200)).await.unwrap();
        if let Some(r) = rows.iter().find(|r| r.gateway == "north") {
            online = Some(r.status.online);
            break;
        }
    }
    assert_eq!(online, Some(true), "birth message not seen over TLS");

    gw.crash();
    let mut offline = false;
    for _ in 0..50 {
        let rows = op.fleet_status(Some("oak-court"), Duration::from_millis(200)).await.unwrap();
        if rows.iter().any(|r| r.gateway == "north" && !r.status.online) {
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
    let mut op = operator(&broker.plain()).await;
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
    assert!(row.status.online);
    assert_eq!(row.status.plugins[0].version.to_string(), "1.0.0");
    assert_eq!(row.status.last_job.as_ref().and_then(|j| j.code.as_deref()), Some("downgrade"));
    op.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_that_keeps_failing_rolls_back_by_itself_and_says_so() {
    let broker = broker();
    let gw = TestGateway::start(broker.plain(), "oak-court", "north", TestGatewayOptions::default()).unwrap();
    wait_connected(&gw, 1).await;
    let mut op = operator(&broker.plain()).await;
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

    let seen = op.job_status("oak-court", "north", &s2.job_id, T, |s| s.state == JobState::RolledBack).await.unwrap().unwrap();
    assert_eq!(seen.state, JobState::RolledBack, "{seen:?}");
    assert!(seen.reason.unwrap().contains("rolled back to 1.0.0"));
    op.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_rollback_and_commands_are_authorised_and_answered() {
    let broker = broker();
    let gw = TestGateway::start(broker.plain(), "oak-court", "north", TestGatewayOptions::default()).unwrap();
    wait_connected(&gw, 1).await;
    let mut op = operator(&broker.plain()).await;
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

    let mut op = operator(&broker.plain()).await;
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
    let mut op = operator(&broker.plain()).await;
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
