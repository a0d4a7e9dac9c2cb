//! KVM_RUN and the mapping of its exits to [`Exit`].

use kvm_bindings::{
    KVM_EXIT_IO, KVM_EXIT_IO_IN, KVM_SYNC_X86_EVENTS, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS,
    kvm_regs, kvm_run, kvm_sregs, kvm_sync_regs, kvm_vcpu_events,
};
use kvm_ioctls::VcpuExit;

use super::KvmVcpu;
use super::calls::counted;
use super::ioctls::{Ioctl, IoctlError};
use super::vcpu::Answer;
use crate::backend::{BackendError, Exit, IoDir};

/// What the first look at an exit found, before `kvm_run` can be read again.
enum Seen {
    Exit(Exit),
    Io { port: u16, out: [u8; 4] },
    MmioRead { addr: u64, len: usize },
    Internal,
    Other,
}

impl Seen {
    /// The first look at `exit`: what `kvm-ioctls` decoded, copied out of `kvm_run`.
    fn of(exit: VcpuExit<'_>) -> Seen {
        match exit {
            VcpuExit::IoOut(port, data) => Seen::Io {
                port,
                out: first_bytes(data),
            },
            VcpuExit::IoIn(port, _) => Seen::Io { port, out: [0; 4] },
            VcpuExit::MmioRead(addr, data) => Seen::MmioRead {
                addr,
                len: data.len(),
            },
            VcpuExit::MmioWrite(addr, data) => Seen::Exit(Exit::Mmio {
                addr,
                write: true,
                len: data.len().min(8) as u8,
                data: first_bytes(data),
            }),
            VcpuExit::Hlt => Seen::Exit(Exit::Hlt),
            VcpuExit::Shutdown => Seen::Exit(Exit::Shutdown),
            VcpuExit::SystemEvent(kind, _) => Seen::Exit(Exit::SystemEvent(kind)),
            VcpuExit::Intr => Seen::Exit(Exit::Interrupted),
            VcpuExit::InternalError => Seen::Internal,
            VcpuExit::FailEntry(reason, cpu) => Seen::Exit(Exit::InternalError {
                reason: format!(
                    "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on host CPU {cpu}"
                ),
            }),
            VcpuExit::MemoryFault { flags, gpa, size } => Seen::Exit(Exit::InternalError {
                reason: format!(
                    "KVM_EXIT_MEMORY_FAULT at guest-physical {gpa:#x}, {size:#x} bytes, flags {flags:#x}"
                ),
            }),
            _ => Seen::Other,
        }
    }
}

/// The first `N` bytes of `data`, zero-padded.
fn first_bytes<const N: usize>(data: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = data.len().min(N);
    out[..n].copy_from_slice(&data[..n]);
    out
}

fn internal_error_text(suberror: u32) -> &'static str {
    match suberror {
        1 => {
            "emulation failure: KVM's instruction emulator cannot run an instruction the guest executed"
        }
        2 => "simultaneous exceptions",
        3 => "event delivery failed",
        4 => "unexpected exit reason",
        _ => "internal error",
    }
}

/// Copies of the deferred stores a KVM_RUN is to apply, class by class.
struct Saved {
    regs: Option<kvm_regs>,
    sregs: Option<kvm_sregs>,
    events: Option<kvm_vcpu_events>,
}

impl Saved {
    fn of(sync: &kvm_sync_regs, pending: u64) -> Saved {
        let has = |bit: u32| pending & u64::from(bit) != 0;
        Saved {
            regs: has(KVM_SYNC_X86_REGS).then_some(sync.regs),
            sregs: has(KVM_SYNC_X86_SREGS).then_some(sync.sregs),
            events: has(KVM_SYNC_X86_EVENTS).then_some(sync.events),
        }
    }
}

impl KvmVcpu {
    pub(super) fn run_vcpu(&mut self) -> Result<Exit, BackendError> {
        self.begin_run();
        let saved = self.save_deferred();
        let entered = self.enter();
        if let Some(saved) = saved {
            self.restore_unapplied(&saved);
        }
        match entered {
            Ok(seen) => Ok(self.exited(seen)),
            Err(e) => self.run_failed(e),
        }
    }

    /// Before KVM_RUN: settle what the last exit left.
    fn begin_run(&mut self) {
        if self.completes_insn {
            // KVM finishes the instruction of the last port-I/O or MMIO exit at the start of
            // this KVM_RUN, before it looks for a signal, so it may change state (an MMIO load
            // into an XMM register, say) even where the vCPU never enters the guest and the
            // `exits` count stays put: count it as a store of guest state.
            self.guest_state_stores += 1;
        }
        self.completes_insn = false;
        self.answer = None;
        // A raised INIT takes effect in this KVM_RUN, after the deferred stores.
        self.init_pending = false;
    }

    /// Copies of the stores deferred to this KVM_RUN, which survive a KVM_RUN that returns
    /// before applying them. Only the classes pending are copied: on the usual exit that is
    /// REGS alone (a GPR written by the exit handler), 144 bytes instead of the whole sync area.
    fn save_deferred(&mut self) -> Option<Saved> {
        let pending = self.fd.get_kvm_run().kvm_dirty_regs;
        (pending != 0).then(|| Saved::of(self.fd.sync_regs_mut(), pending))
    }

    /// KVM_RUN, counted, and the first look at its exit.
    fn enter(&mut self) -> Result<Seen, IoctlError> {
        counted(&mut self.stats.runs, Ioctl::Run, || self.fd.run()).map(Seen::of)
    }

    /// After KVM_RUN returned an exit: forget what the guest may have changed and map the exit.
    fn exited(&mut self, seen: Seen) -> Exit {
        self.after_run(true);
        let exit = self.finish_exit(seen);
        self.completes_insn = matches!(
            exit,
            Exit::Io { .. } | Exit::Mmio { .. } | Exit::Other(KVM_EXIT_IO)
        );
        if !matches!(exit, Exit::Interrupted) {
            // The vCPU ran, so it is not waiting in UNINITIALIZED any more.
            self.may_be_uninitialized = false;
        }
        exit
    }

    /// After KVM_RUN failed: a signal is [`Exit::Interrupted`]; anything else is an error, and
    /// the deferred stores KVM did not apply are dropped so that the next run can proceed.
    fn run_failed(&mut self, e: IoctlError) -> Result<Exit, BackendError> {
        if e.errno.errno() == libc::EINTR || e.errno.errno() == libc::EAGAIN {
            self.after_run(true);
            return Ok(Exit::Interrupted);
        }
        let dropped = self.drop_pending();
        self.after_run(false);
        let ioctl = if !dropped.is_empty() {
            Ioctl::RunDeferredStores
        } else {
            Ioctl::Run
        };
        Err(ioctl.failed(e.errno).into())
    }

    /// Put back deferred stores that KVM_RUN returned without applying (it leaves their
    /// `kvm_dirty_regs` bits set but refreshes the sync area).
    fn restore_unapplied(&mut self, saved: &Saved) {
        let still = self.fd.get_kvm_run().kvm_dirty_regs;
        if still == 0 {
            return;
        }
        let mirror = self.fd.sync_regs_mut();
        if still & u64::from(KVM_SYNC_X86_REGS) != 0
            && let Some(regs) = saved.regs
        {
            mirror.regs = regs;
        }
        if still & u64::from(KVM_SYNC_X86_SREGS) != 0
            && let Some(sregs) = saved.sregs
        {
            mirror.sregs = sregs;
        }
        if still & u64::from(KVM_SYNC_X86_EVENTS) != 0
            && let Some(events) = saved.events
        {
            mirror.events = events;
        }
    }

    /// The [`Exit`] of what the first look saw, reading the rest from `kvm_run`.
    fn finish_exit(&mut self, seen: Seen) -> Exit {
        match seen {
            Seen::Exit(exit) => exit,
            Seen::Io { port, out } => self.io_exit(port, out),
            Seen::MmioRead { addr, len } => {
                let len = len.min(8);
                self.answer = Some(Answer::Mmio { len });
                Exit::Mmio {
                    addr,
                    write: false,
                    len: len as u8,
                    data: [0; 8],
                }
            }
            Seen::Internal => self.internal_error_exit(),
            Seen::Other => Exit::Other(self.fd.get_kvm_run().exit_reason),
        }
    }

    /// A KVM_EXIT_IO of one access to `port` (`out`: the bytes of an OUT); string I/O is
    /// [`Exit::Other`].
    fn io_exit(&mut self, port: u16, out: [u8; 4]) -> Exit {
        let run_size = self.run_size;
        let run: &mut kvm_run = self.fd.get_kvm_run();
        // SAFETY: KVM_RUN returned KVM_EXIT_IO (kvm-ioctls matched it), so `io` is the active
        // member of the exit union; it is plain integers.
        let io = unsafe { run.__bindgen_anon_1.io };
        let size = usize::from(io.size);
        let offset = io.data_offset as usize;
        if io.count != 1 || size > 4 || offset + size > run_size {
            // String I/O (INS/OUTS with a count) does not fit Exit::Io.
            return Exit::Other(KVM_EXIT_IO);
        }
        let dir = if io.direction == KVM_EXIT_IO_IN as u8 {
            self.answer = Some(Answer::Io { offset, len: size });
            IoDir::In
        } else {
            IoDir::Out
        };
        Exit::Io {
            dir,
            port,
            size: io.size,
            data: if dir == IoDir::Out { out } else { [0; 4] },
        }
    }

    /// A KVM_EXIT_INTERNAL_ERROR, with KVM's suberror and data words.
    fn internal_error_exit(&mut self) -> Exit {
        let run: &mut kvm_run = self.fd.get_kvm_run();
        // SAFETY: KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, so `internal` is the active member
        // of the exit union; it is plain integers.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        let words: Vec<String> = internal.data[..n]
            .iter()
            .map(|w| format!("{w:#x}"))
            .collect();
        Exit::InternalError {
            reason: format!(
                "KVM_EXIT_INTERNAL_ERROR suberror {}: {} [{}]",
                internal.suberror,
                internal_error_text(internal.suberror),
                words.join(", ")
            ),
        }
    }

    /// Write the answer to the last exit's IN (or MMIO read) into `kvm_run`.
    pub(super) fn answer_in(&mut self, data: &[u8]) {
        let Some(answer) = self.answer else {
            return;
        };
        match answer {
            Answer::Io { offset, len } => {
                let n = len.min(data.len());
                let base = std::ptr::from_mut(self.fd.get_kvm_run()).cast::<u8>();
                // SAFETY: `base` starts the live `kvm_run` mapping of `run_size` bytes; the exit
                // checked `offset + len <= run_size` and `n <= len`; `&mut self` excludes aliases.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(offset), n) };
            }
            Answer::Mmio { len } => {
                let run = self.fd.get_kvm_run();
                // SAFETY: the last KVM_RUN returned KVM_EXIT_MMIO (an answer is only recorded
                // then), so `mmio` is the active member of the exit union.
                let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
                let n = len.min(data.len()).min(mmio.data.len());
                mmio.data[..n].copy_from_slice(&data[..n]);
            }
        }
    }
}
