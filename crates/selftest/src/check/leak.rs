//! The host-side leak scan: a value planted in every field the host lets a VMM write must not
//! survive vcpu-reset's RESET (or INIT) where the spec says the event changes that field.
//!
//! Every MSR of the host's list (KVM_GET_MSR_INDEX_LIST) and of the spec that accepts a write
//! gets the first of a few bit flips of its value that the host takes and reads back. So does
//! every field of the local APIC page, the debug registers, the segment registers and
//! descriptor tables, XCR0 and the x87/SSE/AVX/AVX-512/PKRU registers (every XSAVE component
//! the vCPU's XCR0 can enable that the spec has fields for), each stored through the backend
//! and read back. XSAVE components the host supports but the spec has no fields for get a
//! pattern in their area of the XSAVE image (KVM_SET_XSAVE). The vCPU then goes through the
//! engine's RESET or INIT, what the engine deferred to the next KVM_RUN is applied with its
//! ioctls (the state the next run starts from), and everything planted is read back. A spec
//! field that still holds its planted value, though the event sets it to something else, is a
//! survivor; an MSR without a spec row, or an XSAVE component, that holds its planted value is
//! state the RESET does not establish, reported by index. IA32_TSC and the local APIC timer's
//! current count (they count by themselves), the PPR (computed from the TPR and ISR) and the
//! x2APIC MSR range (the local APIC page, planted register by register) are left out.
//!
//! [`scan_kvm_init`] plants the same and applies KVM's own INIT instead: what a VMM that
//! reboots its guest with an INIT alone leaves of the previous boot.

use std::collections::BTreeMap;

use kvm_bindings::{Msrs, kvm_msr_entry};
use kvm_ioctls::VcpuFd;
use vcpu_reset::backend::kvm::{KvmHost, KvmVcpu};
use vcpu_reset::backend::{Backend, StateClass};
use vcpu_reset::cache::VcpuCache;
use vcpu_reset::engine::Vcpu;
use vcpu_reset::spec::{
    self, Event, Field, LapicReg, Msr, Rule, Transition, VcpuIdentity, VcpuState, Vendor,
};

/// A backend over a KVM vCPU whose fd the scan can borrow and take back.
pub trait Lent: Backend {
    /// The vCPU fd, lent for planting and reading MSRs.
    fn lent_fd(&self) -> &VcpuFd;
    /// The KVM backend underneath, lent for planting the other fields (so a wrapper's own
    /// store, which the scan judges, does not decide what is planted).
    fn lent_backend(&mut self) -> &mut KvmVcpu;
    /// The vCPU fd back, with every deferred store applied.
    fn into_vcpu_fd(self) -> VcpuFd;
}

impl Lent for KvmVcpu {
    fn lent_fd(&self) -> &VcpuFd {
        self.fd()
    }
    fn lent_backend(&mut self) -> &mut KvmVcpu {
        self
    }
    fn into_vcpu_fd(self) -> VcpuFd {
        self.into_fd()
    }
}

/// A spec row that kept its planted value though the event changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Survivor {
    /// The field.
    pub field: Field,
    /// Its MSR index.
    pub index: u32,
    /// The value planted, and read back after the event.
    pub planted: u64,
    /// What the event should have left (the spec's RESET value; for INIT, the row's value).
    pub expected: u128,
}

/// A field other than an MSR (local APIC, debug, segment, XCR0, x87/SSE/AVX) that kept its
/// planted value though the event changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldSurvivor {
    /// The field.
    pub field: Field,
    /// The value planted, and read back after the event.
    pub planted: u128,
    /// What the event should have left.
    pub expected: u128,
}

/// What one scan found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeakScan {
    /// The vendor of the vCPU scanned (whose spec rows apply).
    pub vendor: Vendor,
    /// MSRs a value was planted in.
    pub planted: usize,
    /// Spec rows that kept their planted value.
    pub survived: Vec<Survivor>,
    /// MSRs without a spec row that kept their planted value.
    pub unknown_kept: Vec<u32>,
    /// Spec rows the backend does not hold (the host's MSR list lacks them) that took a write
    /// from the VMM and kept it though the event changes them. A guest may still be unable to
    /// reach them (KVM lets the host write MSR_TSC_AUX where the guest's CPUID has neither
    /// RDTSCP nor RDPID); reported by index, not judged.
    pub not_held_kept: Vec<u32>,
    /// Spec rows that kept their planted value and whose expected value the host refuses to
    /// take from the VMM as well: no RESET through this host can establish them (a host limit,
    /// reported by index).
    pub host_kept: Vec<u32>,
    /// Fields other than MSRs a value was planted in.
    pub fields_planted: usize,
    /// Of those, the ones that kept their planted value though the event changes them.
    pub fields_survived: Vec<FieldSurvivor>,
    /// XSAVE components without spec fields that a pattern was planted in.
    pub xsave_planted: Vec<u8>,
    /// Of those, the ones whose area still held the pattern after the event.
    pub xsave_kept: Vec<u8>,
}

impl LeakScan {
    /// Everything planted: MSRs, other fields, XSAVE components.
    pub fn total_planted(&self) -> usize {
        self.planted + self.fields_planted + self.xsave_planted.len()
    }

    /// Every planted value that survived where the spec says the event changes it.
    pub fn total_survived(&self) -> usize {
        self.survived.len() + self.fields_survived.len()
    }
}

/// The bit flips tried, in order, until the host takes one (XCR0 needs 2 or 6: bit 0 must stay).
const FLIPS: [u64; 8] = [1, 2, 6, 1 << 4, 1 << 8, 1 << 12, 1 << 31, 1 << 63];

/// The non-MSR fields the scan plants in: the local APIC page, debug registers, segment
/// registers and descriptor tables, XCR0 and the XSAVE-managed registers.
fn plantable(f: Field) -> bool {
    match StateClass::of(f) {
        StateClass::Lapic => !matches!(
            f,
            Field::Lapic(LapicReg::TimerCurrent | LapicReg::Ppr | LapicReg::Version)
        ),
        StateClass::Debug | StateClass::Fpu | StateClass::Xcrs => true,
        StateClass::Sregs => matches!(f, Field::Seg(..) | Field::Dt(..)),
        _ => false,
    }
}

/// Whether the spec allows `value` for `field` in place of its RESET or INIT value for
/// `vendor` (AMD's data-segment attributes 0x93 for 0x92, which KVM on SVM always reports): a
/// value planted there would read back the same whether or not the event set the field.
fn allowed(field: Field, value: u128, vendor: Vendor) -> bool {
    [Event::Reset, Event::Init].into_iter().any(|e| {
        spec::row(field, vendor, e)
            .also
            .iter()
            .any(|a| matches!(a, spec::Alternative::Value(v) if *v == value))
    })
}

/// Plant a flipped value in every [`plantable`] field `b` holds, each stored through the
/// backend and read back, never a value the spec allows for the field; the fields that took
/// one, with the value.
fn plant_fields<B: Backend>(b: &mut B, vendor: Vendor) -> Vec<(Field, u128)> {
    let mut planted = Vec::new();
    for f in Field::all() {
        if !plantable(f) || !b.holds(f) {
            continue;
        }
        let class = StateClass::of(f);
        let mut now = VcpuState::default();
        if b.load(class, &mut now).is_err() {
            continue;
        }
        let old = f.get(&now);
        for flip in FLIPS {
            let value = (old ^ u128::from(flip)) & f.mask();
            if value == old || allowed(f, value, vendor) {
                continue;
            }
            let mut next = now;
            f.set(&mut next, value);
            let mut back = VcpuState::default();
            if b.store(class, &next).is_ok()
                && b.load(class, &mut back).is_ok()
                && f.get(&back) == value
            {
                planted.push((f, value));
                break;
            }
            // Put back what was there (a refused store wrote nothing; a changed one is undone).
            let _ = b.store(class, &now);
        }
    }
    planted
}

/// The XSAVE components (index, offset, size in the standard format) the host's CPUID offers
/// beyond x87 and SSE, from leaf 0DH (SDM Vol. 1 §13.2).
fn xsave_layout(host: &KvmHost) -> Vec<(u8, usize, usize)> {
    let entries = host.supported_cpuid().as_slice();
    let leaf = |sub: u32| {
        entries
            .iter()
            .find(|e| e.function == 0xd && e.index == sub)
            .copied()
    };
    let Some(d0) = leaf(0) else { return Vec::new() };
    let xcr0 = u64::from(d0.eax) | (u64::from(d0.edx) << 32);
    (2u8..63)
        .filter(|i| xcr0 & (1 << i) != 0)
        .filter_map(|i| {
            let e = leaf(u32::from(i))?;
            Some((i, e.ebx as usize, e.eax as usize))
        })
        .collect()
}

/// Does the XSAVE image hold component `i` with the pattern of [`plant_xsave`]?
fn xsave_holds(region: &[u32], i: u8, offset: usize, size: usize) -> bool {
    let bytes: Vec<u8> = region.iter().flat_map(|w| w.to_le_bytes()).collect();
    let bv = bytes
        .get(512..520)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    bv & (1 << i) != 0
        && bytes
            .get(offset..offset + size)
            .is_some_and(|area| area.iter().enumerate().all(|(k, &b)| b == pattern(i, k)))
}

/// The byte planted at `k` in the area of XSAVE component `i`.
#[allow(clippy::cast_possible_truncation)] // a byte pattern
fn pattern(i: u8, k: usize) -> u8 {
    0xa5 ^ i ^ (k as u8)
}

/// Plant [`pattern`] in every component of `layout` the vCPU's fields do not cover (`held`, a
/// mask like XCR0), with its XSTATE_BV bit, through KVM_SET_XSAVE; the components that took it.
fn plant_xsave(fd: &VcpuFd, layout: &[(u8, usize, usize)], held: u64) -> Vec<u8> {
    let mut planted = Vec::new();
    for &(i, offset, size) in layout {
        if held & (1 << i) != 0 || size == 0 {
            continue;
        }
        let Ok(mut x) = fd.get_xsave() else { break };
        let mut bytes: Vec<u8> = x.region.iter().flat_map(|w| w.to_le_bytes()).collect();
        if offset + size > bytes.len() {
            continue;
        }
        for (k, b) in bytes[offset..offset + size].iter_mut().enumerate() {
            *b = pattern(i, k);
        }
        let mut bv = u64::from_le_bytes(bytes[512..520].try_into().unwrap_or([0; 8]));
        bv |= 1 << i;
        bytes[512..520].copy_from_slice(&bv.to_le_bytes());
        for (w, chunk) in x.region.iter_mut().zip(bytes.chunks_exact(4)) {
            *w = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        // KVM_SET_XSAVE copies the 4096-byte `kvm_xsave` it is given; that is the whole XSAVE
        // image here, because this VM never asks for a dynamically enabled component (no
        // ARCH_REQ_XCOMP_GUEST_PERM), and the component planted lies inside those 4096 bytes
        // (checked above). `x` was read from this vCPU and changed only in data bytes and
        // XSTATE_BV, which KVM checks against the vCPU's supported XCR0.
        // SAFETY: as said just above.
        let stored = unsafe { fd.set_xsave(&x) };
        let took = stored.is_ok()
            && fd
                .get_xsave()
                .is_ok_and(|r| xsave_holds(&r.region, i, offset, size));
        if took {
            planted.push(i);
        }
    }
    planted
}

fn read(fd: &VcpuFd, index: u32) -> Option<u64> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .ok()?;
    (fd.get_msrs(&mut msrs).ok()? == 1).then(|| msrs.as_slice()[0].data)
}

fn write(fd: &VcpuFd, index: u32, data: u64) -> bool {
    let Ok(msrs) = Msrs::from_entries(&[kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }]) else {
        return false;
    };
    fd.set_msrs(&msrs).ok() == Some(1)
}

/// Plant, put a new vCPU 0 (over `wrap` of its KVM backend) through vcpu-reset's `event`,
/// read back.
///
/// # Errors
/// What failed, as text: creating the VM or vCPU, or the engine's RESET or INIT.
pub fn scan<B: Lent>(
    host: &KvmHost,
    event: Event,
    wrap: impl FnOnce(KvmVcpu) -> B,
) -> Result<LeakScan, String> {
    scan_with(host, event, wrap, |v| {
        match event {
            Event::Reset => v.reset().map(drop),
            Event::Init => v.init().map(drop),
        }
        .map_err(|e| e.to_string())
    })
}

/// Plant as [`scan`] does, then let KVM perform its own INIT (`kvm_vcpu_reset(vcpu, true)`, as
/// an INIT IPI would) instead of vcpu-reset's RESET, and judge what survived against the RESET
/// state: what a VMM that reboots with KVM's INIT alone would leave of the previous boot.
///
/// # Errors
/// What failed, as text: creating the VM or vCPU, or KVM's INIT.
pub fn scan_kvm_init(host: &KvmHost) -> Result<LeakScan, String> {
    scan_with(
        host,
        Event::Reset,
        |kv| kv,
        |v| {
            v.cache_mut().flush().map_err(|e| e.to_string())?;
            v.cache_mut()
                .backend_mut()
                .kvm_init()
                .map_err(|e| e.to_string())?;
            v.cache_mut().invalidate();
            Ok(())
        },
    )
}

/// Plant, `apply` the event, read back, and judge what survived by the spec's `event`.
fn scan_with<B: Lent>(
    host: &KvmHost,
    event: Event,
    wrap: impl FnOnce(KvmVcpu) -> B,
    apply: impl FnOnce(&mut Vcpu<B>) -> Result<(), String>,
) -> Result<LeakScan, String> {
    let vm = host.create_vm(true).map_err(|e| e.to_string())?;
    let kv = KvmVcpu::new(host, &vm, 0).map_err(|e| e.to_string())?;
    let model = kv
        .cpu_model()
        .ok_or("the vCPU's CPUID is neither Intel's nor AMD's")?;
    let xsave_held = kv.xsave_components();
    let identity = VcpuIdentity::new(0);
    let mut v = Vcpu::new(VcpuCache::adopt(wrap(kv)), model, identity);
    v.reset().map_err(|e| e.to_string())?;
    let rows: BTreeMap<u32, Field> = Field::all()
        .into_iter()
        .filter_map(|f| f.msr_index().map(|i| (i, f)))
        .collect();
    let mut indices: Vec<u32> = host.msr_index_list().to_vec();
    indices.extend(rows.keys());
    indices.sort_unstable();
    indices.dedup();
    indices.retain(|&i| i != Msr::Tsc.index() && !(0x800..=0x8ff).contains(&i));

    // The fields first (a store of a class may rewrite MSRs such as IA32_APIC_BASE), then
    // the MSRs, then XSAVE components without fields, each read back before the next.
    let fields = plant_fields(v.cache_mut().backend_mut().lent_backend(), model.vendor);
    let layout = xsave_layout(host);
    let mut planted = BTreeMap::new();
    let xsave_planted;
    {
        let fd = v.cache_mut().backend_mut().lent_fd();
        for &i in &indices {
            let Some(now) = read(fd, i) else { continue };
            for flip in FLIPS {
                let value = now ^ flip;
                if rows
                    .get(&i)
                    .is_some_and(|f| allowed(*f, u128::from(value), model.vendor))
                {
                    continue;
                }
                if write(fd, i, value) && read(fd, i) == Some(value) {
                    planted.insert(i, value);
                    break;
                }
            }
        }
        xsave_planted = plant_xsave(fd, &layout, xsave_held);
    }
    v.cache_mut().invalidate();
    apply(&mut v)?;
    // RESET sets every row; INIT only the rows whose INIT rule is a value (it keeps the rest).
    let want = spec::expected_state(&model, identity, Transition::Reset);
    let expected = |f: Field| match event {
        Event::Reset => Some(f.get(&want)),
        Event::Init => match spec::row(f, model.vendor, Event::Init).rule {
            Rule::Value(v) => Some(v),
            _ => None,
        },
    };
    let held: BTreeMap<u32, bool> = rows
        .iter()
        .map(|(&i, f)| (i, v.cache().holds(*f)))
        .collect();
    let fd = v
        .into_cache()
        .into_backend()
        .map_err(|e| e.to_string())?
        .into_vcpu_fd();
    let mut out = LeakScan {
        vendor: model.vendor,
        planted: planted.len(),
        survived: Vec::new(),
        unknown_kept: Vec::new(),
        not_held_kept: Vec::new(),
        host_kept: Vec::new(),
        fields_planted: fields.len(),
        fields_survived: Vec::new(),
        xsave_planted: xsave_planted.clone(),
        xsave_kept: Vec::new(),
    };
    for (&i, &value) in &planted {
        if read(&fd, i) != Some(value) {
            continue;
        }
        // A row the backend does not hold (the host does not list it) but that took a write is
        // reported by index: the VMM could write it, vcpu-reset does not move it.
        match rows.get(&i) {
            Some(f) if !held[&i] => {
                if expected(*f).is_some_and(|e| e != u128::from(value)) {
                    out.not_held_kept.push(i);
                }
            }
            Some(f) => {
                if let Some(e) = expected(*f).filter(|&e| e != u128::from(value)) {
                    // Where the host does not take the expected value from the VMM either (KVM
                    // keeps AMD's VM_CR.SVMDIS and LOCK once set, svm_set_vm_cr()), no RESET
                    // through it could: a host limit, reported, not vcpu-reset's survivor.
                    let e64 = u64::try_from(e).unwrap_or(u64::MAX);
                    if !(write(&fd, i, e64) && read(&fd, i) == Some(e64)) {
                        out.host_kept.push(i);
                        continue;
                    }
                    // Put the planted value back, so what is read stays what the event left.
                    write(&fd, i, value);
                    out.survived.push(Survivor {
                        field: *f,
                        index: i,
                        planted: value,
                        expected: e,
                    });
                }
            }
            None => out.unknown_kept.push(i),
        }
    }
    if let Ok(x) = fd.get_xsave() {
        out.xsave_kept = layout
            .iter()
            .filter(|(i, ..)| xsave_planted.contains(i))
            .filter(|&&(i, offset, size)| xsave_holds(&x.region, i, offset, size))
            .map(|&(i, ..)| i)
            .collect();
    }
    // Read the other fields back through a backend over the same fd.
    let mut back = KvmVcpu::adopt(host, &vm, fd, 0).map_err(|e| e.to_string())?;
    let mut loaded: BTreeMap<StateClass, VcpuState> = BTreeMap::new();
    for (f, value) in fields {
        let class = StateClass::of(f);
        if let std::collections::btree_map::Entry::Vacant(slot) = loaded.entry(class) {
            let mut s = VcpuState::default();
            back.load(class, &mut s).map_err(|e| e.to_string())?;
            slot.insert(s);
        }
        let got = loaded.get(&class).map(|s| f.get(s));
        if got == Some(value)
            && let Some(e) = expected(f).filter(|&e| e != value)
        {
            out.fields_survived.push(FieldSurvivor {
                field: f,
                planted: value,
                expected: e,
            });
        }
    }
    Ok(out)
}
