//! Which backend `check` runs on (used by `check::run` and the nested scenarios).

/// Which backend `check` runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// KVM where `/dev/kvm` opens, the software model otherwise.
    Auto,
    /// KVM only.
    Kvm,
    /// The software model only.
    Model,
}
