//! `check --vmm`: the portable probe image run by other VMMs and emulators installed here
//! (QEMU under TCG and under KVM, Bochs, or any command line), judged like `check --from-log`.
//!
//! For every reboot mechanism ([`RebootVia::ALL`]) the probe image (the one `probe-image
//! --reboot <mechanism>` writes) is booted once, headless, as the peer's firmware; it probes the
//! vCPU at the reset vector (the peer's power-on), dirties state, reboots itself that way and
//! probes again. Each peer process runs in its own temp dir, in its own process group, bounded by
//! a time limit after which the group is killed; the temp dir is removed afterwards.
//!
//! Results join the report with the peer's name in front of the scenario: `qemu-tcg:power-on`
//! (from the first image), `qemu-tcg:reboot-cf9-soft`, … — one column per VMM and mechanism.
//!
//! QEMU and Bochs also boot the guest-side leak firmware ([`super::leak_guest`]): what the guest
//! planted and still reads after the VMM's own hard reset through 0xCF9 is a finding about the
//! VMM (`<peer>:leak-guest`), summed up in the `vmm.<peer>.leak` host fact.

pub mod bochs;
pub mod cmd;
mod error;
mod launch;
pub mod process;
pub mod qemu;

use std::path::Path;
use std::time::Duration;

use vcpu_reset_spec::Vendor;

pub use error::PeerError;
pub use launch::Launch;

use super::report::{Report, ScenarioInfo};
use super::verdict::Owner;
use crate::probe::{self, ProbeError, ProbeOptions, RebootVia};

/// A VMM that `check --vmm` can drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// `qemu-system-x86_64 -accel tcg` (the default `qemu64` CPU model).
    QemuTcg,
    /// `qemu-system-x86_64 -accel kvm` (needs `/dev/kvm`).
    QemuKvm,
    /// Bochs with a generated bochsrc (the default CPU model).
    Bochs,
    /// Any command line, run by `sh -c` with `{image}` and `{log}` replaced by the paths of the
    /// probe image and of the file the VMM must write port 0xE9 (or COM1) output to.
    Command {
        /// Column name (`vmm-cmd`, `vmm-cmd-2`, …).
        name: String,
        /// The command template.
        template: String,
    },
}

impl Peer {
    /// Column name.
    pub fn name(&self) -> &str {
        match self {
            Peer::QemuTcg => "qemu-tcg",
            Peer::QemuKvm => "qemu-kvm",
            Peer::Bochs => "bochs",
            Peer::Command { name, .. } => name,
        }
    }

    /// The program that must be installed, and the Debian package that has it.
    pub fn program(&self) -> Option<(&'static str, &'static str)> {
        match self {
            Peer::QemuTcg | Peer::QemuKvm => Some((qemu::PROGRAM, qemu::PACKAGE)),
            Peer::Bochs => Some((bochs::PROGRAM, bochs::PACKAGE)),
            Peer::Command { .. } => None,
        }
    }

    /// The vendor the peer's default CPU model presents, for logs that do not say (format 1):
    /// QEMU's `qemu64` is AuthenticAMD under TCG and takes the host's vendor under KVM; Debian's
    /// Bochs 2.7 reports AuthenticAMD (signature 0x633, measured). A command's VMM is assumed
    /// to present the host's vendor.
    pub fn vendor(&self) -> Vendor {
        match self {
            Peer::QemuTcg | Peer::Bochs => Vendor::Amd,
            Peer::QemuKvm | Peer::Command { .. } => host_vendor(),
        }
    }
}

/// The vendor of the CPU this runs on (`/proc/cpuinfo`), Intel when it cannot be told.
pub fn host_vendor() -> Vendor {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("vendor_id"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| {
            let id: [u8; 12] = v.as_bytes().try_into().ok()?;
            Vendor::from_cpuid_vendor(&id)
        })
        .unwrap_or(Vendor::Intel)
}

/// Options of `check --vmm`.
#[derive(Clone, Debug)]
pub struct PeerOptions {
    /// Time limit per peer process.
    pub timeout: Duration,
    /// Reboot mechanisms to run, one image each.
    pub mechanisms: Vec<RebootVia>,
}

impl Default for PeerOptions {
    fn default() -> PeerOptions {
        PeerOptions {
            timeout: Duration::from_secs(60),
            mechanisms: RebootVia::ALL.to_vec(),
        }
    }
}

/// The probe image `vcpu-reset probe-image --reboot <via>` writes: output on port 0xE9 and
/// COM1, exit through port 0xF4, tag `probe-<via>` (which tells the judge the mechanism).
pub fn probe_image(via: Option<RebootVia>) -> Result<Vec<u8>, ProbeError> {
    let tag = match via {
        Some(v) => format!("probe-{}", v.name()),
        None => "probe".to_string(),
    };
    let mut opts = ProbeOptions::reset_vector(&tag);
    opts.out_ports = vec![0xe9, 0x3f8];
    opts.reboot = via;
    probe::firmware_image(&opts)
}

/// Fails with [`PeerError::Missing`] when a peer's program is not on `PATH` (or, for Bochs,
/// no VGA ROM it can open is installed: [`bochs::vga_rom`]), with
/// [`PeerError::NoKvm`] for `qemu-kvm` when `/dev/kvm` does not open.
pub fn check_installed(peers: &[Peer]) -> Result<(), PeerError> {
    for p in peers {
        if let Some((program, package)) = p.program()
            && process::which(program).is_none()
        {
            return Err(PeerError::Missing {
                peer: p.name().to_string(),
                program: format!("{program} (not found on PATH)"),
                package: package.to_string(),
            });
        }
        if *p == Peer::Bochs {
            bochs::vga_rom()?;
        }
    }
    for p in peers {
        if *p == Peer::QemuKvm
            && let Err(source) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
        {
            return Err(PeerError::NoKvm { error: source });
        }
    }
    Ok(())
}

/// Boots the probe image for `via` on `peer` and returns its log.
pub fn capture(peer: &Peer, via: RebootVia, opts: &PeerOptions) -> Result<Vec<u8>, PeerError> {
    let dir = crate::tempdir::TempDir::new(peer.name()).map_err(|e| PeerError::Io {
        what: format!(
            "create a temporary directory in {}",
            std::env::temp_dir().display()
        ),
        error: e,
    })?;
    let image = probe_image(Some(via))?;
    let image_path = dir.write("probe.rom", &image).map_err(|e| PeerError::Io {
        what: format!("write the probe image in {}", dir.path().display()),
        error: e,
    })?;
    let launch = prepare(peer, dir.path(), &image_path, image.len())?;
    let expected = 2;
    let finished = process::run_bounded(
        peer.name(),
        launch.command,
        dir.path(),
        &launch.log,
        expected,
        opts.timeout,
    )?;
    let log = ended_log(peer, &launch.log, &finished, expected)?;
    check_run_tags(peer, via, &log)?;
    Ok(log)
}

/// The peer's log once it has ended: the log (none if the peer never wrote one), or
/// [`PeerError::Exited`] with the end of its output when fewer than `expected` runs ended in it.
fn ended_log(
    peer: &Peer,
    path: &std::path::Path,
    finished: &process::Finished,
    expected: usize,
) -> Result<Vec<u8>, PeerError> {
    let log = match crate::files::read_bounded(path, process::MAX_PEER_LOG, "peer log") {
        Ok(log) => log,
        Err(_) if !path.exists() => Vec::new(),
        Err(e) => {
            return Err(PeerError::Io {
                what: format!("{}: read its log", peer.name()),
                error: std::io::Error::other(e.to_string()),
            });
        }
    };
    let runs = process::ended_runs(&log);
    if runs < expected {
        if let Peer::Bochs = peer {
            bochs::missing_display(&finished.output)?;
        }
        return Err(PeerError::Exited {
            peer: peer.name().to_string(),
            status: finished
                .status
                .map_or_else(|| "killed".to_string(), |s| s.to_string()),
            runs,
            expected,
            output: match process::tail(&finished.output, 4) {
                t if t.is_empty() => "(none)".to_string(),
                t => t,
            },
        });
    }
    Ok(log)
}

/// The tags of the runs in `log` (`#VR<version> begin <tag>` lines), in order.
fn run_tags(log: &[u8]) -> Vec<String> {
    log.split(|&b| b == b'\n')
        .filter_map(|line| {
            let rest = line.strip_prefix(b"#VR")?;
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let tag = rest.get(digits..)?.strip_prefix(b" begin ")?;
            (digits > 0).then(|| String::from_utf8_lossy(tag).trim_end().to_string())
        })
        .collect()
}

/// Every run of a peer's log must carry the tag of the image it was given for `via`
/// (`probe-<mechanism>`): a VMM that printed another image's log (or the same log for every
/// mechanism) is refused rather than judged as the mechanism asked for.
fn check_run_tags(peer: &Peer, via: RebootVia, log: &[u8]) -> Result<(), PeerError> {
    let want = format!("probe-{}", via.name());
    let tags = run_tags(log);
    match tags.iter().find(|t| **t != want) {
        None => Ok(()),
        Some(other) => Err(PeerError::WrongImage {
            peer: peer.name().to_string(),
            expected: want,
            found: crate::files::quote(other.as_bytes(), 40),
        }),
    }
}

fn prepare(peer: &Peer, dir: &Path, image: &Path, size: usize) -> Result<Launch, PeerError> {
    match peer {
        Peer::QemuTcg => Ok(qemu::launch("tcg", dir, image)),
        Peer::QemuKvm => Ok(qemu::launch("kvm", dir, image)),
        Peer::Bochs => bochs::launch(dir, image, size),
        Peer::Command { template, .. } => cmd::launch(template, dir, image),
    }
}

/// The command line a peer runs, for the report's host facts (`vmm.<name>`).
pub fn describe(peer: &Peer) -> String {
    if *peer == Peer::Bochs {
        return bochs::describe();
    }
    let dir = Path::new("DIR");
    let image = dir.join("probe.rom");
    match prepare(peer, dir, &image, 64 << 10) {
        Ok(l) => l.describe,
        Err(e) => e.to_string(),
    }
}

/// Boots the guest-side leak firmware ([`super::leak_guest`], a hard reset through 0xCF9 after
/// planting) on `peer` and returns its log.
pub fn capture_leak(peer: &Peer, opts: &PeerOptions) -> Result<Vec<u8>, PeerError> {
    let dir = crate::tempdir::TempDir::new(peer.name()).map_err(|e| PeerError::Io {
        what: format!(
            "create a temporary directory in {}",
            std::env::temp_dir().display()
        ),
        error: e,
    })?;
    let firmware = super::leak_guest::firmware(6).map_err(|e| PeerError::Io {
        what: "build the guest leak firmware".into(),
        error: std::io::Error::other(e),
    })?;
    let image = firmware.bytes();
    let image_path = dir.write("leak.rom", image).map_err(|e| PeerError::Io {
        what: format!("write the leak image in {}", dir.path().display()),
        error: e,
    })?;
    let launch = prepare(peer, dir.path(), &image_path, image.len())?;
    let finished = process::run_bounded(
        peer.name(),
        launch.command,
        dir.path(),
        &launch.log,
        1,
        opts.timeout,
    )?;
    ended_log(peer, &launch.log, &finished, 1)
}

/// Judges the leak firmware's log of `peer` into `report`: what the guest planted and read back
/// after the VMM's own hard reset, findings about the VMM where it survived though a RESET
/// changes it, and a `vmm.<peer>.leak` host fact.
pub fn judge_leak(report: &mut Report, peer: &Peer, log: &[u8]) {
    let name = format!("{}:leak-guest", peer.name());
    let model = vcpu_reset_spec::CpuModel::generic(peer.vendor());
    match super::leak_guest::judge(log, &model, vcpu_reset_spec::Event::Reset) {
        Ok(found) => {
            let kept: Vec<String> = found.survivors().iter().map(|p| p.field.name()).collect();
            let written: Vec<String> = found
                .clobbered()
                .iter()
                .map(|(a, n)| format!("{a:#x} ({n} dwords)"))
                .collect();
            for p in found.survivors() {
                let row =
                    vcpu_reset_spec::row(p.field, model.vendor, vcpu_reset_spec::Event::Reset);
                report.results.push(super::report::FieldResult {
                    scenario: name.clone(),
                    view: super::report::View::Guest,
                    vcpu: "bsp".into(),
                    field: p.field.name(),
                    class: p.field.class().name().to_string(),
                    verdict: super::Verdict::Finding,
                    expected: format!("{:#x}", p.expected.unwrap_or(0)),
                    actual: Some(format!("{:#x}", p.planted)),
                    citation: row.citation.to_string(),
                    reason: Some(
                        "the guest planted this before a hard reset through 0xCF9 and read it back after"
                            .into(),
                    ),
                });
            }
            report.host.insert(
                format!("vmm.{}.leak", peer.name()),
                format!(
                    "{} planted (guest); kept across the VMM's hard reset: {}; old PV areas still written: {}",
                    found.planted.len(),
                    if kept.is_empty() { "none".to_string() } else { kept.join(" ") },
                    if written.is_empty() { "none".to_string() } else { written.join(", ") },
                ),
            );
            report.scenarios.push(ScenarioInfo {
                name,
                owner: Owner::Host,
                error: None,
            });
        }
        Err(e) => report.scenarios.push(ScenarioInfo {
            name,
            owner: Owner::Host,
            error: Some(e),
        }),
    }
}

/// Judges one peer's log into `report`: its runs are judged as `check --from-log` does, and
/// the scenarios are renamed `<peer>:<scenario>`. With `with_power_on = false` the first run
/// (the power-on, the same in every image) is left out.
pub fn judge(report: &mut Report, peer: &Peer, log: &[u8], with_power_on: bool) {
    let mut one = Report::default();
    // The log names the vendor and signature the peer presents (its CPUID records).
    super::probe_log::judge(&mut one, log, &super::probe_log::LogOptions::default());
    let keep = |scenario: &str| with_power_on || scenario != "power-on";
    for mut r in one.results {
        if keep(&r.scenario) {
            r.scenario = format!("{}:{}", peer.name(), r.scenario);
            report.results.push(r);
        }
    }
    for (k, v) in one.host {
        if k != "backend" {
            report.host.insert(format!("vmm.{}.{k}", peer.name()), v);
        }
    }
    for mut s in one.scenarios {
        if keep(&s.name) {
            s.name = format!("{}:{}", peer.name(), s.name);
            report.scenarios.push(s);
        }
    }
}

/// Runs every peer for every mechanism and adds the verdicts to `report`. A peer run that fails
/// (timeout, crash, no log) becomes a scenario that could not run; a missing peer is an error.
pub fn run(report: &mut Report, peers: &[Peer], opts: &PeerOptions) -> Result<(), PeerError> {
    check_installed(peers)?;
    for peer in peers {
        report
            .host
            .insert(format!("vmm.{}", peer.name()), describe(peer));
        let mut have_power_on = false;
        let judged_before = report.results.len();
        for via in &opts.mechanisms {
            match capture(peer, *via, opts) {
                Ok(log) => {
                    judge(report, peer, &log, !have_power_on);
                    have_power_on = true;
                }
                Err(e) if e.is_missing() => return Err(e),
                // The peer's group is killed and its temp dir removed: end as the signal asks.
                Err(PeerError::Interrupted { signal, .. }) => crate::sys::die_of(signal),
                Err(e) => report.scenarios.push(ScenarioInfo {
                    name: format!("{}:reboot-{}", peer.name(), via.name()),
                    owner: Owner::Host,
                    error: Some(e.to_string()),
                }),
            }
        }
        // The guest-side leak probe on the VMMs check knows how to drive; a --vmm-cmd is a
        // command written for the probe image and its log, so it is not given another image.
        let leak = if matches!(peer, Peer::Command { .. }) {
            None
        } else {
            Some(capture_leak(peer, opts))
        };
        match leak {
            None => {}
            Some(Ok(log)) => judge_leak(report, peer, &log),
            Some(Err(e)) if e.is_missing() => return Err(e),
            Some(Err(PeerError::Interrupted { signal, .. })) => crate::sys::die_of(signal),
            Some(Err(e)) => report.scenarios.push(ScenarioInfo {
                name: format!("{}:leak-guest", peer.name()),
                owner: Owner::Host,
                error: Some(e.to_string()),
            }),
        }
        if report.results.len() == judged_before {
            // The comparison the user asked for has nothing of this VMM: not a pass.
            report.incomplete.push(format!(
                "{}: no run of this VMM could be judged (its scenarios say why)",
                peer.name()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bochsrc_places_the_image_to_end_at_4_gib() {
        let rc = bochs::bochsrc(
            Path::new("/x/probe.rom"),
            64 << 10,
            Path::new("/usr/share/seabios/vgabios-isavga.bin"),
            Path::new("/x/bochs.log"),
        );
        assert!(
            rc.contains("romimage: file=\"/x/probe.rom\", address=0xffff0000\n"),
            "{rc}"
        );
        assert!(
            rc.contains("vgaromimage: file=\"/usr/share/seabios/vgabios-isavga.bin\"\n"),
            "{rc}"
        );
        assert!(rc.contains("port_e9_hack: enabled=1\n"));
        assert!(rc.contains("display_library: term\n"));
        assert!(rc.contains("panic: action=fatal\n"));
    }

    #[test]
    fn the_bochsrc_names_files_in_its_directory_whatever_the_directory_is_called() {
        // A TMPDIR with a quote, a placeholder and a newline in its name.
        let base = crate::tempdir::TempDir::new("bochsrc-test").expect("temp dir");
        let tmp = base.path().join("a\"{log}\nb");
        std::fs::create_dir(&tmp).expect("odd dir");
        let dir = crate::tempdir::TempDir::new_in(&tmp, "bochs").expect("temp dir");
        let image = dir.write("probe.rom", &[0; 4096]).expect("image");
        let Ok(launch) = bochs::launch(dir.path(), &image, 4096) else {
            eprintln!("skipped: no VGA ROM for Bochs here");
            return;
        };
        drop(launch);
        let rc = std::fs::read_to_string(dir.path().join("bochsrc")).expect("bochsrc");
        assert!(
            rc.contains("romimage: file=\"probe.rom\", address=0xfffff000\n"),
            "{rc}"
        );
        assert!(rc.contains("log: \"bochs.log\"\n"), "{rc}");
        assert!(!rc.contains(&dir.path().display().to_string()), "{rc}");
    }

    #[test]
    fn bochs_refuses_images_it_cannot_boot() {
        let e = bochs::launch(Path::new("/nonexistent"), Path::new("/x"), 4 << 20)
            .err()
            .expect("an error");
        assert!(e.is_missing(), "{e}");
        assert!(e.to_string().contains("2 MiB"), "{e}");
    }

    #[test]
    fn a_log_of_another_image_is_refused() {
        let log =
            b"noise\n#VR2 begin probe-cf9-hard\r\n#VR2 end 0001 00ff\n#VR2 begin probe-cf9-hard\n";
        assert_eq!(run_tags(log), ["probe-cf9-hard", "probe-cf9-hard"]);
        assert!(check_run_tags(&Peer::QemuTcg, RebootVia::Cf9Hard, log).is_ok());
        let e = check_run_tags(&Peer::QemuTcg, RebootVia::Kbc, log).expect_err("wrong image");
        assert!(e.to_string().contains("probe-kbc"), "{e}");
        let power_on = b"#VR2 begin probe\n#VR2 end 0001 00ff\n#VR2 begin probe\n";
        assert!(check_run_tags(&Peer::QemuTcg, RebootVia::Kbc, power_on).is_err());
    }

    #[test]
    fn vmm_cmd_quotes_the_paths_it_substitutes() {
        let l = cmd::launch(
            "vmm --fw {image} --log {log}",
            Path::new("/t/it's"),
            Path::new("/t/it's/probe.rom"),
        )
        .expect("a command");
        let args: Vec<String> = l
            .command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "-c",
                "vmm --fw '/t/it'\\''s/probe.rom' --log '/t/it'\\''s/vmm.log'"
            ]
        );
    }

    #[test]
    fn missing_programs_name_their_debian_package() {
        assert_eq!(
            Peer::QemuKvm.program(),
            Some(("qemu-system-x86_64", "qemu-system-x86"))
        );
        assert_eq!(
            Peer::Bochs.program(),
            Some(("bochs", "bochs bochsbios bochs-term"))
        );
        let e = bochs::missing_display("bochsrc:3: display library 'term' not available")
            .expect_err("missing");
        assert!(e.to_string().contains("apt-get install bochs-term"), "{e}");
    }
}
