//! garbage-decision (being written).
