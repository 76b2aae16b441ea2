//! Accuracy and behaviour on real photographs with the real models
//! (fetched by `cargo xtask models`; these tests fail, with that advice, without them).

use crate::engine::{FaceEngine, MatchBand, MatchConfig, Outcome, StageTimings};
use crate::error::{ModelError, StoreError};
use crate::frame::Frame;
use crate::gallery::Embedding;
use crate::key::DeviceKey;
use crate::store::{Consent, EnrollPolicy, TemplateStore};
use crate::Rejection;
use std::path::PathBuf;
use std::sync::OnceLock;

pub(crate) fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

pub(crate) fn engine() -> &'static FaceEngine {
    static ENGINE: OnceLock<FaceEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        FaceEngine::open(&models_dir(), MatchConfig::default()).unwrap_or_else(|e| panic!("{e}\nThe real models are needed for this test: run `cargo xtask setup` (or `cargo xtask models`) first."))
    })
}

pub(crate) fn photo(name: &str) -> Frame {
    let path = models_dir().join("testdata").join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}\nRun `cargo xtask setup` (or `cargo xtask models`) to fetch the test photographs.", path.display()));
    Frame::decode(&bytes).unwrap()
}

fn embed(name: &str) -> Embedding {
    match engine().sample(&photo(name), 40.0, &mut StageTimings::default()).unwrap() {
        Ok(s) => s.embedding,
        Err(o) => panic!("{name}: no usable face: {o:?}"),
    }
}

const OBAMA: [&str; 3] = ["obama.jpg", "obama2.jpg", "obama3.jpg"];
const OTHERS: [&str; 2] = ["biden.jpg", "astronaut.png"];

#[test]
fn same_person_matches_across_photos_and_different_people_do_not() {
    let cfg = MatchConfig::default();
    let obama: Vec<Embedding> = OBAMA.iter().map(|n| embed(n)).collect();
    // Impostors: the chosen face of each other photo plus every other face in all photos,
    // including the six people of the group photo t1.jpg.
    let mut others: Vec<Embedding> = OTHERS.iter().map(|n| embed(n)).collect();
    let mut genuine = Vec::new();
    for i in 0..obama.len() {
        for j in i + 1..obama.len() {
            genuine.push(obama[i].cosine(&obama[j]));
        }
    }
    for name in OBAMA.iter().chain(&OTHERS).chain(&["t1.jpg"]) {
        for e in engine().embed_all(&photo(name), 40.0).unwrap() {
            // Skip the faces that are Obama himself (the group photos show him too).
            if obama.iter().all(|o| o.cosine(&e) < 0.9) && others.iter().all(|o| o.cosine(&e) < 0.9) {
                others.push(e);
            }
        }
    }
    let mut impostor = Vec::new();
    for o in &obama {
        for x in &others {
            impostor.push(o.cosine(x));
        }
    }
    for i in 0..others.len() {
        for j in i + 1..others.len() {
            impostor.push(others[i].cosine(&others[j]));
        }
    }
    eprintln!("{} distinct impostor faces", others.len());
    eprintln!("genuine {genuine:.3?}");
    eprintln!("impostor ({} pairs) max {:.3} {impostor:.3?}", impostor.len(), impostor.iter().cloned().fold(f32::MIN, f32::max));
    assert!(genuine.iter().all(|&g| g >= cfg.strong), "genuine pair below the strong threshold: {genuine:?}");
    assert!(impostor.iter().all(|&s| s < cfg.weak), "impostor pair at or above the weak threshold: {impostor:?}");
}

fn consent(subject: &str) -> Consent {
    Consent {
        subject: subject.into(),
        purpose: "entry at the community gates".into(),
        notice_version: "2025-06".into(),
        capture: "kiosk at the property office".into(),
        given_at_ms: 1_750_000_000_000,
    }
}

#[test]
fn the_same_photo_given_twice_counts_once_and_enrolment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("face.key");
    DeviceKey::create(&key).unwrap();
    let store = TemplateStore::open(&dir.path().join("face.sqlite"), &key).unwrap();
    store.record_consent(&consent("r-0402")).unwrap();
    let policy = EnrollPolicy { min_samples: 2, ..EnrollPolicy::default() };
    match store.enroll(engine(), "r-0402", &[photo("obama.jpg"), photo("obama.jpg")], &policy, 1).unwrap_err() {
        StoreError::NotEnoughSamples { accepted, reasons, .. } => {
            assert_eq!(accepted, 1);
            assert!(reasons.contains("frame 1: same photo as frame 0"), "{reasons}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(store.enrolled().unwrap().is_empty());
}

#[test]
fn an_enrolled_resident_is_recognised_in_a_new_photo_and_strangers_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("face.key");
    DeviceKey::create(&key).unwrap();
    let store = TemplateStore::open(&dir.path().join("face.sqlite"), &key).unwrap();
    let policy = EnrollPolicy { min_samples: 2, ..EnrollPolicy::default() };

    // Consent precedes every template: without it enrolment fails before any frame is used.
    let frames = [photo("obama.jpg"), photo("obama2.jpg")];
    assert!(matches!(store.enroll(engine(), "r-0402", &frames, &policy, 1).unwrap_err(), StoreError::NoConsent(_)));
    assert!(store.enrolled().unwrap().is_empty());

    store.record_consent(&consent("r-0402")).unwrap();
    let report = store.enroll(engine(), "r-0402", &frames, &policy, 2).unwrap();
    assert_eq!(report.samples_used, 2);
    store.record_consent(&consent("r-0711")).unwrap();
    store.enroll(engine(), "r-0711", &[photo("biden.jpg")], &EnrollPolicy { min_samples: 1, ..policy.clone() }, 3).unwrap();

    let gallery = store.load_gallery().unwrap();
    match engine().identify(&photo("obama3.jpg"), &gallery).unwrap() {
        Outcome::Match(m) => {
            assert_eq!(m.subject, "r-0402");
            assert_eq!(m.band, MatchBand::Strong);
            assert_eq!(m.liveness, crate::Liveness::Unknown);
        }
        other => panic!("expected a match, got {other:?}"),
    }
    assert!(matches!(engine().identify(&photo("astronaut.png"), &gallery).unwrap(), Outcome::NoMatch { .. }));
}

#[test]
fn enrolment_refuses_samples_of_different_people() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("face.key");
    DeviceKey::create(&key).unwrap();
    let store = TemplateStore::open(&dir.path().join("face.sqlite"), &key).unwrap();
    store.record_consent(&consent("r-1")).unwrap();
    let frames = [photo("obama.jpg"), photo("biden.jpg"), photo("astronaut.png")];
    let err = store.enroll(engine(), "r-1", &frames, &EnrollPolicy::default(), 1).unwrap_err();
    assert!(matches!(err, StoreError::InconsistentSamples { .. }), "{err}");
    assert!(store.enrolled().unwrap().is_empty());
}

#[test]
fn a_face_cut_by_the_frame_edge_or_too_small_is_not_used() {
    let outcome = engine().identify(&photo("obama_partial_face.jpg"), &crate::Gallery::new()).unwrap();
    assert!(matches!(outcome, Outcome::Unusable(Rejection::AtEdge) | Outcome::NoFace), "{outcome:?}");
    // The same face scaled down to a thumbnail is too small to recognise.
    let small = FaceEngine::open(&models_dir(), MatchConfig { min_face_px: 2000.0, ..MatchConfig::default() }).unwrap();
    assert_eq!(small.identify(&photo("obama.jpg"), &crate::Gallery::new()).unwrap(), Outcome::Unusable(Rejection::TooSmall));
}

#[test]
fn a_frame_without_a_face_reports_no_face() {
    let grey = Frame::from_rgb(320, 240, vec![128; 320 * 240 * 3]).unwrap();
    assert_eq!(engine().identify(&grey, &crate::Gallery::new()).unwrap(), Outcome::NoFace);
}

#[test]
fn missing_or_corrupt_models_give_a_clear_error_instead_of_an_engine() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(models_dir().join("manifest.toml"), dir.path().join("manifest.toml")).unwrap();
    let err = FaceEngine::open(dir.path(), MatchConfig::default()).unwrap_err();
    assert!(matches!(err, ModelError::Missing { .. }), "{err}");
    for f in ["face_detection_yunet_2023mar.onnx", "face_recognition_sface_2021dec.onnx"] {
        std::fs::copy(models_dir().join(f), dir.path().join(f)).unwrap();
    }
    std::fs::create_dir(dir.path().join("lib")).unwrap();
    // A runtime library that is not the pinned one is never loaded.
    std::fs::write(dir.path().join("lib/libonnxruntime.so"), b"\x7fELF not really").unwrap();
    let err = FaceEngine::open(dir.path(), MatchConfig::default()).unwrap_err();
    assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("libonnxruntime.so"));
}
