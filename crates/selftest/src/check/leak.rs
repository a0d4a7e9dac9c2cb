//! The MSR leak scan: a value planted in every MSR the host lets a VMM write must not survive
//! vcpu-reset's RESET (or INIT) where the spec says the event changes that MSR.
//!
//! Every MSR of the host's list (KVM_GET_MSR_INDEX_LIST) and of the spec that accepts a write
//! gets the first of a few bit flips of its value that the host takes and reads back. The vCPU
//! then goes through the engine's RESET or INIT, what the engine deferred to the next KVM_RUN is
//! applied with its ioctls (the state the next run starts from), and every planted MSR is read
//! back. A spec row that still holds its planted value, though the event sets it to something
//! else, is a survivor; an MSR without a spec row that holds its planted value is state the
//! RESET does not establish, reported by index. IA32_TSC (it counts by itself) and the x2APIC
//! range (the local APIC page, which the spec covers register by register) are left out.

use std::collections::BTreeMap;

use kvm_bindings::{Msrs, kvm_msr_entry};
use kvm_ioctls::VcpuFd;
use vcpu_reset::backend::Backend;
use vcpu_reset::backend::kvm::{KvmHost, KvmVcpu};
use vcpu_reset::cache::VcpuCache;
use vcpu_reset::engine::Vcpu;
use vcpu_reset::spec::{self, Event, Field, Msr, Rule, Transition, VcpuIdentity, Vendor};

/// A backend over a KVM vCPU whose fd the scan can borrow and take back.
pub trait Lent: Backend {
    /// The vCPU fd, lent for planting and reading MSRs.
    fn lent_fd(&self) -> &VcpuFd;
    /// The vCPU fd back, with every deferred store applied.
    fn into_vcpu_fd(self) -> VcpuFd;
}

impl Lent for KvmVcpu {
    fn lent_fd(&self) -> &VcpuFd {
        self.fd()
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

/// Plant, put a new vCPU 0 (over `wrap` of its KVM backend) through `event`, read back.
///
/// # Errors
/// What failed, as text: creating the VM or vCPU, or the engine's RESET or INIT.
pub fn scan<B: Lent>(
    host: &KvmHost,
    event: Event,
    wrap: impl FnOnce(KvmVcpu) -> B,
) -> Result<LeakScan, String> {
    let vm = host.create_vm(true).map_err(|e| e.to_string())?;
    let kv = KvmVcpu::new(host, &vm, 0).map_err(|e| e.to_string())?;
    let model = kv
        .cpu_model()
        .ok_or("the vCPU's CPUID is neither Intel's nor AMD's")?;
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

    let mut planted = BTreeMap::new();
    {
        let fd = v.cache_mut().backend_mut().lent_fd();
        for &i in &indices {
            let Some(now) = read(fd, i) else { continue };
            for flip in [1u64, 1 << 4, 1 << 8, 1 << 12, 1 << 31] {
                let value = now ^ flip;
                if write(fd, i, value) && read(fd, i) == Some(value) {
                    planted.insert(i, value);
                    break;
                }
            }
        }
    }
    v.cache_mut().invalidate();
    match event {
        Event::Reset => v.reset().map(drop),
        Event::Init => v.init().map(drop),
    }
    .map_err(|e| e.to_string())?;
    // RESET sets every row; INIT only the rows whose INIT rule is a value (it keeps the rest).
    let want = spec::expected_state(&model, identity, Transition::Reset);
    let changes = |f: Field| match event {
        Event::Reset => true,
        Event::Init => matches!(spec::row(f, model.vendor, Event::Init).rule, Rule::Value(_)),
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
    };
    for (&i, &value) in &planted {
        if read(&fd, i) != Some(value) {
            continue;
        }
        match rows.get(&i) {
            Some(f) if held[&i] && changes(*f) && f.get(&want) != u128::from(value) => {
                out.survived.push(Survivor {
                    field: *f,
                    index: i,
                    planted: value,
                    expected: f.get(&want),
                });
            }
            Some(_) => {}
            None => out.unknown_kept.push(i),
        }
    }
    Ok(out)
}
