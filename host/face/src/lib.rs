//! gate-face: the on-device face matcher of the gate gateway.
//!
//! Frames go in, match results come out: a pseudonymous subject id, a band and a liveness
//! verdict. Frames, crops and embeddings never leave this crate; templates are
//! stored encrypted under a device key and erased for real when consent is withdrawn.

#![warn(missing_docs)]

mod align;
mod detect;
mod engine;
mod error;
mod frame;
mod gallery;
mod key;
mod liveness;
mod manifest;
mod pad;
mod store;
mod transform;

#[cfg(test)]
mod accuracy_tests;

pub use detect::Rejection;
pub use engine::{FaceEngine, FaceMatch, Liveness, MatchBand, MatchConfig, Outcome, StageTimings};
pub use error::{FaceError, ModelError, StoreError};
pub use frame::Frame;
pub use gallery::Gallery;
pub use key::DeviceKey;
pub use manifest::{verify as verify_models, ModelFiles};
pub use pad::{evaluate as evaluate_pad, ClassCounts, PadError, PadReport, SweepRow};
pub use store::{validate_subject, Consent, ConsentRecord, EnrollPolicy, EnrollReport, TemplateStore, WithdrawReport, BUSY_TIMEOUT};

#[cfg(test)]
mod thread_tests {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}

    #[test]
    fn the_engine_and_gallery_can_be_shared_across_threads_and_the_store_moved() {
        send_sync::<crate::FaceEngine>();
        send_sync::<crate::Gallery>();
        send::<crate::TemplateStore>();
    }
}
