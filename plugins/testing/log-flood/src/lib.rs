//! log-flood (being written).
