//! gate-hw (being written).
