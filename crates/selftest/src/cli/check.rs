//! `vcpu-reset check`: the conformance selftest, or the verdicts of a probe log, with other
//! VMMs side by side.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use vcpu_reset::spec::Vendor;
use vcpu_reset_selftest::check::kernel::{Accel, KernelOptions, KernelSource};
use vcpu_reset_selftest::check::peers::{Peer, PeerOptions};
use vcpu_reset_selftest::check::{self, Report};
use vcpu_reset_selftest::files;

use super::output::{print, say};
use super::values::{VendorArg, parse_timeout, shown};

#[derive(Clone, Copy, ValueEnum)]
pub enum BackendArg {
    Auto,
    Kvm,
    Model,
}

impl From<BackendArg> for check::BackendChoice {
    fn from(b: BackendArg) -> check::BackendChoice {
        match b {
            BackendArg::Auto => check::BackendChoice::Auto,
            BackendArg::Kvm => check::BackendChoice::Kvm,
            BackendArg::Model => check::BackendChoice::Model,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CheckFormat {
    Table,
    Json,
    Tap,
    Html,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum VmmArg {
    QemuTcg,
    QemuKvm,
    Bochs,
}

impl From<VmmArg> for Peer {
    fn from(v: VmmArg) -> Peer {
        match v {
            VmmArg::QemuTcg => Peer::QemuTcg,
            VmmArg::QemuKvm => Peer::QemuKvm,
            VmmArg::Bochs => Peer::Bochs,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum AccelArg {
    Auto,
    Tcg,
    Kvm,
}

impl From<AccelArg> for Accel {
    fn from(a: AccelArg) -> Accel {
        match a {
            AccelArg::Auto => Accel::Auto,
            AccelArg::Tcg => Accel::Tcg,
            AccelArg::Kvm => Accel::Kvm,
        }
    }
}

#[derive(Args)]
pub struct CheckArgs {
    /// Backend to run on: KVM where /dev/kvm opens, the software model otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// Report format.
    #[arg(long, value_enum, default_value = "table")]
    format: CheckFormat,
    /// Also fail on findings (deviations of the host's own RESET/INIT).
    #[arg(long)]
    strict: bool,
    /// Judge the output of a probe image (`vcpu-reset probe-image`) that ran elsewhere
    /// (e.g. QEMU's debugcon or serial log) instead of running scenarios here.
    #[arg(long, value_name = "FILE")]
    from_log: Option<PathBuf>,
    /// With --from-log: the vendor whose documents apply [default: the log's CPUID vendor,
    /// else intel].
    #[arg(long, value_enum)]
    vendor: Option<VendorArg>,
    /// With --from-log: the vCPU's CPUID.01H:EAX signature, to check EDX (hex) [default:
    /// the log's CPUID leaf 1].
    #[arg(long, value_parser = parse_hex_u32)]
    signature: Option<u32>,
    /// Also boot the probe image (every reboot mechanism) on this installed VMM and judge
    /// it, side by side with the local backend (repeatable).
    #[arg(long, value_enum)]
    vmm: Vec<VmmArg>,
    /// Also drive any VMM: a shell command with {image} (the probe image, flat firmware
    /// ending at 4 GiB) and {log} (where port 0xE9 output must go) (repeatable).
    #[arg(long, value_name = "CMD")]
    vmm_cmd: Vec<String>,
    /// Time limit per VMM run in seconds (more than 0, at most a year); the VMM is killed
    /// when it passes.
    #[arg(long, default_value = "60", value_parser = parse_timeout)]
    vmm_timeout: Duration,
    /// Also judge this kernel's KVM: a Debian linux-image package or a bzImage, booted in QEMU
    /// with the statically linked selftest (`cargo build-static`) and the kernel's KVM modules;
    /// its verdicts join the report as a column group `linux-<release>` (repeatable).
    #[arg(long, value_name = "PATH")]
    kernel: Vec<PathBuf>,
    /// The modules directory of the n-th --kernel (a build tree after `make modules`, or
    /// lib/modules/<release>) [default: the package's, the bzImage's build tree, or
    /// /lib/modules/<release>] (repeatable, in --kernel order).
    #[arg(long, value_name = "DIR")]
    kernel_modules: Vec<PathBuf>,
    /// Time limit per --kernel boot in seconds (all its runs of check included); a guest that
    /// has not finished is killed and reported as not run.
    #[arg(long, default_value = kernel_timeout_default(), value_parser = parse_timeout)]
    kernel_timeout: Duration,
    /// Runs of check in each --kernel boot, each a column group of its own (catches
    /// intermittent failures).
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(u32).range(1..=100))]
    kernel_runs: u32,
    /// The statically linked selftest to run in the --kernel guests [default: this program if
    /// it is statically linked, else target/x86_64-unknown-linux-gnu/release/vcpu-reset].
    #[arg(long, value_name = "FILE")]
    kernel_selftest: Option<PathBuf>,
    /// How QEMU runs the --kernel guests: tcg (emulated SVM, any host), kvm (-cpu host; the
    /// host's KVM needs nested virtualization), auto (kvm where the host offers nested).
    #[arg(long, value_enum, default_value = "auto")]
    kernel_accel: AccelArg,
    /// Keep each --kernel guest's serial console (boot and KVM messages) in DIR as
    /// `linux-<release>.console.log`.
    #[arg(long, value_name = "DIR")]
    kernel_console: Option<PathBuf>,
    /// Also write the field x VMM/scenario matrix as a self-contained HTML page.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

/// A 32-bit number in hex: one optional `0x` or `0X`, then hex digits only.
fn parse_hex_u32(s: &str) -> Result<u32, String> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{} is not a hex number — give hex digits, with or without one 0x (e.g. 0x60fb1)",
            shown(s)
        ));
    }
    u32::from_str_radix(digits, 16)
        .map_err(|e| format!("{} is not a 32-bit hex number: {e}", shown(s)))
}

/// Print the report in the format asked for, then write the HTML page if asked for; the
/// report's exit status, or 2 after a message when something cannot be read, run or written
/// (the report is printed before the page is written, so an unwritable page loses nothing).
pub fn run(args: &CheckArgs) -> ExitCode {
    let (report, with_peers) = match report(args) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let text = match text(&report, args.format, args.strict, with_peers) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let printed = print(&text);
    if printed != ExitCode::SUCCESS {
        return printed;
    }
    if let Some(path) = &args.html {
        let page = check::html::render(&report);
        if let Err(e) = files::write_output(path, "the HTML report", page.as_bytes()) {
            return failed(e);
        }
    }
    exit_status(&report, args.strict)
}

/// The report, peers included; whether it has peers. `Err`: the exit status, the message
/// printed.
fn report(args: &CheckArgs) -> Result<(Report, bool), ExitCode> {
    if let (Some(html), Some(log)) = (&args.html, &args.from_log) {
        files::refuse_input_as_output("--html", html, &[("the probe log", log)]).map_err(failed)?;
    }
    let (peers, peer_opts) = peers(&args.vmm, &args.vmm_cmd, args.vmm_timeout);
    check::peers::check_installed(&peers).map_err(failed)?;
    let (kernels, kernel_opts) = kernels(args).map_err(failed)?;
    check::kernel::check_ready(&kernels, &kernel_opts).map_err(failed)?;
    let backend = check::BackendChoice::from(args.backend);
    let mut report = match &args.from_log {
        None => check::run(&check::CheckOptions { backend }),
        Some(path) => judge_log(path, args.vendor, args.signature)?,
    };
    check::peers::run(&mut report, &peers, &peer_opts).map_err(failed)?;
    check::kernel::run(&mut report, &kernels, &kernel_opts).map_err(failed)?;
    Ok((report, !peers.is_empty() || !kernels.is_empty()))
}

/// `--kernel-timeout`'s default: [`check::kernel::DEFAULT_TIMEOUT`] in seconds.
fn kernel_timeout_default() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| check::kernel::DEFAULT_TIMEOUT.as_secs().to_string())
}

/// The kernels of `check --kernel` (each with its --kernel-modules, by position), and their
/// options. `Err`: more --kernel-modules than --kernel.
fn kernels(args: &CheckArgs) -> Result<(Vec<KernelSource>, KernelOptions), String> {
    if args.kernel_modules.len() > args.kernel.len() {
        return Err(format!(
            "{} --kernel-modules for {} --kernel — give one --kernel-modules per --kernel, in the same order",
            args.kernel_modules.len(),
            args.kernel.len()
        ));
    }
    let list = args
        .kernel
        .iter()
        .enumerate()
        .map(|(i, path)| KernelSource {
            path: path.clone(),
            modules: args.kernel_modules.get(i).cloned(),
        })
        .collect();
    let opts = KernelOptions {
        timeout: args.kernel_timeout,
        runs: args.kernel_runs,
        selftest: args.kernel_selftest.clone(),
        accel: args.kernel_accel.into(),
        console_dir: args.kernel_console.clone(),
    };
    Ok((list, opts))
}

/// Says `e` as `check`'s error; exit status 2.
fn failed(e: impl Display) -> ExitCode {
    say("vcpu-reset check", e);
    ExitCode::from(2)
}

/// The peers of `check --vmm`/`--vmm-cmd`, and their options.
fn peers(vmm: &[VmmArg], vmm_cmd: &[String], timeout: Duration) -> (Vec<Peer>, PeerOptions) {
    let mut list: Vec<Peer> = vmm.iter().map(|&v| Peer::from(v)).collect();
    for (i, template) in vmm_cmd.iter().enumerate() {
        list.push(Peer::Command {
            name: if i == 0 {
                "vmm-cmd".into()
            } else {
                format!("vmm-cmd-{}", i + 1)
            },
            template: template.clone(),
        });
    }
    list.dedup();
    let opts = PeerOptions {
        timeout,
        ..PeerOptions::default()
    };
    (list, opts)
}

/// The verdicts of the probe log at `path`; `Err` when it cannot be read.
fn judge_log(
    path: &Path,
    vendor: Option<VendorArg>,
    signature: Option<u32>,
) -> Result<Report, ExitCode> {
    let log = files::read_bounded(path, files::MAX_LOG, "probe log").map_err(failed)?;
    let opts = check::probe_log::LogOptions {
        vendor: vendor.map(Vendor::from),
        signature,
    };
    Ok(check::probe_log::judge_log(&log, &opts))
}

/// The report in `format`; JSON as the matrix when there are peers. `Err` when it cannot be
/// serialised.
fn text(
    report: &Report,
    format: CheckFormat,
    strict: bool,
    with_peers: bool,
) -> Result<String, ExitCode> {
    Ok(match format {
        CheckFormat::Table => report.to_table(),
        CheckFormat::Tap => report.to_tap(strict),
        CheckFormat::Html => check::html::render(report),
        CheckFormat::Json => {
            let json = if with_peers {
                check::matrix::to_json(report)
            } else {
                report.to_json()
            };
            match json {
                Ok(s) => s + "\n",
                Err(e) => {
                    say(
                        "vcpu-reset",
                        format_args!("serialising the report failed: {e}"),
                    );
                    return Err(ExitCode::from(2));
                }
            }
        }
    })
}

/// The report's exit status; when it is 2 (not judged), also why, on stderr, so that
/// `--format json > file` does not hide it.
fn exit_status(report: &Report, strict: bool) -> ExitCode {
    let code = report.exit_code(strict);
    if code == 2 {
        say(
            "vcpu-reset check",
            format_args!(
                "not judged (exit status 2) — {}",
                not_judged_because(report)
            ),
        );
    }
    ExitCode::from(code)
}

/// Why nothing was judged: the first four of the report's gaps and scenario errors.
fn not_judged_because(report: &Report) -> String {
    let why: Vec<String> = report
        .incomplete
        .iter()
        .cloned()
        .chain(
            report
                .scenarios
                .iter()
                .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.name))),
        )
        .take(4)
        .collect();
    if why.is_empty() {
        "no field was observed".to_string()
    } else {
        why.join("; ")
    }
}
