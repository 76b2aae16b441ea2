//! platform-bridge (being written).
