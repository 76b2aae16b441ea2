//! End-to-end tests of the face matcher in the gateway: the real `gate` binary, the real
//! models (fetched by `cargo xtask setup`) on real photos, the real compiled plugins.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The models folder, or a failure telling how to get it.
fn models() -> PathBuf {
    let m = root().join("models");
    for f in ["manifest.toml", "face_detection_yunet_2023mar.onnx", "face_recognition_sface_2021dec.onnx", "testdata/obama2.jpg"] {
        assert!(m.join(f).is_file(), "{} is missing: run `cargo xtask setup` (it fetches the face models and test photos)", m.join(f).display());
    }
    m
}

fn photo(name: &str) -> String {
    models().join("testdata").join(name).to_string_lossy().into_owned()
}

fn plugin(name: &str) -> PathBuf {
    let p = root().join("target/plugins").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `cargo xtask setup` to build the plugins", p.display());
    p
}

fn gate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gate")).current_dir(root()).args(args).output().expect("run gate")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A site in `dir`: the demo site with `[face]` pointing at `models_dir` and a template
/// store and key in `dir`. Returns the config path.
fn site(dir: &Path, models_dir: &Path) -> PathBuf {
    let demo = std::fs::read_to_string(root().join("configs/demo-site.toml")).unwrap();
    let face = format!("[face]\nmodels_dir = {:?}\ndb = \"faces.sqlite\"\nkey = \"face.key\"\n", models_dir);
    let cfg = demo
        .replace("../target/plugins/resident-policy.wasm", plugin("resident-policy").to_str().unwrap())
        .replace("../target/plugins/platform-bridge.wasm", plugin("platform-bridge").to_str().unwrap())
        .replace("\"demo-subjects.toml\"", &format!("{:?}", root().join("configs/demo-subjects.toml")))
        .replace("\"demo-qr-code.key\"", &format!("{:?}", root().join("configs/demo-qr-code.key")))
        .replace("\"../target/demo-state\"", &format!("{:?}", dir.join("state")))
        .replacen("[face]\n", &face, 1);
    assert!(cfg.contains("models_dir"), "the demo site's [face] section changed");
    let path = dir.join("site.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

fn new_key(path: &Path) {
    let out = gate(&["face", "key", "new", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
}

fn enroll(cfg: &Path, subject: &str, photos: &[&str]) -> Output {
    let mut args = vec![
        "enroll",
        "--config",
        cfg.to_str().unwrap(),
        "--subject",
        subject,
        "--purpose",
        "entry at the community gates",
        "--notice-version",
        "2026-11",
        "--capture",
        "signed at the property office",
    ];
    args.extend_from_slice(photos);
    gate(&args)
}

/// Replays a trace; returns the records as JSON values and the whole output text.
fn replay(cfg: &Path, trace: &Path) -> (Vec<serde_json::Value>, String) {
    let out = gate(&["replay", "--config", cfg.to_str().unwrap(), "--trace", trace.to_str().unwrap(), "--format", "jsonl"]);
    assert!(out.status.success(), "replay failed: {}", text(&out));
    let recs = String::from_utf8(out.stdout.clone()).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["expect"].clone()).collect();
    (recs, text(&out))
}

fn non_publish(recs: &[serde_json::Value]) -> Vec<serde_json::Value> {
    recs.iter().filter(|r| r["kind"] != "publish" && r["kind"] != "relay").cloned().collect()
}

/// Enrols r-0003 from two photos in a fresh site; returns (tempdir, config).
fn enrolled_site() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = site(dir.path(), &models());
    new_key(&dir.path().join("face.key"));
    let out = enroll(&cfg, "r-0003", &[&photo("obama.jpg"), &photo("obama3.jpg")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    (dir, cfg)
}

#[test]
fn an_enrolled_face_opens_with_a_card_a_stranger_is_denied_and_withdrawal_forgets_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = site(dir.path(), &models());
    let key = dir.path().join("face.key");
    new_key(&key);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }

    let out = enroll(&cfg, "r-0003", &[&photo("obama.jpg"), &photo("obama3.jpg")]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    let consent_at = said.find("consent #1 recorded for r-0003").expect(&said);
    let enrolled_at = said.find("enrolled r-0003 from 2 of 2 photos").expect(&said);
    assert!(consent_at < enrolled_at, "consent comes first: {said}");

    let trace = root().join("tests/traces/camera.jsonl");
    let (recs, all) = replay(&cfg, &trace);
    let d = non_publish(&recs);
    // The resident's face is recognised (and judged live); the demo site lets face open alone
    // at no door, so the policy asks for a card.
    assert_eq!(d[0]["credential"], "face", "{all}");
    assert_eq!(d[0]["subject"], "r-0003", "{all}");
    assert_eq!(d[0]["outcome"], "need-factor", "{all}");
    assert_eq!(d[1]["credential"], "card", "{all}");
    assert_eq!(d[1]["subject"], "r-0003", "{all}");
    assert_eq!(d[1]["outcome"], "grant", "{all}");
    // A different person matches nobody and is denied.
    assert_eq!(d[2]["credential"], "face", "{all}");
    assert!(d[2]["subject"].is_null(), "{all}");
    assert_eq!(d[2]["outcome"], "deny", "{all}");
    assert_eq!(d.len(), 3, "{all}");
    assert!(!all.contains("score"), "outputs carry no face scores: {all}");

    let out = gate(&["consent", "withdraw", "--config", cfg.to_str().unwrap(), "r-0003"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("consent withdrawn for r-0003: template erased"), "{}", text(&out));

    let (recs, all) = replay(&cfg, &trace);
    let d = non_publish(&recs);
    assert_eq!(d[0]["credential"], "face", "{all}");
    assert!(d[0]["subject"].is_null(), "after withdrawal the same face matches nobody: {all}");
    assert_eq!(d[0]["outcome"], "deny", "{all}");
    // The card still works: face was only ever one option.
    assert_eq!((d[1]["credential"].as_str(), d[1]["outcome"].as_str()), (Some("card"), Some("grant")), "{all}");

    let out = gate(&["consent", "withdraw", "--config", cfg.to_str().unwrap(), "r-0003"]);
    assert!(text(&out).contains("no template was stored"), "{}", text(&out));
}

#[test]
fn rekeying_keeps_matching_and_the_old_key_no_longer_opens_the_store() {
    let (dir, cfg) = enrolled_site();
    let new = dir.path().join("face2.key");
    new_key(&new);
    let out = gate(&["face", "rekey", "--config", cfg.to_str().unwrap(), "--new-key", new.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("re-encrypted 1 template(s)"), "{}", text(&out));

    // The config still names the old key: the store refuses it, clearly.
    let out = gate(&["consent", "withdraw", "--config", cfg.to_str().unwrap(), "r-0003"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("faces.sqlite") && text(&out).contains("re-key"), "{}", text(&out));

    // Pointed at the new key, the gateway recognises the resident without re-enrolment.
    let body = std::fs::read_to_string(&cfg).unwrap().replace("key = \"face.key\"", "key = \"face2.key\"");
    std::fs::write(&cfg, body).unwrap();
    let (recs, all) = replay(&cfg, &root().join("tests/traces/camera.jsonl"));
    assert_eq!(non_publish(&recs)[0]["subject"], "r-0003", "{all}");
}

#[test]
fn enrolling_needs_the_models_consistent_photos_and_a_known_subject() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("no-models");
    std::fs::create_dir(&empty).unwrap();
    let cfg = site(dir.path(), &empty);
    new_key(&dir.path().join("face.key"));
    let out = enroll(&cfg, "r-0003", &[&photo("obama.jpg"), &photo("obama3.jpg")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("face models") && said.contains(&empty.join("manifest.toml").display().to_string()), "{said}");
    assert!(!said.contains("consent #"), "no consent is recorded when enrolment cannot run: {said}");
    assert!(!dir.path().join("faces.sqlite").exists(), "nothing stored");

    let cfg = site(dir.path(), &models());
    let out = enroll(&cfg, "r-9999", &[&photo("obama.jpg"), &photo("obama3.jpg")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("`r-9999` is not in the subject directory"), "{}", text(&out));

    let bad = dir.path().join("not-a-photo.jpg");
    std::fs::write(&bad, "hello").unwrap();
    let out = enroll(&cfg, "r-0003", &[&photo("obama.jpg"), bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains(&format!("photo {}", bad.display())), "{}", text(&out));

    // Two different people cannot be enrolled as one.
    let out = enroll(&cfg, "r-0003", &[&photo("obama.jpg"), &photo("biden.jpg")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("do not show one person") && text(&out).contains("no template stored"), "{}", text(&out));
}

#[test]
fn without_models_the_gate_grants_cards_and_ignores_camera_frames_visibly() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("no-models");
    std::fs::create_dir(&empty).unwrap();
    let cfg = site(dir.path(), &empty);
    new_key(&dir.path().join("face.key"));
    let (recs, all) = replay(&cfg, &root().join("tests/traces/camera.jsonl"));
    let d = non_publish(&recs);
    assert_eq!(d[0], serde_json::json!({"kind":"ignored","door":"north-gate","credential":"face","reason":"face-unavailable"}), "{all}");
    assert_eq!((d[1]["subject"].as_str(), d[1]["outcome"].as_str()), (Some("r-0003"), Some("grant")), "{all}");
    assert!(all.contains("face recognition is OFF") && all.contains("manifest.toml"), "one clear warning: {all}");
}

#[test]
fn frames_without_a_usable_face_are_ignored_with_a_reason_and_bad_references_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = site(dir.path(), &models());
    new_key(&dir.path().join("face.key"));
    let blank = dir.path().join("blank.png");
    image::RgbImage::from_pixel(640, 480, image::Rgb([128, 128, 128])).save(&blank).unwrap();
    let trace = dir.path().join("frames.jsonl");
    let line = |at: u32, file: &str| format!("{{\"at\":{at},\"input\":{{\"kind\":\"camera-frame\",\"door\":\"north-gate\",\"file\":{file:?}}}}}\n");
    let body = format!(
        "{{\"gate_trace\":1,\"site\":\"maple-court\",\"start\":\"2026-11-23T07:00:00+08:00\"}}\n{}{}{}",
        line(1000, "blank.png"),
        line(2000, &photo("obama_partial_face.jpg")),
        line(3000, "site.toml"),
    );
    std::fs::write(&trace, body).unwrap();
    let (recs, all) = replay(&cfg, &trace);
    let reasons: Vec<&str> = recs.iter().map(|r| r["reason"].as_str().unwrap_or("?")).collect();
    assert_eq!(reasons, ["no-face", "face-unusable", "bad-frame"], "{all}");
    assert!(recs.iter().all(|r| r["kind"] == "ignored"), "{all}");

    let missing = dir.path().join("missing.jsonl");
    std::fs::write(&missing, std::fs::read_to_string(&trace).unwrap().replace("blank.png", "nobody.png")).unwrap();
    let out = gate(&["replay", "--config", cfg.to_str().unwrap(), "--trace", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains(&format!("{}:2: key `file`", missing.display())) && text(&out).contains("nobody.png"), "{}", text(&out));
}

/// `gate run` (20x) of a trace with a frame of r-0003 at 1 s and another at 60 s, and the
/// lines it prints as they come: a running gateway to act on between the two frames.
fn serve_two_frames(dir: &Path, cfg: &Path) -> (std::process::Child, std::io::Lines<std::io::BufReader<std::process::ChildStdout>>) {
    use std::io::BufRead;
    let trace = dir.join("live.jsonl");
    let frame = |at: u32| format!("{{\"at\":{at},\"input\":{{\"kind\":\"camera-frame\",\"door\":\"north-gate\",\"file\":{:?}}}}}\n", photo("obama2.jpg"));
    std::fs::write(&trace, format!("{{\"gate_trace\":1,\"site\":\"maple-court\",\"start\":\"2026-11-23T07:00:00+08:00\"}}\n{}{}", frame(1000), frame(60_000))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gate"))
        .current_dir(root())
        .args(["run", "--config", cfg.to_str().unwrap(), "--trace", trace.to_str().unwrap(), "--speed", "20"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

#[test]
fn a_running_gateway_forgets_a_withdrawn_face_at_the_next_frame() {
    let (dir, cfg) = enrolled_site();
    let (mut child, mut lines) = serve_two_frames(dir.path(), &cfg);
    let mut seen = Vec::new();
    // Wait for the first frame's decision, then withdraw while the gateway keeps running.
    for l in lines.by_ref() {
        let l = l.unwrap();
        seen.push(l.clone());
        if l.contains("north-gate") && l.contains(" face ") {
            break;
        }
    }
    assert!(seen.iter().any(|l| l.contains("face r-0003") && l.contains("NEED")), "{seen:#?}");
    let out = gate(&["consent", "withdraw", "--config", cfg.to_str().unwrap(), "r-0003"]);
    assert!(text(&out).contains("template erased"), "{}", text(&out));
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(child.wait().unwrap().success());
    let second = rest.iter().find(|l| l.contains("north-gate") && l.contains(" face ")).unwrap_or_else(|| panic!("{rest:#?}"));
    assert!(second.contains("face unknown") && second.contains("DENY"), "the second frame matched nobody: {rest:#?}");
}

#[test]
fn in_service_a_frame_being_matched_never_holds_up_the_exit_button_or_fire_release() {
    let (dir, cfg) = enrolled_site();
    let trace = dir.path().join("busy.jsonl");
    let header = "{\"gate_trace\":1,\"site\":\"maple-court\",\"start\":\"2026-11-23T07:00:00+08:00\"}";
    let frame = format!("{{\"at\":1000,\"input\":{{\"kind\":\"camera-frame\",\"door\":\"north-gate\",\"file\":{:?}}}}}", photo("obama2.jpg"));
    let rest = "{\"at\":1010,\"input\":{\"kind\":\"exit-button\",\"door\":\"building-3\"}}\n{\"at\":1020,\"input\":{\"kind\":\"fire-alarm\",\"active\":true}}\n{\"at\":3000,\"input\":{\"kind\":\"fire-alarm\",\"active\":false}}";
    std::fs::write(&trace, format!("{header}\n{frame}\n{rest}\n")).unwrap();
    // At 20x the exit press and the fire alarm arrive 0.5 and 1 ms after the frame, while
    // the matcher (tens of ms a frame) is still at work on its own thread.
    let out = gate(&["run", "--config", cfg.to_str().unwrap(), "--trace", trace.to_str().unwrap(), "--speed", "20"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let at = |what: &dyn Fn(&str) -> bool| all.lines().position(what).unwrap_or_else(|| panic!("missing line in:\n{all}"));
    let face = at(&|l| l.contains("north-gate") && l.contains(" face ") && l.contains("r-0003"));
    let exit = at(&|l| l.contains("building-3") && l.contains("exit button"));
    let fire = at(&|l| l.contains("ALARM fire RAISED"));
    assert!(exit < face && fire < face, "the door waited for the face matcher:\n{all}");
    // Replay, inline and deterministic, still decides the frame first.
    let (recs, all) = replay(&cfg, &trace);
    assert_eq!(recs[0]["credential"], "face", "{all}");
}

#[test]
fn the_camera_thread_turns_frames_into_face_matches_for_the_loop() {
    use gate::camera::{run_camera, CameraDoor};
    use gate::event::{Direction, Input};
    use gate_hw::camera::MemoryCamera;
    let (_dir, cfg) = enrolled_site();
    let site = gate::config::SiteConfig::load(&cfg).expect("site loads");
    let mut matcher = gate::face::FaceMatcher::open(&site.face);
    assert!(matcher.is_on(), "{matcher:?}");
    // The photo as an MJPEG camera delivers it: JPEG bytes decoded by the camera driver to
    // RGB8 (gate_face::Frame deliberately exposes no pixels to build a camera frame from).
    let bytes = std::fs::read(photo("obama2.jpg")).expect("photo");
    let frame = gate_hw::camera::mjpeg_to_rgb(&bytes).expect("decodes");
    let mut camera = MemoryCamera::new(vec![frame]);
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let at = CameraDoor { door: "north-gate".into(), direction: Direction::Entry, fps: 15 };
    let ended = std::thread::scope(|s| s.spawn(|| run_camera(&mut camera, &mut matcher, &at, &tx, &stop, &|| {})).join().expect("camera thread"));
    assert!(ended.is_err_and(|e| e.to_string().contains("no more frames")), "the memory camera runs dry");
    let got: Vec<Input> = rx.try_iter().collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(matches!(&got[0], Input::Face { door, direction: Direction::Entry, subject: Some(s), .. } if door == "north-gate" && s == "r-0003"), "{got:?}");
}

/// The nonce and ciphertext stored for a subject, read as an inspector would.
fn stored_bytes(db: &Path, subject: &str) -> (Vec<u8>, Vec<u8>) {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row("SELECT nonce, ciphertext FROM template WHERE subject = ?1", [subject], |r| Ok((r.get(0)?, r.get(1)?))).unwrap()
}

/// Whether any of the template's bytes (the nonce, or any 16-byte piece of the ciphertext)
/// are in any file of the store: the database, its rollback journal or a WAL.
fn template_bytes_remain(db: &Path, nonce: &[u8], ct: &[u8]) -> Option<String> {
    for suffix in ["", "-journal", "-wal"] {
        let f = PathBuf::from(format!("{}{suffix}", db.display()));
        let Ok(bytes) = std::fs::read(&f) else { continue };
        let has = |n: &[u8]| bytes.windows(n.len()).any(|w| w == n);
        if has(nonce) || ct.chunks(16).filter(|c| c.len() == 16).any(has) {
            return Some(f.display().to_string());
        }
    }
    None
}

#[test]
fn withdrawal_erases_every_byte_while_a_reader_holds_the_store_and_the_gateway_runs() {
    let (dir, cfg) = enrolled_site();
    let db = dir.path().join("faces.sqlite");
    let (nonce, ct) = stored_bytes(&db, "r-0003");
    assert!(template_bytes_remain(&db, &nonce, &ct).is_some(), "the scan must see a stored template");

    // A running gateway that has the store open and matches a frame now and one later.
    let (mut child, mut lines) = serve_two_frames(dir.path(), &cfg);
    for l in lines.by_ref() {
        if l.unwrap().contains(" face ") {
            break;
        }
    }
    // Another connection in a read transaction (a backup, an inspector's sqlite3), which
    // finishes a moment after the withdrawal started.
    let reader = rusqlite::Connection::open(&db).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let n: i64 = reader.query_row("SELECT count(*) FROM template", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        reader.execute_batch("COMMIT").unwrap();
        reader
    });
    let out = gate(&["consent", "withdraw", "--config", cfg.to_str().unwrap(), "r-0003"]);
    let reader = release.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("template erased (its bytes verified gone"), "{}", text(&out));
    assert_eq!(template_bytes_remain(&db, &nonce, &ct), None, "template bytes survived the withdrawal");
    drop(reader);

    // The gateway forgot the face at its next frame, and still no bytes came back.
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(child.wait().unwrap().success());
    let second = rest.iter().find(|l| l.contains(" face ")).unwrap_or_else(|| panic!("{rest:#?}"));
    assert!(second.contains("face unknown") && second.contains("DENY"), "{rest:#?}");
    assert_eq!(template_bytes_remain(&db, &nonce, &ct), None);
    // A retry is harmless.
    let out = gate(&["consent", "withdraw", "--config", cfg.to_str().unwrap(), "r-0003"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_withdrawal_a_reader_blocks_too_long_changes_nothing_and_a_retry_finishes() {
    let (dir, cfg) = enrolled_site();
    let db = dir.path().join("faces.sqlite");
    let (nonce, ct) = stored_bytes(&db, "r-0003");
    let reader = rusqlite::Connection::open(&db).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader.query_row("SELECT count(*) FROM template", [], |r| r.get(0)).unwrap();
    // The reader outlasts the withdrawal's busy timeout (10 s): exit 3, nothing changed.
    let out = gate(&["consent", "withdraw", "--config", cfg.to_str().unwrap(), "r-0003"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("nothing was changed"), "{}", text(&out));
    let n: i64 = reader.query_row("SELECT count(*) FROM template", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1, "not half-done: the template is still there");
    drop(reader);
    let out = gate(&["consent", "withdraw", "--config", cfg.to_str().unwrap(), "r-0003"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("template erased"), "{}", text(&out));
    assert_eq!(template_bytes_remain(&db, &nonce, &ct), None);
}

#[test]
fn a_group_photo_or_the_same_photo_twice_is_refused_naming_the_photo() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = site(dir.path(), &models());
    new_key(&dir.path().join("face.key"));
    // t1.jpg shows six people.
    let out = enroll(&cfg, "r-0003", &[&photo("t1.jpg"), &photo("obama.jpg")]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains(&format!("{}: ", photo("t1.jpg"))) && said.contains("faces in the photo") && said.contains("no template stored"), "{said}");
    // The same picture under two names counts once.
    let copy = dir.path().join("copy.jpg");
    std::fs::copy(photo("obama.jpg"), &copy).unwrap();
    let out = enroll(&cfg, "r-0003", &[&photo("obama.jpg"), copy.to_str().unwrap()]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains(&format!("{}: same photo as {}", copy.display(), photo("obama.jpg"))), "{said}");
}

#[cfg(unix)]
#[test]
fn every_state_file_is_owner_only_after_an_enrolment_and_a_recorded_run() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, cfg) = enrolled_site();
    let rec = dir.path().join("rec.jsonl");
    let out = gate(&["run", "--config", cfg.to_str().unwrap(), "--trace", root().join("tests/traces/camera.jsonl").to_str().unwrap(), "--speed", "50", "--record", rec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    // The recording carries face results as bands, never a score.
    let recorded = std::fs::read_to_string(&rec).unwrap();
    assert!(!recorded.contains("score"), "{recorded}");
    let mut checked = Vec::new();
    let mut check = |p: &Path| {
        let meta = std::fs::metadata(p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", p.display());
        checked.push(p.to_path_buf());
    };
    fn walk(p: &Path, f: &mut dyn FnMut(&Path)) {
        f(p);
        if p.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), f);
            }
        }
    }
    walk(&dir.path().join("state"), &mut check);
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let p = f.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("faces.sqlite") || name.starts_with("rec.") || name.ends_with(".key") {
            check(&p);
        }
    }
    let names: Vec<String> = checked.iter().map(|p| p.display().to_string()).collect();
    assert!(names.iter().any(|n| n.ends_with("events.sqlite")) && names.iter().any(|n| n.ends_with("faces.sqlite")) && names.iter().any(|n| n.ends_with("rec.jsonl")), "{names:#?}");
}

#[test]
fn a_resident_removed_from_the_directory_has_the_template_erased_at_start_and_audited() {
    let (dir, cfg) = enrolled_site();
    let db = dir.path().join("faces.sqlite");
    let (nonce, ct) = stored_bytes(&db, "r-0003");
    // r-0003 moves out: the directory no longer lists them.
    let subjects = std::fs::read_to_string(root().join("configs/demo-subjects.toml")).unwrap();
    let start = subjects.find("id = \"r-0003\"").unwrap();
    let block_start = subjects[..start].rfind("[[subject]]").unwrap();
    let block_end = start + subjects[start..].find("[[subject]]").unwrap();
    let moved = format!("{}{}", &subjects[..block_start], &subjects[block_end..]);
    let subjects_file = dir.path().join("subjects.toml");
    std::fs::write(&subjects_file, moved).unwrap();
    let body = std::fs::read_to_string(&cfg).unwrap().replace(&format!("{:?}", root().join("configs/demo-subjects.toml")), &format!("{subjects_file:?}"));
    assert!(body.contains("subjects.toml"), "the site names its subject directory");
    std::fs::write(&cfg, body).unwrap();

    let trace = dir.path().join("one.jsonl");
    std::fs::write(
        &trace,
        format!(
            "{{\"gate_trace\":1,\"site\":\"maple-court\",\"start\":\"2026-11-23T07:00:00+08:00\"}}\n{{\"at\":1000,\"input\":{{\"kind\":\"camera-frame\",\"door\":\"north-gate\",\"file\":{:?}}}}}\n",
            photo("obama2.jpg")
        ),
    )
    .unwrap();
    // A replay (perhaps against another directory) never erases: the orphan is only not matched.
    let (recs, replayed) = replay(&cfg, &trace);
    assert!(non_publish(&recs)[0]["subject"].is_null(), "{replayed}");
    assert!(template_bytes_remain(&db, &nonce, &ct).is_some(), "a replay erased a template: {replayed}");
    let out = gate(&["run", "--config", cfg.to_str().unwrap(), "--trace", trace.to_str().unwrap(), "--speed", "50"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    // Said at start, erased for real, recorded in the event log.
    assert!(all.contains("face templates of subjects not in the subject directory") && all.contains("face template erased"), "{all}");
    assert_eq!(template_bytes_remain(&db, &nonce, &ct), None, "the orphan's template bytes are gone");
    let log = rusqlite::Connection::open_with_flags(dir.path().join("state/events.sqlite"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let erased: Vec<String> = log.prepare("SELECT body FROM events WHERE kind = 'face-erased'").unwrap().query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(erased.len(), 1, "{erased:?}");
    assert!(erased[0].contains("r-0003") && erased[0].contains("not in the subject directory"), "{erased:?}");
    // The face is not recognised any more.
    let face = all.lines().find(|l| l.contains("north-gate") && l.contains(" face ")).unwrap_or_else(|| panic!("{all}"));
    assert!(face.contains("face unknown") && face.contains("DENY"), "{all}");
    assert!(all.contains("0 enrolled template(s)"), "{all}");
}

/// A models folder with everything but the liveness model (the others linked from `models/`).
fn models_without_liveness(dir: &Path) -> PathBuf {
    let m = dir.join("models-no-liveness");
    std::fs::create_dir_all(m.join("lib")).unwrap();
    std::fs::copy(models().join("manifest.toml"), m.join("manifest.toml")).unwrap();
    for f in ["face_detection_yunet_2023mar.onnx", "face_recognition_sface_2021dec.onnx", "lib/libonnxruntime.so"] {
        std::os::unix::fs::symlink(models().join(f), m.join(f)).unwrap();
    }
    m
}

#[test]
#[cfg(unix)]
fn the_camera_trace_gets_a_liveness_verdict_and_a_live_strong_face_opens_alone_where_the_site_allows_it() {
    assert!(models().join("fr_liveness.onnx").is_file(), "models/fr_liveness.onnx is missing: run `cargo xtask setup`");
    let (dir, cfg) = enrolled_site();
    // The site lets a strong, live face open the north gate alone.
    let policy = "contractor-schedule = \"mon-fri 08:00-18:00\"";
    let body = std::fs::read_to_string(&cfg).unwrap();
    assert!(body.contains(policy), "the demo site's resident-policy settings changed");
    std::fs::write(&cfg, body.replacen(policy, &format!("{policy}, face-alone-doors = \"north-gate\""), 1)).unwrap();

    let trace = root().join("tests/traces/camera.jsonl");
    let (recs, all) = replay(&cfg, &trace);
    let d = non_publish(&recs);
    // The real photo of the resident is judged live by the model: the face opens alone.
    assert_eq!((d[0]["credential"].as_str(), d[0]["subject"].as_str(), d[0]["outcome"].as_str()), (Some("face"), Some("r-0003"), Some("grant")), "{all}");
    assert_eq!((d[1]["credential"].as_str(), d[1]["outcome"].as_str()), (Some("card"), Some("grant")), "{all}");
    assert_eq!((d[2]["credential"].as_str(), d[2]["outcome"].as_str()), (Some("face"), Some("deny")), "{all}");
    assert!(d[2]["subject"].is_null(), "{all}");

    // The gateway's log says what the matcher judged for the face it matched: the band and
    // the liveness verdict, never a score or the model's probability.
    let out = gate(&["--log", "gate=info", "replay", "--config", cfg.to_str().unwrap(), "--trace", trace.to_str().unwrap()]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let matched: Vec<&str> = said.lines().filter(|l| l.contains("face matched")).collect();
    assert_eq!(matched.len(), 1, "one face matched (the stranger matched nobody): {said}");
    assert!(matched[0].contains("subject=r-0003") && matched[0].contains("band=Strong") && matched[0].contains("liveness=Live"), "{said}");
    assert!(!said.contains("score") && !said.contains("probab"), "{said}");

    // Without the liveness model the same face is `unknown`, and the door asks for a card again.
    let no_live = models_without_liveness(dir.path());
    let body = std::fs::read_to_string(&cfg).unwrap().replace(&format!("models_dir = {:?}", models()), &format!("models_dir = {no_live:?}"));
    std::fs::write(&cfg, body).unwrap();
    let (recs, all) = replay(&cfg, &trace);
    let d = non_publish(&recs);
    assert_eq!((d[0]["credential"].as_str(), d[0]["subject"].as_str(), d[0]["outcome"].as_str()), (Some("face"), Some("r-0003"), Some("need-factor")), "{all}");
}

#[test]
fn the_pad_command_measures_a_samples_folder_and_says_clearly_when_there_is_none() {
    let (dir, cfg) = enrolled_site();
    let samples = dir.path().join("pad");
    let out = gate(&["face", "pad", "--config", cfg.to_str().unwrap(), "--samples", samples.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("APCER cannot be measured") && text(&out).contains("pad/attack/<species>"), "{}", text(&out));

    std::fs::create_dir_all(samples.join("bona-fide")).unwrap();
    std::fs::create_dir_all(samples.join("attack/blank-screen")).unwrap();
    for p in ["obama.jpg", "biden.jpg", "t1.jpg"] {
        std::fs::copy(photo(p), samples.join("bona-fide").join(p)).unwrap();
    }
    image::RgbImage::from_pixel(320, 240, image::Rgb([128, 128, 128])).save(samples.join("attack/blank-screen/blank.png")).unwrap();
    let out = gate(&["face", "pad", "--config", cfg.to_str().unwrap(), "--samples", samples.to_str().unwrap()]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    // Seven bona-fide faces (one portrait each, five usable in the group photo), none refused.
    assert!(said.lines().any(|l| l.starts_with("bona fide") && l.contains("BPCER 0.0%") && l.split_whitespace().nth(7) == Some("7")), "{said}");
    assert!(said.contains("attack: blank-screen"), "{said}");
}
