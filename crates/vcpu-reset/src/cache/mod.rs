//! Register cache (to be written).
