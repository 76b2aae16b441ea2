//! Shared pieces of the integration tests: the broker, a subscriber that records events,
//! and bundle helpers.

#![allow(dead_code)]

use gate_fleet::bundle::{sign_bundle, Bundle, Manifest, World};
use gate_fleet::deploy::COMPONENT_HEADER;
use gate_fleet::keys::OperatorKey;
use gate_fleet::link::{mqtt_options, BrokerConfig};
use gate_fleet::messages::EventMessage;
use gate_fleet::testing::Broker;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Starts mosquitto or fails the test with the setup hint.
pub fn broker() -> Broker {
    Broker::start().unwrap_or_else(|e| panic!("{e}"))
}

/// A fake component: the real component header plus a tag.
pub fn component(tag: &str) -> Vec<u8> {
    [COMPONENT_HEADER, tag.as_bytes(), &[0u8; 4096][..]].concat()
}

pub fn manifest(name: &str, version: &str, sequence: u64) -> Manifest {
    Manifest {
        name: name.into(),
        world: World::PolicyPlugin,
        version: version.parse().unwrap(),
        sha256: String::new(),
        min_host_version: "0.1.0".parse().unwrap(),
        config: BTreeMap::from([("opening-ms".into(), "3000".into())]),
        self_tests: vec![],
        sequence,
        rollback: false,
        created_at_ms: gate_fleet::messages::now_ms(),
    }
}

pub fn bundle(key: &OperatorKey, name: &str, version: &str, sequence: u64) -> Bundle {
    sign_bundle(key, manifest(name, version, sequence), &component(version)).unwrap()
}

/// (topic, payload) of a received message.
pub type Received = (String, Vec<u8>);

/// Records every event message published on a topic filter; re-subscribes after reconnects.
pub struct Recorder {
    pub got: Arc<Mutex<Vec<Received>>>,
    pub subscribed: Arc<Mutex<u32>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub async fn start(broker: &BrokerConfig, filter: &str) -> Recorder {
        let mut opts = mqtt_options(broker, &format!("recorder-{}", rand_id())).unwrap();
        opts.set_inflight(1000);
        let (client, mut el) = AsyncClient::new(opts, 100);
        let got = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(Mutex::new(0));
        let (g, s, f) = (got.clone(), subscribed.clone(), filter.to_string());
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe(f.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => *s.lock().unwrap() += 1,
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        g.lock().unwrap().push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        let r = Recorder { got, subscribed, task };
        r.wait_subscribed(1).await;
        r
    }

    pub async fn wait_subscribed(&self, n: u32) {
        for _ in 0..500 {
            if *self.subscribed.lock().unwrap() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("recorder did not subscribe");
    }

    /// Distinct ids received, and the seqs in order of first arrival.
    pub fn first_arrivals(&self) -> Vec<i64> {
        let mut seen = std::collections::HashSet::new();
        let events: Vec<EventMessage> = self.got.lock().unwrap().iter().filter_map(|(_, p)| gate_fleet::signed::body_unverified(p).and_then(|b| serde_json::from_str(&b).ok())).collect();
        events.into_iter().filter(|m| seen.insert(m.id.clone())).map(|m| m.seq).collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn rand_id() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    format!("{:x}{:x}", SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos(), std::process::id())
}

/// A TCP relay in front of the broker for the gateway, which the test can hold shut:
/// while closed, connections are refused at once, so the test decides when the gateway
/// may come back (after the recorder has re-subscribed to a restarted broker).
pub struct Relay {
    pub port: u16,
    open: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    pub async fn start(broker_port: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let o = open.clone();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let c = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !o.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the gateway sees the connection fail
                }
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(conn);
            }
        });
        Relay { port, open, task, conns }
    }

    pub fn set_open(&self, open: bool) {
        self.open.store(open, std::sync::atomic::Ordering::SeqCst);
    }

    /// Shuts the relay and cuts the connections it carries, as a network failure would:
    /// whatever the gateway sent that the broker has not acknowledged stays in flight.
    pub fn cut(&self) {
        self.set_open(false);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// `broker` with the relay's port.
    pub fn config(&self, broker: &BrokerConfig) -> BrokerConfig {
        BrokerConfig { port: self.port, ..broker.clone() }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
