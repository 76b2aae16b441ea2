//! gate-fleet (being written).
