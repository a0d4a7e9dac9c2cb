//! A minimal in-memory backend for unit tests: a `VcpuState` that counts loads and stores
//! per class. Not a stand-in for KVM; it tests the cache and the engine's logic only.

use vcpu_reset_spec::{Field, Gpr, Seg, VcpuState};

use super::{Backend, BackendError, ClassSet, Exit, HostInit, HostInitBackend, StateClass, Stats};

/// A vCPU that is just a `VcpuState`, counting loads and stores per class.
pub(crate) struct Recorder {
    pub state: VcpuState,
    pub loads: [u32; 10],
    pub stores: [u32; 10],
    stats: Stats,
    /// What the "guest" does on run.
    pub on_run: fn(&mut VcpuState),
    pub not_held: Option<Field>,
    /// What [`Backend::queues_signals`] answers.
    pub queues_signals: bool,
    /// Offer a host INIT ([`HostInitBackend::host_init`]): it stores the MSRs (unless kept), sets the
    /// local APIC, debug registers and MP state from the target, and clobbers REGS, SREGS and
    /// EVENTS (zeroes them).
    pub host_init: bool,
    /// The `kept` of each [`HostInitBackend::host_init`] call.
    pub kept: Vec<ClassSet>,
    /// Guest runs plus stores of the classes a touch count covers, as
    /// [`HostInitBackend::touch_count`] reports it; `None` for no count.
    pub touches: Option<u64>,
}

/// The classes whose stores the recorder's touch count counts (as the KVM backend's).
const TOUCHED_BY_STORE: ClassSet = ClassSet::EMPTY
    .with(StateClass::Fpu)
    .with(StateClass::Xcrs)
    .with(StateClass::Msrs)
    .with(StateClass::Nested)
    .with(StateClass::Lapic);

impl Recorder {
    pub fn new() -> Self {
        let mut state = VcpuState::default();
        for (i, g) in Gpr::ALL.iter().enumerate() {
            state.gprs[*g as usize] = 0x1000 + i as u64;
        }
        state.rip = 0xfff0;
        state.segments[Seg::Cs as usize].selector = 0xf000;
        state.segments[Seg::Cs as usize].base = 0xffff_0000;
        Recorder {
            state,
            loads: [0; 10],
            stores: [0; 10],
            stats: Stats::default(),
            on_run: |s| s.gprs[Gpr::Rax as usize] += 1,
            not_held: None,
            queues_signals: false,
            host_init: false,
            kept: Vec::new(),
            touches: None,
        }
    }
}

fn copy_class(class: StateClass, from: &VcpuState, to: &mut VcpuState) {
    for f in crate::slots::fields_of(class) {
        f.set(to, f.get(from));
    }
}

impl Backend for Recorder {
    fn load(&mut self, class: StateClass, state: &mut VcpuState) -> Result<(), BackendError> {
        self.loads[class as usize] += 1;
        self.stats.loads += 1;
        copy_class(class, &self.state, state);
        Ok(())
    }
    fn store(&mut self, class: StateClass, state: &VcpuState) -> Result<(), BackendError> {
        self.stores[class as usize] += 1;
        self.stats.stores += 1;
        if TOUCHED_BY_STORE.contains(class) {
            self.touches = self.touches.map(|t| t + 1);
        }
        copy_class(class, state, &mut self.state);
        Ok(())
    }
    fn run(&mut self) -> Result<Exit, BackendError> {
        self.stats.runs += 1;
        self.touches = self.touches.map(|t| t + 1);
        (self.on_run)(&mut self.state);
        Ok(Exit::Hlt)
    }
    fn set_io_in(&mut self, _data: &[u8]) {}
    fn volatile(&self) -> ClassSet {
        ClassSet::all()
    }
    fn delivered(&self) -> ClassSet {
        ClassSet::EMPTY
    }
    fn supported(&self) -> ClassSet {
        ClassSet::all()
    }
    fn holds(&self, field: Field) -> bool {
        self.not_held != Some(field)
    }
    fn queues_signals(&self) -> bool {
        self.queues_signals
    }

    fn stats(&self) -> Stats {
        self.stats
    }
}

impl HostInitBackend for Recorder {
    fn host_init(
        &mut self,
        target: &VcpuState,
        _lazy: bool,
        kept: ClassSet,
    ) -> Result<Option<HostInit>, BackendError> {
        if !self.host_init {
            return Ok(None);
        }
        self.kept.push(kept);
        if !kept.contains(StateClass::Msrs) {
            self.store(StateClass::Msrs, target)?;
        } else {
            self.stats.stores += 1;
        }
        for class in [StateClass::Lapic, StateClass::Debug, StateClass::MpState] {
            copy_class(class, target, &mut self.state);
        }
        for class in [StateClass::Regs, StateClass::Sregs, StateClass::Events] {
            copy_class(class, &VcpuState::default(), &mut self.state);
        }
        self.stats.loads += 1;
        Ok(Some(HostInit {
            stored: ClassSet::EMPTY.with(StateClass::Msrs),
            established: ClassSet::EMPTY
                .with(StateClass::Lapic)
                .with(StateClass::Debug)
                .with(StateClass::MpState),
            clobbered: ClassSet::EMPTY
                .with(StateClass::Regs)
                .with(StateClass::Sregs)
                .with(StateClass::Events),
        }))
    }

    fn touch_count(&mut self) -> Option<u64> {
        self.touches
    }
}
