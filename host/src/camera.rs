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
pub fn run_camera<S: FrameSource>(source: &mut S, matcher: &mut FaceMatcher, at: &CameraDoor, tx: &Sender<Input>, stop: &AtomicBool) -> Result<u64, HwError> {
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
