//! The C example VMM (`examples/c/reboot_vmm.c`), built with `cc` against the static library
//! and the header, run on the real `/dev/kvm`: every boot (power-on, after 0xCF9, after a
//! triple fault where the host can raise one) must begin in the exact RESET state.
//!
//! Skips (printing why) where `/dev/kvm` cannot be used, unless `VCPU_RESET_REQUIRE_KVM=1`;
//! needs a C compiler (`cc`, Debian's `gcc`) and the kernel's UAPI headers
//! (`linux-libc-dev`).

use std::path::{Path, PathBuf};
use std::process::Command;

use vcpu_reset_selftest::host::kvm_for_tests;

/// The directory cargo put this build's libraries in (`target/<profile>`): two levels above
/// this test's executable (`target/<profile>/deps/c_example-*`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// Build the static library (`cargo test` builds only what Rust tests link) and return its
/// path: `cargo build -p vcpu-reset-capi`, into the target directory of this test.
fn static_library() -> PathBuf {
    let profile = profile_dir();
    let target = profile.parent().expect("target/").to_path_buf();
    let release = profile.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(&cargo);
    build
        .args(["build", "--quiet", "-p", "vcpu-reset-capi", "--target-dir"])
        .arg(&target);
    if release {
        build.arg("--release");
    }
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("run {cargo}: {e}"));
    assert!(status.success(), "cargo build -p vcpu-reset-capi failed");
    let lib = profile.join("libvcpu_reset.a");
    assert!(lib.exists(), "{} is missing after the build", lib.display());
    lib
}

#[test]
fn the_c_vmm_reboots_in_place_with_exact_resets() {
    let Some(_host) = kvm_for_tests() else { return };
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = static_library();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reboot_vmm");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .args([
            "-std=c11",
            "-D_GNU_SOURCE",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-I",
        ])
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("examples/c/reboot_vmm.c"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("run {cc}: {e} — install a C compiler (Debian: gcc)"));
    assert!(
        built.status.success(),
        "{cc} failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );

    let ran = Command::new(&out).output().expect("run the C VMM");
    let stdout = String::from_utf8_lossy(&ran.stdout);
    println!("{stdout}");
    assert!(
        ran.status.success(),
        "the C VMM failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    for boot in 1..=3 {
        assert!(
            stdout.contains(&format!("boot {boot}: ")) && !stdout.contains("NOT the RESET state"),
            "boot {boot} exact:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("another vCPU's fd refused: RESET of vCPU 0: fd ")
            && stdout.contains("is vCPU 1, not vCPU 0"),
        "{stdout}"
    );
    assert!(stdout.contains("reboot (0xCF9): RESET in"), "{stdout}");
    if stdout.contains("triple fault raised") {
        assert!(
            stdout.contains("reboot (triple fault): RESET in"),
            "{stdout}"
        );
    }
    // A reboot never costs what learning the host did at power-on. (The precise, host-derived
    // bounds are asserted by vcpu_reset_api_kvm.rs and example_tiny_vmm.rs, which can ask the
    // handle what it learned of the host's INIT.)
    let count = |text: &str| -> u32 {
        text.split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no syscall count in {text:?}"))
    };
    let power_on = stdout
        .lines()
        .find_map(|l| l.strip_prefix("power-on RESET: "))
        .map(count)
        .unwrap_or_else(|| panic!("no power-on RESET line:\n{stdout}"));
    for line in stdout.lines().filter(|l| l.starts_with("reboot (")) {
        let calls = line
            .split("RESET in ")
            .nth(1)
            .map(count)
            .unwrap_or_else(|| panic!("no syscall count in {line:?}"));
        assert!(
            calls < power_on,
            "{line}: a reboot costs less than power-on ({power_on})"
        );
    }
    assert!(
        stdout.contains("devices in 4"),
        "PIC, IOAPIC, PIT restored:\n{stdout}"
    );
}
