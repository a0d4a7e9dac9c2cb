//! The VM: KVM VM and vCPUs, guest memory, devices, the run loop and warm reboot in place.
//!
//! [`Vm::run`] starts one thread per vCPU and keeps it for the whole run, as a VMM does; each
//! runs `KVM_RUN` on its vCPU for one *boot* after another. A boot ends when a vCPU asks for a
//! reboot (triple fault, 0xCF9, port 0x92, KBC 0xFE), the guest writes the exit port, a vCPU
//! fails, or the time limit passes. The main thread then decides what comes next (a reboot of
//! kind RESET or INIT, or the end of the run) and publishes it before it stops the threads by
//! signalling them (a no-op handler makes `KVM_RUN` return `EINTR`; repeated for a thread not
//! yet out, since a signal that lands just before `KVM_RUN` is lost). At this rendezvous
//! (`runner/vcpu_threads.rs`) each thread, once out of `KVM_RUN`, puts its own vCPU back with the
//! engine and counts itself done; when the last is done the main thread puts the in-kernel
//! PIC/IOAPIC/PIT back to the state they had when the VM was created and the firmware image
//! back in place, then starts the next boot. RAM is kept. No VM or vCPU fd is ever recreated,
//! and no thread is started after the first boot. At the end of the run every thread is
//! joined.
//!
//! [`Vm::reboot`], for callers that hold the VM between runs, reboots it in place from the
//! calling thread, spreading the vCPUs' RESET or INIT over a few short-lived threads
//! ([`vcpu_reset::engine::parallel`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use kvm_bindings::{
    KVM_CAP_X86_TRIPLE_FAULT_EVENT, KVM_PIT_SPEAKER_DUMMY, kvm_enable_cap, kvm_pit_config,
};
use kvm_ioctls::{Cap, VmFd};
use vcpu_reset_spec::{CpuModel, VcpuIdentity};

use super::devices::{Platform, PortAction, RebootKind, RebootReason, Sink};
use super::firmware::Firmware;
use super::memory::{GuestMemory, MemoryError};
use super::vcpu_threads::{Crew, Member, Step, Wake};
use crate::sys::Kickable;
use vcpu_reset::backend::kvm::{KvmError, KvmHost, KvmVcpu, VmDevices, VmDevicesError};
use vcpu_reset::backend::{Exit, IoDir, Stats};
use vcpu_reset::cache::VcpuCache;
use vcpu_reset::engine::{EngineError, Vcpu};

/// How to build and run a VM.
#[derive(Clone)]
pub struct VmConfig {
    /// Number of vCPUs (vCPU 0 is the BSP).
    pub vcpus: u32,
    /// RAM in MiB.
    pub memory_mib: u32,
    /// Most reboots before the run is ended.
    pub max_reboots: u32,
    /// Time limit for the whole run. A limit too large to add to the clock (e.g.
    /// `Duration::MAX`) means no limit.
    pub timeout: Duration,
    /// Where port 0xE9 output goes (and COM1's when `serial` is `None`).
    pub sink: Sink,
    /// Where COM1 output goes; `None`: to `sink`, mixed with port 0xE9's.
    pub serial: Option<Sink>,
    /// The guest-requested exit port.
    pub exit_port: u16,
    /// Start from KVM's own vCPU-creation state instead of vcpu-reset's RESET.
    pub kvm_create_state: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            vcpus: 1,
            memory_mib: 16,
            max_reboots: 100,
            timeout: Duration::from_secs(10),
            sink: Sink::Stdout,
            serial: None,
            exit_port: super::devices::EXIT_PORT,
            kvm_create_state: false,
        }
    }
}

/// Errors from the runner.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Opening KVM or creating the VM/vCPUs failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The engine failed to reset a vCPU.
    #[error("vCPU {vcpu}: {error}")]
    Engine {
        /// Which vCPU.
        vcpu: u32,
        /// What failed.
        error: EngineError,
    },
    /// Bad vCPU count.
    #[error("{asked} vCPUs asked for — choose 1 to {max} (the host's KVM_CAP_MAX_VCPUS)")]
    VcpuCount {
        /// Asked for.
        asked: u32,
        /// Host limit.
        max: u32,
    },
    /// Capturing or restoring the in-kernel PIC, IOAPIC or PIT failed.
    #[error(transparent)]
    Devices(#[from] VmDevicesError),
    /// Turning KVM's LINT0_REENABLED quirk off failed.
    #[error(transparent)]
    Quirk(#[from] vcpu_reset::backend::kvm::QuirkError),
    /// A VM-level ioctl failed.
    #[error("{op} failed: {errno}")]
    VmIoctl {
        /// The ioctl.
        op: &'static str,
        /// The error.
        errno: vmm_sys_util::errno::Error,
    },
    /// A vCPU stopped in a way the runner cannot continue from.
    #[error("vCPU {vcpu} stopped: {what}")]
    VcpuFailed {
        /// Which vCPU.
        vcpu: u32,
        /// What happened.
        what: String,
    },
    /// The time limit passed.
    #[error(
        "the guest did not finish within {secs:.1} s (after {reboots} reboot(s)) — it may hang; raise --timeout if it is just slow"
    )]
    Timeout {
        /// The limit.
        secs: f64,
        /// Reboots done.
        reboots: u32,
    },
    /// The exit port is one a device already uses, so a write there would never end the run.
    #[error(
        "exit port {port:#x} is the {device}'s — choose a port no device uses (the default is 0xf4)"
    )]
    ExitPort {
        /// The port asked for.
        port: u16,
        /// The device there.
        device: &'static str,
    },
    /// Writing guest output failed (e.g. a full disk).
    #[error("{0}")]
    Output(String),
    /// The reboot limit was reached.
    #[error("the guest asked for reboot {n} ({reason}) but --reboots allows {max}")]
    RebootLimit {
        /// Reboot number asked for.
        n: u32,
        /// Why.
        reason: &'static str,
        /// The limit.
        max: u32,
    },
}

/// One warm reboot.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct RebootRecord {
    /// 1 for the first reboot.
    pub number: u32,
    /// What asked for it.
    pub reason: RebootReason,
    /// RESET or INIT.
    pub kind: RebootKind,
    /// The vCPU that asked.
    pub vcpu: u32,
    /// Wall time to put the VM back, in microseconds.
    pub micros: u64,
    /// Backend calls (ioctls) per vCPU for the engine's part.
    pub calls_per_vcpu: f64,
}

/// How many reboot records a run keeps: the last ones, in order. Counts cover every reboot.
pub const KEPT_REBOOTS: usize = 32;

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// The value the guest wrote to the exit port.
    pub exit_value: u32,
    /// The last [`KEPT_REBOOTS`] reboots, in order (all of them in a shorter run).
    pub reboots: Vec<RebootRecord>,
    /// Every reboot, counted by what asked for it.
    pub reboot_counts: std::collections::BTreeMap<RebootReason, u64>,
}

impl RunOutcome {
    /// Reboots in the whole run.
    pub fn total_reboots(&self) -> u64 {
        self.reboot_counts.values().sum()
    }

    /// "3 reboot(s): 2 cf9-hard, 1 kbc (RESET 2, INIT 1)": counts per reason and per kind,
    /// the same length for 3 reboots or 3 million.
    pub fn summary(&self) -> String {
        let total = self.total_reboots();
        if total == 0 {
            return "0 reboot(s)".into();
        }
        let by_reason: Vec<String> = self
            .reboot_counts
            .iter()
            .map(|(r, n)| format!("{n} {}", r.name()))
            .collect();
        let (mut reset, mut init) = (0u64, 0u64);
        for (r, n) in &self.reboot_counts {
            match r.kind() {
                RebootKind::Reset => reset += n,
                RebootKind::Init => init += n,
            }
        }
        format!(
            "{total} reboot(s): {} (RESET {reset}, INIT {init})",
            by_reason.join(", ")
        )
    }
}

/// What ended one boot, as a vCPU thread reports it.
enum BootEnd {
    Exit(u32),
    Reboot(RebootReason, u32),
    Failed(u32, String),
    Output(String),
}

/// The vCPU threads' rendezvous: boot ends reported, reboot kinds published, each vCPU's
/// engine result (its backend calls) handed in.
type VcpuCrew = Crew<BootEnd, RebootKind, Result<Stats, EngineError>>;
/// A vCPU thread's handle on the rendezvous.
type VcpuMember<'c> = Member<'c, BootEnd, RebootKind, Result<Stats, EngineError>>;

/// The wait between two rounds of kicks for the threads not yet out of `KVM_RUN`.
const KICK_PAUSE: Duration = Duration::from_micros(50);

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Install the no-op handler that makes a signalled `KVM_RUN` return `EINTR`.
fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Failure leaves the default action; the runner would then not be able to stop a
        // vCPU that never exits, which the time limit reports.
        let _ = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler);
    });
}

/// Everything of the VM but its vCPUs: what the VM-level part of a reboot puts back.
struct Board {
    // Field order is drop order: the VM fd goes before the memory it maps.
    vm: VmFd,
    memory: GuestMemory,
    platform: Mutex<Platform>,
    /// The in-kernel PIC, IOAPIC and PIT as created: what a RESET puts back.
    pristine: VmDevices,
}

impl Board {
    /// The VM-level part of a reboot, once every vCPU is through: irqchip and PIT back to
    /// their creation state on RESET, firmware restored, devices told.
    fn restore(&self, kind: RebootKind) -> Result<(), RunError> {
        if kind == RebootKind::Reset {
            self.pristine.restore(&self.vm)?;
        }
        self.memory.restore_firmware()?;
        if let Ok(mut p) = self.platform.lock() {
            p.on_reboot(kind);
        }
        Ok(())
    }
}

/// A VM built from a firmware image.
pub struct Vm {
    // Field order is drop order: vCPUs go before the VM fd and the memory they map.
    vcpus: Vec<Vcpu<KvmVcpu>>,
    board: Board,
    host: KvmHost,
    config: VmConfig,
    model: CpuModel,
    reset_threads: usize,
}

impl Vm {
    /// Open KVM and build the VM: memory, firmware, in-kernel irqchip and PIT, vCPUs.
    pub fn new(firmware: &Firmware, config: VmConfig) -> Result<Vm, RunError> {
        let host = crate::host::open()?;
        Self::with_host(host, firmware, config)
    }

    /// Build the VM on an already opened host.
    pub fn with_host(host: KvmHost, firmware: &Firmware, config: VmConfig) -> Result<Vm, RunError> {
        check_config(&host, &config)?;
        let memory = GuestMemory::new(config.memory_mib, firmware)?;
        let vm = create_vm(&host, &memory, config.kvm_create_state)?;
        let pristine = VmDevices::capture(&vm)?;
        let (vcpus, model) = create_vcpus(&host, &vm, config.vcpus)?;
        let platform = Mutex::new(Platform::with_serial(
            config.sink.clone(),
            config.serial.clone().unwrap_or_else(|| config.sink.clone()),
            config.exit_port,
        ));
        let mut vm = Vm {
            vcpus,
            board: Board {
                vm,
                memory,
                platform,
                pristine,
            },
            host,
            config,
            model,
            reset_threads: std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get),
        };
        if !vm.config.kvm_create_state {
            vm.reset_vcpus(RebootKind::Reset)?;
        }
        Ok(vm)
    }

    /// From now on, port 0xE9 output goes to `sink` and COM1 output to `serial` (`None`: to
    /// `sink`, mixed), as [`VmConfig::sink`] and [`VmConfig::serial`] say. Building the VM
    /// writes no guest output, so a caller can build it with [`Sink::Discard`] and open its
    /// output files only once the VM is known to build.
    pub fn set_output(&mut self, sink: Sink, serial: Option<Sink>) {
        let com1 = serial.clone().unwrap_or_else(|| sink.clone());
        self.board
            .platform
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .set_output(sink.clone(), com1);
        self.config.sink = sink;
        self.config.serial = serial;
    }

    /// The most threads [`Vm::reboot`] (and the power-on RESET) spreads the vCPUs' RESET or
    /// INIT over (default: the CPUs available to this process; 1 does them one after another
    /// on the calling thread). Fewer are used where there are too few vCPUs to pay for a thread
    /// ([`vcpu_reset::engine::parallel::threads_for`]). The reboots inside [`Vm::run`] need none:
    /// there each vCPU's own thread puts it back.
    pub fn set_reset_threads(&mut self, threads: usize) {
        self.reset_threads = threads.max(1);
    }

    /// The vCPUs.
    pub fn vcpus(&mut self) -> &mut [Vcpu<KvmVcpu>] {
        &mut self.vcpus
    }

    /// The guest memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.board.memory
    }

    /// The host.
    pub fn host(&self) -> &KvmHost {
        &self.host
    }

    /// The CPU model the VM presents.
    pub fn model(&self) -> &CpuModel {
        &self.model
    }

    /// Make vCPU `vcpu` triple-fault on its next run (KVM_CAP_X86_TRIPLE_FAULT_EVENT), as if
    /// the guest had.
    pub fn inject_triple_fault(&mut self, vcpu: usize) -> Result<(), RunError> {
        let count = self.vcpus.len();
        let v = self.vcpus.get_mut(vcpu).ok_or(RunError::VcpuCount {
            asked: u32::try_from(vcpu).unwrap_or(u32::MAX).saturating_add(1),
            max: u32::try_from(count).unwrap_or(u32::MAX),
        })?;
        let fail = |e: vcpu_reset::cache::CacheError| RunError::Engine {
            vcpu: vcpu as u32,
            error: EngineError::Cache(e),
        };
        v.cache_mut().flush().map_err(fail)?;
        v.cache_mut()
            .backend_mut()
            .inject_triple_fault()
            .map_err(|e| fail(e.into()))?;
        v.cache_mut().invalidate();
        Ok(())
    }

    /// Put every vCPU through RESET or INIT with the engine, spread over the host's CPUs
    /// ([`vcpu_reset::engine::parallel`]); returns the backend calls made.
    fn reset_vcpus(&mut self, kind: RebootKind) -> Result<Stats, RunError> {
        let threads =
            vcpu_reset::engine::parallel::threads_for(self.vcpus.len(), self.reset_threads);
        let results = vcpu_reset::engine::parallel::for_each_vcpu(&mut self.vcpus, threads, |v| {
            reset_one(v, kind)
        });
        let mut total = Stats::default();
        for (i, r) in results.into_iter().enumerate() {
            let calls = r.map_err(|source| RunError::Engine {
                vcpu: i as u32,
                error: source,
            })?;
            add_calls(&mut total, &calls);
        }
        Ok(total)
    }

    /// Reboot in place: vCPUs through the engine, irqchip and PIT back to their creation
    /// state on RESET, firmware restored, RAM kept. Returns the engine's backend calls.
    pub fn reboot(&mut self, kind: RebootKind) -> Result<Stats, RunError> {
        let calls = self.reset_vcpus(kind)?;
        self.board.restore(kind)?;
        Ok(calls)
    }

    /// Run until the guest writes the exit port, rebooting in place whenever it asks.
    ///
    /// Every vCPU runs on one thread of its own for the whole run, which also puts it back at
    /// each reboot (see the module's documentation); all are joined before this returns. A
    /// vCPU thread that panics ends the run: the panic is resumed here once every thread is
    /// joined.
    ///
    /// Memory stays bounded however many reboots the guest asks for: a count per reason and
    /// the last [`KEPT_REBOOTS`] records.
    pub fn run(&mut self) -> Result<RunOutcome, RunError> {
        install_kick_handler();
        // A limit that does not fit the clock (Duration::MAX) is no limit.
        let deadline = Instant::now().checked_add(self.config.timeout);
        let n = self.vcpus.len();
        let crew = VcpuCrew::new(n);
        let kickers: Vec<OnceLock<Kickable>> = (0..n).map(|_| OnceLock::new()).collect();
        let Vm {
            vcpus,
            board,
            config,
            ..
        } = self;
        let (board, config) = (&*board, &*config);
        std::thread::scope(|s| {
            let mut handles = Vec::with_capacity(n);
            let mut unstarted = None;
            for (i, v) in vcpus.iter_mut().enumerate() {
                // Moved into the thread, so that its drop marks the vCPU gone however the
                // thread ends (or at once, if it cannot be started).
                let member = crew.member(i);
                let kicker = &kickers[i];
                let platform = &board.platform;
                let spawned = std::thread::Builder::new()
                    .name(format!("vcpu{i}"))
                    .spawn_scoped(s, move || {
                        vcpu_thread(i as u32, v, platform, &member, kicker);
                    });
                match spawned {
                    Ok(h) => handles.push(Some(h)),
                    Err(e) => {
                        handles.push(None);
                        unstarted.get_or_insert(RunError::VcpuFailed {
                            vcpu: i as u32,
                            what: format!("its thread could not be started: {e}"),
                        });
                    }
                }
            }
            let kick = |i: usize| {
                if let (Some(Some(h)), Some(k)) =
                    (handles.get(i), kickers.get(i).and_then(OnceLock::get))
                {
                    k.kick(h, kick_signal());
                }
            };
            let result = match unstarted {
                Some(e) => Err(e),
                None => drive(&crew, board, config, n, deadline, &kick),
            };
            // However the run ended: no vCPU in KVM_RUN, every thread told to return.
            crew.publish(Step::Finish);
            crew.kick_until_out(KICK_PAUSE, kick);
            let mut panicked = None;
            for h in handles.into_iter().flatten() {
                if let Err(payload) = h.join() {
                    panicked.get_or_insert(payload);
                }
            }
            if let Some(payload) = panicked {
                std::panic::resume_unwind(payload);
            }
            result
        })
    }
}

/// The main thread's side of [`Vm::run`]: wait for each boot to end, decide, and for a reboot
/// stop the vCPU threads, wait for their RESET or INIT, do the VM-level part and start the
/// next boot. Returns how the run ended; the caller then finishes the crew and joins it.
fn drive(
    crew: &VcpuCrew,
    board: &Board,
    config: &VmConfig,
    vcpus: usize,
    deadline: Option<Instant>,
    kick: &dyn Fn(usize),
) -> Result<RunOutcome, RunError> {
    let mut reboots = std::collections::VecDeque::with_capacity(KEPT_REBOOTS);
    let mut counts = std::collections::BTreeMap::new();
    let mut done: u64 = 0;
    let saturate = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let lost = |i: usize| RunError::VcpuFailed {
        vcpu: saturate(i as u64),
        what: "its thread ended".into(),
    };
    loop {
        let end = crew.wait_end(deadline);
        let start = Instant::now();
        let (reason, vcpu) = match end {
            Wake::Report(BootEnd::Reboot(reason, vcpu)) => (reason, vcpu),
            Wake::Report(BootEnd::Exit(v)) => {
                return Ok(RunOutcome {
                    exit_value: v,
                    reboots: reboots.into(),
                    reboot_counts: counts,
                });
            }
            Wake::Report(BootEnd::Failed(vcpu, what)) => {
                return Err(RunError::VcpuFailed { vcpu, what });
            }
            Wake::Report(BootEnd::Output(what)) => return Err(RunError::Output(what)),
            Wake::Timeout => {
                return Err(RunError::Timeout {
                    secs: config.timeout.as_secs_f64(),
                    reboots: saturate(done),
                });
            }
            Wake::Lost(i) => return Err(lost(i)),
        };
        let number = done + 1;
        if number > u64::from(config.max_reboots) {
            return Err(RunError::RebootLimit {
                n: saturate(number),
                reason: reason.name(),
                max: config.max_reboots,
            });
        }
        let kind = reason.kind();
        crew.publish(Step::Reboot(kind));
        crew.kick_until_out(KICK_PAUSE, kick);
        // Each thread resets its own vCPU as soon as it is out; wait for the last.
        let mut calls = Stats::default();
        for (i, r) in crew.wait_done().into_iter().enumerate() {
            match r {
                Some(Ok(c)) => add_calls(&mut calls, &c),
                Some(Err(source)) => {
                    return Err(RunError::Engine {
                        vcpu: saturate(i as u64),
                        error: source,
                    });
                }
                None => return Err(lost(i)),
            }
        }
        board.restore(kind)?;
        done = number;
        *counts.entry(reason).or_insert(0u64) += 1;
        if reboots.len() == KEPT_REBOOTS {
            reboots.pop_front();
        }
        reboots.push_back(RebootRecord {
            number: saturate(number),
            reason,
            kind,
            vcpu,
            micros: u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
            calls_per_vcpu: calls.calls() as f64 / vcpus as f64,
        });
        crew.start();
    }
}

/// A vCPU thread of [`Vm::run`]: boot after boot, run the vCPU until told to stop, then do
/// what the main thread published: put the vCPU back (RESET or INIT) or return.
fn vcpu_thread(
    id: u32,
    v: &mut Vcpu<KvmVcpu>,
    platform: &Mutex<Platform>,
    me: &VcpuMember<'_>,
    kicker: &OnceLock<Kickable>,
) {
    let _ = kicker.set(Kickable::current());
    let mut seen = 0;
    while me.wait_start(&mut seen) {
        if let Some(end) = vcpu_loop(id, v, platform, me.stop_flag()) {
            me.report(end);
        }
        match me.leave() {
            Step::Reboot(kind) => me.done(reset_one(v, kind)),
            Step::Run | Step::Finish => return,
        }
    }
}

/// One vCPU through RESET or INIT with the engine; the backend calls it made.
fn reset_one(v: &mut Vcpu<KvmVcpu>, kind: RebootKind) -> Result<Stats, EngineError> {
    let out = match kind {
        RebootKind::Reset => v.reset(),
        RebootKind::Init => v.init(),
    }?;
    Ok(out.calls)
}

fn add_calls(total: &mut Stats, c: &Stats) {
    total.loads += c.loads;
    total.stores += c.stores;
    total.other += c.other;
}

/// Refuses an exit port that a device of the runner uses, and a vCPU count of 0 or more than
/// the host supports.
fn check_config(host: &KvmHost, config: &VmConfig) -> Result<(), RunError> {
    if let Some(device) = super::devices::device_at(config.exit_port) {
        return Err(RunError::ExitPort {
            port: config.exit_port,
            device,
        });
    }
    let max = u32::try_from(host.caps().max_vcpus).unwrap_or(u32::MAX);
    if config.vcpus == 0 || config.vcpus > max {
        return Err(RunError::VcpuCount {
            asked: config.vcpus,
            max,
        });
    }
    Ok(())
}

/// The KVM VM: in-kernel irqchip and PIT, `memory` registered, triple faults injectable, and
/// (unless it is to show KVM's own creation state) the LINT0 quirk off.
fn create_vm(
    host: &KvmHost,
    memory: &GuestMemory,
    kvm_create_state: bool,
) -> Result<VmFd, RunError> {
    let vm = host.create_vm(true)?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(|errno| RunError::VmIoctl {
        op: "KVM_CREATE_PIT2",
        errno,
    })?;
    memory.register(&vm, vm.check_extension(Cap::ReadonlyMem))?;
    enable_triple_fault_event(&vm)?;
    // A VM that shows KVM's own creation state keeps KVM's defaults (its quirks included).
    if !kvm_create_state {
        disable_lint0_quirk(&vm)?;
    }
    Ok(vm)
}

/// Lets a triple fault be raised from the host (Vm::inject_triple_fault), for tests and for
/// VMMs that model a shutdown cycle, where the host has KVM_CAP_X86_TRIPLE_FAULT_EVENT;
/// harmless otherwise.
fn enable_triple_fault_event(vm: &VmFd) -> Result<(), RunError> {
    if vm.check_extension_raw(u64::from(KVM_CAP_X86_TRIPLE_FAULT_EVENT)) <= 0 {
        return Ok(());
    }
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X86_TRIPLE_FAULT_EVENT,
        args: [1, 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap).map_err(|errno| RunError::VmIoctl {
        op: "KVM_ENABLE_CAP(KVM_CAP_X86_TRIPLE_FAULT_EVENT)",
        errno,
    })
}

/// `count` vCPUs, each under the engine with the CPU model the first one presents (from its
/// CPUID; a generic Intel model with its signature where that cannot be read); that model.
fn create_vcpus(
    host: &KvmHost,
    vm: &VmFd,
    count: u32,
) -> Result<(Vec<Vcpu<KvmVcpu>>, CpuModel), RunError> {
    let mut vcpus = Vec::new();
    let mut model = None;
    for id in 0..count {
        let kv = KvmVcpu::new(host, vm, u64::from(id))?;
        let m = *model.get_or_insert_with(|| {
            kv.cpu_model().unwrap_or(CpuModel {
                signature: kv.cpuid_signature(),
                ..CpuModel::generic(vcpu_reset_spec::Vendor::Intel)
            })
        });
        vcpus.push(Vcpu::new(VcpuCache::adopt(kv), m, VcpuIdentity::new(id)));
    }
    let model = model.unwrap_or_else(|| CpuModel::generic(vcpu_reset_spec::Vendor::Intel));
    Ok((vcpus, model))
}

/// Turn off KVM's LINT0_REENABLED quirk where the host lets a VM do so (the library's
/// [`vcpu_reset::backend::kvm::disable_lint0_quirk`], which says why): the engine's RESET
/// through KVM's INIT then needs no KVM_SET_LAPIC for the BSP. The runner turns no other
/// quirk off.
fn disable_lint0_quirk(vm: &VmFd) -> Result<(), RunError> {
    vcpu_reset::backend::kvm::disable_lint0_quirk(vm, 0)?;
    Ok(())
}

/// Run one vCPU until it has something to report or is told to stop.
fn vcpu_loop(
    id: u32,
    v: &mut Vcpu<KvmVcpu>,
    platform: &Mutex<Platform>,
    stop: &AtomicBool,
) -> Option<BootEnd> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        let exit = match v.cache_mut().run() {
            Ok(e) => e,
            Err(e) => return Some(BootEnd::Failed(id, e.to_string())),
        };
        if let Some(end) = handle_exit(id, v, platform, exit) {
            return Some(end);
        }
    }
}

/// Handle one exit of vCPU `id`; what ends the boot, if it does.
fn handle_exit(
    id: u32,
    v: &mut Vcpu<KvmVcpu>,
    platform: &Mutex<Platform>,
    exit: Exit,
) -> Option<BootEnd> {
    match exit {
        Exit::Io {
            dir: IoDir::Out,
            port,
            size,
            data,
        } => port_out(id, platform, port, &data[..usize::from(size.min(4))]),
        Exit::Io {
            dir: IoDir::In,
            port,
            size,
            ..
        } => {
            port_in(v, platform, port, size);
            None
        }
        // Writes to the read-only firmware are dropped, reads of unmapped space float.
        Exit::Mmio { write, len, .. } => {
            if !write {
                v.cache_mut()
                    .set_io_in(&[0xff; 8][..usize::from(len.min(8))]);
            }
            None
        }
        Exit::Interrupted => None,
        Exit::Shutdown => Some(BootEnd::Reboot(RebootReason::TripleFault, id)),
        Exit::SystemEvent(_) => Some(BootEnd::Reboot(RebootReason::SystemEvent, id)),
        Exit::Hlt => Some(BootEnd::Failed(
            id,
            "HLT with no in-kernel local APIC to wake the vCPU".into(),
        )),
        Exit::InternalError { reason } => Some(BootEnd::Failed(
            id,
            format!("KVM internal error at {}: {reason}", guest_at(v)),
        )),
        // Single IN/OUT arrive as Exit::Io; KVM_EXIT_IO here is string I/O (INS/OUTS with
        // a count > 1, e.g. `rep insb`), which no device of this runner implements.
        Exit::Other(n) if n == kvm_bindings::KVM_EXIT_IO => Some(BootEnd::Failed(
            id,
            format!(
                "string port I/O (INS/OUTS with a repeat count, e.g. `rep insb`) at {} — this runner's devices take single IN/OUT only; use IN/OUT in a loop",
                guest_at(v)
            ),
        )),
        Exit::Other(n) => Some(BootEnd::Failed(
            id,
            format!("unexpected KVM exit reason {n}"),
        )),
    }
}

/// An OUT of `data` to `port` by vCPU `id`: what ends the boot, if it does (the guest's exit,
/// a reboot, output that could not be written).
fn port_out(id: u32, platform: &Mutex<Platform>, port: u16, data: &[u8]) -> Option<BootEnd> {
    let action = match platform.lock() {
        Ok(mut p) => match p.io_out(port, data) {
            PortAction::OutputFailed => {
                let what = p.take_output_error().unwrap_or_default();
                return Some(BootEnd::Output(what));
            }
            a => a,
        },
        Err(_) => PortAction::Continue,
    };
    match action {
        PortAction::Continue | PortAction::OutputFailed => None,
        PortAction::Exit(value) => Some(BootEnd::Exit(value)),
        PortAction::Reboot(r) => Some(BootEnd::Reboot(r, id)),
    }
}

/// An IN of `size` bytes from `port`: the device's answer (all ones without one) handed to
/// the vCPU.
fn port_in(v: &mut Vcpu<KvmVcpu>, platform: &Mutex<Platform>, port: u16, size: u8) {
    let data = match platform.lock() {
        Ok(mut p) => p.io_in(port, size),
        Err(_) => [0xff; 4],
    };
    v.cache_mut().set_io_in(&data[..usize::from(size.min(4))]);
}

/// Where the vCPU is, as `cs:rip` in hex (0 for what cannot be read).
fn guest_at(v: &mut Vcpu<KvmVcpu>) -> String {
    let rip = v.cache_mut().rip().unwrap_or(0);
    let cs = v
        .cache_mut()
        .segment(vcpu_reset_spec::Seg::Cs)
        .map(|s| s.selector)
        .unwrap_or(0);
    format!("{cs:04x}:{rip:x}")
}
