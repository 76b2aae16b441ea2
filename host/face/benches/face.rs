//! Face benchmark: per-stage latency and frame-to-decision p50/p99 on a real photograph with
//! the real models, the liveness model's cost on a matched face, and 1:N search p50/p99 with
//! memory per template for 10k / 100k / 1M.
//! Run: `CARGO_TARGET_DIR=... cargo bench -p gate-face` after `cargo xtask models`.

use criterion::Criterion;
use gate_face::{Consent, DeviceKey, EnrollPolicy, FaceEngine, Frame, Gallery, MatchConfig, Outcome, StageTimings, TemplateStore};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn report(name: &str, mut v: Vec<Duration>) {
    println!("{name:<28} min {:>8.3} ms   p50 {:>8.3} ms   p99 {:>8.3} ms   (n={})", pct(&mut v, 0.0), pct(&mut v, 0.50), pct(&mut v, 0.99), v.len());
}

fn main() {
    let threads = std::env::var("GATE_FACE_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(MatchConfig::default().threads);
    println!("ONNX Runtime intra-op threads: {threads}");
    let engine = FaceEngine::open(&models(), MatchConfig { threads, ..MatchConfig::default() }).unwrap_or_else(|e| panic!("{e}\nRun `cargo xtask models` first."));
    let photo = models().join("testdata/t1.jpg");
    let bytes = std::fs::read(&photo).unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask models`", photo.display()));
    let frame = Frame::decode(&bytes).expect("test photo decodes");
    println!("frame {}x{} (testdata/t1.jpg, six faces), {} cores", frame.width(), frame.height(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));

    // Frame to decision against a 10,000-template gallery.
    let gallery = Gallery::synthetic(10_000, 42);
    for _ in 0..5 {
        engine.identify(&frame, &gallery).expect("identify");
    }
    let n = 200;
    let mut stages: Vec<StageTimings> = Vec::with_capacity(n);
    for _ in 0..n {
        stages.push(engine.identify_timed(&frame, &gallery).expect("identify").1);
    }
    report("detect", stages.iter().map(|t| t.detect).collect());
    report("align + quality", stages.iter().map(|t| t.align).collect());
    report("embed", stages.iter().map(|t| t.embed).collect());
    report("search (10k)", stages.iter().map(|t| t.search).collect());
    report("frame-to-decision", stages.iter().map(|t| t.total).collect());
    let decode: Vec<Duration> = (0..50)
        .map(|_| {
            let t = Instant::now();
            black_box(Frame::decode(&bytes).expect("decode"));
            t.elapsed()
        })
        .collect();
    report("JPEG decode (not counted)", decode);

    // A matched face: liveness runs only then. Enrol obama.jpg + obama2.jpg, probe obama3.jpg.
    let dir = std::env::temp_dir().join(format!("gate-face-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = dir.join("face.key");
    let _ = std::fs::remove_file(&key);
    DeviceKey::create(&key).expect("key");
    let store = TemplateStore::open(&dir.join("face.sqlite"), &key).expect("store");
    let consent = Consent { subject: "r-bench".into(), purpose: "benchmark".into(), notice_version: "1".into(), capture: "benchmark".into(), given_at_ms: 1 };
    store.record_consent(&consent).expect("consent");
    let named = |n: &str| (n.to_string(), Frame::decode(&std::fs::read(models().join("testdata").join(n)).expect("photo")).expect("decodes"));
    store.enroll(&engine, "r-bench", &[named("obama.jpg"), named("obama2.jpg")], &EnrollPolicy { min_samples: 2, ..EnrollPolicy::default() }, 1).expect("enrol");
    let matched = store.load_gallery().expect("gallery");
    let (_, probe) = named("obama3.jpg");
    let (outcome, _) = engine.identify_timed(&probe, &matched).expect("identify");
    assert!(matches!(outcome, Outcome::Match(_)), "obama3.jpg should match: {outcome:?}");
    println!("matched face (obama3.jpg {}x{}), liveness model loaded: {}", probe.width(), probe.height(), engine.has_liveness());
    let mut stages: Vec<StageTimings> = Vec::with_capacity(n);
    for _ in 0..n {
        stages.push(engine.identify_timed(&probe, &matched).expect("identify").1);
    }
    report("liveness (matched face)", stages.iter().map(|t| t.liveness).collect());
    report("frame-to-decision (match)", stages.iter().map(|t| t.total).collect());
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);

    // 1:N search.
    for size in [10_000usize, 100_000, 1_000_000] {
        let g = Gallery::synthetic(size, 7);
        let mut times = Vec::with_capacity(300);
        for seed in 0..300u64 {
            let t = Instant::now();
            black_box(g.search_random(seed + 1000));
            times.push(t.elapsed());
        }
        println!("gallery {size:>9}: {} bytes/template", g.bytes_per_template());
        report(&format!("search {size}"), times);
    }

    let mut c = Criterion::default().sample_size(20).configure_from_args();
    c.bench_function("identify t1.jpg vs 10k", |b| b.iter(|| engine.identify(black_box(&frame), &gallery).expect("identify")));
    let g = Gallery::synthetic(100_000, 9);
    c.bench_function("search 100k", |b| b.iter(|| g.search_random(black_box(3))));
    c.bench_function("identify obama3.jpg, matched, with liveness", |b| b.iter(|| engine.identify(black_box(&probe), &matched).expect("identify")));
    c.final_summary();
}
