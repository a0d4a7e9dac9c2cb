//! A planted value in any MSR the host lets a VMM write does not survive vcpu-reset's RESET
//! where the spec says RESET changes it. Every MSR of the host's list (and of the spec) that
//! accepts a write gets a value that differs from what it held; after the RESET each one is read
//! back. MSRs without a spec row that keep their planted value are printed by index: state a
//! RESET does not establish (the same list `check` reports as `kvm msrs without a spec row`).
//!
//! Skips (printing why) where `/dev/kvm` cannot be used, unless `VCPU_RESET_REQUIRE_KVM=1`.

use std::collections::BTreeMap;

use kvm_bindings::{Msrs, kvm_msr_entry};
use kvm_ioctls::VcpuFd;
use vcpu_reset::backend::kvm::KvmVcpu;
use vcpu_reset::cache::VcpuCache;
use vcpu_reset::engine::Vcpu;
use vcpu_reset::spec::{self, Event, Field, Msr, Rule, Transition, VcpuIdentity};
use vcpu_reset_selftest::host::kvm_for_tests;

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

/// Plant a value in every MSR that takes one, put the vCPU through `event` (vcpu-reset's RESET
/// or INIT), and return the spec rows whose planted value survived though the event sets them
/// to something else, and the MSRs without a spec row that kept theirs.
fn plant_and(event: Event) -> Option<(usize, Vec<String>, Vec<String>)> {
    let host = kvm_for_tests()?;
    let vm = host.create_vm(true).expect("VM with an irqchip");
    let kv = KvmVcpu::new(&host, &vm, 0).expect("vCPU 0");
    let model = kv.cpu_model().expect("an Intel or AMD host");
    let identity = VcpuIdentity::new(0);
    let mut v = Vcpu::new(VcpuCache::adopt(kv), model, identity);
    v.reset().expect("power-on RESET");
    let rows: BTreeMap<u32, Field> = Field::all()
        .into_iter()
        .filter_map(|f| f.msr_index().map(|i| (i, f)))
        .collect();
    let mut indices: Vec<u32> = host.msr_index_list().to_vec();
    indices.extend(rows.keys());
    indices.sort_unstable();
    indices.dedup();
    // The TSC counts by itself; the x2APIC range is the local APIC page (in xAPIC mode here).
    indices.retain(|&i| i != Msr::Tsc.index() && !(0x800..=0x8ff).contains(&i));

    // Plant: the first of a few bit flips the host accepts and reads back.
    let mut planted = BTreeMap::new();
    {
        let fd = v.cache_mut().backend_mut().fd();
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
    // What the event must give each row: RESET's values, or for INIT the rows INIT sets to a
    // value (every other MSR INIT keeps, planted value included).
    let (want, changes): (_, Box<dyn Fn(Field) -> bool>) = match event {
        Event::Reset => {
            v.reset().expect("RESET");
            let want = spec::expected_state(&model, identity, Transition::Reset);
            (want, Box::new(|_| true))
        }
        Event::Init => {
            v.init().expect("INIT");
            let want = spec::expected_state(&model, identity, Transition::Reset);
            let vendor = model.vendor;
            (
                want,
                Box::new(move |f| matches!(spec::row(f, vendor, Event::Init).rule, Rule::Value(_))),
            )
        }
    };
    let held: BTreeMap<u32, bool> = rows
        .iter()
        .map(|(&i, f)| (i, v.cache().holds(*f)))
        .collect();
    // What the vCPU's next KVM_RUN starts from: the stores a RESET defers to that run (REGS,
    // SREGS and EVENTS through `kvm_run`; IA32_FS_BASE and IA32_GS_BASE are the segment bases
    // in SREGS) applied with their ioctls, as when the VMM takes the fd back.
    let fd = v
        .into_cache()
        .into_backend()
        .expect("deferred stores applied")
        .into_fd();
    let mut survived = Vec::new();
    let mut unknown_kept = Vec::new();
    for (&i, &value) in &planted {
        if read(&fd, i) != Some(value) {
            continue;
        }
        match rows.get(&i) {
            Some(f) if held[&i] && changes(*f) && f.get(&want) != u128::from(value) => {
                survived.push(format!("{f} ({i:#x}) kept {value:#x}"));
            }
            Some(_) => {}
            None => unknown_kept.push(format!("{i:#x}")),
        }
    }
    eprintln!(
        "{event:?}: planted {} MSRs; {} spec rows kept a value the event changes; without a spec row, kept: {}",
        planted.len(),
        survived.len(),
        unknown_kept.join(" ")
    );
    Some((planted.len(), survived, unknown_kept))
}

#[test]
fn no_planted_msr_value_survives_a_reset_where_the_spec_resets_it() {
    let Some((planted, survived, _)) = plant_and(Event::Reset) else {
        return;
    };
    assert!(planted > 20, "values planted in {planted} MSRs");
    assert!(
        survived.is_empty(),
        "planted values survived the RESET: {survived:#?}"
    );
}

#[test]
fn no_planted_msr_value_survives_an_init_where_the_spec_sets_it() {
    let Some((planted, survived, _)) = plant_and(Event::Init) else {
        return;
    };
    assert!(planted > 20, "values planted in {planted} MSRs");
    assert!(
        survived.is_empty(),
        "planted values survived the INIT: {survived:#?}"
    );
}
