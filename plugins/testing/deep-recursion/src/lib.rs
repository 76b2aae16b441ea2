//! deep-recursion (being written).
