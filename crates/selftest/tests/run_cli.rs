//! `vcpu-reset run` with bad input: each a clear error (exit status 2), never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vcpu-reset"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("vcpu-reset-run-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn file(&self, name: &str, len: usize) -> PathBuf {
        let p = self.0.join(name);
        let mut bytes = vec![0u8; len];
        if len >= 16 {
            // mov al, 0x2a; out 0xf4, al at the reset vector: exits with 42.
            bytes[len - 16..len - 12].copy_from_slice(&[0xb0, 0x2a, 0xe6, 0xf4]);
        }
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(fw: &Path, extra: &[&str]) -> Output {
    bin().arg("run").arg(fw).args(extra).output().unwrap()
}

#[test]
fn bad_firmware_files_are_clear_errors() {
    let d = Dir::new("fw");
    for (name, len, says) in [
        ("empty.bin", 0, "the image is empty"),
        ("odd.bin", 4097, "not a multiple of 4 KiB"),
        ("huge.bin", (16 << 20) + 4096, "more than the 16 MiB"),
    ] {
        let o = run(&d.file(name, len), &[]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{name}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
    }
    let o = run(&d.0.join("missing.bin"), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no such file"), "{}", stderr(&o));
}

#[test]
fn a_missing_kvm_device_is_a_clear_error() {
    let d = Dir::new("nodev");
    let o = bin()
        .arg("run")
        .arg(d.file("fw.bin", 4096))
        .env("VCPU_RESET_KVM_DEVICE", "/nonexistent/kvm")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no /nonexistent/kvm — load the kvm module"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_kvm_device_without_permission_is_a_clear_error() {
    let d = Dir::new("perm");
    let fw = d.file("fw.bin", 4096);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let can_open = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let o = if root && Path::new("/usr/bin/setpriv").exists() && Path::new("/dev/kvm").exists() {
        // Drop to an unprivileged user: /dev/kvm is not theirs.
        std::fs::set_permissions(&d.0, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::set_permissions(&fw, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let meta = std::fs::metadata("/dev/kvm").unwrap();
        if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o006 != 0 {
            eprintln!(
                "skipped: /dev/kvm is open to every user here, so permission cannot be denied"
            );
            return;
        }
        Command::new("/usr/bin/setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_vcpu-reset"))
            .arg("run")
            .arg(&fw)
            .output()
            .unwrap()
    } else if !can_open && Path::new("/dev/kvm").exists() {
        run(&fw, &[])
    } else {
        eprintln!("skipped: cannot make /dev/kvm refuse this test (not root, or no setpriv)");
        return;
    };
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // "Add the user to group kvm" only where that helps: the device is group kvm, mode g+rw.
    let meta = std::fs::metadata("/dev/kvm").unwrap();
    let group_rw = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o060 == 0o060;
    let group_kvm = std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split(':').collect();
            f.len() > 2
                && f[0] == "kvm"
                && f[2] == std::os::unix::fs::MetadataExt::gid(&meta).to_string()
        });
    if group_rw && group_kvm {
        assert!(
            stderr(&o).contains("permission denied on /dev/kvm — add the user to group kvm"),
            "{}",
            stderr(&o)
        );
    } else {
        assert!(
            stderr(&o).contains("permission denied on /dev/kvm ("),
            "{}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains("group kvm —"), "{}", stderr(&o));
    }
}

#[test]
fn a_good_image_runs_and_exits_with_the_guest_value() {
    let Some(_host) = vcpu_reset_selftest::host::kvm_for_tests() else {
        return;
    };
    let d = Dir::new("good");
    let o = run(&d.file("fw.bin", 4096), &["--vcpus", "2"]);
    assert_eq!(o.status.code(), Some(42), "{}", stderr(&o));
    assert!(stderr(&o).contains("exited with value 0x2a after 0 reboot(s)"));
    let o = run(&d.file("fw.bin", 4096), &["--vcpus", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("0 vCPUs asked for"), "{}", stderr(&o));
    let o = run(&d.file("fw.bin", 4096), &["--memory", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("out of range"), "{}", stderr(&o));
}
