//! Fleet benchmarks against a real local mosquitto (feature `testing`), callable from the
//! host's `gate bench` and from `cargo bench -p gate-fleet`: live publish throughput,
//! outbox drain rate after an outage, and deployment latency from publish to active.

use crate::operator::{Operator, Target};
use crate::testing::{Broker, TestGateway, TestGatewayOptions};
use std::time::{Duration, Instant};

/// Results, in events per second and milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    pub events: usize,
    pub publish_plain_eps: f64,
    pub publish_tls_eps: f64,
    pub drain_after_outage_eps: f64,
    pub deploy_bundle_bytes: usize,
    pub deploy_ms_p50: f64,
    pub deploy_ms_max: f64,
    /// Signing alone: one event message serialised and sealed, µs (the link's added cost per event).
    pub seal_us_per_event: f64,
}

/// Time to serialise and sign `n` typical event messages, per event in µs.
pub fn seal_cost(n: usize) -> f64 {
    let key = crate::signed::DeviceKey::generate();
    let topic = "gate/v1/bench/plain/events";
    let start = Instant::now();
    let mut bytes = 0;
    for i in 0..n {
        let m = crate::messages::EventMessage {
            id: format!("plain-ev-{i}"),
            seq: i as i64,
            at_ms: 1_800_000_000_000,
            kind: "decision".into(),
            door: Some("lobby".into()),
            body: serde_json::json!({"decision": "grant", "credential": "card", "subject": format!("s-{}", i % 97), "n": i}),
        };
        bytes += key.seal_json(crate::signed::Kind::Event, topic, &m).len();
    }
    let per = start.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64;
    std::hint::black_box(bytes);
    per
}

async fn throughput(gw: &mut TestGateway, events: usize) -> Result<f64, String> {
    let start = Instant::now();
    let mut last = 0;
    for _ in 0..events / 1000 {
        last = *gw.append_events(1000)?.end();
    }
    gw.handle.wait_for(Duration::from_secs(120), |s| s.cursor >= last).await.map_err(|s| format!("publish did not finish: {s:?}"))?;
    Ok(events as f64 / start.elapsed().as_secs_f64())
}

/// Runs every measurement with `events` events each (a multiple of 1000).
pub async fn run(events: usize) -> Result<BenchReport, String> {
    let mut broker = Broker::start()?;
    let opts = TestGatewayOptions { backoff: crate::link::Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(100) }, ..Default::default() };

    // Live publish throughput: events appended while connected, until all are PUBACKed.
    let mut gw = TestGateway::start(broker.plain(), "bench", "plain", opts.clone())?;
    gw.handle.wait_for(Duration::from_secs(10), |s| s.connected).await.map_err(|_| "no connection")?;
    let publish_plain_eps = throughput(&mut gw, events).await?;
    let mut tls = TestGateway::start(broker.tls(), "bench", "tls", opts.clone())?;
    tls.handle.wait_for(Duration::from_secs(10), |s| s.connected).await.map_err(|_| "no TLS connection")?;
    let publish_tls_eps = throughput(&mut tls, events).await?;
    tls.crash();

    // Outage: the broker dies, events pile up in SQLite, the broker returns.
    broker.kill();
    gw.handle.wait_for(Duration::from_secs(10), |s| !s.connected).await.map_err(|_| "gateway did not notice the outage")?;
    let connects = gw.handle.snapshot().connects;
    let mut last = 0;
    for _ in 0..events / 1000 {
        last = *gw.append_events(1000)?.end();
    }
    broker.restart()?;
    gw.handle.wait_for(Duration::from_secs(10), |s| s.connects > connects).await.map_err(|_| "gateway did not reconnect")?;
    let start = Instant::now();
    gw.handle.wait_for(Duration::from_secs(120), |s| s.cursor >= last).await.map_err(|s| format!("drain did not finish: {s:?}"))?;
    let drain_after_outage_eps = events as f64 / start.elapsed().as_secs_f64();

    // Deployment latency, publish -> succeeded (active), with a 256 KiB component.
    let mut op = Operator::connect(&broker.plain(), "bench-operator", Duration::from_secs(10)).await.map_err(|e| e.to_string())?;
    op.set_inventory(gw.inventory());
    let component = [crate::deploy::COMPONENT_HEADER, &vec![7u8; 256 * 1024][..]].concat();
    let target = Target::Gateway { site: "bench".into(), gateway: "plain".into() };
    let mut times = vec![];
    let mut bundle_bytes = 0;
    for i in 0..10u64 {
        let m = crate::bundle::Manifest {
            name: "resident-policy".into(),
            world: crate::bundle::World::PolicyPlugin,
            version: semver::Version::new(1, i, 0),
            sha256: String::new(),
            min_host_version: semver::Version::new(0, 1, 0),
            config: Default::default(),
            self_tests: vec![],
            sequence: i + 1,
            rollback: false,
            created_at_ms: crate::messages::now_ms(),
        };
        let b = crate::bundle::sign_bundle(&gw.operator_key, m, &component).map_err(|e| e.to_string())?;
        // Job requests are bounded at 1/s (burst 10) by the link, and each deployment's
        // retained request comes back once more when the link reconnects to refresh its
        // will: pace them so the measurement is of a deployment, not of the shedding.
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        bundle_bytes = b.to_bytes().len();
        let start = Instant::now();
        let res = op.deploy(&target, &b, Duration::from_secs(10), &mut |_, _| {}).await.map_err(|e| e.to_string())?;
        let ok = res.first().and_then(|(_, s)| s.as_ref()).is_some_and(|s| s.state == crate::messages::JobState::Succeeded);
        if !ok {
            return Err(format!("deployment {i} did not succeed: {res:?}; messages not believed: {:?}; link: {:?}", op.take_ignored(), gw.handle.snapshot()));
        }
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    op.disconnect().await;
    times.sort_by(|a, b| a.total_cmp(b));
    gw.crash();
    let seal_us_per_event = seal_cost(events);
    Ok(BenchReport {
        seal_us_per_event,
        events,
        publish_plain_eps,
        publish_tls_eps,
        drain_after_outage_eps,
        deploy_bundle_bytes: bundle_bytes,
        deploy_ms_p50: times[times.len() / 2],
        deploy_ms_max: times[times.len() - 1],
    })
}
