//! spin-forever (being written).
