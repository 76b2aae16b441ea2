//! resident-policy (being written).
