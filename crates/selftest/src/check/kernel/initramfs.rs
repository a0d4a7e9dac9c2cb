//! The guest's initramfs: busybox (statically linked), the statically linked selftest, the
//! kernel's KVM modules and an `/init` that loads them, runs `vcpu-reset check --format json`
//! against the kernel's KVM and sends each report back on the second serial port (COM2,
//! `/dev/ttyS1`), gzip-compressed and in base64 between marker lines, then powers off.

use super::cpio::Cpio;
use super::modules::Module;

/// The marker lines of the guest's output on COM2.
pub mod marker {
    /// `VCPU-RESET-KERNEL <uname -r>`: the guest's init started.
    pub const KERNEL: &str = "VCPU-RESET-KERNEL";
    /// `VCPU-RESET-NO-KVM <why>`: `/dev/kvm` did not appear.
    pub const NO_KVM: &str = "VCPU-RESET-NO-KVM";
    /// `VCPU-RESET-MODULES <names>`: the modules loaded.
    pub const MODULES: &str = "VCPU-RESET-MODULES";
    /// `VCPU-RESET-BEGIN <run>`: base64 of the gzip-compressed JSON report follows.
    pub const BEGIN: &str = "VCPU-RESET-BEGIN";
    /// `VCPU-RESET-END <run> <exit status>`: the report ends.
    pub const END: &str = "VCPU-RESET-END";
    /// `VCPU-RESET-DONE`: every run ended.
    pub const DONE: &str = "VCPU-RESET-DONE";
}

/// The `/init` script: `runs` runs of `check`.
pub fn init_script(modules: &[Module], runs: u32) -> String {
    let mut s = String::from(
        "#!/bin/sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mount -t tmpfs tmpfs /tmp\n\
         out=/dev/ttyS1\n\
         stty -F $out raw -echo 2>/dev/null\n\
         say() { echo \"$*\" > $out; }\n",
    );
    s += &format!("say \"{} $(uname -r)\"\n", marker::KERNEL);
    for (i, m) in modules.iter().enumerate() {
        // A vendor module fails to load on the other vendor's CPU: that is expected.
        s += &format!("insmod /lib/kvm/{i:02}-{}.ko {}\n", m.name, m.params);
    }
    s += &format!(
        "if [ ! -e /dev/kvm ]; then\n\
         \x20 say \"{} /dev/kvm did not appear; the kernel's last messages: $(dmesg | tail -n 8 | tr '\\n' '|')\"\n\
         \x20 poweroff -f\n\
         fi\n\
         say \"{} $(cut -d' ' -f1 /proc/modules | tr '\\n' ' ')\"\n\
         i=1\n\
         while [ $i -le {runs} ]; do\n\
         \x20 /bin/vcpu-reset check --backend kvm --format json > /tmp/check.json\n\
         \x20 status=$?\n\
         \x20 say \"{} $i\"\n\
         \x20 gzip -c /tmp/check.json | base64 > $out\n\
         \x20 say \"{} $i $status\"\n\
         \x20 i=$((i + 1))\n\
         done\n\
         say {}\n\
         poweroff -f\n",
        marker::NO_KVM,
        marker::MODULES,
        marker::BEGIN,
        marker::END,
        marker::DONE,
    );
    s
}

/// The initramfs (newc cpio).
pub fn build(busybox: &[u8], selftest: &[u8], modules: &[Module], runs: u32) -> Vec<u8> {
    let mut c = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "tmp", "lib", "lib/kvm"] {
        c.dir(d);
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    c.char_device("dev/console", 5, 1);
    c.file("bin/busybox", 0o755, busybox);
    c.symlink("bin/sh", "busybox");
    c.file("bin/vcpu-reset", 0o755, selftest);
    for (i, m) in modules.iter().enumerate() {
        c.file(&format!("lib/kvm/{i:02}-{}.ko", m.name), 0o644, &m.bytes);
    }
    c.file("init", 0o755, init_script(modules, runs).as_bytes());
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_loads_modules_in_order_with_nested_on_and_runs_check_as_asked() {
        let m = |name: &str, params| Module {
            name: name.into(),
            bytes: vec![],
            params,
        };
        let s = init_script(&[m("kvm", ""), m("kvm_amd", "nested=1")], 3);
        let kvm = s.find("insmod /lib/kvm/00-kvm.ko").expect("kvm");
        let amd = s
            .find("insmod /lib/kvm/01-kvm_amd.ko nested=1")
            .expect("kvm_amd");
        assert!(kvm < amd);
        assert!(s.contains("while [ $i -le 3 ]"));
        assert!(s.contains("check --backend kvm --format json"));
        assert!(s.ends_with("poweroff -f\n"));
    }
}
