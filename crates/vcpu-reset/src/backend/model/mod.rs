//! The software VMX-style backend (to be written).
