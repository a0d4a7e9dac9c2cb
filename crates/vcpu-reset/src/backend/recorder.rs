//! A minimal in-memory backend for unit tests: a `VcpuState` that counts loads and stores
//! per class. Not a stand-in for KVM; it tests the cache and the engine's logic only.

use vcpu_reset_spec::{Field, Gpr, Seg, VcpuState};

use super::{Backend, BackendError, ClassSet, Exit, StateClass, Stats};

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
}

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
        }
    }
}

fn copy_class(class: StateClass, from: &VcpuState, to: &mut VcpuState) {
    for f in crate::layout::fields_of(class) {
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
        copy_class(class, state, &mut self.state);
        Ok(())
    }
    fn run(&mut self) -> Result<Exit, BackendError> {
        self.stats.runs += 1;
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
