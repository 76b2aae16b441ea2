//! gate-hw: the hardware layer of the gate gateway.
//!
//! Drivers are generic over the embedded-hal 1.0 digital traits and take the time as an
//! argument (µs), so the same code runs on a board through linux-embedded-hal, against
//! simulated pins driven by a pin-level trace (replay, demo, tests), and against pin mocks.
//! Nothing here ever sees or stores biometric data; camera frames stay in memory.

pub mod camera;
pub mod config;
pub mod edge;
pub mod error;
pub mod event;
pub mod input;
pub mod keypad;
pub mod keys;
#[cfg(target_os = "linux")]
pub mod linux;
pub mod pseudonym;
pub mod relay;
pub mod runtime;
pub mod sim;
pub mod wiegand;
pub mod wiegand_gen;

pub use config::HardwareConfig;
pub use edge::PinEdge;
pub use error::HwError;
pub use event::HwEvent;

pub use keys::Key;
