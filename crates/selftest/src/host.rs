//! Opening KVM as the `vcpu-reset` command does, and for tests.
//!
//! The library opens `/dev/kvm` or a path its caller names ([`KvmHost::open_path`]); reading
//! the environment is the tool's business: [`open`] takes the device from
//! `VCPU_RESET_KVM_DEVICE` where it is set (a host that puts the device elsewhere, and the
//! tests of the error paths).

use std::io::Write;
use std::path::PathBuf;

use vcpu_reset::backend::kvm::{DEFAULT_DEVICE, KvmError, KvmHost};

/// The environment variable that names another KVM device than `/dev/kvm`.
pub const DEVICE_ENV: &str = "VCPU_RESET_KVM_DEVICE";

/// The KVM device the tool opens: `VCPU_RESET_KVM_DEVICE` where set, else `/dev/kvm`.
pub fn device() -> PathBuf {
    std::env::var_os(DEVICE_ENV).map_or_else(|| DEFAULT_DEVICE.into(), PathBuf::from)
}

/// Open the KVM device the tool uses ([`device`]).
///
/// # Errors
/// As [`KvmHost::open_path`].
pub fn open() -> Result<KvmHost, KvmError> {
    KvmHost::open_path(&device())
}

/// Open KVM for a test, or say why the test is skipped.
///
/// On failure this prints exactly `skipped: no /dev/kvm (<reason>)` to stderr and returns `None`,
/// so a test can start with `let Some(host) = kvm_for_tests() else { return };`.
///
/// # Panics
/// When the environment variable `VCPU_RESET_REQUIRE_KVM` is `1` and KVM cannot be opened:
/// CI sets it where `/dev/kvm` exists, so that a broken KVM fails the run instead of skipping.
pub fn kvm_for_tests() -> Option<KvmHost> {
    let required = std::env::var("VCPU_RESET_REQUIRE_KVM").is_ok_and(|v| v == "1");
    host_or_skip(open(), required, &mut std::io::stderr())
}

fn host_or_skip<T>(opened: Result<T, KvmError>, required: bool, log: &mut dyn Write) -> Option<T> {
    match opened {
        Ok(host) => Some(host),
        Err(e) => {
            assert!(
                !required,
                "VCPU_RESET_REQUIRE_KVM=1 but KVM cannot be used: {e}"
            );
            // Nothing useful can be done if stderr is gone.
            let _ = writeln!(log, "skipped: no /dev/kvm ({e})");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_kvm_skips_with_the_reason() {
        let mut log = Vec::new();
        let host: Option<()> = host_or_skip(
            Err(KvmError::NoDevice {
                path: "/dev/kvm".into(),
            }),
            false,
            &mut log,
        );
        assert!(host.is_none());
        assert_eq!(
            String::from_utf8_lossy(&log),
            "skipped: no /dev/kvm (no /dev/kvm — load the kvm module or run on a host with \
             virtualization enabled)\n"
        );
        let mut log = Vec::new();
        let _: Option<()> = host_or_skip(
            Err(KvmError::PermissionDenied {
                path: "/dev/kvm".into(),
            }),
            false,
            &mut log,
        );
        assert_eq!(
            String::from_utf8_lossy(&log),
            "skipped: no /dev/kvm (permission denied on /dev/kvm — add the user to group kvm)\n"
        );
    }

    #[test]
    #[should_panic(expected = "VCPU_RESET_REQUIRE_KVM=1 but KVM cannot be used: no /dev/kvm")]
    fn a_missing_kvm_fails_where_it_is_required() {
        let _: Option<()> = host_or_skip(
            Err(KvmError::NoDevice {
                path: "/dev/kvm".into(),
            }),
            true,
            &mut Vec::new(),
        );
    }
}
