//! Plugin SDK (being written).
