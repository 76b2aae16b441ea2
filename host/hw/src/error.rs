//! Typed errors of the hardware layer: every one names the device and what was being opened.

use thiserror::Error;

/// An error from the hardware layer, naming what failed and where.
#[derive(Debug, Error)]
pub enum HwError {
    /// A GPIO line could not be opened (missing chip, busy line, no permission).
    #[error("{what}: {chip} line {line}: {reason}")]
    GpioOpen {
        /// What was being opened, e.g. "door north relay".
        what: String,
        /// The GPIO character device, e.g. "/dev/gpiochip0".
        chip: String,
        /// Line offset on that chip.
        line: u32,
        /// Why it failed (the OS error text).
        reason: String,
    },
    /// Reading or writing an already opened pin failed.
    #[error("{what}: pin {op} failed: {reason}")]
    Pin {
        /// Which signal, e.g. "door north relay".
        what: String,
        /// "read" or "write".
        op: &'static str,
        /// The driver's error text.
        reason: String,
    },
    /// The camera could not be opened or configured.
    #[error("camera {device}: {reason}")]
    Camera {
        /// The V4L2 device path, e.g. "/dev/video0".
        device: String,
        /// Why it failed.
        reason: String,
    },
    /// A captured frame could not be decoded into RGB.
    #[error("camera frame ({format}, {width}x{height}): {reason}")]
    Frame {
        /// Pixel format of the frame ("mjpeg" or "yuyv").
        format: &'static str,
        /// Expected width.
        width: u32,
        /// Expected height.
        height: u32,
        /// What was wrong with the frame.
        reason: String,
    },
    /// The `[hardware]` configuration is inconsistent.
    #[error("hardware config: {0}")]
    Config(String),
    /// The requested backend does not exist on this platform.
    #[error("hardware backend {backend:?} is not available on this platform: {reason}")]
    Unsupported {
        /// Backend name from the configuration.
        backend: String,
        /// Why.
        reason: String,
    },
    /// A named signal, reader or relay does not exist in the configuration.
    #[error("unknown {kind} {name:?}")]
    Unknown {
        /// "relay", "input", "reader" or "line".
        kind: &'static str,
        /// The name that was asked for.
        name: String,
    },
}

impl HwError {
    /// Wraps an embedded-hal pin error for the named signal.
    pub(crate) fn pin<E: core::fmt::Debug>(what: &str, op: &'static str, err: E) -> Self {
        HwError::Pin { what: what.to_owned(), op, reason: format!("{err:?}") }
    }
}
