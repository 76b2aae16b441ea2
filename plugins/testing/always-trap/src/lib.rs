//! always-trap (being written).
