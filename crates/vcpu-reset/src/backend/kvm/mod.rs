//! The Linux KVM backend (to be written).
