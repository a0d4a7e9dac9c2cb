//! The VMX-style model backend: VMCS access, the Field mapping, poison, nested state, the
//! guest hook.

use proptest::prelude::*;
use vcpu_reset::backend::model::vmcs::{
    self, GUEST_ACTIVITY_STATE, GUEST_CR0, GUEST_IA32_EFER, GUEST_IA32_SYSENTER_CS,
    GUEST_INTERRUPTIBILITY_STATE, GUEST_PENDING_DEBUG_EXCEPTIONS, GUEST_RIP, VMCS_LINK_POINTER,
};
use vcpu_reset::backend::model::{
    GuestView, INVALID_VMCS_POINTER, Location, ModelVcpu, POISON_BYTE, VmcsError, fields_of,
    is_poison, poison_pattern,
};
use vcpu_reset::backend::{Backend, BackendError, ClassSet, Exit, IoDir, StateClass, Stats};
use vcpu_reset::spec::{
    Activity, Class, EventFlag, Field, Gpr, LapicBitmap, LapicReg, Msr, Nested, Seg, SegPart,
    VcpuState, X87,
};

const P64: u64 = u64::from_ne_bytes([POISON_BYTE; 8]);

/// The single MSRs whose home in the model is a VMCS guest-state field: PAT, DEBUGCTL,
/// PERF_GLOBAL_CTRL, SYSENTER_CS/ESP/EIP, SMBASE (FS/GS base are the VMCS segment bases).
const MSRS_IN_VMCS: u64 = 7;

/// Number of spec fields of `class`, computed from the spec's field list so that adding a
/// field there does not break the counts below.
fn spec_fields(class: Class) -> u64 {
    let n = Field::all().iter().filter(|f| f.class() == class).count();
    u64::try_from(n).expect("field count fits u64")
}

/// MSRs the model keeps in its MSR store: every MSR-class field but those in the VMCS and
/// IA32_FS_BASE / IA32_GS_BASE.
fn msrs_in_store() -> u64 {
    spec_fields(Class::Msrs) - MSRS_IN_VMCS - 2
}

/// XSAVE slots: every x87/SSE/AVX/AVX-512/PKRU field (XCR0 is not in the XSAVE area).
fn xsave_slots() -> u64 {
    spec_fields(Class::Fpu) - 1
}

/// APIC words: each single register (ICR is two words) and 8 words per bitmap.
fn apic_words() -> u64 {
    let n = LapicReg::ALL.len() + 1 + 8 * LapicBitmap::ALL.len();
    u64::try_from(n).expect("word count fits u64")
}

fn store_all(m: &mut ModelVcpu, s: &VcpuState) {
    for c in StateClass::ALL {
        m.store(c, s).unwrap_or_else(|e| panic!("store {c}: {e}"));
    }
}

fn load_all(m: &mut ModelVcpu) -> VcpuState {
    let mut s = VcpuState::default();
    for c in StateClass::ALL {
        m.load(c, &mut s)
            .unwrap_or_else(|e| panic!("load {c}: {e}"));
    }
    s
}

/// What the model keeps of `s`: IA32_SYSENTER_CS and SMBASE live in 32-bit VMCS fields.
fn canonical(mut s: VcpuState) -> VcpuState {
    s.msrs.sysenter_cs &= 0xffff_ffff;
    s.msrs.smbase &= 0xffff_ffff;
    s
}

/// A state with every field from `values`, except what the model can only get from the guest:
/// the activity state is one of the four, and the nested state is none, or (`nested`) VMX root
/// operation with the VMXON region at 0x1000 as the tests below enter it.
fn state_from(values: &[u128], activity: u8, nested: bool) -> VcpuState {
    let mut s = VcpuState::default();
    for (f, v) in Field::all().into_iter().zip(values.iter().copied()) {
        f.set(&mut s, v);
    }
    Field::Activity.set(&mut s, u128::from(activity & 3));
    s.nested = if nested {
        Nested {
            present: true,
            vmxon_pointer: 0x1000,
            ..Nested::NONE
        }
    } else {
        Nested::NONE
    };
    s
}

/// All zero, except the nested state, which is none (all-zero pointers would be a VMXON region
/// at 0, which a store cannot create).
fn zero_state() -> VcpuState {
    VcpuState {
        nested: Nested::NONE,
        ..VcpuState::default()
    }
}

// ---------------------------------------------------------------------------------------------
// VMREAD / VMWRITE

#[test]
fn vmwrite_truncates_to_the_field_width_and_vmread_zero_extends() {
    let mut m = ModelVcpu::new();
    // 16-bit guest CS selector.
    m.vmwrite(vmcs::selector(Seg::Cs), 0x1234_5678_9abc_def0)
        .unwrap();
    assert_eq!(m.vmread(0x0802).unwrap(), 0xdef0);
    // 32-bit guest CS limit.
    m.vmwrite(0x4802, 0x1234_5678_9abc_def0).unwrap();
    assert_eq!(m.vmread(vmcs::limit(Seg::Cs)).unwrap(), 0x9abc_def0);
    // 64-bit guest IA32_EFER.
    m.vmwrite(GUEST_IA32_EFER, 0x1122_3344_5566_7788).unwrap();
    assert_eq!(m.vmread(GUEST_IA32_EFER).unwrap(), 0x1122_3344_5566_7788);
    // Natural-width guest CR0: 64 bits on the model.
    m.vmwrite(GUEST_CR0, 0xffff_0000_8000_0031).unwrap();
    assert_eq!(m.vmread(GUEST_CR0).unwrap(), 0xffff_0000_8000_0031);
}

#[test]
fn high_access_reads_and_writes_bits_63_32_of_64_bit_fields() {
    let mut m = ModelVcpu::new();
    m.vmwrite(GUEST_IA32_EFER, 0x1122_3344_5566_7788).unwrap();
    assert_eq!(m.vmread(GUEST_IA32_EFER | 1).unwrap(), 0x1122_3344);
    // A high-access VMWRITE takes bits 31:0 of the source into bits 63:32, keeps bits 31:0.
    m.vmwrite(GUEST_IA32_EFER | 1, 0xaabb_ccdd_9988_7766)
        .unwrap();
    assert_eq!(m.vmread(GUEST_IA32_EFER).unwrap(), 0x9988_7766_5566_7788);
    // VMCS link pointer and PDPTE3 have high halves too.
    m.vmwrite(VMCS_LINK_POINTER | 1, 0xffff_ffff).unwrap();
    assert_eq!(m.vmread(VMCS_LINK_POINTER).unwrap(), 0xffff_ffff_0000_0000);
    m.vmwrite(vmcs::pdpte(3) | 1, 1).unwrap();
    assert_eq!(m.vmread(0x2810).unwrap(), 1 << 32);
}

#[test]
fn unsupported_encodings_fail_with_error_12_and_change_nothing() {
    let mut m = ModelVcpu::new();
    m.vmwrite(GUEST_CR0, 0x31).unwrap();
    for enc in [
        0x0801,   // "high" access of a 16-bit field
        0x4825,   // "high" access of a 32-bit field
        0x6801,   // "high" access of a natural-width field
        0x0000,   // VPID: a control field, not guest state
        0x0810,   // guest interrupt status: not held by the model
        0x4400,   // VM-instruction error: read-only data field
        0x6828,   // past the last natural-width guest field
        0x1_6800, // reserved bits above bit 14
    ] {
        let want = Err(VmcsError::UnsupportedComponent { encoding: enc });
        assert_eq!(m.vmread(enc), want, "vmread {enc:#x}");
        assert_eq!(m.vmwrite(enc, 0xdead), want.map(|_| ()), "vmwrite {enc:#x}");
        if let Err(e) = m.vmread(enc) {
            assert_eq!(e.vm_instruction_error(), 12);
        }
    }
    assert_eq!(m.vmread(GUEST_CR0).unwrap(), 0x31);
}

#[test]
fn vmread_and_vmwrite_count_themselves() {
    let mut m = ModelVcpu::new();
    assert_eq!(m.vmcs_counts(), (0, 0));
    m.vmwrite(GUEST_RIP, 0xfff0).unwrap();
    m.vmwrite(GUEST_RIP | 1, 0).unwrap_err();
    m.vmread(GUEST_RIP).unwrap();
    m.vmread(GUEST_RIP).unwrap();
    m.vmread(0x6828).unwrap_err();
    // Failing instructions were executed too.
    assert_eq!(m.vmcs_counts(), (3, 2));
    assert_eq!(
        m.stats(),
        Stats {
            loads: 3,
            stores: 2,
            ..Stats::default()
        }
    );
}

// ---------------------------------------------------------------------------------------------
// The Field mapping

#[test]
fn backend_reports_every_class_and_field() {
    let m = ModelVcpu::new();
    assert_eq!(m.supported(), ClassSet::all());
    assert_eq!(m.volatile(), ClassSet::all());
    assert_eq!(m.delivered(), ClassSet::EMPTY);
    assert!(Field::all().into_iter().all(|f| m.holds(f)));
    // Every field is moved by exactly one class, except the FS/GS base MSRs, which are fs.base
    // and gs.base.
    let moved: usize = StateClass::ALL.iter().map(|c| fields_of(*c).len()).sum();
    assert_eq!(moved, Field::all().len() - 2);
    assert_eq!(StateClass::of(Field::Msr(Msr::FsBase)), StateClass::Sregs);
    assert_eq!(StateClass::of(Field::Msr(Msr::ApicBase)), StateClass::Msrs);
    assert_eq!(StateClass::of(Field::Xcr0), StateClass::Xcrs);
}

#[test]
fn each_class_counts_one_access_per_field() {
    let mut m = ModelVcpu::new();
    let s = zero_state();
    let mut out = VcpuState::default();
    // (class, VMWRITEs on store, store writes, VMREADs on load, store reads)
    let expect = [
        // RSP, RIP, RFLAGS in the VMCS; 15 GPRs in the store.
        (StateClass::Regs, 3, 15, 3, 15),
        // 32 segment fields, 4 GDTR/IDTR, CR0/3/4, EFER, 4 PDPTEs; CR2 and CR8 in the store.
        (StateClass::Sregs, 44, 2, 44, 2),
        // DR7; DR0-3, DR6.
        (StateClass::Debug, 1, 5, 1, 5),
        // 8 x87 env + 8 ST + MXCSR + 16 XMM + 16 YMM_H + 32 ZMM_H + 64 Hi16_ZMM + 8 k + PKRU.
        (StateClass::Fpu, 0, xsave_slots(), 0, xsave_slots()),
        (StateClass::Xcrs, 0, 1, 0, 1),
        // PAT, DEBUGCTL, PERF_GLOBAL_CTRL, SYSENTER_CS/ESP/EIP, SMBASE in the VMCS; every
        // other MSR (but FS/GS base) in the store.
        (
            StateClass::Msrs,
            MSRS_IN_VMCS,
            msrs_in_store(),
            MSRS_IN_VMCS,
            msrs_in_store(),
        ),
        // 19 single registers + ICR (two words) + 24 bitmap words.
        (StateClass::Lapic, 0, apic_words(), 0, apic_words()),
        (StateClass::MpState, 1, 0, 1, 0),
        // Interruptibility and pending debug exceptions; 5 model flags. A load reads the
        // interruptibility state once per flag (shadow, NMI blocking).
        (StateClass::Events, 2, 5, 2, 5),
        // Drop: three pointers, three flags and the link pointer, then each of the six parts.
        // Load: the VMXON pointer and guest-mode flag for nested.state, then each part.
        (StateClass::Nested, 1, 6 + 6, 0, 2 + 6),
    ];
    for (class, vmw, sw, vmr, sr) in expect {
        let before_vmcs = m.vmcs_counts();
        let before = m.stats();
        m.store(class, &s).unwrap();
        let mid_vmcs = m.vmcs_counts();
        let mid = m.stats();
        assert_eq!(mid_vmcs.1 - before_vmcs.1, vmw, "{class} VMWRITEs");
        assert_eq!(mid.since(&before).stores, vmw + sw, "{class} stores");
        assert_eq!(mid.since(&before).loads, 0, "{class} store reads nothing");
        m.load(class, &mut out).unwrap();
        let after = m.stats().since(&mid);
        assert_eq!(m.vmcs_counts().0 - mid_vmcs.0, vmr, "{class} VMREADs");
        assert_eq!(after.loads, vmr + sr, "{class} loads");
        assert_eq!(after.stores, 0, "{class} load writes nothing");
    }
}

#[test]
fn attributes_map_onto_access_rights_with_unusable_for_not_present() {
    let mut m = ModelVcpu::new();
    let mut s = VcpuState::default();
    s.segments[Seg::Cs as usize].attributes = 0x9b;
    s.segments[Seg::Ldtr as usize].attributes = 0x82;
    s.segments[Seg::Ds as usize].attributes = 0x0093 & !0x80; // not present
    s.segments[Seg::Es as usize].attributes = 0; // a null segment
    m.store(StateClass::Sregs, &s).unwrap();
    assert_eq!(m.vmread(vmcs::access_rights(Seg::Cs)).unwrap(), 0x9b);
    assert_eq!(m.vmread(vmcs::access_rights(Seg::Ldtr)).unwrap(), 0x82);
    assert_eq!(m.vmread(vmcs::access_rights(Seg::Ds)).unwrap(), 0x1_0013);
    assert_eq!(m.vmread(vmcs::access_rights(Seg::Es)).unwrap(), 0x1_0000);
    let mut back = VcpuState::default();
    m.load(StateClass::Sregs, &mut back).unwrap();
    assert_eq!(back.segments, s.segments);
}

#[test]
fn sysenter_cs_and_smbase_keep_bits_31_0_as_their_vmcs_fields_do() {
    let mut m = ModelVcpu::new();
    let mut s = VcpuState::default();
    s.msrs.sysenter_cs = 0xffff_ffff_0000_0010;
    s.msrs.smbase = 0x1_0003_0000;
    m.store(StateClass::Msrs, &s).unwrap();
    assert_eq!(m.vmread(GUEST_IA32_SYSENTER_CS).unwrap(), 0x10);
    assert_eq!(m.vmread(vmcs::GUEST_SMBASE).unwrap(), 0x3_0000);
    let mut back = VcpuState::default();
    m.load(StateClass::Msrs, &mut back).unwrap();
    assert_eq!(back.msrs.sysenter_cs, 0x10);
    assert_eq!(back.msrs.smbase, 0x3_0000);
}

#[test]
fn fs_and_gs_base_msrs_are_the_segment_bases() {
    let mut m = ModelVcpu::new();
    let mut s = VcpuState::default();
    Field::Msr(Msr::FsBase).set(&mut s, 0x7fff_0000_1000);
    s.segments[Seg::Gs as usize].base = 0xffff_8880_0000_0000;
    m.store(StateClass::Sregs, &s).unwrap();
    assert_eq!(m.vmread(vmcs::base(Seg::Fs)).unwrap(), 0x7fff_0000_1000);
    assert_eq!(
        m.vmread(vmcs::base(Seg::Gs)).unwrap(),
        0xffff_8880_0000_0000
    );
    // The msrs class does not touch them: a stale FS base in an msrs store cannot clobber it.
    m.store(StateClass::Msrs, &VcpuState::default()).unwrap();
    assert_eq!(m.vmread(vmcs::base(Seg::Fs)).unwrap(), 0x7fff_0000_1000);
    let mut back = VcpuState::default();
    m.load(StateClass::Sregs, &mut back).unwrap();
    assert_eq!(Field::Msr(Msr::GsBase).get(&back), 0xffff_8880_0000_0000);
}

#[test]
fn events_use_the_interruptibility_state() {
    let mut m = ModelVcpu::new();
    m.vmwrite(GUEST_PENDING_DEBUG_EXCEPTIONS, 0x4000).unwrap();
    let mut s = VcpuState::default();
    s.events.interrupt_shadow = true;
    s.events.nmi_masked = true;
    s.events.smi_pending = true;
    m.store(StateClass::Events, &s).unwrap();
    // STI blocking (bit 0) and NMI blocking (bit 3), nothing else.
    assert_eq!(m.vmread(GUEST_INTERRUPTIBILITY_STATE).unwrap(), 0b1001);
    assert_eq!(m.vmread(GUEST_PENDING_DEBUG_EXCEPTIONS).unwrap(), 0);
    // Blocking by MOV SS is an interrupt shadow too.
    m.vmwrite(GUEST_INTERRUPTIBILITY_STATE, 0b0010).unwrap();
    let mut back = VcpuState::default();
    m.load(StateClass::Events, &mut back).unwrap();
    assert!(back.events.interrupt_shadow);
    assert!(!back.events.nmi_masked);
    assert!(back.events.smi_pending);
    assert!(!back.events.nmi_pending);
}

/// An AP a host never started is a state to read, not to store: the model refuses it as KVM's
/// backend does, and keeps what it held.
#[test]
fn an_uninitialized_activity_state_is_refused_on_store() {
    let mut m = ModelVcpu::new();
    let wait = VcpuState {
        activity: Activity::WaitForSipi,
        ..VcpuState::default()
    };
    m.store(StateClass::MpState, &wait).unwrap();
    let never_started = VcpuState {
        activity: Activity::Uninitialized,
        ..VcpuState::default()
    };
    let err = m.store(StateClass::MpState, &never_started).unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::Invalid {
                what: "activity state",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(m.vmread(GUEST_ACTIVITY_STATE).unwrap(), 3);
}

#[test]
fn an_invalid_activity_state_is_refused_on_load() {
    let mut m = ModelVcpu::new();
    let mut s = VcpuState {
        activity: Activity::WaitForSipi,
        ..VcpuState::default()
    };
    m.store(StateClass::MpState, &s).unwrap();
    assert_eq!(m.vmread(GUEST_ACTIVITY_STATE).unwrap(), 3);
    m.vmwrite(GUEST_ACTIVITY_STATE, 7).unwrap();
    s.activity = Activity::Hlt;
    let err = m.load(StateClass::MpState, &mut s).unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::Invalid {
                what: "activity state",
                ..
            }
        ),
        "{err}"
    );
    // The failed load left the state alone.
    assert_eq!(s.activity, Activity::Hlt);
}

fn arb_values() -> impl Strategy<Value = Vec<u128>> {
    prop::collection::vec(any::<u128>(), Field::all().len())
}

proptest! {
    #[test]
    fn every_class_round_trips(values in arb_values(), other in arb_values(), act in 0u8..4) {
        let s = state_from(&values, act, false);
        let want = canonical(s);
        let mut m = ModelVcpu::new_poisoned();
        for class in StateClass::ALL {
            m.store(class, &s).unwrap();
            // Load into an unrelated state: the class's fields come back, others stay.
            let before = state_from(&other, act ^ 1, false);
            let mut got = before;
            m.load(class, &mut got).unwrap();
            for f in Field::all() {
                let (g, expect) = if StateClass::of(f) == class {
                    (f.get(&got), f.get(&want))
                } else {
                    (f.get(&got), f.get(&before))
                };
                prop_assert_eq!(g, expect, "{} after load of {}", f, class);
            }
        }
        // (No poison check here: a random 16-bit value can be 0xa5a5; the all-zero store
        // test proves every location is reached.)
        prop_assert_eq!(load_all(&mut m), want);
    }

    #[test]
    fn a_whole_state_with_nested_state_round_trips(values in arb_values(), act in 0u8..4) {
        let s = state_from(&values, act, true);
        let mut m = ModelVcpu::new();
        m.vmxon(0x1000).unwrap();
        store_all(&mut m, &s);
        prop_assert_eq!(load_all(&mut m), canonical(s));
        prop_assert_eq!(m.nested().vmxon_pointer(), Some(0x1000));
    }
}

// ---------------------------------------------------------------------------------------------
// Poison

#[test]
fn a_poisoned_vcpu_lists_every_location() {
    let m = ModelVcpu::new_poisoned();
    let all = m.locations();
    assert_eq!(m.poisoned_locations(), all);
    let listed = m.poisoned();
    assert_eq!(listed.len(), all.len());
    // 59 VMCS fields, 15 GPRs, CR2, CR8, DR0-3, DR6, the XSAVE slots, XCR0, the MSR store,
    // the APIC words, 5 event flags, 3 nested pointers and 3 nested flags.
    assert_eq!(
        u64::try_from(all.len()).expect("location count fits u64"),
        59 + 15 + 2 + 5 + xsave_slots() + 1 + msrs_in_store() + apic_words() + 5 + 3 + 3
    );
    for want in [
        "vmcs 0x6800 GUEST_CR0",
        "vmcs 0x2800 VMCS_LINK_POINTER",
        "vmcs 0x6822 GUEST_PENDING_DEBUG_EXCEPTIONS",
        "gpr rax",
        "cr2",
        "xsave x87.st7",
        "xsave zmm31.3",
        "xsave xtilecfg.0",
        "xsave tmm7.63",
        "msr 0x1b msr.ia32_apic_base",
        "msr 0x427 msr.ia32_mc9_misc",
        "apic 0x020 lapic.id",
        "apic 0x310 lapic.icr[63:32]",
        "apic 0x270 lapic.irr7",
        "model events.smm",
        "nested vmxon pointer",
        "nested current-VMCS pointer",
        "nested enlightened-VMCS pointer",
        "nested nested.guest_mode",
        "nested nested.gif",
        "msr 0x480 msr.ia32_vmx_basic",
        "msr 0x8c msr.ia32_sgxlepubkeyhash0",
        "msr 0xc0010117 msr.vm_hsave_pa",
    ] {
        assert!(listed.iter().any(|l| l == want), "{want} not in {listed:?}");
    }
    assert!(
        !listed.iter().any(|l| l.contains("rsp")),
        "RSP lives in the VMCS"
    );
}

#[test]
fn a_poisoned_vcpu_loads_poison_everywhere() {
    let mut m = ModelVcpu::new_poisoned();
    let mut s = VcpuState::default();
    let mut checked = 0;
    for class in StateClass::ALL {
        match class {
            // Neither an activity-state encoding nor a flag can be the pattern: refused.
            StateClass::MpState | StateClass::Events | StateClass::Nested => {
                let e = m.load(class, &mut s).unwrap_err();
                assert!(matches!(e, BackendError::Invalid { .. }), "{class}: {e}");
                continue;
            }
            _ => m.load(class, &mut s).unwrap(),
        }
        for f in fields_of(class) {
            if f.width() >= 8 {
                assert!(is_poison(*f, f.get(&s)), "{f} = {:#x}", f.get(&s));
                checked += 1;
            }
        }
    }
    // All but FS/GS base (moved as segment bases), the activity state, the seven event flags,
    // nested.state and the six nested parts (their classes refuse to load).
    assert_eq!(checked, Field::all().len() - 2 - 1 - 7 - 1 - 6);
    // Real values, by width.
    assert_eq!(s.gprs[Gpr::Rax as usize], P64);
    assert_eq!(s.gprs[Gpr::Rsp as usize], P64);
    assert_eq!(s.segments[Seg::Cs as usize].selector, 0xa5a5);
    assert_eq!(s.segments[Seg::Cs as usize].limit, 0xa5a5_a5a5);
    assert_eq!(s.segments[Seg::Cs as usize].attributes, 0xa5a5);
    assert_eq!(s.gdtr.limit, 0xa5a5);
    assert_eq!(s.fpu.st[0], poison_pattern(80));
    assert_eq!(s.fpu.fop, 0x5a5);
    assert_eq!(s.vectors.xmm[15], poison_pattern(128));
    assert_eq!(s.vectors.xtilecfg[0], poison_pattern(128));
    assert_eq!(
        s.vectors.xtiledata[15][31],
        poison_pattern(128),
        "TMM7's last word"
    );
    assert_eq!(s.pkru, 0xa5a5_a5a5);
    assert_eq!(s.msrs.sysenter_cs, 0xa5a5_a5a5);
    assert_eq!(s.msrs.apic_base, P64);
    assert_eq!(s.lapic.icr, P64);
    assert_eq!(s.lapic.isr[7], 0xa5a5_a5a5);
    // The poisoned nested pointers count as nested state.
    assert!(m.nested().in_operation());
    assert_eq!(m.nested().current_vmcs_pointer(), P64);
}

#[test]
fn is_poison_matches_the_pattern_for_the_held_width() {
    assert!(is_poison(Field::Gpr(Gpr::Rax), poison_pattern(64)));
    assert!(!is_poison(Field::Gpr(Gpr::Rax), 0));
    assert!(!is_poison(Field::Gpr(Gpr::Rax), poison_pattern(32)));
    // SYSENTER_CS is held in a 32-bit VMCS field.
    assert!(is_poison(Field::Msr(Msr::SysenterCs), 0xa5a5_a5a5));
    assert!(!is_poison(Field::Msr(Msr::SysenterCs), poison_pattern(64)));
    assert!(is_poison(Field::Seg(Seg::Ss, SegPart::Attributes), 0xa5a5));
    assert!(is_poison(Field::X87(X87::Fop), 0x5a5));
    assert!(is_poison(Field::Lapic(LapicReg::Icr), poison_pattern(64)));
    // Too narrow to tell.
    assert!(!is_poison(Field::Activity, 1));
    assert!(!is_poison(Field::Event(EventFlag::Smm), 1));
    assert!(!is_poison(Field::Nested, 1));
}

#[test]
fn storing_an_all_zero_state_reaches_every_location() {
    let mut m = ModelVcpu::new_poisoned();
    store_all(&mut m, &zero_state());
    assert_eq!(m.poisoned(), Vec::<String>::new());
    assert_eq!(load_all(&mut m), zero_state());
    // What the stores wrote where no spec field maps.
    assert_eq!(m.vmread(VMCS_LINK_POINTER).unwrap(), u64::MAX);
    assert_eq!(m.vmread(GUEST_PENDING_DEBUG_EXCEPTIONS).unwrap(), 0);
    assert_eq!(m.vmread(GUEST_INTERRUPTIBILITY_STATE).unwrap(), 0);
    assert_eq!(m.nested().current_vmcs_pointer(), INVALID_VMCS_POINTER);
}

#[test]
fn every_class_owns_locations_and_together_they_cover_all() {
    let fresh = ModelVcpu::new_poisoned().poisoned_locations();
    let mut covered: Vec<Location> = Vec::new();
    for class in StateClass::ALL {
        let mut m = ModelVcpu::new_poisoned();
        m.store(class, &zero_state()).unwrap();
        let left = m.poisoned_locations();
        let owned: Vec<Location> = fresh
            .iter()
            .copied()
            .filter(|l| !left.contains(l))
            .collect();
        assert!(!owned.is_empty(), "{class} reaches no location");
        for l in owned {
            assert!(!covered.contains(&l), "{l} written by two classes");
            covered.push(l);
        }
    }
    covered.sort();
    let mut all = fresh;
    all.sort();
    assert_eq!(covered, all);
}

// ---------------------------------------------------------------------------------------------
// Nested state

#[test]
fn storing_nested_zero_drops_all_nested_state() {
    let mut m = ModelVcpu::new();
    m.vmxon(0x1000).unwrap();
    m.vmptrld(0x2000).unwrap();
    m.vmlaunch().unwrap();
    m.set_evmcs(Some(0x3000)).unwrap();
    let mut s = VcpuState::default();
    m.load(StateClass::Nested, &mut s).unwrap();
    assert!(s.nested.present);
    // Storing 1 keeps it.
    m.store(StateClass::Nested, &s).unwrap();
    assert_eq!(m.nested().current_vmcs(), Some(0x2000));
    // Storing 0 (and every part's "none") drops all of it.
    s.nested = Nested::NONE;
    m.store(StateClass::Nested, &s).unwrap();
    let n = m.nested();
    assert_eq!(n.vmxon_pointer(), None);
    assert_eq!(n.current_vmcs_pointer(), INVALID_VMCS_POINTER);
    assert_eq!(n.evmcs_pointer(), None);
    assert_eq!(n.launch_state(0x2000), None);
    assert_eq!(m.vmread(VMCS_LINK_POINTER).unwrap(), u64::MAX);
    s.nested.present = true;
    m.load(StateClass::Nested, &mut s).unwrap();
    assert!(!s.nested.present);
    // Nested state cannot be created from a bit.
    s.nested.present = true;
    let e = m.store(StateClass::Nested, &s).unwrap_err();
    assert!(
        matches!(
            e,
            BackendError::Invalid {
                what: "nested state",
                ..
            }
        ),
        "{e}"
    );
    assert!(!m.nested().is_present());
    // And VMX operation can be entered again.
    m.vmxon(0x1000).unwrap();
}

#[test]
fn invalid_vmx_instructions_fail() {
    let mut m = ModelVcpu::new();
    assert!(m.vmxoff().is_err());
    assert!(m.vmptrld(0x2000).is_err());
    assert!(m.vmclear(0x2000).is_err());
    m.vmxon(0x1000).unwrap();
    assert_eq!(
        m.vmxon(0x1000).unwrap_err().vm_instruction_error(),
        Some(15)
    );
    assert_eq!(
        m.vmptrld(0x1000).unwrap_err().vm_instruction_error(),
        Some(10)
    );
    assert_eq!(
        m.vmclear(0x1000).unwrap_err().vm_instruction_error(),
        Some(3)
    );
    assert_eq!(
        m.vmptrld(0x2001).unwrap_err().vm_instruction_error(),
        Some(9)
    );
    assert_eq!(m.vmlaunch().unwrap_err().vm_instruction_error(), None);
}

// ---------------------------------------------------------------------------------------------
// The guest hook

#[test]
fn the_guest_hook_changes_rax_and_the_next_load_sees_it() {
    let mut m = ModelVcpu::new();
    let mut s = VcpuState::default();
    s.gprs[Gpr::Rax as usize] = 1;
    s.gprs[Gpr::Rsp as usize] = 0x7000;
    s.rip = 0xfff0;
    m.store(StateClass::Regs, &s).unwrap();
    m.set_guest(Box::new(|g: &mut GuestView<'_>| {
        let port_byte = g.io_in().first().copied().unwrap_or(0);
        let rax = g.get(Field::Gpr(Gpr::Rax)).unwrap_or(0);
        let rsp = g.get(Field::Gpr(Gpr::Rsp)).unwrap_or(0);
        g.set(Field::Gpr(Gpr::Rax), rax + 0x1233 + u128::from(port_byte))
            .and_then(|()| g.set(Field::Gpr(Gpr::Rbx), rsp))
            .and_then(|()| g.set(Field::Rip, 0xfff2))
            .map_or(
                Exit::InternalError {
                    reason: "set".into(),
                },
                |()| Exit::Io {
                    dir: IoDir::Out,
                    port: 0x80,
                    size: 1,
                    data: [port_byte, 0, 0, 0],
                },
            )
    }));
    m.set_io_in(&[0x42, 1, 2, 3, 4, 5]);
    let before = m.stats();
    let exit = m.run().unwrap();
    assert_eq!(
        exit,
        Exit::Io {
            dir: IoDir::Out,
            port: 0x80,
            size: 1,
            data: [0x42, 0, 0, 0]
        }
    );
    // The guest's own accesses are no VMREAD/VMWRITE or store access.
    let d = m.stats().since(&before);
    assert_eq!((d.loads, d.stores, d.runs), (0, 0, 1));
    let mut back = VcpuState::default();
    m.load(StateClass::Regs, &mut back).unwrap();
    assert_eq!(back.gprs[Gpr::Rax as usize], 1 + 0x1233 + 0x42);
    assert_eq!(back.gprs[Gpr::Rbx as usize], 0x7000);
    assert_eq!(back.rip, 0xfff2);
    // The IN data was for that run only.
    m.run().unwrap();
    m.load(StateClass::Regs, &mut back).unwrap();
    assert_eq!(back.gprs[Gpr::Rax as usize], 0x1276 + 0x1233);
}

#[test]
fn without_a_hook_run_halts_and_changes_nothing() {
    let mut m = ModelVcpu::new_poisoned();
    let mut s = zero_state();
    s.gprs[Gpr::Rcx as usize] = 7;
    store_all(&mut m, &s);
    let before = load_all(&mut m);
    assert_eq!(m.run().unwrap(), Exit::Hlt);
    assert_eq!(load_all(&mut m), before);
    assert_eq!(m.stats().runs, 1);
    // A cleared hook is gone too.
    m.set_guest(Box::new(|_| Exit::Shutdown));
    assert_eq!(m.run().unwrap(), Exit::Shutdown);
    m.clear_guest();
    assert_eq!(m.run().unwrap(), Exit::Hlt);
}

#[test]
fn the_guest_sees_the_same_mapping() {
    let mut m = ModelVcpu::new();
    m.set_guest(Box::new(|g: &mut GuestView<'_>| {
        let r = (|| {
            // A guest executing STI; then HLT with an NMI handler running.
            g.set(Field::Event(EventFlag::InterruptShadow), 1)?;
            g.set(Field::Event(EventFlag::NmiMasked), 1)?;
            g.set(Field::Activity, Activity::Hlt as u128)?;
            g.set(Field::Msr(Msr::GsBase), 0xffff_8000_0000_0000)?;
            g.nested()
                .vmxon(0x5000)
                .map_err(|e| BackendError::Invalid {
                    what: "vmxon",
                    why: e.to_string(),
                })?;
            // Bits beyond the field's three are dropped: 9 is HLT (1).
            g.set(Field::Activity, 9)
        })();
        match r {
            Ok(()) => Exit::Hlt,
            other => Exit::InternalError {
                reason: format!("{other:?}"),
            },
        }
    }));
    assert_eq!(m.run().unwrap(), Exit::Hlt);
    assert_eq!(m.vmread(GUEST_INTERRUPTIBILITY_STATE).unwrap(), 0b1001);
    assert_eq!(m.vmread(GUEST_ACTIVITY_STATE).unwrap(), 1);
    assert_eq!(
        m.vmread(vmcs::base(Seg::Gs)).unwrap(),
        0xffff_8000_0000_0000
    );
    assert_eq!(m.nested().vmxon_pointer(), Some(0x5000));
}
