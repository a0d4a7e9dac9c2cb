//! The state every INIT/RESET scenario starts from: the RESET state with as much as possible
//! changed to distinctive values, so that an INIT that forgets to keep something, or a RESET
//! that forgets to reset it, shows. Each value is chosen to be accepted by KVM's host-initiated
//! writes (canonical addresses, valid MTRR types, CR0 without paging).

use vcpu_reset_spec::{Field, Gpr, Msr, Seg, VcpuState};

/// The changes, as (field, value).
pub fn changes() -> Vec<(Field, u128)> {
    let mut v: Vec<(Field, u128)> = vec![
        (Field::Gpr(Gpr::Rax), 0x1111_2222_3333_4444),
        (Field::Gpr(Gpr::Rdx), 0x5555),
        (Field::Gpr(Gpr::R15), 0x0f0f),
        (Field::Rip, 0x1234),
        (Field::Rflags, 0x246),
        // CD/NW cleared and PE set: INIT must keep CD = NW = 0, RESET must set them.
        (Field::Cr0, 0x0000_0011),
        (Field::Cr2, 0xdead_b000),
        (Field::Cr3, 0x0000_5000),
        (Field::Cr4, 0x0000_0600), // OSFXSR | OSXMMEXCPT
        (Field::Cr8, 0x2),         // = TPR[7:4] below
        (Field::Efer, 0x1),        // SCE
        (Field::Dr(0), 0x1000),
        (Field::Dr(1), 0x2000),
        (Field::Dr(2), 0x3000),
        (Field::Dr(3), 0x4000),
        (Field::Dr6, 0xffff_0ff1),
        (Field::Dr7, 0x0000_0401),
        (Field::X87(vcpu_reset_spec::X87::Fcw), 0x027f),
        (Field::X87(vcpu_reset_spec::X87::Ftw), 0xffff),
        (Field::Mxcsr, 0x1fa0),
        (Field::Xmm(0), 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff),
        (Field::Xmm(15), 0xfeed_f00d),
        (Field::Msr(Msr::Pat), 0x0606_0606_0606_0606),
        (Field::Msr(Msr::SysenterCs), 0x10),
        (Field::Msr(Msr::SysenterEsp), 0xffff_8000_0000_8000),
        (Field::Msr(Msr::SysenterEip), 0xffff_8000_0000_9000),
        (Field::Msr(Msr::Star), 0x0023_0010_0000_0000),
        (Field::Msr(Msr::Lstar), 0xffff_8000_0010_0000),
        (Field::Msr(Msr::Cstar), 0xffff_8000_0020_0000),
        (Field::Msr(Msr::Fmask), 0x4700),
        (Field::Msr(Msr::KernelGsBase), 0xffff_8000_0030_0000),
        (Field::Msr(Msr::TscAux), 0x42),
        (Field::Msr(Msr::MtrrDefType), 0xc06),
        // A previous boot's CPUID faulting and halt-polling opt-out (INIT keeps both, RESET
        // must undo both), and KVM's paravirtual areas at a guest address but not enabled (bit
        // 0 clear, so KVM writes nothing there; INIT and RESET must both clear them).
        (Field::Msr(Msr::MiscFeaturesEnables), 0x1),
        (Field::Msr(Msr::KvmPollControl), 0x0),
        (Field::Msr(Msr::KvmSystemTime), 0x9040),
        (Field::Msr(Msr::KvmAsyncPfEn), 0x9080),
        (Field::Msr(Msr::KvmPvEoiEn), 0x90c0),
        (Field::MtrrPhysBase(0), 0x0000_0006),
        (Field::MtrrPhysMask(0), 0x0000_000f_f800_0800),
        (Field::MtrrFixed(0), 0x0606_0606_0606_0606),
        (Field::Lapic(vcpu_reset_spec::LapicReg::Tpr), 0x20),
        (Field::Lapic(vcpu_reset_spec::LapicReg::Svr), 0x1ff),
        (Field::Lapic(vcpu_reset_spec::LapicReg::Ldr), 0x0100_0000),
        (Field::Lapic(vcpu_reset_spec::LapicReg::LvtLint1), 0x400),
        (Field::Lapic(vcpu_reset_spec::LapicReg::LvtError), 0xfe),
        (Field::Lapic(vcpu_reset_spec::LapicReg::TimerDivide), 0xb),
    ];
    v.push((
        Field::Seg(Seg::Gs, vcpu_reset_spec::SegPart::Base),
        0xffff_8000_0040_0000,
    ));
    v.push((
        Field::Seg(Seg::Ds, vcpu_reset_spec::SegPart::Selector),
        0x18,
    ));
    v
}

/// `base` with the changes applied.
pub fn dirtied(base: &VcpuState) -> VcpuState {
    let mut s = *base;
    for (f, v) in changes() {
        f.set(&mut s, v);
    }
    s
}

/// The state the probe firmware leaves before it reboots itself (`ProbeOptions::reboot`): the
/// RESET state with CR0.CD/NW cleared, the x87 unit after FNINIT, and IA32_PAT and
/// IA32_SYSENTER_CS written (see `probe::REBOOT_DIRTY_PAT`). An INIT must keep all of these.
pub fn before_probe_reboot(reset: &VcpuState) -> VcpuState {
    let mut s = *reset;
    s.cr0 &= !0x6000_0000;
    s.fpu.fcw = 0x037f;
    s.fpu.fsw = 0;
    s.fpu.ftw = 0xffff;
    s.fpu.fop = 0;
    s.fpu.fip = 0;
    s.fpu.fdp = 0;
    s.fpu.fcs = 0;
    s.fpu.fds = 0;
    s.msrs.pat = crate::probe::REBOOT_DIRTY_PAT;
    s.msrs.sysenter_cs = crate::probe::REBOOT_DIRTY_SYSENTER_CS;
    s
}
