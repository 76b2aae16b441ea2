//! `cargo bench -p gate-fleet`: fleet numbers for the README (needs mosquitto; run
//! `cargo xtask setup` first). Set FLEET_BENCH_EVENTS to change the event count.

fn main() {
    let events: usize = std::env::var("FLEET_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet bench: cannot start tokio: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(gate_fleet::bench::run(events)) {
        Ok(r) => {
            println!("fleet bench ({} events per run, local mosquitto on loopback)", r.events);
            println!("  publish throughput, plain TCP   : {:>9.0} events/s (stored -> PUBACK)", r.publish_plain_eps);
            println!("  publish throughput, TLS         : {:>9.0} events/s", r.publish_tls_eps);
            println!("  outbox drain after an outage    : {:>9.0} events/s (target >= 5000)", r.drain_after_outage_eps);
            println!("  signing alone (serialise + seal): {:>9.1} µs/event ({:.0} events/s on one core)", r.seal_us_per_event, 1e6 / r.seal_us_per_event);
            println!("  deployment publish -> active    : p50 {:.1} ms, max {:.1} ms for a {} byte bundle (target <= 500 ms)", r.deploy_ms_p50, r.deploy_ms_max, r.deploy_bundle_bytes);
        }
        Err(e) => {
            eprintln!("fleet bench failed: {e}");
            std::process::exit(1);
        }
    }
}
