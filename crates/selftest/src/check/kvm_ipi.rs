//! Scenario `kvm-init-ipi`: KVM's own INIT, driven entirely by the guest.
//!
//! The BSP's firmware enables its local APIC and starts the AP with INIT and a startup IPI; the
//! AP dirties its own state (CR0.CD/NW cleared, CR3, CR4, EFER, DR0–DR3, DR7, the x87 and SSE
//! state through FXRSTOR, PAT, SYSENTER, MTRRdefType, GS base, KERNEL_GS_BASE), sets a flag in
//! RAM and halts; the BSP sees the flag and sends INIT and a startup IPI again, this time to
//! the page holding the probe, which records what the AP sees after KVM's INIT. Nothing is set
//! from the host: the vCPUs start in KVM's creation state and KVM's in-kernel local APICs carry
//! the IPIs. Guest view only (the host view of KVM's INIT is the `kvm-init` scenario).

use std::collections::BTreeMap;

use iced_x86::code_asm::*;
use vcpu_reset_spec::{self as spec, Event, Field, Transition, VcpuIdentity, VcpuState};

use super::report::{Report, View};
use super::scenario::{Expectation, judge_all, observe_probe_run};
use super::verdict::Owner;
use crate::probe::{self, ProbeOptions};
use crate::runner::{Firmware, SharedBuffer, Sink, Vm, VmConfig};

/// Where the AP's dirtying code goes (SIPI vector 0x09).
const DIRTY_VECTOR: u8 = 0x09;
/// Where the AP's probe goes (SIPI vector 0x10).
const PROBE_VECTOR: u8 = 0x10;
/// The FXRSTOR image the AP loads (16-byte aligned, in RAM).
const FX_IMAGE: u32 = 0x8000;
/// The AP's "dirtied" flag.
const FLAG: u32 = 0x4e0;
/// The unreal-mode GDT and its pointer.
const GDT: u32 = 0x4c0;
const GDT_PTR: u32 = 0x4d0;
const APIC: u32 = 0xfee0_0000;

/// The values the AP writes, as (field, value); FXRSTOR's are in `fx_image`.
fn ap_writes() -> Vec<(Field, u128)> {
    use vcpu_reset_spec::Msr;
    vec![
        (Field::Cr0, 0x10),
        (Field::Cr3, 0x5000),
        (Field::Cr4, 0x600),
        (Field::Efer, 0x1),
        (Field::Dr(0), 0x1000),
        (Field::Dr(1), 0x2000),
        (Field::Dr(2), 0x3000),
        (Field::Dr(3), 0x4000),
        (Field::Dr7, 0x600),
        (Field::Msr(Msr::Pat), 0x0006_0606_0006_0606),
        (Field::Msr(Msr::SysenterCs), 0x10),
        (Field::Msr(Msr::SysenterEsp), 0x8000),
        (Field::Msr(Msr::SysenterEip), 0x9000),
        (Field::Msr(Msr::MtrrDefType), 0xc06),
        (Field::Msr(Msr::GsBase), 0x0040_0000),
        (Field::Msr(Msr::KernelGsBase), 0x1234_5000),
        (Field::X87(vcpu_reset_spec::X87::Fcw), 0x027f),
        (Field::X87(vcpu_reset_spec::X87::Fsw), 0),
        (Field::X87(vcpu_reset_spec::X87::Ftw), 0xffff),
        (Field::Mxcsr, 0x1fa0),
        (Field::Xmm(0), 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff),
    ]
}

/// The 512-byte FXRSTOR image: FCW 0x027F, all registers empty, MXCSR 0x1FA0, XMM0 a pattern.
fn fx_image() -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[0..2].copy_from_slice(&0x027fu16.to_le_bytes());
    b[24..28].copy_from_slice(&0x1fa0u32.to_le_bytes());
    b[160..176].copy_from_slice(&0x0011_2233_4455_6677_8899_aabb_ccdd_eeffu128.to_le_bytes());
    b
}

fn wrmsr(a: &mut CodeAssembler, index: u32, value: u64) -> Result<(), IcedError> {
    a.mov(ecx, index)?;
    a.mov(eax, (value & 0xffff_ffff) as u32)?;
    a.mov(edx, (value >> 32) as u32)?;
    a.wrmsr()
}

/// The AP's code at its first SIPI: dirty, flag, halt.
fn ap_dirty_code() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(16)?;
    a.cli()?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    a.mov(eax, 0x10u32)?;
    a.mov(cr0, eax)?;
    a.mov(eax, 0x5000u32)?;
    a.mov(cr3, eax)?;
    a.mov(eax, 0x600u32)?;
    a.mov(cr4, eax)?;
    a.fxrstor(ptr(FX_IMAGE))?;
    for (i, v) in [(0, 0x1000u32), (1, 0x2000), (2, 0x3000), (3, 0x4000)] {
        a.mov(eax, v)?;
        match i {
            0 => a.mov(dr0, eax)?,
            1 => a.mov(dr1, eax)?,
            2 => a.mov(dr2, eax)?,
            _ => a.mov(dr3, eax)?,
        }
    }
    a.mov(eax, 0x600u32)?;
    a.mov(dr7, eax)?;
    for (f, v) in ap_writes() {
        let idx = match f {
            Field::Cr0 | Field::Cr3 | Field::Cr4 | Field::Dr(_) | Field::Dr7 => continue,
            Field::Efer => 0xc000_0080,
            other => match other.msr_index() {
                Some(i) => i,
                None => continue,
            },
        };
        wrmsr(&mut a, idx, v as u64)?;
    }
    a.mov(byte_ptr(FLAG), 1u32)?;
    let mut park = a.create_label();
    a.set_label(&mut park)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(park)?;
    a.assemble(0)
}

/// `mov dword [fs:edi + off], value`.
fn apic_write(a: &mut CodeAssembler, off: u32, value: u32) -> Result<(), IcedError> {
    a.mov(dword_ptr(edi + off).fs(), value)
}

/// INIT, then a startup IPI with `vector`, to APIC ID 1.
fn init_sipi(a: &mut CodeAssembler, vector: u8) -> Result<(), IcedError> {
    apic_write(a, 0x310, 1 << 24)?;
    apic_write(a, 0x300, 0x0000_c500)?; // INIT, level assert
    apic_write(a, 0x310, 1 << 24)?;
    apic_write(a, 0x300, 0x0000_4600 | u32::from(vector))?; // start-up
    Ok(())
}

/// The BSP's firmware (4 KiB, code at F000:F000, reset vector jumping there).
fn bsp_firmware() -> Result<Firmware, String> {
    let asm = || -> Result<Vec<u8>, IcedError> {
        let mut a = CodeAssembler::new(16)?;
        a.cli()?;
        a.xor(ax, ax)?;
        a.mov(ds, ax)?;
        a.mov(ss, ax)?;
        a.mov(sp, 0x7000u32)?;
        // Unreal mode: FS with base 0 and a 4 GiB limit, to reach the local APIC.
        for (at, v) in [
            (GDT, 0u32),
            (GDT + 4, 0),
            (GDT + 8, 0x0000_ffff),
            (GDT + 12, 0x00cf_9200),
        ] {
            a.mov(dword_ptr(at), v)?;
        }
        a.mov(word_ptr(GDT_PTR), 15u32)?;
        a.mov(dword_ptr(GDT_PTR + 2), GDT)?;
        a.lgdt(ptr(GDT_PTR))?;
        a.mov(eax, cr0)?;
        a.or(al, 1)?;
        a.mov(cr0, eax)?;
        a.mov(ax, 8u32)?;
        a.mov(fs, ax)?;
        a.mov(eax, cr0)?;
        a.and(al, 0xfe)?;
        a.mov(cr0, eax)?;
        a.mov(edi, APIC)?;
        // Software-enable the local APIC (SVR bit 8): a disabled one sends no IPIs here.
        a.mov(eax, dword_ptr(edi + 0xf0u32).fs())?;
        a.or(eax, 0x100)?;
        a.mov(dword_ptr(edi + 0xf0u32).fs(), eax)?;
        init_sipi(&mut a, DIRTY_VECTOR)?;
        let mut wait = a.create_label();
        a.set_label(&mut wait)?;
        a.cmp(byte_ptr(FLAG), 1u32)?;
        a.jne(wait)?;
        init_sipi(&mut a, PROBE_VECTOR)?;
        let mut park = a.create_label();
        a.set_label(&mut park)?;
        a.cli()?;
        a.hlt()?;
        a.jmp(park)?;
        a.assemble(0xf000)
    };
    let body = asm().map_err(|e| e.to_string())?;
    let mut image = vec![0u8; 4096];
    if body.len() > 0xff0 {
        return Err("BSP firmware too large".into());
    }
    image[..body.len()].copy_from_slice(&body);
    // FFF0: jmp far F000:F000.
    image[0xff0..0xff5].copy_from_slice(&[0xea, 0x00, 0xf0, 0x00, 0xf0]);
    Firmware::from_bytes(image, "kvm-init-ipi firmware").map_err(|e| e.to_string())
}

/// Run the scenario.
pub fn run(report: &mut Report, limits: &BTreeMap<Field, String>) -> Result<(), String> {
    let fw = bsp_firmware()?;
    let buf = SharedBuffer::default();
    let config = VmConfig {
        vcpus: 2,
        memory_mib: 2,
        max_reboots: 0,
        timeout: std::time::Duration::from_secs(20),
        sink: Sink::Buffer(buf.clone()),
        kvm_create_state: true,
        ..VmConfig::default()
    };
    let host = crate::host::open().map_err(|e| e.to_string())?;
    let mut vm = Vm::with_host(host, &fw, config).map_err(|e| e.to_string())?;
    let model = *vm.model();
    // The AP's state before anything runs (KVM's creation state), read through the cache;
    // the AP's own writes on top of it are the state KVM's INIT starts from.
    let ap = &mut vm.vcpus()[1];
    ap.cache_mut().invalidate();
    let mut prior: VcpuState = *ap.cache_mut().state().map_err(|e| e.to_string())?;
    for (f, v) in ap_writes() {
        f.set(&mut prior, v);
    }
    let mem = vm.memory();
    mem.write(
        u64::from(DIRTY_VECTOR) << 12,
        &ap_dirty_code().map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    mem.write(u64::from(FX_IMAGE), &fx_image())
        .map_err(|e| e.to_string())?;
    let mut opts = ProbeOptions::reset_vector("kvm-init-ipi");
    opts.origin = probe::Origin {
        segment: u16::from(PROBE_VECTOR) << 8,
        offset: 0,
    };
    let image = probe::assemble_image(&opts).map_err(|e| e.to_string())?;
    mem.write(u64::from(opts.origin.linear()), &image.bytes)
        .map_err(|e| e.to_string())?;
    vm.run().map_err(|e| e.to_string())?;
    let log = buf.lock().map(|b| b.clone()).unwrap_or_default();

    let ident = VcpuIdentity::new(1);
    let mut expected = spec::expected_state(&model, ident, Transition::Init(&prior));
    spec::sipi(&mut expected, PROBE_VECTOR);
    let ap = &vm.vcpus()[1];
    let held = |f: Field| {
        (!ap.cache().holds(f))
            .then(|| "KVM does not hold it for this vCPU here".to_string())
            .or_else(|| limits.get(&f).cloned())
    };
    let obs = observe_probe_run(&log, 0, &expected, held)?;
    judge_all(
        report,
        &Expectation {
            scenario: "kvm-init-ipi",
            owner: Owner::Host,
            view: View::Guest,
            vcpu: "ap1".into(),
            model: &model,
            event: Event::Init,
            expected: &expected,
            prior: Some(&prior),
        },
        |f| obs.get(&f).cloned(),
    );
    Ok(())
}
