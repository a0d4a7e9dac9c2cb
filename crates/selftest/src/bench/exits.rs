//! `vcpu-reset bench exits`: what handling one guest exit costs.
//!
//! The guest is a real-mode loop in RAM, `xor ax, ax; l: inc ax; out 0x10, al; jmp l`, entered
//! from a firmware page whose reset vector far-jumps to it, so every vCPU starts from KVM's own
//! creation state with nothing set by the host. Each path has its own VM of the same shape (an
//! in-kernel irqchip, 1 MiB of RAM, the host-supported CPUID) and handles every exit:
//!
//! - (a) [`Handler::Bare`]: raw `KVM_RUN` on a `kvm-ioctls` vCPU without sync regs, reading
//!   nothing but the OUT data — the floor;
//! - (b) [`Handler::Naive`]: the same plus KVM_GET_REGS, KVM_GET_SREGS and KVM_SET_REGS to read
//!   RAX, RIP and CS and write RAX + 1;
//! - (c) [`Handler::Cached`]: a [`VcpuCache`] over a [`KvmVcpu`] with sync regs doing the same
//!   reads and write through [`VcpuCache::gpr`], [`VcpuCache::rip`], [`VcpuCache::segment`] and
//!   [`VcpuCache::set_gpr`].
//!
//! Every exit is checked: an OUT of one byte to port 0x10, the byte being the next value of the
//! loop's counter (which moves by 2 per exit where the handler adds 1 to RAX), and for (b) and
//! (c) RAX matching it, RIP inside the loop and CS = 0. A handler whose write got lost fails the
//! run instead of producing figures. ioctls are counted by hand for (a) and (b) and taken from
//! the backend's [`Stats`] for (c).

use std::time::{Duration, Instant};

use iced_x86::code_asm::{CodeAssembler, al, ax};
use kvm_ioctls::{Cap, VcpuExit, VcpuFd, VmFd};
use vcpu_reset_spec::{Gpr, Seg};

use super::BenchError;
use super::stats::{Summary, ratios, table};
use crate::runner::{Firmware, GuestMemory};
use vcpu_reset::backend::kvm::{Ioctl, IoctlError, KvmHost, KvmVcpu, KvmVcpuOptions};
use vcpu_reset::backend::{Exit, IoDir, Stats};
use vcpu_reset::cache::VcpuCache;

/// The port the guest loop writes.
pub const PORT: u16 = 0x10;
/// Guest-physical (and, with CS = 0, linear) address of the loop.
pub const CODE: u64 = 0x1000;
/// The target for (c)/(a): the cache may cost at most 5% over a bare `KVM_RUN`.
pub const TARGET_RATIO: f64 = 1.05;

/// One way of handling the guest's exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Handler {
    /// (a) `KVM_RUN` alone, reading nothing.
    Bare,
    /// (b) KVM_GET_REGS + KVM_GET_SREGS + KVM_SET_REGS per exit.
    Naive,
    /// (c) The register cache over a sync-regs [`KvmVcpu`].
    Cached,
}

impl Handler {
    /// All three, in report order.
    pub const ALL: [Handler; 3] = [Handler::Bare, Handler::Naive, Handler::Cached];

    /// The row label.
    pub fn label(self) -> &'static str {
        match self {
            Handler::Bare => "(a) bare KVM_RUN, reads nothing",
            Handler::Naive => "(b) naive GET_REGS+GET_SREGS+SET_REGS",
            Handler::Cached => "(c) VcpuCache<KvmVcpu>, sync regs",
        }
    }

    /// A short name (Criterion bench ids, errors).
    pub fn name(self) -> &'static str {
        match self {
            Handler::Bare => "a_bare_kvm_run",
            Handler::Naive => "b_naive_ioctls",
            Handler::Cached => "c_cache_sync_regs",
        }
    }

    /// How much the guest's counter moves between two exits: 1 from its own `inc ax`, plus 1
    /// where the handler writes RAX + 1.
    fn step(self) -> u8 {
        match self {
            Handler::Bare => 1,
            Handler::Naive | Handler::Cached => 2,
        }
    }
}

/// The guest: the loop for RAM and a 4 KiB firmware whose reset vector jumps to it.
#[derive(Clone, Debug)]
pub struct Program {
    /// The loop's machine code, to be placed at [`CODE`].
    pub code: Vec<u8>,
    /// The firmware page: `jmp far 0000:CODE` at the reset vector.
    pub firmware: Firmware,
}

impl Program {
    /// Assemble the loop and the firmware page.
    ///
    /// # Errors
    /// [`BenchError::Guest`] if the assembler refuses (a bug here).
    pub fn build() -> Result<Program, BenchError> {
        let asm = |e: iced_x86::IcedError| BenchError::Guest(e.to_string());
        let mut a = CodeAssembler::new(16).map_err(asm)?;
        let mut top = a.create_label();
        a.xor(ax, ax).map_err(asm)?;
        a.set_label(&mut top).map_err(asm)?;
        a.inc(ax).map_err(asm)?;
        a.out(u32::from(PORT), al).map_err(asm)?;
        a.jmp(top).map_err(asm)?;
        let code = a.assemble(CODE).map_err(asm)?;

        // HLT everywhere else; the reset vector jumps to the loop in RAM at 0:CODE.
        let ip = u16::try_from(CODE).map_err(|e| BenchError::Guest(e.to_string()))?;
        let image = crate::runner::reset_vector_image(4096, 0xf4, &[], (0, ip))
            .ok_or_else(|| BenchError::Guest("the reset vector does not fit".into()))?;
        let firmware = Firmware::from_bytes(image, "exit bench firmware")?;
        Ok(Program { code, firmware })
    }

    /// Whether `rip` is inside the loop (KVM may report an OUT exit with RIP at the OUT or
    /// after it, depending on whether it emulated the instruction).
    fn holds_rip(&self, rip: u64) -> bool {
        (CODE..CODE + self.code.len() as u64).contains(&rip)
    }
}

/// A VM with the bench's memory and no vCPU yet. Dropped after the vCPU that runs in it.
struct Shell {
    vm: VmFd,
    _memory: GuestMemory,
}

impl Shell {
    fn new(host: &KvmHost, program: &Program) -> Result<Shell, BenchError> {
        let memory = GuestMemory::new(1, &program.firmware)?;
        let vm = host.create_vm(true)?;
        memory.register(&vm, vm.check_extension(Cap::ReadonlyMem))?;
        memory.write(CODE, &program.code)?;
        Ok(Shell {
            vm,
            _memory: memory,
        })
    }
}

/// Checks shared by the handlers: what the guest must show at exit `n`.
struct Expect {
    handler: Handler,
    /// The byte the next OUT must carry.
    next: u8,
    /// Exits handled so far.
    exits: u64,
}

impl Expect {
    fn new(handler: Handler) -> Expect {
        Expect {
            handler,
            next: 1,
            exits: 0,
        }
    }

    fn mismatch(&self, what: String) -> BenchError {
        BenchError::Mismatch {
            handler: self.handler.label(),
            exit: self.exits,
            what,
        }
    }

    /// Account for an OUT of `data` (the kvm-ioctls view: port and bytes).
    fn out(&mut self, port: u16, data: &[u8]) -> Result<u8, BenchError> {
        self.exits += 1;
        match data {
            [byte] if port == PORT => {
                if *byte != self.next {
                    return Err(
                        self.mismatch(format!("OUT of {byte:#04x}, expected {:#04x}", self.next))
                    );
                }
                self.next = byte.wrapping_add(self.handler.step());
                Ok(*byte)
            }
            _ => Err(self.mismatch(format!(
                "OUT of {} byte(s) to port {port:#x}, expected 1 byte to {PORT:#x}",
                data.len()
            ))),
        }
    }

    /// RAX, RIP and CS as the handler read them after an OUT of `byte`.
    fn regs(
        &self,
        program: &Program,
        byte: u8,
        rax: u64,
        rip: u64,
        cs: (u16, u64),
    ) -> Result<(), BenchError> {
        if rax as u8 != byte {
            return Err(self.mismatch(format!("RAX = {rax:#x} but the guest wrote {byte:#04x}")));
        }
        if !program.holds_rip(rip) {
            return Err(self.mismatch(format!("RIP = {rip:#x}, outside the loop")));
        }
        if cs != (0, 0) {
            return Err(self.mismatch(format!(
                "CS selector {:#x} base {:#x}, expected 0 and 0",
                cs.0, cs.1
            )));
        }
        Ok(())
    }
}

fn vcpu_ioctl(ioctl: Ioctl) -> impl Fn(vmm_sys_util::errno::Error) -> BenchError {
    move |errno| BenchError::Ioctl(IoctlError::new(ioctl, errno))
}

/// (a) and (b): a `kvm-ioctls` vCPU without sync regs.
struct RawGuest {
    // Field order is drop order: the vCPU before the VM and its memory.
    vcpu: VcpuFd,
    _shell: Shell,
    expect: Expect,
    ioctls: u64,
}

impl RawGuest {
    fn new(host: &KvmHost, program: &Program, handler: Handler) -> Result<RawGuest, BenchError> {
        let shell = Shell::new(host, program)?;
        let vcpu = shell
            .vm
            .create_vcpu(0)
            .map_err(vcpu_ioctl(Ioctl::CreateVcpu))?;
        vcpu.set_cpuid2(host.supported_cpuid())
            .map_err(vcpu_ioctl(Ioctl::SetCpuid2))?;
        Ok(RawGuest {
            vcpu,
            _shell: shell,
            expect: Expect::new(handler),
            ioctls: 0,
        })
    }

    fn run_to_out(&mut self) -> Result<u8, BenchError> {
        self.ioctls += 1;
        let exit = self.vcpu.run().map_err(vcpu_ioctl(Ioctl::Run))?;
        match exit {
            VcpuExit::IoOut(port, data) => self.expect.out(port, data),
            other => {
                let what = format!("{other:?}, expected an OUT");
                self.expect.exits += 1;
                Err(self.expect.mismatch(what))
            }
        }
    }

    /// (a): run, look at the OUT byte, nothing else.
    fn bare(&mut self) -> Result<(), BenchError> {
        self.run_to_out().map(|_| ())
    }

    /// (b): run, KVM_GET_REGS, KVM_GET_SREGS, KVM_SET_REGS with RAX + 1.
    fn naive(&mut self, program: &Program) -> Result<(), BenchError> {
        let byte = self.run_to_out()?;
        self.ioctls += 3;
        let mut regs = self.vcpu.get_regs().map_err(vcpu_ioctl(Ioctl::GetRegs))?;
        let sregs = self.vcpu.get_sregs().map_err(vcpu_ioctl(Ioctl::GetSregs))?;
        self.expect.regs(
            program,
            byte,
            regs.rax,
            regs.rip,
            (sregs.cs.selector, sregs.cs.base),
        )?;
        regs.rax = regs.rax.wrapping_add(1);
        self.vcpu
            .set_regs(&regs)
            .map_err(vcpu_ioctl(Ioctl::SetRegs))?;
        Ok(())
    }
}

/// (c): the register cache over a sync-regs [`KvmVcpu`].
struct CachedGuest {
    cache: VcpuCache<KvmVcpu>,
    _shell: Shell,
    expect: Expect,
}

impl CachedGuest {
    fn new(host: &KvmHost, program: &Program) -> Result<CachedGuest, BenchError> {
        let shell = Shell::new(host, program)?;
        let vcpu = KvmVcpu::with_options(host, &shell.vm, 0, KvmVcpuOptions { sync_regs: true })?;
        Ok(CachedGuest {
            cache: VcpuCache::adopt(vcpu),
            _shell: shell,
            expect: Expect::new(Handler::Cached),
        })
    }

    fn exit(&mut self, program: &Program) -> Result<(), BenchError> {
        let byte = match self.cache.run()? {
            Exit::Io {
                dir: IoDir::Out,
                port,
                size,
                data,
            } => self.expect.out(port, &data[..usize::from(size.min(4))])?,
            other => {
                self.expect.exits += 1;
                return Err(self.expect.mismatch(format!("{other:?}, expected an OUT")));
            }
        };
        let rax = self.cache.gpr(Gpr::Rax)?;
        let rip = self.cache.rip()?;
        let cs = self.cache.segment(Seg::Cs)?;
        self.expect
            .regs(program, byte, rax, rip, (cs.selector, cs.base))?;
        self.cache.set_gpr(Gpr::Rax, rax.wrapping_add(1));
        Ok(())
    }
}

/// What one timed batch of exits cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Wall time for the batch.
    pub elapsed: Duration,
    /// CPU time of the thread for the batch ([`super::thread_cpu_time`]).
    pub cpu: Duration,
    /// Exits handled.
    pub exits: u64,
    /// vCPU ioctls made (KVM_RUN included).
    pub ioctls: u64,
    /// For (c), the backend's counters over the batch.
    pub backend: Option<Stats>,
}

impl Sample {
    /// CPU microseconds per exit.
    pub fn micros_per_exit(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.exits.max(1) as f64
    }

    /// Wall-clock microseconds per exit.
    pub fn wall_micros_per_exit(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e6 / self.exits.max(1) as f64
    }
}

/// Wall and thread CPU time, started together.
struct Clock {
    wall: Instant,
    cpu: Option<Duration>,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            cpu: super::thread_cpu_time(),
            wall: Instant::now(),
        }
    }

    /// (wall, CPU) since the start; CPU falls back to wall where the thread clock is missing.
    fn stop(&self) -> (Duration, Duration) {
        let wall = self.wall.elapsed();
        let cpu = match (self.cpu, super::thread_cpu_time()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => wall,
        };
        (wall, cpu)
    }
}

/// The three guests, ready to run.
pub struct ExitRig {
    program: Program,
    bare: RawGuest,
    naive: RawGuest,
    cached: CachedGuest,
}

impl ExitRig {
    /// Build the three VMs on `host`.
    ///
    /// # Errors
    /// [`BenchError::Kvm`], [`BenchError::Memory`] or [`BenchError::Ioctl`] when a VM or vCPU
    /// cannot be created.
    pub fn new(host: &KvmHost) -> Result<ExitRig, BenchError> {
        let program = Program::build()?;
        Ok(ExitRig {
            bare: RawGuest::new(host, &program, Handler::Bare)?,
            naive: RawGuest::new(host, &program, Handler::Naive)?,
            cached: CachedGuest::new(host, &program)?,
            program,
        })
    }

    /// Whether the cache's vCPU really uses sync regs (the host offers REGS, SREGS and EVENTS).
    pub fn cache_has_sync_regs(&self) -> bool {
        self.cached.cache.backend().sync_regs()
    }

    /// Handle `exits` exits with `handler`, timed.
    ///
    /// # Errors
    /// [`BenchError::Mismatch`] when an exit is not what the loop produces (or a handler's
    /// write was lost); ioctl and cache errors as they come.
    pub fn run(&mut self, handler: Handler, exits: u64) -> Result<Sample, BenchError> {
        let program = &self.program;
        match handler {
            Handler::Bare => {
                let g = &mut self.bare;
                let before = g.ioctls;
                let clock = Clock::start();
                for _ in 0..exits {
                    g.bare()?;
                }
                let (elapsed, cpu) = clock.stop();
                Ok(Sample {
                    elapsed,
                    cpu,
                    exits,
                    ioctls: g.ioctls - before,
                    backend: None,
                })
            }
            Handler::Naive => {
                let g = &mut self.naive;
                let before = g.ioctls;
                let clock = Clock::start();
                for _ in 0..exits {
                    g.naive(program)?;
                }
                let (elapsed, cpu) = clock.stop();
                Ok(Sample {
                    elapsed,
                    cpu,
                    exits,
                    ioctls: g.ioctls - before,
                    backend: None,
                })
            }
            Handler::Cached => {
                let g = &mut self.cached;
                let before = g.cache.backend_stats();
                let clock = Clock::start();
                for _ in 0..exits {
                    g.exit(program)?;
                }
                let (elapsed, cpu) = clock.stop();
                let stats = g.cache.backend_stats().since(&before);
                Ok(Sample {
                    elapsed,
                    cpu,
                    exits,
                    ioctls: stats.calls(),
                    backend: Some(stats),
                })
            }
        }
    }
}

/// How much to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitOptions {
    /// Exits per handler per repetition.
    pub exits: u64,
    /// Repetitions; each runs the three handlers once, in a rotating order.
    pub reps: u32,
    /// Exits per handler before the first repetition, not timed.
    pub warmup: u64,
}

impl Default for ExitOptions {
    fn default() -> Self {
        ExitOptions {
            exits: 2_000,
            reps: 25,
            warmup: 1_000,
        }
    }
}

/// One handler's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct ExitRow {
    /// The handler.
    pub handler: Handler,
    /// CPU microseconds per exit over the repetitions.
    pub micros: Summary,
    /// Wall-clock microseconds per exit over the repetitions.
    pub wall_micros: Summary,
    /// This handler's time over (a)'s, per repetition.
    pub ratio: Summary,
    /// vCPU ioctls per exit over all repetitions.
    pub ioctls_per_exit: f64,
    /// For (c), the backend's counters summed over all repetitions.
    pub backend: Option<Stats>,
    /// Exits timed, over all repetitions.
    pub exits: u64,
}

/// The result of `bench exits`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExitsReport {
    /// Exits per handler per repetition.
    pub exits: u64,
    /// Repetitions.
    pub reps: u32,
    /// Whether (c) ran with sync regs.
    pub sync_regs: bool,
    /// One row per handler, in [`Handler::ALL`] order.
    pub rows: Vec<ExitRow>,
}

/// Whether the cache met its targets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verdict {
    /// Median of (c)/(a) per repetition.
    pub ratio: f64,
    /// (c)'s ioctls per exit beyond its KVM_RUN.
    pub extra_ioctls_per_exit: f64,
    /// `ratio` ≤ [`TARGET_RATIO`] and no extra ioctls.
    pub met: bool,
}

impl ExitsReport {
    /// Summarise per-repetition samples, given per handler in any order.
    ///
    /// # Errors
    /// [`BenchError::Option`] when a handler has no samples, the counts differ, or (a) took
    /// no time.
    pub fn from_samples(
        exits: u64,
        reps: u32,
        sync_regs: bool,
        samples: &[(Handler, Vec<Sample>)],
    ) -> Result<ExitsReport, BenchError> {
        let empty = || BenchError::Option {
            option: "--reps",
            value: u64::from(reps),
            why: "every handler needs at least one repetition with at least one exit",
        };
        let of = |h: Handler| {
            samples
                .iter()
                .find(|(k, s)| *k == h && !s.is_empty())
                .map(|(_, s)| s)
                .ok_or_else(empty)
        };
        let micros = |s: &[Sample]| -> Vec<f64> { s.iter().map(Sample::micros_per_exit).collect() };
        let floor = micros(of(Handler::Bare)?);
        let mut rows = Vec::new();
        for h in Handler::ALL {
            let s = of(h)?;
            if s.len() != floor.len() {
                return Err(empty());
            }
            let us = micros(s);
            let total_exits: u64 = s.iter().map(|x| x.exits).sum();
            let total_ioctls: u64 = s.iter().map(|x| x.ioctls).sum();
            let backend = s.iter().filter_map(|x| x.backend).reduce(add_stats);
            rows.push(ExitRow {
                handler: h,
                micros: Summary::of(&us).ok_or_else(empty)?,
                wall_micros: Summary::of(
                    &s.iter()
                        .map(Sample::wall_micros_per_exit)
                        .collect::<Vec<_>>(),
                )
                .ok_or_else(empty)?,
                ratio: Summary::of(&ratios(&us, &floor)).ok_or_else(empty)?,
                ioctls_per_exit: total_ioctls as f64 / total_exits.max(1) as f64,
                backend,
                exits: total_exits,
            });
        }
        Ok(ExitsReport {
            exits,
            reps,
            sync_regs,
            rows,
        })
    }

    /// The row of `handler`.
    pub fn row(&self, handler: Handler) -> Option<&ExitRow> {
        self.rows.iter().find(|r| r.handler == handler)
    }

    /// (c) against the targets: (c)/(a) ≤ 1.05 and exactly one ioctl (KVM_RUN) per exit.
    pub fn verdict(&self) -> Option<Verdict> {
        let c = self.row(Handler::Cached)?;
        let extra = c.ioctls_per_exit - 1.0;
        Some(Verdict {
            ratio: c.ratio.median,
            extra_ioctls_per_exit: extra,
            met: c.ratio.median <= TARGET_RATIO && extra == 0.0,
        })
    }

    /// The report as text: a header, one row per handler, the verdict.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "vcpu-reset bench exits — {}\n\
             guest: real-mode loop `inc ax; out 0x10, al; jmp`; handlers (b) and (c) read RAX, RIP, CS and write RAX per exit\n\
             {} exits per handler per repetition, {} repetitions interleaved; median [min–max] over repetitions\n\
             CPU µs: CPU time of the vCPU thread (guest, KVM and handler), which leaves out time spent waiting for a CPU\n\n",
            super::host_line(),
            self.exits,
            self.reps
        );
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                let free = match r.backend {
                    Some(s) => {
                        let n = r.exits.max(1) as f64;
                        format!(
                            "{} loads + {} stores via kvm_run",
                            count(s.sync_loads as f64 / n),
                            count(s.sync_stores as f64 / n)
                        )
                    }
                    None => "-".to_owned(),
                };
                vec![
                    r.handler.label().to_owned(),
                    r.micros.display(2),
                    r.wall_micros.display(2),
                    r.ratio.display(3),
                    count(r.ioctls_per_exit),
                    free,
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "handler",
                "CPU µs/exit",
                "wall µs/exit",
                "× (a), CPU",
                "ioctls/exit",
                "free transfers/exit",
            ],
            &rows,
        ));
        out.push('\n');
        if !self.sync_regs {
            out.push_str(
                "note: the host lacks KVM_CAP_SYNC_REGS REGS|SREGS|EVENTS, so (c) moves state with ioctls\n",
            );
        }
        if let Some(v) = self.verdict() {
            out.push_str(&format!(
                "target (c)/(a) ≤ {TARGET_RATIO:.2} with no ioctl beyond KVM_RUN: {} ((c)/(a) = {:.3}, {} extra ioctls/exit)\n",
                if v.met { "met" } else { "NOT met" },
                v.ratio,
                count(v.extra_ioctls_per_exit)
            ));
        }
        out
    }
}

/// A count per exit: an integer when it is one, else three decimals.
fn count(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn add_stats(a: Stats, b: Stats) -> Stats {
    Stats {
        loads: a.loads + b.loads,
        stores: a.stores + b.stores,
        runs: a.runs + b.runs,
        other: a.other + b.other,
        sync_loads: a.sync_loads + b.sync_loads,
        sync_stores: a.sync_stores + b.sync_stores,
    }
}

/// Run `bench exits`: build the rig, warm every handler up, then `reps` repetitions of
/// `exits` exits per handler, the handlers' order rotating each repetition.
///
/// # Errors
/// [`BenchError::Option`] for zero exits or repetitions; otherwise as [`ExitRig::run`].
pub fn run(host: &KvmHost, options: &ExitOptions) -> Result<ExitsReport, BenchError> {
    if options.exits == 0 {
        return Err(BenchError::Option {
            option: "--exits",
            value: 0,
            why: "at least 1 exit per repetition",
        });
    }
    if options.reps == 0 {
        return Err(BenchError::Option {
            option: "--reps",
            value: 0,
            why: "at least 1 repetition",
        });
    }
    let mut rig = ExitRig::new(host)?;
    for h in Handler::ALL {
        rig.run(h, options.warmup)?;
    }
    let mut samples: Vec<(Handler, Vec<Sample>)> =
        Handler::ALL.iter().map(|h| (*h, Vec::new())).collect();
    for rep in 0..options.reps as usize {
        for k in 0..Handler::ALL.len() {
            let i = (rep + k) % Handler::ALL.len();
            let s = rig.run(Handler::ALL[i], options.exits)?;
            samples[i].1.push(s);
        }
    }
    ExitsReport::from_samples(
        options.exits,
        options.reps,
        rig.cache_has_sync_regs(),
        &samples,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(us_per_exit: f64, exits: u64, ioctls_per_exit: u64, cached: bool) -> Sample {
        Sample {
            elapsed: Duration::from_secs_f64(1.5 * us_per_exit * exits as f64 / 1e6),
            cpu: Duration::from_secs_f64(us_per_exit * exits as f64 / 1e6),
            exits,
            ioctls: ioctls_per_exit * exits,
            backend: cached.then_some(Stats {
                runs: exits,
                sync_loads: 2 * exits,
                sync_stores: exits,
                ..Stats::default()
            }),
        }
    }

    fn report(c_us: [f64; 3]) -> ExitsReport {
        let samples = vec![
            (
                Handler::Cached,
                c_us.iter().map(|u| sample(*u, 100, 1, true)).collect(),
            ),
            (
                Handler::Bare,
                [8.0, 7.0, 8.0]
                    .iter()
                    .map(|u| sample(*u, 100, 1, false))
                    .collect(),
            ),
            (
                Handler::Naive,
                [32.0, 28.0, 30.0]
                    .iter()
                    .map(|u| sample(*u, 100, 4, false))
                    .collect(),
            ),
        ];
        ExitsReport::from_samples(100, 3, true, &samples).expect("report")
    }

    #[test]
    fn ratios_are_taken_per_repetition() {
        let r = report([8.2, 7.14, 8.0]);
        let b = r.row(Handler::Naive).expect("row (b)");
        assert!((b.micros.median - 30.0).abs() < 1e-9);
        // 32/8, 28/7, 30/8: median 4.0 — not 30/8 from the medians.
        assert!((b.ratio.median - 4.0).abs() < 1e-9, "{:?}", b.ratio);
        assert_eq!(b.ioctls_per_exit, 4.0);
        let a = r.row(Handler::Bare).expect("row (a)");
        assert_eq!((a.ratio.min, a.ratio.max), (1.0, 1.0));
        let v = r.verdict().expect("verdict");
        assert!((v.ratio - 1.02).abs() < 1e-9, "{v:?}");
        assert!(v.met);
        assert_eq!(v.extra_ioctls_per_exit, 0.0);
    }

    #[test]
    fn the_target_needs_both_the_ratio_and_the_ioctl_count() {
        assert!(!report([8.6, 7.5, 8.5]).verdict().expect("verdict").met);
        let mut r = report([8.0, 7.0, 8.0]);
        assert!(r.verdict().expect("verdict").met);
        if let Some(row) = r.rows.iter_mut().find(|x| x.handler == Handler::Cached) {
            row.ioctls_per_exit = 1.5;
        }
        let v = r.verdict().expect("verdict");
        assert!(!v.met);
        assert_eq!(v.extra_ioctls_per_exit, 0.5);
    }

    #[test]
    fn the_text_has_three_rows_and_the_verdict() {
        let text = report([8.2, 7.14, 8.0]).to_text();
        let lines: Vec<&str> = text.lines().collect();
        let row = |h: Handler| {
            lines
                .iter()
                .find(|l| l.starts_with(h.label()))
                .copied()
                .unwrap_or_else(|| panic!("no row for {h:?} in\n{text}"))
        };
        assert!(row(Handler::Bare).contains("8.00 [7.00–8.00]"), "{text}");
        assert!(
            row(Handler::Bare).contains("12.00 [10.50–12.00]"),
            "wall time: {text}"
        );
        assert!(
            row(Handler::Naive).contains("4.000 [3.750–4.000]"),
            "{text}"
        );
        let c = row(Handler::Cached);
        assert!(c.contains("2 loads + 1 stores via kvm_run"), "{text}");
        assert!(
            c.split_whitespace().any(|w| w == "1"),
            "one ioctl per exit: {text}"
        );
        assert!(
            text.contains("target (c)/(a) ≤ 1.05 with no ioctl beyond KVM_RUN: met"),
            "{text}"
        );
        assert!(text.contains("100 exits per handler per repetition, 3 repetitions"));
    }

    #[test]
    fn missing_samples_are_an_error() {
        let samples = vec![(Handler::Bare, vec![sample(8.0, 10, 1, false)])];
        assert!(matches!(
            ExitsReport::from_samples(10, 1, true, &samples),
            Err(BenchError::Option { .. })
        ));
    }

    #[test]
    fn counts_print_as_integers_when_whole() {
        assert_eq!(count(1.0), "1");
        assert_eq!(count(4.0), "4");
        assert_eq!(count(1.25), "1.250");
    }

    #[test]
    fn the_guest_program_jumps_from_the_reset_vector_to_the_loop() {
        let p = Program::build().expect("program");
        let fw = p.firmware.bytes();
        assert_eq!(fw.len(), 4096);
        // EA 00 10 00 00: jmp far 0000:1000.
        assert_eq!(&fw[0xff0..0xff5], &[0xea, 0x00, 0x10, 0x00, 0x00]);
        // xor ax,ax; inc ax; out 10h,al; jmp short back to the inc.
        assert_eq!(p.code, vec![0x31, 0xc0, 0x40, 0xe6, 0x10, 0xeb, 0xfb]);
        assert!(p.holds_rip(CODE + 3) && p.holds_rip(CODE + 5));
        assert!(!p.holds_rip(CODE + 7));
    }

    #[test]
    fn a_wrong_out_byte_is_a_mismatch() {
        let mut e = Expect::new(Handler::Naive);
        assert_eq!(e.out(PORT, &[1]).expect("first"), 1);
        assert_eq!(e.out(PORT, &[3]).expect("second"), 3);
        let err = e.out(PORT, &[4]).expect_err("lost write");
        assert!(
            err.to_string()
                .contains("exit 3: OUT of 0x04, expected 0x05"),
            "{err}"
        );
        let err = e.out(0x11, &[5]).expect_err("wrong port");
        assert!(err.to_string().contains("port 0x11"), "{err}");
    }
}
