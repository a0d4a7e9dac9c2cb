//! What a RESET costs on KVM, from the backend's own counters, and the engine's fallback where
//! KVM's INIT leaves a class wrong.
//!
//! Where the backend offers KVM's own INIT (in-kernel irqchip, x2APIC, sync regs), a RESET
//! after the vCPU ran is KVM_SET_MSRS (which raises the INIT), KVM_GET_MP_STATE (KVM acts on
//! it), KVM_SET_XSAVE and KVM_SET_XCRS, with REGS, SREGS and EVENTS through `kvm_run`; plus one
//! store per class the engine found KVM's INIT to leave wrong. The runner's VMs turn KVM's
//! LINT0_REENABLED quirk off, so there the BSP needs no KVM_SET_LAPIC either.
//!
//! Each test skips (printing why) where `/dev/kvm` cannot be used, unless
//! `VCPU_RESET_REQUIRE_KVM=1`.

use vcpu_reset::backend::kvm::KvmVcpu;
use vcpu_reset::backend::{
    Backend, BackendError, ClassSet, Exit, HostInit, HostInitBackend, IoDir, RegSet, StateClass,
    Stats,
};
use vcpu_reset::cache::VcpuCache;
use vcpu_reset::engine::{Deviation, DeviationKind, Vcpu};
use vcpu_reset::spec::{self, Field, LapicReg, Msr, Transition, VcpuIdentity, VcpuState, X87};
use vcpu_reset_selftest::bench::exits::{CODE, PORT, Program};
use vcpu_reset_selftest::host::kvm_for_tests;
use vcpu_reset_selftest::runner::{Sink, Vm, VmConfig};

fn mismatches(devs: &[Deviation]) -> Vec<&Deviation> {
    devs.iter()
        .filter(|d| d.kind != DeviationKind::NotHeld)
        .collect()
}

/// The path a RESET through KVM's INIT takes for `v`, from what the engine learned about the
/// host's INIT (never from the vendor): `lazy` where it leaves the INIT to the vCPU's next run
/// (KVM's INIT leaves REGS, SREGS and EVENTS at the RESET state, as on Intel hosts here), eager
/// where it takes the INIT inside the RESET with KVM_GET_MP_STATE (as on AMD hosts here, whose
/// INIT gives CS attributes 0x9B).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Lazy,
    Eager,
}

fn path_of(v: &Vcpu<impl Backend>) -> Path {
    if v.host_init_lazy() {
        Path::Lazy
    } else {
        Path::Eager
    }
}

/// One RESET's vCPU ioctls with KVM's INIT, as (loads, stores), on `path`:
/// - eager: KVM_SET_MSRS with the INIT, KVM_GET_MP_STATE (KVM acts on it), KVM_SET_XSAVE and
///   KVM_SET_XCRS, plus one store per inexact class;
/// - lazy: KVM_SET_MSRS, KVM_SET_XSAVE and KVM_SET_XCRS (the INIT waits for the next run).
///
/// A vCPU that has not entered the guest since its last RESET, with nothing stored since, keeps
/// its x87/SSE state, XCR0 and MSRs: no KVM_SET_XSAVE, no KVM_SET_XCRS, and on the eager path
/// KVM_SET_VCPU_EVENTS raises the INIT where no MSR needs writing.
fn budget(path: Path, inexact: ClassSet, untouched: bool) -> (u64, u64) {
    let kept = if untouched { 2 } else { 0 };
    match path {
        Path::Lazy => (0, 3 - kept),
        Path::Eager => (1, 3 - kept + inexact.iter().count() as u64),
    }
}

/// The bound every host must meet, whatever its INIT gets right: at most 4 vCPU ioctls for a
/// vCPU that ran, at most 2 for one untouched since its last RESET, one more per class the
/// host's INIT leaves wrong.
fn bound(inexact: ClassSet, untouched: bool) -> u64 {
    (if untouched { 2 } else { 4 }) + inexact.iter().count() as u64
}

/// A runner VM of `vcpus` vCPUs with the exit bench's firmware and loop, or `None` (having
/// said why) where KVM cannot be used.
fn loop_vm(vcpus: u32) -> Option<Vm> {
    let host = kvm_for_tests()?;
    let program = Program::build().expect("bench program");
    let config = VmConfig {
        vcpus,
        sink: Sink::Discard,
        ..VmConfig::default()
    };
    let vm = Vm::with_host(host, &program.firmware, config).expect("VM");
    vm.memory().write(CODE, &program.code).expect("loop");
    Some(vm)
}

fn out_exit(exit: &Exit) -> bool {
    matches!(
        exit,
        Exit::Io {
            dir: IoDir::Out,
            port: PORT,
            ..
        }
    )
}

/// RESET `v` (its cache invalidated, as after an exit), check the ioctls against the bound
/// and [`budget`] of the path the engine takes, and the state against the spec. Returns the
/// path.
fn reset_within_budget(v: &mut Vcpu<impl Backend>, who: &str, untouched: bool) -> Option<Path> {
    let path = path_of(v);
    v.cache_mut().invalidate();
    let out = v.reset().expect("RESET");
    let Some(inexact) = v.host_init_inexact() else {
        eprintln!(
            "{who}: the host offers no INIT to build on; RESET took {:?}",
            out.calls
        );
        return None;
    };
    eprintln!(
        "{who}: RESET {} vCPU ioctls {:?} on the {path:?} path; KVM's INIT wrong here for \
         {inexact:?}",
        out.calls.calls(),
        out.calls
    );
    assert!(
        out.calls.calls() <= bound(inexact, untouched),
        "{who}: {:?}",
        out.calls
    );
    let (loads, stores) = budget(path, inexact, untouched);
    assert_eq!(
        (
            out.calls.loads,
            out.calls.stores,
            out.calls.runs,
            out.calls.other
        ),
        (loads, stores, 0, 0),
        "{who} on the {path:?} path: {:?}",
        out.calls
    );
    assert_eq!(
        out.calls.sync_stores, 3,
        "{who}: REGS, SREGS, EVENTS in kvm_run"
    );
    let devs = v.verify().expect("verify");
    assert!(
        mismatches(&devs).is_empty(),
        "{who}: {:?}",
        mismatches(&devs)
    );
    Some(path)
}

#[test]
fn a_reset_takes_at_most_four_vcpu_ioctls_after_the_guest_ran_and_two_where_it_did_not() {
    let Some(mut vm) = loop_vm(3) else { return };
    let vcpus = vm.vcpus();
    // vCPU 0, the BSP, runs from the reset vector into the loop; vCPU 2 is started at the
    // loop (SIPI vector 1: CS 0x0100, IP 0, linear CODE) and runs it; vCPU 1 waits for SIPI
    // and never enters the guest.
    let exit = vcpus[0].cache_mut().run().expect("BSP runs");
    assert!(out_exit(&exit), "BSP: {exit:?}");
    assert!(vcpus[2].sipi((CODE >> 12) as u8).expect("SIPI"));
    let exit = vcpus[2].cache_mut().run().expect("AP runs");
    assert!(out_exit(&exit), "AP: {exit:?}");
    let counted = vcpus[1].cache_mut().touch_count().is_some();
    reset_within_budget(&mut vcpus[0], "BSP that ran", false);
    reset_within_budget(&mut vcpus[1], "AP waiting for SIPI", counted);
    reset_within_budget(&mut vcpus[2], "AP that ran", false);

    // The same vCPUs again, none of them run since: the short path for each, where the host
    // counts guest entries.
    for (v, who) in vcpus.iter_mut().zip(["BSP", "AP", "AP"]) {
        reset_within_budget(v, &format!("{who} not run since its RESET"), counted);
    }

    // A store by the host since the RESET (the x87 control word, through the cache) rules the
    // short path out, though the guest did not run: the RESET stores x87/SSE state again.
    vcpus[1]
        .cache_mut()
        .set(Field::X87(X87::Fcw), 0x37f)
        .expect("FCW");
    vcpus[1].cache_mut().flush().expect("flush");
    reset_within_budget(&mut vcpus[1], "AP after a host store", false);
    assert_eq!(
        vcpus[1].cache_mut().get(Field::X87(X87::Fcw)).expect("FCW"),
        0x40
    );

    // A vCPU that ran in between takes the full path again.
    let exit = vcpus[0].cache_mut().run().expect("BSP runs");
    assert!(out_exit(&exit), "BSP: {exit:?}");
    if let Some(path) = reset_within_budget(&mut vcpus[0], "BSP that ran again", false) {
        eprintln!(
            "this host's KVM INIT takes the {path:?} path; the other path is forced by \
             `the_init_is_taken_inside_the_reset_where_it_clobbers_a_class_wrong` (eager) and \
             `leaving_kvms_init_to_the_next_run_takes_three_ioctls_and_is_exact_where_the_check_says_so` \
             (lazy)"
        );
    }
}

#[test]
fn the_init_is_taken_inside_the_reset_where_it_clobbers_a_class_wrong() {
    let Some(host) = kvm_for_tests() else { return };
    let vm = host.create_vm(true).expect("VM with an irqchip");
    // The BSP and an AP over a backend whose INIT leaves CS's attributes off, as KVM's INIT
    // does on the AMD hosts here: the eager path on any host.
    let mut vcpus = Vec::new();
    for id in 0..2u32 {
        let kv = KvmVcpu::new(&host, &vm, id.into()).expect("vCPU");
        let model = kv.cpu_model().expect("an Intel or AMD host");
        let cache = VcpuCache::adopt(InitOff::new(kv, Off::CsAttributes));
        let mut v = Vcpu::new(cache, model, VcpuIdentity::new(id));
        v.reset().expect("power-on RESET");
        vcpus.push(v);
    }
    let Some(off) = vcpus[0].host_init_clobbered_off() else {
        eprintln!("skipped: the host offers no INIT to build on");
        return;
    };
    for (v, who) in vcpus.iter_mut().zip(["BSP", "AP"]) {
        assert!(
            v.host_init_clobbered_off()
                .is_some_and(|off| off.contains(StateClass::Sregs)),
            "{who}: the engine saw CS off after the INIT: {off:?}"
        );
        assert_eq!(path_of(v), Path::Eager, "{who}");
        let counted = v.cache_mut().touch_count().is_some();
        let path = reset_within_budget(v, &format!("{who} not run since its RESET"), counted);
        assert_eq!(path, Some(Path::Eager), "{who}");
        // A store by the host (as by a guest that ran): the full eager RESET.
        v.cache_mut().set(Field::X87(X87::Fcw), 0x37f).expect("FCW");
        v.cache_mut().flush().expect("flush");
        let path = reset_within_budget(v, &format!("{who} after a host store"), false);
        assert_eq!(path, Some(Path::Eager), "{who}");
    }
}

/// A host INIT that leaves CS's attributes at a value the spec allows (AMD's 0x9B for 0x9A,
/// which differs only in the accessed bit; Intel's 0x93 for 0x9B) still lets the engine leave
/// the INIT to the next run, as where the INIT gives the RESET value itself.
#[test]
fn a_host_init_giving_cs_attributes_the_spec_allows_keeps_the_lazy_path() {
    let Some(host) = kvm_for_tests() else { return };
    let vm = host.create_vm(true).expect("VM with an irqchip");
    let plain = KvmVcpu::new(&host, &vm, 1).expect("vCPU 1");
    let allowed = KvmVcpu::new(&host, &vm, 2).expect("vCPU 2");
    let model = plain.cpu_model().expect("an Intel or AMD host");
    let row = spec::row(
        Field::Seg(spec::Seg::Cs, spec::SegPart::Attributes),
        model.vendor,
        spec::Event::Reset,
    );
    let Some(&spec::Alternative::Value(alt)) = row.also.first() else {
        panic!(
            "the spec allows another CS attribute value on {:?}",
            model.vendor
        );
    };
    let alt = u16::try_from(alt).expect("16-bit attributes");
    let mut plain = Vcpu::new(VcpuCache::adopt(plain), model, VcpuIdentity::new(1));
    let mut allowed = Vcpu::new(
        VcpuCache::adopt(InitOff::new(allowed, Off::CsAllowed(alt))),
        model,
        VcpuIdentity::new(2),
    );
    plain.reset().expect("RESET");
    allowed.reset().expect("RESET");
    let Some(base) = plain.host_init_clobbered_off() else {
        eprintln!("skipped: the host offers no INIT to build on");
        return;
    };
    let off = allowed.host_init_clobbered_off().expect("same host");
    eprintln!(
        "CS attributes read back as {alt:#x}: clobbered classes off {off:?} (plain {base:?})"
    );
    assert!(!off.contains(StateClass::Sregs), "{off:?}");
    assert_eq!(off, base.without(StateClass::Sregs));
    assert_eq!(path_of(&allowed), path_of(&plain));
}

/// What [`InitOff`] makes the host's INIT get wrong, as a host whose INIT had that bug would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Off {
    /// After every INIT that establishes the debug registers, DR0 holds a stale value (a class
    /// the INIT sets, left wrong: the engine stores it itself from then on).
    Dr0,
    /// After the first INIT taken inside a RESET, what the engine reads back of CS's
    /// attributes is the RESET value with type bit 2 (conforming) flipped (a class the INIT
    /// clobbers, left off the RESET state; flipped from the target, not from what the host
    /// gave, and no value the spec allows on either vendor, so it is off on every host): the
    /// engine then never leaves the INIT to the next run.
    CsAttributes,
    /// As `CsAttributes`, but CS's attributes read back as this value, one the spec allows in
    /// place of the RESET value (Intel 0x93 for 0x9B; AMD 0x9B for 0x9A, as KVM's INIT gives
    /// on the AMD hosts here): the engine takes it as exact.
    CsAllowed(u16),
}

/// A backend whose host INIT is wrong in the way `off` says, whatever the real host's INIT
/// gets right: it forces on any host the path another vendor's KVM takes.
struct InitOff<B> {
    inner: B,
    off: Off,
    /// The CS attributes the next load of SREGS reads ([`Off::CsAttributes`]).
    spoil_sregs: Option<u16>,
    spoiled: bool,
}

impl<B> InitOff<B> {
    fn new(inner: B, off: Off) -> Self {
        InitOff {
            inner,
            off,
            spoil_sregs: None,
            spoiled: false,
        }
    }
}

const STALE_DR0: u64 = 0x1234_5678;

impl<B: Backend> Backend for InitOff<B> {
    fn load(&mut self, class: StateClass, state: &mut VcpuState) -> Result<(), BackendError> {
        self.inner.load(class, state)?;
        if class == StateClass::Sregs
            && let Some(attributes) = self.spoil_sregs.take()
        {
            state.segments[spec::Seg::Cs as usize].attributes = attributes;
        }
        Ok(())
    }
    fn store(&mut self, class: StateClass, state: &VcpuState) -> Result<(), BackendError> {
        self.inner.store(class, state)
    }
    fn run(&mut self) -> Result<Exit, BackendError> {
        self.inner.run()
    }
    fn set_io_in(&mut self, data: &[u8]) {
        self.inner.set_io_in(data);
    }
    fn volatile(&self) -> ClassSet {
        self.inner.volatile()
    }
    fn delivered(&self) -> ClassSet {
        self.inner.delivered()
    }
    fn supported(&self) -> ClassSet {
        self.inner.supported()
    }
    fn holds(&self, field: Field) -> bool {
        self.inner.holds(field)
    }
    fn queues_signals(&self) -> bool {
        self.inner.queues_signals()
    }
    fn load_slots(&mut self, class: StateClass, slots: RegSet, state: &mut VcpuState) -> bool {
        // A spoiled load goes through `load`.
        !(class == StateClass::Sregs && self.spoil_sregs.is_some())
            && self.inner.load_slots(class, slots, state)
    }
    fn store_slots(&mut self, class: StateClass, slots: RegSet, state: &VcpuState) -> bool {
        self.inner.store_slots(class, slots, state)
    }
    fn stats(&self) -> Stats {
        self.inner.stats()
    }
}

impl<B: Backend> HostInitBackend for InitOff<B> {
    fn host_init(
        &mut self,
        target: &VcpuState,
        lazy: bool,
        kept: ClassSet,
    ) -> Result<Option<HostInit>, BackendError> {
        let done = self.inner.host_init(target, lazy, kept)?;
        let Some(d) = done else { return Ok(done) };
        match self.off {
            Off::Dr0 if d.established.contains(StateClass::Debug) => {
                let mut s = VcpuState::default();
                self.inner.load(StateClass::Debug, &mut s)?;
                s.dr[0] = STALE_DR0;
                self.inner.store(StateClass::Debug, &s)?;
            }
            Off::CsAttributes | Off::CsAllowed(_)
                if !self.spoiled
                    && d.clobbered.contains(StateClass::Sregs)
                    && d.established != ClassSet::EMPTY =>
            {
                self.spoiled = true;
                self.spoil_sregs = Some(match self.off {
                    Off::CsAllowed(v) => v,
                    _ => target.segments[spec::Seg::Cs as usize].attributes ^ 0x4,
                });
            }
            _ => {}
        }
        Ok(done)
    }
    fn touch_count(&mut self) -> Option<u64> {
        self.inner.touch_count()
    }
}

#[test]
fn where_kvms_init_leaves_a_class_wrong_the_engine_finds_it_once_and_stores_it_itself() {
    let Some(host) = kvm_for_tests() else { return };
    let vm = host.create_vm(true).expect("VM with an irqchip");
    // Two APs: one over the plain backend, one over the backend that leaves DR0 wrong.
    let plain = KvmVcpu::new(&host, &vm, 1).expect("vCPU 1");
    let broken = KvmVcpu::new(&host, &vm, 2).expect("vCPU 2");
    let model = plain.cpu_model().expect("an Intel or AMD host");
    let mut plain = Vcpu::new(VcpuCache::adopt(plain), model, VcpuIdentity::new(1));
    let mut broken = Vcpu::new(
        VcpuCache::adopt(InitOff::new(broken, Off::Dr0)),
        model,
        VcpuIdentity::new(2),
    );
    plain.reset().expect("RESET");
    broken.reset().expect("RESET");
    let Some(base) = plain.host_init_inexact() else {
        eprintln!("skipped: the host offers no INIT to build on");
        return;
    };
    let found = broken.host_init_inexact().expect("same host");
    assert_eq!(
        found,
        base.with(StateClass::Debug),
        "the engine found the debug registers wrong after the INIT, and nothing else new"
    );
    let devs = broken.verify().expect("verify");
    assert!(mismatches(&devs).is_empty(), "{:?}", mismatches(&devs));

    // A class the INIT sets is wrong, so the INIT cannot wait for the next run: the engine
    // takes it inside the RESET on any host, whatever path the plain vCPU takes.
    assert_eq!(path_of(&broken), Path::Eager);
    let plain_path = path_of(&plain);

    // Again, with the cache invalidated as after an exit: the engine now stores the debug
    // registers itself, one ioctl more (the wrapper's own KVM_GET/SET_DEBUGREGS that spoil DR0
    // are counted too). Neither vCPU ran or was stored since its RESET.
    let untouched = plain.cache_mut().touch_count().is_some();
    plain.cache_mut().invalidate();
    broken.cache_mut().invalidate();
    let p = plain.reset().expect("RESET").calls;
    let b = broken.reset().expect("RESET").calls;
    eprintln!("plain ({plain_path:?} path) {p:?}, with the wrong DR0 {b:?}");
    assert_eq!((p.loads, p.stores), budget(plain_path, base, untouched));
    let (loads, stores) = budget(Path::Eager, found, untouched);
    assert_eq!((b.loads, b.stores), (loads + 1, stores + 1));
    let devs = broken.verify().expect("verify");
    assert!(mismatches(&devs).is_empty(), "{:?}", mismatches(&devs));
    let dr0 = broken.cache_mut().get(Field::Dr(0)).expect("DR0");
    assert_eq!(
        dr0, 0,
        "DR0 is at its RESET value, not the stale {STALE_DR0:#x}"
    );
}

#[test]
fn leaving_kvms_init_to_the_next_run_takes_three_ioctls_and_is_exact_where_the_check_says_so() {
    let Some(mut vm) = loop_vm(2) else { return };
    let vcpus = vm.vcpus();
    let Some(off) = vcpus[0].host_init_clobbered_off() else {
        eprintln!("skipped: the host offers no INIT to build on");
        return;
    };
    eprintln!("classes KVM's INIT leaves off the RESET state here: {off:?}");
    for v in vcpus.iter_mut() {
        v.force_lazy_host_init();
    }
    // The AP waits for SIPI throughout and never enters the guest: where the host counts
    // entries, its RESET keeps x87/SSE state, XCR0 and MSRs and takes KVM_SET_MSRS alone.
    let counted = vcpus[1].cache_mut().touch_count().is_some();
    for round in 0..2 {
        let exit = vcpus[0].cache_mut().run().expect("BSP runs");
        assert!(out_exit(&exit), "BSP after RESET {round}: {exit:?}");
        for (v, who) in vcpus.iter_mut().zip(["BSP", "AP"]) {
            v.cache_mut().invalidate();
            let out = v.reset().expect("RESET");
            eprintln!(
                "{who}: RESET with the INIT left to the next run: {:?}",
                out.calls
            );
            let stores = if who == "AP" && counted { 1 } else { 3 };
            assert_eq!(
                (out.calls.loads, out.calls.stores, out.calls.sync_stores),
                (0, stores, 3),
                "{who}: KVM_SET_MSRS, KVM_SET_XSAVE, KVM_SET_XCRS; REGS, SREGS, EVENTS in kvm_run"
            );
            // Reads before the next run have KVM act on the INIT first.
            let devs = v.verify().expect("verify");
            for d in mismatches(&devs) {
                assert!(
                    off.contains(StateClass::of(d.field)),
                    "{who}: {d:?} is in a class the check found right"
                );
            }
            if off == ClassSet::EMPTY {
                assert!(mismatches(&devs).is_empty(), "{who}: {devs:?}");
            }
        }
    }
}

#[test]
fn kvms_init_keeps_a_changed_apic_id_and_x2apic_mode_but_the_reset_does_not() {
    let Some(host) = kvm_for_tests() else { return };
    let vm = host.create_vm(true).expect("VM with an irqchip");
    let kv = KvmVcpu::new(&host, &vm, 1).expect("vCPU 1");
    let model = kv.cpu_model().expect("an Intel or AMD host");
    let mut v = Vcpu::new(VcpuCache::adopt(kv), model, VcpuIdentity::new(1));
    v.reset().expect("power-on RESET");
    if v.host_init_inexact().is_none() {
        eprintln!("skipped: the host offers no INIT to build on");
        return;
    }
    let want = spec::expected_state(&model, VcpuIdentity::new(1), Transition::Reset);
    // An xAPIC ID changed by the guest (INIT keeps it, SDM Vol. 3A §11.4.6) ...
    v.cache_mut()
        .set(Field::Lapic(LapicReg::Id), 0x0700_0000)
        .expect("APIC ID");
    v.cache_mut().flush().expect("store");
    v.cache_mut().invalidate();
    assert_eq!(
        v.cache_mut().get(Field::Lapic(LapicReg::Id)).expect("ID"),
        0x0700_0000
    );
    v.cache_mut().invalidate();
    // The guest did not run, but the host stored the local APIC: the full RESET, whose
    // IA32_APIC_BASE writes put the ID back (4 ioctls where the INIT is taken inside the RESET,
    // 3 where it is left to the next run).
    let path = path_of(&v);
    let out = v.reset().expect("RESET");
    let (loads, stores) = budget(path, ClassSet::EMPTY, false);
    assert_eq!(
        (out.calls.loads, out.calls.stores),
        (loads, stores),
        "{path:?} path: {:?}",
        out.calls
    );
    let devs = v.verify().expect("verify");
    assert!(mismatches(&devs).is_empty(), "{:?}", mismatches(&devs));
    assert_eq!(
        v.cache_mut().get(Field::Lapic(LapicReg::Id)).expect("ID"),
        want.lapic.id.into()
    );
    // ... and x2APIC mode (INIT keeps IA32_APIC_BASE).
    let x2apic = u128::from(want.msrs.apic_base | (1 << 10));
    v.cache_mut()
        .set(Field::Msr(Msr::ApicBase), x2apic)
        .expect("APIC base");
    v.cache_mut().flush().expect("store");
    v.cache_mut().invalidate();
    assert_eq!(
        v.cache_mut().get(Field::Msr(Msr::ApicBase)).expect("base"),
        x2apic
    );
    v.cache_mut().invalidate();
    v.reset().expect("RESET");
    let devs = v.verify().expect("verify");
    assert!(mismatches(&devs).is_empty(), "{:?}", mismatches(&devs));
    assert_eq!(
        v.cache_mut().get(Field::Msr(Msr::ApicBase)).expect("base"),
        u128::from(want.msrs.apic_base)
    );
}

#[test]
fn a_startup_ipi_pending_at_a_short_reset_does_not_start_the_ap() {
    let Some(mut vm) = loop_vm(2) else { return };
    let vcpus = vm.vcpus();
    if vcpus[1].cache_mut().touch_count().is_none() {
        eprintln!("skipped: the host does not count guest entries");
        return;
    }
    // vCPU 0 sends a startup IPI to vCPU 1, which waits for SIPI and is not running, so it
    // stays pending in vCPU 1's local APIC: x2APIC mode through the cache (a store it counts),
    // then the x2APIC ICR (MSR 0x830: startup, vector 0x12, to x2APIC ID 1) through the fd.
    let base = vcpus[0]
        .cache_mut()
        .get(Field::Msr(Msr::ApicBase))
        .expect("APIC base");
    vcpus[0]
        .cache_mut()
        .set(Field::Msr(Msr::ApicBase), base | (1 << 10))
        .expect("x2APIC");
    vcpus[0].cache_mut().flush().expect("store");
    let icr = kvm_bindings::kvm_msr_entry {
        index: 0x830,
        data: (1 << 32) | 0x4612,
        ..Default::default()
    };
    let msrs = kvm_bindings::Msrs::from_entries(&[icr]).expect("one MSR");
    let sent = vcpus[0]
        .cache_mut()
        .backend_mut()
        .fd()
        .set_msrs(&msrs)
        .expect("ICR write");
    assert_eq!(sent, 1, "KVM took the ICR write");

    // vCPU 1 has not run since its RESET: the short RESET.
    let path = path_of(&vcpus[1]);
    vcpus[1].cache_mut().invalidate();
    let out = vcpus[1].reset().expect("RESET");
    eprintln!(
        "AP with a SIPI pending: RESET {:?} ({path:?} path)",
        out.calls
    );
    let shape = (out.calls.loads, out.calls.stores);
    let shapes: &[(u64, u64)] = match path {
        // KVM_SET_VCPU_EVENTS raised the INIT and KVM_GET_MP_STATE took it, then KVM started
        // the AP with the SIPI; the engine stored the local APIC, debug registers and MP state
        // back, and nothing else (no KVM_SET_MSRS, XSAVE or XCRS) ... or, where the short RESET
        // writes IA32_TSC, the INIT rode that KVM_SET_MSRS as an INIT IPI, which drops a pending
        // SIPI by itself.
        Path::Eager => &[(1, 4), (1, 1)],
        // The INIT IPI rides the one KVM_SET_MSRS (the preamble), which drops the pending SIPI
        // by itself; KVM takes the INIT at the next run or read.
        Path::Lazy => &[(0, 1)],
    };
    assert!(shapes.contains(&shape), "{path:?} path: {:?}", out.calls);
    let devs = vcpus[1].verify().expect("verify");
    assert!(mismatches(&devs).is_empty(), "{:?}", mismatches(&devs));
    assert_eq!(
        vcpus[1].cache_mut().get(Field::Activity).expect("activity"),
        spec::Activity::WaitForSipi as u128,
        "the AP waits for SIPI"
    );
    let cs = vcpus[1].cache_mut().segment(spec::Seg::Cs).expect("CS");
    assert_eq!(
        (cs.selector, cs.base),
        (0xf000, 0xffff_0000),
        "not the SIPI's 0x1200"
    );
}
