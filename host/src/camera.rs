//! The camera thread of the live loop: pulls frames from a [`FrameSource`] at the
//! configured rate, runs the face matcher on them (≈ 35 ms a frame, so never on the
//! gateway thread) and sends only the match results, as `Input::Face` for the camera's
//! door, to the loop over a channel. Frames stay in memory and are never logged or written.

use crate::event::{Direction, Input};
use crate::face::{FaceMatcher, FrameResult};
use gate_hw::camera::FrameSource;
use gate_hw::HwError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

/// Where the camera's matches go: its door, direction and frame rate.
#[derive(Debug, Clone)]
pub struct CameraDoor {
    pub door: String,
    pub direction: Direction,
    pub fps: u32,
}

/// Runs frames from `source` through `matcher` until `stop` is set or the loop hangs up
/// (Ok: frames matched), or until the source fails (its error, naming the device).
/// Frames without a usable face send nothing.
pub fn run_camera<S: FrameSource>(source: &mut S, matcher: &mut FaceMatcher, at: &CameraDoor, tx: &Sender<Input>, stop: &AtomicBool, wake: &dyn Fn()) -> Result<u64, HwError> {
    let period = Duration::from_secs(1) / at.fps.max(1);
    let mut next = Instant::now();
    let mut frames = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let mut raw = source.next_frame()?;
        frames += 1;
        let (width, height) = (raw.width, raw.height);
        match gate_face::Frame::from_rgb(width, height, std::mem::take(&mut raw.rgb)) {
            Ok(frame) => {
                if let FrameResult::Credential(input) = matcher.frame(&at.door, at.direction, &frame, None) {
                    if tx.send(input).is_err() {
                        break;
                    }
                    wake();
                }
            }
            Err(e) => tracing::warn!(door = %at.door, width, height, error = %e, "camera frame not usable by the matcher"),
        }
        next += period;
        match next.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            None => next = Instant::now(),
        }
    }
    Ok(frames)
}

/// Opens the V4L2 camera on its own thread (a missing device is the driver's error, naming
/// it) and starts matching there with a matcher of its own; the receiver gets the
/// `Input::Face` results, and `wake` is called after each. Setting `stop` ends the thread.
#[cfg(target_os = "linux")]
pub fn start_camera(
    cam: &gate_hw::config::CameraConfig,
    bands: &crate::config::FaceBands,
    stop: std::sync::Arc<AtomicBool>,
    wake: impl Fn() + Send + 'static,
) -> Result<std::sync::mpsc::Receiver<Input>, crate::hardware::HardwareError> {
    use crate::hardware::HardwareError;
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let (cfg, bands) = (cam.clone(), bands.clone());
    let at = CameraDoor { door: cam.door.clone(), direction: crate::hardware::direction(cam.direction), fps: cam.fps };
    std::thread::Builder::new()
        .name("camera".into())
        .spawn(move || {
            let mut source = match gate_hw::linux::LinuxCamera::open(&cfg) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut matcher = FaceMatcher::open(&bands);
            let _ = ready_tx.send(Ok(()));
            tracing::info!(device = %cfg.device, door = %at.door, fps = at.fps, "camera feeding the face matcher");
            match run_camera(&mut source, &mut matcher, &at, &tx, &stop, &wake) {
                Ok(frames) => tracing::info!(device = %cfg.device, frames, "camera stopped"),
                Err(e) => tracing::warn!(device = %cfg.device, error = %e, "camera failed: no more face matches; card and PIN keep working"),
            }
        })
        .map_err(|e| HardwareError::Setup(format!("camera {}: cannot start its thread: {e}", cam.device)))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(rx),
        Ok(Err(e)) => Err(HardwareError::from(e)),
        Err(_) => Err(HardwareError::Setup(format!("camera {}: its thread ended before the camera opened", cam.device))),
    }
}
