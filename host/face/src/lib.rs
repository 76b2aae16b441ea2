//! gate-face (being written).
