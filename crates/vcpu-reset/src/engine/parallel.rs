//! Per-vCPU work on several threads.
//!
//! The vCPU ioctls of a RESET or INIT are independent from one vCPU to the next (KVM takes a
//! per-vCPU lock for each; the VM-wide locks they touch, the APIC map and the TSC sync, are
//! held briefly), so a reboot of many vCPUs can spread them over the host's CPUs. VMMs run each
//! vCPU on its own thread; [`for_each_vcpu`] does the same for callers that hold all vCPUs on
//! one thread (e.g. a reboot in place between two boots): the vCPUs are split into at most
//! `threads` contiguous groups, the first done on the calling thread and each other on a scoped
//! thread of its own. On a host with many cores, `threads` = cores gives one vCPU per thread
//! and the reboot costs about one vCPU's RESET plus thread start-up (tens of µs each); a VMM
//! that already has a thread per vCPU would let each do its own RESET and need no new thread.

use std::sync::Mutex;

use super::{EngineError, Vcpu};

/// The fewest vCPUs worth a thread of their own: starting a thread costs tens of µs (more when
/// the host is busy and it waits for a CPU), one vCPU's RESET about four ioctls.
pub const MIN_VCPUS_PER_THREAD: usize = 8;

/// How many threads to spread `vcpus` vCPUs over with up to `cpus` CPUs: one per
/// [`MIN_VCPUS_PER_THREAD`] vCPUs, at least 1, at most `cpus`.
pub fn threads_for(vcpus: usize, cpus: usize) -> usize {
    (vcpus / MIN_VCPUS_PER_THREAD).clamp(1, cpus.max(1))
}
use crate::backend::Backend;

/// Run `op` on every vCPU, over at most `threads` threads (the calling one included). Returns
/// each vCPU's result, in order.
pub fn for_each_vcpu<B, T, F>(
    vcpus: &mut [Vcpu<B>],
    threads: usize,
    op: F,
) -> Vec<Result<T, EngineError>>
where
    B: Backend + Send,
    T: Send,
    F: Fn(&mut Vcpu<B>) -> Result<T, EngineError> + Sync,
{
    let n = vcpus.len();
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        return vcpus.iter_mut().map(&op).collect();
    }
    let per = n.div_ceil(threads);
    let op = &op;
    on_threads(vcpus.chunks_mut(per).collect(), |g| {
        g.iter_mut().map(op).collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect()
}

/// Run `work` on each of `groups`, the first on the calling thread and each other on a scoped
/// thread of its own (`std::thread::Builder::spawn_scoped`: a clone3 each). Where a thread
/// cannot be started (RLIMIT_NPROC reached, a seccomp filter that refuses clone3 with an
/// error), that group and every later one run on the calling thread instead: never a panic.
/// Returns each group's output, in order. A panic in a group's `work` is resumed here.
pub(crate) fn on_threads<G, R, F>(groups: Vec<G>, work: F) -> Vec<R>
where
    G: Send,
    R: Send,
    F: Fn(G) -> R + Sync,
{
    // Each group waits in a slot until the thread that runs it (or the calling thread, where
    // no thread could be started for it) takes it out: once, under the slot's lock.
    let slots: Vec<Mutex<Option<G>>> = groups.into_iter().map(|g| Mutex::new(Some(g))).collect();
    let take = |slot: &Mutex<Option<G>>| slot.lock().ok().and_then(|mut g| g.take());
    let work = &work;
    std::thread::scope(|s| {
        let mut spawned = Vec::with_capacity(slots.len());
        let mut can_spawn = true;
        for slot in slots.iter().skip(1) {
            let handle = if can_spawn && !spawn_refused() {
                std::thread::Builder::new()
                    .spawn_scoped(s, move || take(slot).map(work))
                    .ok()
            } else {
                None
            };
            can_spawn = handle.is_some();
            spawned.push((slot, handle));
        }
        let mut out = Vec::with_capacity(slots.len());
        out.extend(slots.first().and_then(take).map(work));
        for (slot, handle) in spawned {
            match handle {
                Some(h) => match h.join() {
                    Ok(r) => out.extend(r),
                    Err(panic) => std::panic::resume_unwind(panic),
                },
                None => out.extend(take(slot).map(work)),
            }
        }
        out
    })
}

/// Whether a test made every thread fail to start (as RLIMIT_NPROC would).
#[cfg(test)]
fn spawn_refused() -> bool {
    tests::REFUSE_THREADS.with(std::cell::Cell::get)
}

#[cfg(not(test))]
fn spawn_refused() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::model::ModelVcpu;
    use crate::cache::VcpuCache;
    use vcpu_reset_spec::{CpuModel, VcpuIdentity, Vendor};

    #[test]
    fn a_thread_needs_enough_vcpus_to_pay_for_itself() {
        assert_eq!(threads_for(1, 2), 1);
        assert_eq!(threads_for(2, 2), 1);
        assert_eq!(threads_for(16, 2), 2);
        assert_eq!(threads_for(32, 2), 2);
        assert_eq!(threads_for(32, 64), 4);
        assert_eq!(threads_for(32, 0), 1);
    }

    thread_local! {
        pub(super) static REFUSE_THREADS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn groups_whose_thread_cannot_start_run_on_the_calling_thread() {
        let me = std::thread::current().id();
        let on = |refuse: bool| {
            REFUSE_THREADS.with(|r| r.set(refuse));
            let out = on_threads((0..4).collect(), |g: u32| (g, std::thread::current().id()));
            REFUSE_THREADS.with(|r| r.set(false));
            out
        };
        let refused = on(true);
        assert_eq!(
            refused.iter().map(|(g, _)| *g).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert!(
            refused.iter().all(|(_, t)| *t == me),
            "all on the calling thread"
        );
        let spread = on(false);
        assert_eq!(
            spread.iter().map(|(g, _)| *g).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(spread[0].1, me, "the first group on the calling thread");
        assert!(
            spread[1..].iter().all(|(_, t)| *t != me),
            "the others on threads"
        );
    }

    #[test]
    fn every_group_runs_once_in_order() {
        let out = on_threads((0..6).collect(), |g: u32| g * 10);
        assert_eq!(out, vec![0, 10, 20, 30, 40, 50]);
        assert!(on_threads(Vec::<u32>::new(), |g| g).is_empty());
    }

    #[test]
    fn every_vcpu_is_reset_once_and_results_keep_their_order() {
        let model = CpuModel::generic(Vendor::Intel);
        let mut vcpus: Vec<_> = (0..5u32)
            .map(|id| {
                Vcpu::new(
                    VcpuCache::adopt(ModelVcpu::new_poisoned()),
                    model,
                    VcpuIdentity::new(id),
                )
            })
            .collect();
        for threads in [1, 2, 3, 8] {
            let ids = for_each_vcpu(&mut vcpus, threads, |v| {
                v.reset()?;
                Ok(v.identity().apic_id)
            });
            let ids: Vec<u32> = ids.into_iter().map(|r| r.expect("RESET")).collect();
            assert_eq!(ids, vec![0, 1, 2, 3, 4], "{threads} threads");
        }
        for v in &mut vcpus {
            assert!(
                v.verify()
                    .expect("verify")
                    .iter()
                    .all(|d| d.kind != crate::engine::DeviationKind::Mismatch)
            );
        }
    }
}
