//! `check --kernel`: the selftest against another kernel's KVM. The kernel (a Debian
//! `linux-image` package, or a bzImage and its modules) boots in QEMU with an initramfs that
//! holds busybox, the statically linked selftest (`cargo build-static`) and the kernel's KVM
//! modules; inside, `vcpu-reset check --format json` judges that kernel's KVM, and its reports
//! come back on the second serial port. They join the report as a column group per kernel:
//! scenarios `linux-6.1.0-50-amd64:reset`, host facts `kernel.linux-6.1.0-50-amd64.…`.
//!
//! QEMU runs with TCG (`-accel tcg,thread=single -cpu max`: TCG emulates SVM, so the guest
//! loads kvm_amd with `nested=1` on any host; with `-smp 2` multi-threaded TCG made Linux 6.12
//! oops while patching its text), or with KVM (`-cpu host`, where the host's kvm_intel or
//! kvm_amd has nested virtualization on). Everything runs in a private temp dir
//! ([`crate::tempdir::TempDir`]) removed afterwards; every child (dpkg-deb, xz, QEMU) runs in
//! its own process group, bounded in time and killed on SIGINT, SIGTERM and SIGHUP. A guest that
//! hangs or panics is a scenario that could not run, with the end of its console as the reason;
//! so is one whose console grows past [`MAX_CONSOLE`] (QEMU is killed then), and one QEMU
//! could not start (QEMU's exit status and its own message are the reason). A guest's report
//! decompresses in memory, at most [`MAX_GUEST_REPORT`] bytes.

mod cpio;
pub mod elf;
mod error;
pub mod image;
pub mod initramfs;
pub mod modules;
mod tool;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;

pub use error::KernelError;

use super::report::{FieldResult, Report, ScenarioInfo};
use super::verdict::Owner;
use crate::check::peers::{PeerError, process};
use crate::files::{escape, shown_path};
use initramfs::marker;

/// The QEMU program and its Debian package.
pub const QEMU: (&str, &str) = ("qemu-system-x86_64", "qemu-system-x86");

/// The most the guest's serial console may hold: 16 MiB (a boot with three runs of `check`
/// writes well under 1 MiB). A guest that writes more (an oops loop, a log storm) is killed
/// and its scenarios are not run.
pub const MAX_CONSOLE: u64 = 16 << 20;

/// The most a guest's report may decompress to: 256 MiB (a report is a few hundred KiB).
pub const MAX_GUEST_REPORT: u64 = 256 << 20;

/// The time limit per boot when none is given (`--kernel-timeout`'s default too): TCG boots
/// Linux and runs `check` three times in a few minutes on a slow host.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How much of the console's end is read for a "not run" reason.
const CONSOLE_TAIL: u64 = 4 << 10;

/// A kernel to judge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSource {
    /// A Debian `linux-image` package or a bzImage.
    pub path: PathBuf,
    /// The modules directory of a bzImage (see [`image::unpack`] for the default).
    pub modules: Option<PathBuf>,
}

/// How QEMU runs the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// KVM where the host's KVM offers nested virtualization, TCG otherwise.
    Auto,
    /// TCG (emulated SVM): any host.
    Tcg,
    /// KVM with `-cpu host`: the host's KVM must have nested virtualization on.
    Kvm,
}

/// Options of `check --kernel`.
#[derive(Clone, Debug)]
pub struct KernelOptions {
    /// Time limit per boot (the guest's `check` runs included).
    pub timeout: Duration,
    /// Runs of `check` in each boot (each a column group of its own).
    pub runs: u32,
    /// The statically linked selftest (default: [`default_selftest`]).
    pub selftest: Option<PathBuf>,
    /// QEMU's accelerator.
    pub accel: Accel,
    /// Where to keep each guest's serial console (`<kernel>.console.log`: its boot messages,
    /// the module loading and KVM's own messages), if anywhere.
    pub console_dir: Option<PathBuf>,
}

impl Default for KernelOptions {
    fn default() -> KernelOptions {
        KernelOptions {
            timeout: DEFAULT_TIMEOUT,
            runs: 1,
            selftest: None,
            accel: Accel::Auto,
            console_dir: None,
        }
    }
}

/// Where `cargo build-static` puts the statically linked selftest, seen from the running
/// binary (`target/<profile>/vcpu-reset` or a test in `target/<profile>/deps`): the running
/// binary itself when it is statically linked, else
/// `target/x86_64-unknown-linux-gnu/release/vcpu-reset`.
pub fn default_selftest() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    if std::fs::read(&exe)
        .ok()
        .and_then(|b| elf::needs_interpreter(&b))
        == Some(false)
    {
        return exe;
    }
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("../x86_64-unknown-linux-gnu/release/vcpu-reset")
}

/// The accelerator `accel` means here.
fn resolve_accel(accel: Accel) -> Accel {
    match accel {
        Accel::Auto if host_offers_nested() => Accel::Kvm,
        Accel::Auto => Accel::Tcg,
        a => a,
    }
}

/// Whether the host's kvm_intel or kvm_amd has nested virtualization on and `/dev/kvm` opens.
pub fn host_offers_nested() -> bool {
    let nested = ["kvm_intel", "kvm_amd"].iter().any(|m| {
        std::fs::read_to_string(format!("/sys/module/{m}/parameters/nested"))
            .is_ok_and(|v| matches!(v.trim(), "Y" | "1"))
    });
    nested
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

/// A statically linked executable's bytes; errors say what to do.
fn static_executable(
    path: &Path,
    missing: KernelError,
    hint: &str,
) -> Result<Vec<u8>, KernelError> {
    if !path.is_file() {
        return Err(missing);
    }
    let bytes = std::fs::read(path)
        .map_err(|e| KernelError::io(format!("read {}", shown_path(path)), e))?;
    match elf::needs_interpreter(&bytes) {
        Some(false) => Ok(bytes),
        _ => Err(KernelError::NotStatic {
            path: path.to_path_buf(),
            hint: hint.to_string(),
        }),
    }
}

/// What the guest needs from this machine: QEMU, busybox and the selftest, statically linked.
struct Tools {
    busybox: Vec<u8>,
    selftest: Vec<u8>,
    selftest_path: PathBuf,
}

/// Checks that everything `check --kernel` needs is installed, before anything runs.
///
/// # Errors
/// [`KernelError::Missing`] for QEMU or busybox-static, [`KernelError::NoSelftest`] or
/// [`KernelError::NotStatic`] for the selftest, [`KernelError::NotAKernel`] for a path that is
/// not there, [`KernelError::ConsoleDir`] when `--kernel-console` names no directory.
pub fn check_ready(kernels: &[KernelSource], opts: &KernelOptions) -> Result<(), KernelError> {
    if kernels.is_empty() {
        return Ok(());
    }
    tools(kernels, opts).map(|_| ())
}

fn tools(kernels: &[KernelSource], opts: &KernelOptions) -> Result<Tools, KernelError> {
    if process::which(QEMU.0).is_none() {
        return Err(KernelError::Missing {
            program: QEMU.0.into(),
            hint: format!(
                "install the Debian package {} (apt-get install {})",
                QEMU.1, QEMU.1
            ),
        });
    }
    if let Some(d) = &opts.console_dir
        && !d.is_dir()
    {
        return Err(KernelError::ConsoleDir { path: d.clone() });
    }
    for k in kernels {
        if let Some(m) = &k.modules
            && !m.is_dir()
        {
            return Err(KernelError::NotAKernel {
                path: k.path.clone(),
                why: format!("its --kernel-modules {} is not a directory", shown_path(m)),
            });
        }
        image::check(&k.path, k.modules.as_deref())?;
    }
    let busybox_path = process::which("busybox").unwrap_or_else(|| PathBuf::from("/bin/busybox"));
    let busybox_missing = || {
        KernelError::Missing {
        program: "busybox".into(),
        hint: "the guest's shell and insmod: install the Debian package busybox-static (apt-get install busybox-static)".into(),
    }
    };
    let busybox = static_executable(
        &busybox_path,
        busybox_missing(),
        "install the Debian package busybox-static instead of busybox",
    )?;
    let selftest_path = opts.selftest.clone().unwrap_or_else(default_selftest);
    let selftest = static_executable(
        &selftest_path,
        KernelError::NoSelftest {
            path: selftest_path.clone(),
        },
        "build it with `cargo build-static`",
    )?;
    Ok(Tools {
        busybox,
        selftest,
        selftest_path,
    })
}

/// The guest's JSON report, as `check --format json` writes it.
#[derive(Debug, Deserialize)]
struct GuestReport {
    host: std::collections::BTreeMap<String, String>,
    scenarios: Vec<ScenarioInfo>,
    results: Vec<FieldResult>,
    #[serde(default)]
    incomplete: Vec<String>,
}

/// What the guest sent back on COM2.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GuestOutput {
    /// `uname -r` in the guest.
    pub release: Option<String>,
    /// The modules loaded.
    pub modules: Option<String>,
    /// Why `/dev/kvm` did not appear.
    pub no_kvm: Option<String>,
    /// Each complete run: its number, `check`'s exit status, the base64 text of its report.
    pub runs: Vec<(u32, i32, String)>,
    /// Every run ended.
    pub done: bool,
}

/// Parses the guest's COM2 output (carriage returns and lines that are no marker ignored).
pub fn parse_output(text: &str) -> GuestOutput {
    let mut out = GuestOutput::default();
    let mut current: Option<(u32, String)> = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        let word = |m: &str| line.strip_prefix(m).map(str::trim);
        if let Some(r) = word(marker::KERNEL) {
            out.release = Some(r.to_string());
        } else if let Some(m) = word(marker::MODULES) {
            out.modules = Some(m.to_string());
        } else if let Some(why) = word(marker::NO_KVM) {
            out.no_kvm = Some(why.to_string());
        } else if let Some(n) = word(marker::BEGIN) {
            current = n.parse().ok().map(|n| (n, String::new()));
        } else if let Some(rest) = word(marker::END) {
            let mut it = rest.split_whitespace();
            let n: Option<u32> = it.next().and_then(|n| n.parse().ok());
            let status: Option<i32> = it.next().and_then(|s| s.parse().ok());
            if let (Some((begun, text)), Some(n), Some(status)) = (current.take(), n, status)
                && begun == n
            {
                out.runs.push((n, status, text));
            }
        } else if line.trim() == marker::DONE {
            out.done = true;
        } else if let Some((_, text)) = &mut current {
            text.push_str(line.trim());
        }
    }
    out
}

/// Decodes standard base64 (padding optional, whitespace ignored); `None` on any other byte.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for b in text.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// The column-group name of a kernel: `linux-<release>`, unique in `taken` (`-2`, `-3`, … on
/// repeats), with no `:` (which separates it from the scenario).
fn group_name(release: &str, taken: &[String]) -> String {
    let base = format!("linux-{}", release.replace([':', '/'], "-"));
    let mut name = base.clone();
    let mut n = 1;
    while taken.contains(&name) {
        n += 1;
        name = format!("{base}-{n}");
    }
    name
}

/// Runs every kernel and adds its verdicts to `report`, one column group per kernel (and per run
/// of `check` when `opts.runs` > 1). A guest that hangs, panics or has no `/dev/kvm` becomes a
/// scenario that could not run; nothing judged of a kernel makes the report incomplete.
///
/// # Errors
/// What [`check_ready`] finds, a kernel that cannot be unpacked or has no KVM modules
/// ([`KernelError::NoKvmModules`]). On SIGINT, SIGTERM or SIGHUP QEMU's group is killed and the
/// temp dir removed, then the process ends as the signal asks.
pub fn run(
    report: &mut Report,
    kernels: &[KernelSource],
    opts: &KernelOptions,
) -> Result<(), KernelError> {
    if kernels.is_empty() {
        return Ok(());
    }
    let tools = tools(kernels, opts)?;
    let accel = resolve_accel(opts.accel);
    report.host.insert(
        "kernel.selftest".into(),
        tools.selftest_path.display().to_string(),
    );
    let mut taken: Vec<String> = Vec::new();
    for k in kernels {
        match run_one(report, k, opts, accel, &tools, &mut taken) {
            Ok(()) => {}
            Err(KernelError::Interrupted { signal }) => crate::sys::die_of(signal),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn interrupted() -> Result<(), KernelError> {
    match crate::sys::interrupted() {
        Some(signal) => Err(KernelError::Interrupted { signal }),
        None => Ok(()),
    }
}

/// One kernel: unpack, build the initramfs, boot, judge.
fn run_one(
    report: &mut Report,
    k: &KernelSource,
    opts: &KernelOptions,
    accel: Accel,
    tools: &Tools,
    taken: &mut Vec<String>,
) -> Result<(), KernelError> {
    let _signals = crate::sys::InterruptGuard::install();
    let tmp = crate::tempdir::TempDir::new("kernel").map_err(|e| {
        KernelError::io(
            format!(
                "create a temporary directory in {}",
                std::env::temp_dir().display()
            ),
            e,
        )
    })?;
    let dir = tmp.path();
    let unpacked = image::unpack(&k.path, k.modules.as_deref(), dir)?;
    interrupted()?;
    let name = group_name(&unpacked.release, taken);
    taken.push(name.clone());
    let modules = modules::kvm_modules(&name, unpacked.modules.as_deref(), dir)?;
    interrupted()?;
    let initrd = initramfs::build(&tools.busybox, &tools.selftest, &modules, opts.runs.max(1));
    std::fs::copy(&unpacked.bzimage, dir.join("bzImage"))
        .map_err(|e| KernelError::io(format!("copy {}", shown_path(&unpacked.bzimage)), e))?;
    // The unpacked package (hundreds of MB) is not needed any more.
    let _ = std::fs::remove_dir_all(dir.join("deb"));
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(|e| KernelError::io(format!("write {}", p.display()), e))
    };
    write("initrd.cpio", &initrd)?;
    interrupted()?;
    let cmd = qemu_command(accel, dir);
    report.host.insert(
        format!("kernel.{name}"),
        format!(
            "{} ({} modules: {}); {}",
            shown_path(&k.path),
            modules.len(),
            modules
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            describe(&cmd)
        ),
    );
    let started = Instant::now();
    let result = dir.join("result.log");
    let console = dir.join("console.log");
    let watched = [process::Watched {
        what: "the guest console",
        path: &console,
        limit: MAX_CONSOLE,
    }];
    let booted =
        process::run_bounded_watching(&name, cmd, dir, &result, usize::MAX, opts.timeout, &watched);
    let seconds = started.elapsed().as_secs_f64();
    report
        .host
        .insert(format!("kernel.{name}.seconds"), format!("{seconds:.1}"));
    if let Err(PeerError::Interrupted { signal, .. }) = booted {
        return Err(KernelError::Interrupted { signal });
    }
    // Kept whatever happened: a guest that hung or was killed is the one whose console is
    // most worth reading.
    if let Some(keep) = &opts.console_dir {
        let inputs = [
            ("the --kernel file", k.path.as_path()),
            (
                "the statically linked selftest",
                tools.selftest_path.as_path(),
            ),
        ];
        keep_console(report, &name, dir, keep, &inputs);
    }
    let console_tail = || {
        escape(&process::tail(
            &process::read_tail(&console, CONSOLE_TAIL),
            6,
        ))
    };
    let not_run = |report: &mut Report, why: String| {
        report.scenarios.push(ScenarioInfo {
            name: format!("{name}:boot"),
            owner: Owner::Host,
            error: Some(why),
        });
        report.incomplete.push(format!(
            "{name}: no run of check in this kernel could be judged (its scenarios say why)"
        ));
    };
    let finished = match booted {
        Ok(f) => f,
        Err(PeerError::Interrupted { signal, .. }) => {
            return Err(KernelError::Interrupted { signal });
        }
        Err(PeerError::Timeout { .. }) => {
            not_run(
                report,
                format!(
                    "the guest did not finish in {} s (QEMU killed) — raise --kernel-timeout; its console ends: {}",
                    opts.timeout.as_secs_f64(),
                    console_tail()
                ),
            );
            return Ok(());
        }
        Err(PeerError::OutputTooLarge { bytes, limit, .. }) => {
            not_run(
                report,
                format!(
                    "the guest console grew past {limit} bytes ({bytes} when seen; QEMU killed) — the guest printed without end (an oops loop or a log storm); its console ends: {}",
                    console_tail()
                ),
            );
            return Ok(());
        }
        Err(e) => {
            not_run(report, format!("QEMU: {e}"));
            return Ok(());
        }
    };
    let text = crate::files::read_bounded(&result, crate::files::MAX_LOG, "guest output")
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let out = parse_output(&text);
    if out.release.is_none() {
        // The guest never spoke: QEMU itself failed (e.g. `-accel kvm` without nested
        // virtualization) or the kernel died before its init ran.
        let status = finished
            .status
            .map_or_else(|| "killed".to_string(), |s| s.to_string());
        not_run(
            report,
            format!(
                "QEMU exited ({status}) before the guest's init said {}; QEMU's output ends: {}; the console ends: {}",
                marker::KERNEL.trim(),
                nonempty(escape(&process::tail(&finished.output, 4))),
                nonempty(console_tail())
            ),
        );
        return Ok(());
    }
    if let Some(r) = &out.release {
        report
            .host
            .insert(format!("kernel.{name}.release"), escape(r));
    }
    if let Some(m) = &out.modules {
        report
            .host
            .insert(format!("kernel.{name}.modules"), escape(m));
    }
    if let Some(why) = &out.no_kvm {
        not_run(report, format!("no /dev/kvm in the guest: {}", escape(why)));
        return Ok(());
    }
    let runs = opts.runs.max(1);
    let mut judged = 0;
    for n in 1..=runs {
        let group = if runs == 1 {
            name.clone()
        } else {
            format!("{name}-run{n}")
        };
        let Some((_, status, b64)) = out.runs.iter().find(|(r, _, _)| *r == n) else {
            report.scenarios.push(ScenarioInfo {
                name: format!("{group}:check"),
                owner: Owner::Host,
                error: Some(format!(
                    "the guest sent no report for run {n} of check (it crashed or powered off); its console ends: {}",
                    console_tail()
                )),
            });
            continue;
        };
        match decode_report(b64, dir) {
            Ok(guest) => {
                merge(report, &group, guest, *status);
                judged += 1;
            }
            Err(e) => report.scenarios.push(ScenarioInfo {
                name: format!("{group}:check"),
                owner: Owner::Host,
                error: Some(format!("the guest's report of run {n} cannot be read: {e}")),
            }),
        }
    }
    if judged == 0 {
        report.incomplete.push(format!(
            "{name}: no run of check in this kernel could be judged (its scenarios say why)"
        ));
    }
    Ok(())
}

/// `text`, or "(nothing)" when it is empty.
fn nonempty(text: String) -> String {
    if text.is_empty() {
        "(nothing)".to_string()
    } else {
        text
    }
}

/// Copies the guest's console to `<keep>/<name>.console.log` (refused when that is one of
/// `inputs`); where it went (or why it could not) is a host fact.
fn keep_console(
    report: &mut Report,
    name: &str,
    dir: &Path,
    keep: &Path,
    inputs: &[(&str, &Path)],
) {
    let to = keep.join(format!("{name}.console.log"));
    let what = match crate::files::refuse_input_as_output("--kernel-console", &to, inputs)
        .and_then(|()| replace_file(&dir.join("console.log"), &to, MAX_CONSOLE))
    {
        Ok(()) => shown_path(&to),
        Err(e) => format!("not kept: {}", escape(&e)),
    };
    report.host.insert(format!("kernel.{name}.console"), what);
}

/// Writes the first `limit` bytes of `from` to `to` without ever opening `to`: into a new
/// file beside it (O_CREAT|O_EXCL|O_NOFOLLOW, so a name planted in a shared directory is
/// never followed), then renamed over `to` (rename replaces a symbolic link at `to` rather
/// than writing through it, and `to` is never seen half written).
fn replace_file(from: &Path, to: &Path, limit: u64) -> Result<(), String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let shown = shown_path(to);
    let (Some(parent), Some(file_name)) = (to.parent(), to.file_name()) else {
        return Err(format!("{shown} names no file in a directory"));
    };
    let mut src =
        std::fs::File::open(from).map_err(|e| format!("QEMU left no console to keep ({e})"))?;
    let mut made = None;
    for n in 0..100u32 {
        let tmp = parent.join(format!(
            ".{}.{}-{n}.tmp",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o644)
            .open(&tmp)
        {
            Ok(f) => {
                made = Some((tmp, f));
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(format!(
                    "cannot create a file in {}: {e}",
                    shown_path(parent)
                ));
            }
        }
    }
    let Some((tmp, mut file)) = made else {
        return Err(format!(
            "100 temporary names beside {shown} are taken — remove the stale .{}.*.tmp files",
            file_name.to_string_lossy()
        ));
    };
    let copied = std::io::copy(&mut (&mut src).take(limit), &mut file)
        .and_then(|_| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, to));
    copied.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {shown}: {e}")
    })
}

/// The guest's report from the base64 of its gzip-compressed JSON.
fn decode_report(b64: &str, dir: &Path) -> Result<GuestReport, KernelError> {
    let gz = base64_decode(b64).ok_or_else(|| KernelError::Tool {
        what: "decoding the guest's report".into(),
        detail: "not base64 (serial output garbled?)".into(),
    })?;
    let gz_path = dir.join("report.json.gz");
    std::fs::write(&gz_path, gz).map_err(|e| KernelError::io("write the guest's report", e))?;
    let json = tool::decompress_bounded("gzip", &gz_path, MAX_GUEST_REPORT, dir)?;
    serde_json::from_slice(&json).map_err(|e| KernelError::Tool {
        what: "parsing the guest's JSON report".into(),
        detail: e.to_string(),
    })
}

/// Adds a guest report under the column group `group`.
fn merge(report: &mut Report, group: &str, guest: GuestReport, status: i32) {
    for mut r in guest.results {
        r.scenario = format!("{group}:{}", r.scenario);
        report.results.push(r);
    }
    for (k, v) in guest.host {
        report.host.insert(format!("kernel.{group}.{k}"), v);
    }
    report
        .host
        .insert(format!("kernel.{group}.exit-status"), status.to_string());
    for mut s in guest.scenarios {
        s.name = format!("{group}:{}", s.name);
        report.scenarios.push(s);
    }
    for i in guest.incomplete {
        report.incomplete.push(format!("{group}: {i}"));
    }
}

/// QEMU's command line for the files in `dir` (relative names: QEMU's option syntax never sees
/// the temp dir's path).
fn qemu_command(accel: Accel, dir: &Path) -> Command {
    let mut cmd = Command::new(QEMU.0);
    cmd.current_dir(dir);
    match accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg | Accel::Auto => cmd.args(["-accel", "tcg,thread=single", "-cpu", "max"]),
    };
    cmd.args([
        "-smp",
        "2",
        "-m",
        "2048",
        "-kernel",
        "bzImage",
        "-initrd",
        "initrd.cpio",
        "-append",
        "console=ttyS0 panic=-1 rdinit=/init",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-serial",
        "file:console.log",
        "-serial",
        "file:result.log",
    ]);
    cmd
}

/// The command line, for the report's host facts.
fn describe(cmd: &Command) -> String {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!("{} {}", cmd.get_program().to_string_lossy(), args.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_what_busybox_writes() {
        assert_eq!(
            base64_decode("aGVsbG8=\r\n").as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(base64_decode("YWJj\nZGVm").as_deref(), Some(&b"abcdef"[..]));
        assert_eq!(base64_decode("a!b"), None);
    }

    #[test]
    fn the_guest_output_is_read_between_markers() {
        let text = "VCPU-RESET-KERNEL 6.1.0-50-amd64\r\nnoise\r\nVCPU-RESET-MODULES kvm_amd kvm\r\n\
                    VCPU-RESET-BEGIN 1\r\naGVs\r\nbG8=\r\nVCPU-RESET-END 1 0\r\n\
                    VCPU-RESET-BEGIN 2\r\nabc\r\nVCPU-RESET-DONE\r\n";
        let out = parse_output(text);
        assert_eq!(out.release.as_deref(), Some("6.1.0-50-amd64"));
        assert_eq!(out.modules.as_deref(), Some("kvm_amd kvm"));
        assert_eq!(out.runs, vec![(1, 0, "aGVsbG8=".to_string())]);
        assert!(out.done);
        assert_eq!(out.no_kvm, None);
    }

    #[test]
    fn group_names_are_unique_and_have_no_colon() {
        let taken = vec!["linux-6.1".to_string()];
        assert_eq!(group_name("6.1", &taken), "linux-6.1-2");
        assert_eq!(group_name("6.12:x", &taken), "linux-6.12-x");
    }

    #[test]
    fn qemu_runs_tcg_single_threaded_with_both_serial_ports_to_files() {
        let c = describe(&qemu_command(Accel::Tcg, Path::new("/x")));
        assert!(
            c.contains("-accel tcg,thread=single -cpu max -smp 2 -m 2048"),
            "{c}"
        );
        assert!(
            c.contains("-serial file:console.log -serial file:result.log"),
            "{c}"
        );
        let k = describe(&qemu_command(Accel::Kvm, Path::new("/x")));
        assert!(k.contains("-accel kvm -cpu host"), "{k}");
    }
}
