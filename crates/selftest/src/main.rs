//! The `vcpu-reset` command.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use vcpu_reset::spec::{self, Event, Vendor};
use vcpu_reset_selftest::check;

#[derive(Parser)]
#[command(
    name = "vcpu-reset",
    version,
    about = "Exact x86 vCPU RESET and INIT, and a conformance selftest"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum VendorArg {
    Intel,
    Amd,
}

#[derive(Clone, Copy, ValueEnum)]
enum EventArg {
    Reset,
    Init,
}

#[derive(Clone, Copy, ValueEnum)]
enum SpecFormat {
    Table,
    Json,
    Markdown,
}

#[derive(Subcommand)]
enum Command {
    /// Print the RESET or INIT state table: field, value or rule, citation, note.
    Spec {
        /// Processor vendor whose documents apply.
        #[arg(long, value_enum, default_value = "intel")]
        vendor: VendorArg,
        /// RESET or INIT.
        #[arg(long, value_enum, default_value = "reset")]
        event: EventArg,
        /// Output format. `markdown` prints all four tables (both vendors, both events), as
        /// committed in docs/reset-state.md.
        #[arg(long, value_enum, default_value = "table")]
        format: SpecFormat,
    },
    /// Run the conformance selftest: RESET and INIT vCPUs, read their state back, compare it
    /// with the spec. Exit status: 0 when vcpu-reset's own scenarios pass, 1 on any failure
    /// (with --strict also on findings about the host), 2 when nothing could run.
    Check {
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
        from_log: Option<std::path::PathBuf>,
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
        vmm_timeout: std::time::Duration,
        /// Also write the field x VMM/scenario matrix as a self-contained HTML page.
        #[arg(long, value_name = "FILE")]
        html: Option<std::path::PathBuf>,
    },
    /// Write a flat firmware image that runs the guest probe at the reset vector on any VMM or
    /// emulator, prints its records on port 0xE9 and COM1, and ends through port 0xF4 (QEMU's
    /// isa-debug-exit). `check --from-log` turns its output into verdicts.
    ProbeImage {
        /// Where to write the 64 KiB image.
        #[arg(short, long)]
        output: std::path::PathBuf,
        /// After the first probe, dirty CR0.CD/NW, the x87 unit, PAT and SYSENTER_CS and reboot
        /// once this way, then probe again.
        #[arg(long, value_enum)]
        reboot: Option<RebootArg>,
    },
    /// Boot a flat firmware image on KVM at the real reset vector, rebooting in place (RESET or
    /// INIT of every vCPU, RAM kept) whenever the guest asks, until it writes the exit port.
    Run {
        /// The firmware: a flat image of whole 4 KiB pages, at most 16 MiB, ending with the
        /// reset vector; it is placed to end at 4 GiB.
        firmware: std::path::PathBuf,
        /// Number of vCPUs; APs wait for INIT-SIPI-SIPI from the guest.
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// RAM in MiB.
        #[arg(long, default_value_t = 16)]
        memory: u32,
        /// Most reboots before the run is ended with an error.
        #[arg(long, default_value_t = 100)]
        reboots: u32,
        /// Time limit in seconds (more than 0, at most a year); a guest that hangs ends with an
        /// error.
        #[arg(long, default_value = "10", value_parser = parse_timeout)]
        timeout: std::time::Duration,
        /// Write the debug console's output (port 0xE9) to this file instead of stdout. It is
        /// never the firmware file.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
        /// Write COM1's output to this file instead of stdout (the same file as --output puts
        /// both channels in it, in the order the guest wrote them).
        #[arg(long)]
        serial: Option<std::path::PathBuf>,
        /// The guest's exit port (a write of value V ends the run; V's low byte is the status):
        /// hex with 0x (0xf4) or decimal (244).
        #[arg(long, default_value = "0xf4", value_parser = parse_port)]
        exit_port: u16,
        /// Start from KVM's own vCPU-creation state instead of vcpu-reset's RESET.
        #[arg(long)]
        kvm_create_state: bool,
    },
    /// Measure on KVM, paths side by side: the cost of an exit, or of a reboot.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Exit handling: (a) bare KVM_RUN, (b) GET_REGS+GET_SREGS+SET_REGS per exit, (c) the
    /// register cache with sync regs; µs per exit, ratios to (a), ioctls per exit.
    Exits {
        /// Exits per handler per repetition.
        #[arg(long, default_value_t = vcpu_reset_selftest::bench::exits::ExitOptions::default().exits)]
        exits: u64,
        /// Repetitions, the handlers interleaved; figures are medians over them.
        #[arg(long, default_value_t = vcpu_reset_selftest::bench::exits::ExitOptions::default().reps)]
        reps: u32,
    },
    /// Warm reboot in place vs tearing down and recreating the VM; µs per reboot, speedup,
    /// ioctls per vCPU. Measures 1, 2 and 32 vCPUs unless --vcpus is given.
    Reboot {
        /// Measure this vCPU count only.
        #[arg(long)]
        vcpus: Option<u32>,
        /// Timed reboots per path and vCPU count.
        #[arg(long, default_value_t = 20)]
        rounds: u32,
        /// Compare with this VMM instead: the same firmware rebooted in it and in vcpu-reset's
        /// runner (only `qemu`).
        #[arg(long, value_parser = ["qemu"])]
        peer: Option<String>,
        /// With --peer: reboots per measured run pair.
        #[arg(long, default_value_t = vcpu_reset_selftest::bench::peer::PeerBenchOptions::default().reboots)]
        reboots: u32,
        /// With --peer: repetitions.
        #[arg(long, default_value_t = vcpu_reset_selftest::bench::peer::PeerBenchOptions::default().reps)]
        reps: u32,
    },
    /// Soak a 2-vCPU VM: RESET+run cycles, then guest-driven warm reboots; fds, threads and
    /// RSS at start, middle and end (they must stay constant), and cycles per second.
    Soak {
        /// Host-driven RESET+run cycles.
        #[arg(long, default_value_t = 100_000)]
        cycles: u64,
        /// Guest-driven warm reboots (0xCF9 hard reset).
        #[arg(long, default_value_t = 100_000)]
        reboots: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Auto,
    Kvm,
    Model,
}

#[derive(Clone, Copy, ValueEnum)]
enum RebootArg {
    Cf9Hard,
    Cf9Soft,
    Port92,
    Kbc,
}

/// At most [`vcpu_reset_selftest::files::QUOTE_MAX`] bytes of a bad value, for messages.
fn shown(s: &str) -> String {
    format!(
        "{:?}",
        vcpu_reset_selftest::files::quote(s.as_bytes(), vcpu_reset_selftest::files::QUOTE_MAX)
    )
}

fn parse_hex_u32(s: &str) -> Result<u32, String> {
    let digits = s.trim_start_matches("0x").trim_start_matches("0X");
    u32::from_str_radix(digits, 16).map_err(|e| format!("{} is not a hex number: {e}", shown(s)))
}

/// A port: `0x`-prefixed hex or decimal, 0 to 0xFFFF.
fn parse_port(s: &str) -> Result<u16, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => s.parse::<u16>(),
    };
    parsed.map_err(|e| {
        format!(
            "{} is not a port number (0x0 to 0xffff; hex with 0x, e.g. 0xf4, or decimal): {e}",
            shown(s)
        )
    })
}

/// Longest --timeout accepted: a year, far beyond any guest run and far from the clock's limit.
const MAX_TIMEOUT_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// Seconds, more than 0 and at most a year; refused with a clear message otherwise (NaN,
/// infinite, negative, 1e300) instead of panicking in a Duration conversion.
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{} is not a number of seconds", shown(s)))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= MAX_TIMEOUT_SECS) {
        return Err(format!(
            "{} seconds is out of range — give more than 0 and at most {MAX_TIMEOUT_SECS} (a year)",
            shown(s)
        ));
    }
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| format!("{}: {e}", shown(s)))
}

/// Whether `a` and `b` name the same file (same device and inode; `b` may not exist yet).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Open an output file for `run`, refusing the firmware file itself.
fn open_output(
    path: &std::path::Path,
    flag: &str,
    firmware: &std::path::Path,
) -> Result<vcpu_reset_selftest::runner::Sink, String> {
    let shown = vcpu_reset_selftest::files::shown_path(path);
    if same_file(path, firmware) {
        return Err(format!(
            "{flag} {shown} is the firmware file — writing there would destroy the image; choose another file"
        ));
    }
    let f = vcpu_reset_selftest::files::create_output(path, flag)?;
    Ok(vcpu_reset_selftest::runner::Sink::File(
        std::sync::Arc::new(std::sync::Mutex::new(f)),
    ))
}

#[derive(Clone, Copy, ValueEnum)]
enum CheckFormat {
    Table,
    Json,
    Tap,
    Html,
}

#[derive(Clone, Copy, ValueEnum)]
enum VmmArg {
    QemuTcg,
    QemuKvm,
    Bochs,
}

/// The peers of `check --vmm`/`--vmm-cmd`, and their options; `Err` is a usage error.
fn peers(
    vmm: &[VmmArg],
    vmm_cmd: &[String],
    timeout: std::time::Duration,
) -> Result<(Vec<check::peers::Peer>, check::peers::PeerOptions), String> {
    use check::peers::{Peer, PeerOptions};
    let mut list: Vec<Peer> = vmm
        .iter()
        .map(|v| match v {
            VmmArg::QemuTcg => Peer::QemuTcg,
            VmmArg::QemuKvm => Peer::QemuKvm,
            VmmArg::Bochs => Peer::Bochs,
        })
        .collect();
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
    Ok((list, opts))
}

#[allow(clippy::too_many_arguments)] // the `run` subcommand's options, one each
fn run_firmware(
    firmware: &std::path::Path,
    vcpus: u32,
    memory: u32,
    reboots: u32,
    timeout: std::time::Duration,
    output: Option<&std::path::Path>,
    serial: Option<&std::path::Path>,
    exit_port: u16,
    kvm_create_state: bool,
) -> ExitCode {
    use vcpu_reset_selftest::runner::{Firmware, Sink, Vm, VmConfig};
    let fw = match Firmware::load(firmware) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("vcpu-reset run: {e}");
            return ExitCode::from(2);
        }
    };
    let opened = output
        .map(|p| open_output(p, "--output", firmware))
        .transpose()
        .and_then(|sink| {
            let serial = match (serial, output) {
                (Some(s), Some(o)) if same_file(s, o) || s == o => sink.clone(),
                (Some(s), _) => Some(open_output(s, "--serial", firmware)?),
                (None, _) => None,
            };
            Ok((sink, serial))
        });
    let (sink, serial) = match opened {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("vcpu-reset run: {e}");
            return ExitCode::from(2);
        }
    };
    let config = VmConfig {
        vcpus,
        memory_mib: memory,
        max_reboots: reboots,
        timeout,
        sink: sink.unwrap_or(Sink::Stdout),
        serial: Some(serial.unwrap_or(Sink::Stdout)),
        exit_port,
        kvm_create_state,
    };
    let mut vm = match Vm::new(&fw, config) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("vcpu-reset run: {e}");
            return ExitCode::from(2);
        }
    };
    match vm.run() {
        Ok(out) => {
            eprintln!(
                "vcpu-reset run: the guest exited with value {:#x} after {}",
                out.exit_value,
                out.summary()
            );
            ExitCode::from((out.exit_value & 0xff) as u8)
        }
        Err(e) => {
            eprintln!("vcpu-reset run: {e}");
            ExitCode::from(1)
        }
    }
}

fn probe_image(output: &std::path::Path, reboot: Option<RebootArg>) -> ExitCode {
    use vcpu_reset_selftest::probe::{self, ProbeOptions, RebootVia};
    let via = reboot.map(|r| match r {
        RebootArg::Cf9Hard => RebootVia::Cf9Hard,
        RebootArg::Cf9Soft => RebootVia::Cf9Soft,
        RebootArg::Port92 => RebootVia::Port92,
        RebootArg::Kbc => RebootVia::Kbc,
    });
    let tag = match via {
        Some(v) => format!("probe-{}", v.name()),
        None => "probe".to_string(),
    };
    let mut opts = ProbeOptions::reset_vector(&tag);
    opts.out_ports = vec![0xe9, 0x3f8];
    opts.reboot = via;
    let image = match probe::firmware_image(&opts) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("vcpu-reset probe-image: building the probe failed: {e}");
            return ExitCode::from(2);
        }
    };
    match vcpu_reset_selftest::files::write_output(output, "the probe image", &image) {
        Ok(()) => {
            eprintln!(
                "vcpu-reset probe-image: wrote {} ({} bytes); e.g. qemu-system-x86_64 -bios {} -display none -debugcon file:probe.log -global isa-debugcon.iobase=0xe9 -device isa-debug-exit,iobase=0xf4,iosize=0x04, then vcpu-reset check --from-log probe.log",
                output.display(),
                image.len(),
                output.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vcpu-reset probe-image: {e}");
            ExitCode::from(2)
        }
    }
}

/// `vcpu-reset bench ...`: print the report; 2 when KVM cannot be opened or an option is out
/// of range, 1 when the bench fails. A missed target is reported in the text, not in the exit status.
fn bench(which: BenchCommand) -> ExitCode {
    use vcpu_reset_selftest::bench::{exits, reboot};
    let host = match vcpu_reset_selftest::host::open() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("vcpu-reset bench: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match which {
        BenchCommand::Exits { exits: n, reps } => {
            let options = exits::ExitOptions {
                exits: n,
                reps,
                ..exits::ExitOptions::default()
            };
            exits::run(&host, &options).map(|r| r.to_text())
        }
        BenchCommand::Reboot {
            vcpus,
            peer: Some(_),
            reboots,
            reps,
            ..
        } => {
            drop(host);
            let options = vcpu_reset_selftest::bench::peer::PeerBenchOptions {
                vcpus: vcpus.map_or_else(|| reboot::DEFAULT_VCPUS.to_vec(), |n| vec![n]),
                reboots,
                reps,
            };
            vcpu_reset_selftest::bench::peer::run(&options).map(|r| r.to_text())
        }
        BenchCommand::Reboot { vcpus, rounds, .. } => {
            drop(host);
            let options = reboot::RebootOptions {
                vcpus: vcpus.map_or_else(|| reboot::DEFAULT_VCPUS.to_vec(), |n| vec![n]),
                rounds,
            };
            reboot::run(&options).map(|r| r.to_text())
        }
        BenchCommand::Soak { cycles, reboots } => vcpu_reset_selftest::bench::soak::run(
            host,
            &vcpu_reset_selftest::bench::soak::SoakOptions { cycles, reboots },
        )
        .map(|r| r.to_text()),
    };
    match report {
        Ok(text) => print(&text),
        Err(e) => {
            eprintln!("vcpu-reset bench: {e}");
            match e {
                vcpu_reset_selftest::bench::BenchError::Option { .. } => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

fn vendor(v: VendorArg) -> Vendor {
    match v {
        VendorArg::Intel => Vendor::Intel,
        VendorArg::Amd => Vendor::Amd,
    }
}

fn event(e: EventArg) -> Event {
    match e {
        EventArg::Reset => Event::Reset,
        EventArg::Init => Event::Init,
    }
}

fn print(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (e.g. `| head`) is not an error worth reporting.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vcpu-reset: writing to stdout failed: {e}");
            ExitCode::from(2)
        }
    }
}

/// Parse the command line; clap's own messages echo a bad value whole, so cut every argument
/// longer than [`vcpu_reset_selftest::files::QUOTE_MAX`] bytes down in them.
fn parse_cli() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            let mut text = e.to_string();
            for arg in std::env::args_os().skip(1) {
                let arg = arg.to_string_lossy();
                // `--flag=value` is quoted by its value.
                let value = match arg.split_once('=') {
                    Some((flag, v)) if flag.starts_with("--") => v,
                    _ => arg.as_ref(),
                };
                if value.len() > vcpu_reset_selftest::files::QUOTE_MAX {
                    text = text.replace(
                        value,
                        &vcpu_reset_selftest::files::quote(
                            value.as_bytes(),
                            vcpu_reset_selftest::files::QUOTE_MAX,
                        ),
                    );
                }
            }
            eprint!("{text}");
            Err(ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2)))
        }
    }
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.command {
        Command::Spec {
            vendor: v,
            event: e,
            format,
        } => {
            let (v, e) = (vendor(v), event(e));
            match format {
                SpecFormat::Table => print(&spec::text_table(v, e)),
                SpecFormat::Markdown => print(&spec::markdown()),
                SpecFormat::Json => match serde_json::to_string_pretty(&spec::entries(v, e)) {
                    Ok(s) => print(&(s + "\n")),
                    Err(err) => {
                        eprintln!("vcpu-reset: serialising the table failed: {err}");
                        ExitCode::from(2)
                    }
                },
            }
        }
        Command::Run {
            firmware,
            vcpus,
            memory,
            reboots,
            timeout,
            output,
            serial,
            exit_port,
            kvm_create_state,
        } => run_firmware(
            &firmware,
            vcpus,
            memory,
            reboots,
            timeout,
            output.as_deref(),
            serial.as_deref(),
            exit_port,
            kvm_create_state,
        ),
        Command::ProbeImage { output, reboot } => probe_image(&output, reboot),
        Command::Bench { which } => bench(which),
        Command::Check {
            backend,
            format,
            strict,
            from_log,
            vendor: v,
            signature,
            vmm,
            vmm_cmd,
            vmm_timeout,
            html,
        } => {
            let (peers, peer_opts) = match peers(&vmm, &vmm_cmd, vmm_timeout) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("vcpu-reset check: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = check::peers::check_installed(&peers) {
                eprintln!("vcpu-reset check: {e}");
                return ExitCode::from(2);
            }
            let backend = match backend {
                BackendArg::Auto => check::BackendChoice::Auto,
                BackendArg::Kvm => check::BackendChoice::Kvm,
                BackendArg::Model => check::BackendChoice::Model,
            };
            let report = match from_log {
                None => check::run(&check::CheckOptions { backend }),
                Some(path) => match vcpu_reset_selftest::files::read_bounded(
                    &path,
                    vcpu_reset_selftest::files::MAX_LOG,
                    "probe log",
                ) {
                    Ok(log) => check::probe_log::judge_log(
                        &log,
                        &check::probe_log::LogOptions {
                            vendor: v.map(vendor),
                            signature,
                        },
                    ),
                    Err(e) => {
                        eprintln!("vcpu-reset check: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            let mut report = report;
            if let Err(e) = check::peers::run(&mut report, &peers, &peer_opts) {
                eprintln!("vcpu-reset check: {e}");
                return ExitCode::from(2);
            }
            if let Some(path) = &html
                && let Err(e) = vcpu_reset_selftest::files::write_output(
                    path,
                    "the HTML report",
                    check::html::render(&report).as_bytes(),
                )
            {
                eprintln!("vcpu-reset check: {e}");
                return ExitCode::from(2);
            }
            let json = if peers.is_empty() {
                report.to_json()
            } else {
                check::matrix::to_json(&report)
            };
            let text = match format {
                CheckFormat::Table => report.to_table(),
                CheckFormat::Tap => report.to_tap(strict),
                CheckFormat::Html => check::html::render(&report),
                CheckFormat::Json => match json {
                    Ok(s) => s + "\n",
                    Err(e) => {
                        eprintln!("vcpu-reset: serialising the report failed: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            let printed = print(&text);
            if printed != ExitCode::SUCCESS {
                return printed;
            }
            let code = report.exit_code(strict);
            if code == 2 {
                // Said on stderr too, so `--format json > file` does not hide it.
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
                eprintln!(
                    "vcpu-reset check: not judged (exit status 2) — {}",
                    if why.is_empty() {
                        "no field was observed".to_string()
                    } else {
                        why.join("; ")
                    }
                );
            }
            ExitCode::from(code)
        }
    }
}
