//! memory-hog (being written).
