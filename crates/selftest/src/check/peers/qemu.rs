//! QEMU (`qemu-system-x86_64`) with the probe image as its firmware: `-bios IMAGE`, no
//! display, no monitor, port 0xE9 (`isa-debugcon`) to the log file, and `isa-debug-exit` on
//! port 0xF4 so the probe's final write ends QEMU (exit status `(value << 1) | 1`).

use std::path::Path;
use std::process::Command;

use super::Launch;

/// The program.
pub const PROGRAM: &str = "qemu-system-x86_64";
/// The Debian package that has it.
pub const PACKAGE: &str = "qemu-system-x86";

/// QEMU under `accel` (`tcg` or `kvm`) with `image` as firmware, debugcon to `dir/debugcon.log`.
pub fn launch(accel: &str, dir: &Path, image: &Path) -> Launch {
    let log = dir.join("debugcon.log");
    let args: Vec<String> = vec![
        "-accel".into(),
        accel.into(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-serial".into(),
        "none".into(),
        "-bios".into(),
        image.display().to_string(),
        "-debugcon".into(),
        format!("file:{}", log.display()),
        "-global".into(),
        "isa-debugcon.iobase=0xe9".into(),
        "-device".into(),
        "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
    ];
    let describe = format!("{PROGRAM} {}", args.join(" "));
    let mut command = Command::new(PROGRAM);
    command.args(&args);
    Launch {
        command,
        log,
        describe,
    }
}
