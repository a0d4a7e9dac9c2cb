//! `vcpu-reset bench reboot`: a warm reboot in place against recreating the VM.
//!
//! Two runner [`Vm`]s of the same configuration (N vCPUs, 16 MiB RAM, in-kernel irqchip and
//! PIT, the [exit bench's](super::exits) firmware and loop) are built. Each round, in an
//! alternating order:
//!
//! - **in place**: the BSP runs to its first OUT exit (not timed), every vCPU's cache is
//!   invalidated as after an exit, and [`Vm::reboot`]`(`[`RebootKind::Reset`]`)` is timed:
//!   RESET of every vCPU through the engine, the irqchip and PIT back to their creation state,
//!   the firmware image restored. The APs wait for SIPI throughout, as at a reboot from
//!   firmware that has not started them, so each takes the engine's short RESET of a vCPU that
//!   has not run;
//! - **in place, all ran**: the same, but every AP is first started at the loop (a startup
//!   IPI through the engine) and run to its first OUT too (not timed), as at a reboot after an
//!   OS ran on every CPU: every vCPU takes the full RESET;
//! - **VMM API**: the same reboot as a VMM built on the library makes it
//!   ([`VmmApiRig`](super::vmm_api::VmmApiRig)): a VM of its own, made with kvm-ioctls, with one
//!   thread per vCPU that owns the fd and a [`VcpuReset`](vcpu_reset::VcpuReset) beside it; the
//!   BSP runs to its first OUT (not timed), then every thread is told to RESET its vCPU and the
//!   PIC, IOAPIC and PIT are put back (`VmDevices::restore`), timed until the last is done;
//! - **recreate** (what Cloud Hypervisor does on reboot): `/dev/kvm` is opened (not timed — a
//!   VMM keeps it open), the BSP of the previous copy runs to its first exit (not timed), and
//!   then dropping that VM and building a new one with [`Vm::with_host`] — VM fd, memory slots,
//!   irqchip, PIT, vCPUs with CPUID, power-on RESET — plus writing the loop into RAM is timed.
//!
//! vCPU ioctls are taken from the backends' [`Stats`](vcpu_reset::backend::Stats): the engine's calls for the in-place
//! RESET, and each new vCPU's creation and RESET calls for the recreation. The in-place path also
//! makes 4 VM ioctls per reboot (3× KVM_SET_IRQCHIP, KVM_SET_PIT2) that no vCPU counts.

use std::time::{Duration, Instant};

use super::exits::{CODE, PORT, Program};
use super::stats::{Summary, ratios, table};
use super::{BenchError, host_cpus};
use crate::runner::{RebootKind, Sink, Vm, VmConfig};
use vcpu_reset::backend::kvm::KvmHost;
use vcpu_reset::backend::{Exit, IoDir};

/// The target: a reboot in place at least this many times faster than recreating the VM.
pub const TARGET_SPEEDUP: f64 = 20.0;
/// The target: at most this many vCPU ioctls per vCPU for a RESET in place.
pub const TARGET_IOCTLS_PER_VCPU: f64 = 3.0;
/// vCPU counts measured when none is given.
pub const DEFAULT_VCPUS: [u32; 3] = [1, 2, 32];
/// VM-level ioctls of [`Vm::reboot`] on RESET, which no vCPU's [`Stats`](vcpu_reset::backend::Stats) counts.
pub const VM_IOCTLS_PER_REBOOT: u32 = 4;

/// One timed reboot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RebootSample {
    /// Wall time.
    pub elapsed: Duration,
    /// vCPU ioctls, summed over the vCPUs.
    pub vcpu_ioctls: u64,
}

/// The two VMs of one vCPU count.
pub struct RebootRig {
    vcpus: u32,
    program: Program,
    config: VmConfig,
    in_place: Vm,
    vmm_api: super::vmm_api::VmmApiRig,
    recreated: Option<Vm>,
}

impl RebootRig {
    /// Build the VMs for `vcpus` vCPUs, the in-place one on `host`.
    ///
    /// # Errors
    /// [`BenchError::Run`] when a VM cannot be built (e.g. more vCPUs than the host allows).
    pub fn new(host: KvmHost, vcpus: u32) -> Result<RebootRig, BenchError> {
        let program = Program::build()?;
        let config = VmConfig {
            vcpus,
            sink: Sink::Discard,
            ..VmConfig::default()
        };
        let vmm_api = super::vmm_api::VmmApiRig::new(&host, &program, vcpus)?;
        let in_place = Vm::with_host(host, &program.firmware, config.clone())?;
        in_place.memory().write(CODE, &program.code)?;
        let recreated = Vm::with_host(crate::host::open()?, &program.firmware, config.clone())?;
        recreated.memory().write(CODE, &program.code)?;
        Ok(RebootRig {
            vcpus,
            program,
            config,
            in_place,
            vmm_api,
            recreated: Some(recreated),
        })
    }

    /// The vCPU count.
    pub fn vcpus(&self) -> u32 {
        self.vcpus
    }

    /// Run vCPU 0 of `vm` from the reset vector to the loop's first OUT.
    fn run_bsp(vm: &mut Vm) -> Result<(), BenchError> {
        let Some(bsp) = vm.vcpus().first_mut() else {
            return Ok(());
        };
        match bsp.cache_mut().run()? {
            Exit::Io {
                dir: IoDir::Out,
                port: PORT,
                size: 1,
                data: [1, ..],
            } => Ok(()),
            other => Err(BenchError::Mismatch {
                handler: "reboot: BSP after RESET",
                exit: 1,
                what: format!("{other:?}, expected an OUT of 0x01 to port {PORT:#x}"),
            }),
        }
    }

    /// One timed reboot in place (after an untimed run of the BSP).
    ///
    /// # Errors
    /// [`BenchError::Run`] when the reboot fails, [`BenchError::Mismatch`] when the BSP does
    /// not reach the loop after the previous one.
    pub fn in_place(&mut self) -> Result<RebootSample, BenchError> {
        self.in_place_on(host_cpus())
    }

    /// One timed reboot in place with the vCPUs' RESET spread over `threads` threads (1: one
    /// after another on this thread).
    ///
    /// # Errors
    /// As [`RebootRig::in_place`].
    pub fn in_place_on(&mut self, threads: usize) -> Result<RebootSample, BenchError> {
        self.in_place.set_reset_threads(threads);
        Self::run_bsp(&mut self.in_place)?;
        self.timed_reboot()
    }

    /// One timed reboot through the VMM API (after an untimed run of the BSP): each vCPU's own
    /// thread calls `VcpuReset::reset`, then the devices are restored.
    ///
    /// # Errors
    /// [`BenchError`] when a RESET fails or the BSP does not reach the loop.
    pub fn vmm_api(&mut self) -> Result<RebootSample, BenchError> {
        self.vmm_api.run_bsp()?;
        let start = Instant::now();
        let vcpu_ioctls = self.vmm_api.reboot()?;
        Ok(RebootSample {
            elapsed: start.elapsed(),
            vcpu_ioctls,
        })
    }

    /// One timed reboot in place after every vCPU ran: the APs are started at the loop with a
    /// startup IPI and run to their first OUT, like the BSP (not timed).
    ///
    /// # Errors
    /// As [`RebootRig::in_place`].
    pub fn in_place_all_ran(&mut self) -> Result<RebootSample, BenchError> {
        self.in_place.set_reset_threads(host_cpus());
        Self::run_bsp(&mut self.in_place)?;
        let vector = u8::try_from(CODE >> 12).unwrap_or(0);
        for (i, ap) in self.in_place.vcpus().iter_mut().enumerate().skip(1) {
            ap.sipi(vector)
                .map_err(|source| crate::runner::RunError::Engine {
                    vcpu: u32::try_from(i).unwrap_or(u32::MAX),
                    error: source,
                })?;
            match ap.cache_mut().run()? {
                Exit::Io {
                    dir: IoDir::Out,
                    port: PORT,
                    ..
                } => {}
                other => {
                    return Err(BenchError::Mismatch {
                        handler: "reboot: AP after a startup IPI",
                        exit: 1,
                        what: format!("{other:?}, expected an OUT to port {PORT:#x}"),
                    });
                }
            }
        }
        self.timed_reboot()
    }

    fn timed_reboot(&mut self) -> Result<RebootSample, BenchError> {
        for v in self.in_place.vcpus() {
            v.cache_mut().invalidate();
        }
        let start = Instant::now();
        let calls = self.in_place.reboot(RebootKind::Reset)?;
        let elapsed = start.elapsed();
        Ok(RebootSample {
            elapsed,
            vcpu_ioctls: calls.calls(),
        })
    }

    /// One timed teardown and recreation (after untimed `/dev/kvm` open and BSP run).
    ///
    /// # Errors
    /// [`BenchError::Kvm`] or [`BenchError::Run`] when the new VM cannot be built.
    pub fn recreate(&mut self) -> Result<RebootSample, BenchError> {
        let host = crate::host::open()?;
        if let Some(old) = self.recreated.as_mut() {
            Self::run_bsp(old)?;
        }
        let start = Instant::now();
        drop(self.recreated.take());
        let mut vm = Vm::with_host(host, &self.program.firmware, self.config.clone())?;
        vm.memory().write(CODE, &self.program.code)?;
        let elapsed = start.elapsed();
        let vcpu_ioctls = vm
            .vcpus()
            .iter()
            .map(|v| v.cache().backend_stats().calls())
            .sum();
        self.recreated = Some(vm);
        Ok(RebootSample {
            elapsed,
            vcpu_ioctls,
        })
    }
}

/// How much to measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebootOptions {
    /// vCPU counts, one row each.
    pub vcpus: Vec<u32>,
    /// Timed reboots per path and vCPU count.
    pub rounds: u32,
}

impl Default for RebootOptions {
    fn default() -> Self {
        RebootOptions {
            vcpus: DEFAULT_VCPUS.to_vec(),
            rounds: 20,
        }
    }
}

/// The figures of one vCPU count.
#[derive(Clone, Debug, PartialEq)]
pub struct RebootRow {
    /// vCPUs.
    pub vcpus: u32,
    /// Microseconds per reboot in place, the vCPUs spread over the host's CPUs.
    pub in_place: Summary,
    /// Microseconds per reboot in place, the vCPUs one after another on one thread.
    pub in_place_serial: Summary,
    /// One thread over spread, per round.
    pub parallel_gain: Summary,
    /// Microseconds per reboot in place after every vCPU ran (spread over threads).
    pub in_place_all_ran: Summary,
    /// Recreate over in place after every vCPU ran, per round.
    pub speedup_all_ran: Summary,
    /// vCPU ioctls per vCPU per reboot in place after every vCPU ran.
    pub all_ran_ioctls_per_vcpu: f64,
    /// Microseconds per reboot through the VMM API (each vCPU's thread calling
    /// `VcpuReset::reset`, then the devices restored).
    pub vmm_api: Summary,
    /// The VMM API over in place (the runner's), per round.
    pub vmm_api_vs_in_place: Summary,
    /// vCPU ioctls per vCPU per reboot through the VMM API.
    pub vmm_api_ioctls_per_vcpu: f64,
    /// Microseconds per teardown and recreation.
    pub recreate: Summary,
    /// Recreate over in place, per round.
    pub speedup: Summary,
    /// vCPU ioctls per vCPU per reboot in place.
    pub in_place_ioctls_per_vcpu: f64,
    /// vCPU ioctls per vCPU per recreation (creation and RESET).
    pub recreate_ioctls_per_vcpu: f64,
}

/// The result of `bench reboot`.
#[derive(Clone, Debug, PartialEq)]
pub struct RebootReport {
    /// Rounds per vCPU count.
    pub rounds: u32,
    /// One row per vCPU count.
    pub rows: Vec<RebootRow>,
}

impl RebootRow {
    /// Summarise the rounds of one vCPU count.
    ///
    /// # Errors
    /// [`BenchError::Option`] without samples, or with different counts for the two paths.
    pub fn from_samples(
        vcpus: u32,
        in_place: &[RebootSample],
        in_place_serial: &[RebootSample],
        all_ran: &[RebootSample],
        vmm_api: &[RebootSample],
        recreate: &[RebootSample],
    ) -> Result<RebootRow, BenchError> {
        let empty = || BenchError::Option {
            option: "--rounds",
            value: in_place.len() as u64,
            why: "every path needs the same number of rounds, at least 1",
        };
        if in_place.len() != recreate.len()
            || in_place_serial.len() != recreate.len()
            || all_ran.len() != recreate.len()
            || vmm_api.len() != recreate.len()
        {
            return Err(empty());
        }
        let us = |s: &[RebootSample]| -> Vec<f64> {
            s.iter().map(|x| x.elapsed.as_secs_f64() * 1e6).collect()
        };
        let per_vcpu = |s: &[RebootSample]| {
            let total: u64 = s.iter().map(|x| x.vcpu_ioctls).sum();
            total as f64 / (s.len().max(1) as f64 * f64::from(vcpus.max(1)))
        };
        let (a, b, c, d) = (us(in_place), us(recreate), us(in_place_serial), us(all_ran));
        let v = us(vmm_api);
        Ok(RebootRow {
            vcpus,
            in_place: Summary::of(&a).ok_or_else(empty)?,
            in_place_serial: Summary::of(&c).ok_or_else(empty)?,
            parallel_gain: Summary::of(&ratios(&c, &a)).ok_or_else(empty)?,
            in_place_all_ran: Summary::of(&d).ok_or_else(empty)?,
            speedup_all_ran: Summary::of(&ratios(&b, &d)).ok_or_else(empty)?,
            all_ran_ioctls_per_vcpu: per_vcpu(all_ran),
            vmm_api: Summary::of(&v).ok_or_else(empty)?,
            vmm_api_vs_in_place: Summary::of(&ratios(&v, &a)).ok_or_else(empty)?,
            vmm_api_ioctls_per_vcpu: per_vcpu(vmm_api),
            recreate: Summary::of(&b).ok_or_else(empty)?,
            speedup: Summary::of(&ratios(&b, &a)).ok_or_else(empty)?,
            in_place_ioctls_per_vcpu: per_vcpu(in_place),
            recreate_ioctls_per_vcpu: per_vcpu(recreate),
        })
    }

    /// Whether in place is at least [`TARGET_SPEEDUP`] times faster (median per round).
    pub fn met(&self) -> bool {
        self.speedup.median >= TARGET_SPEEDUP
    }

    /// Whether in place after every vCPU ran is at least [`TARGET_SPEEDUP`] times faster.
    pub fn met_all_ran(&self) -> bool {
        self.speedup_all_ran.median >= TARGET_SPEEDUP
    }
}

impl RebootReport {
    /// The report as text: a header, one row per vCPU count and path, the verdict.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "vcpu-reset bench reboot — {}\n\
             in place: Vm::reboot(Reset) after the BSP ran (the APs wait for SIPI), every vCPU cache invalidated, the vCPUs' RESET spread over up to {} threads, one per {} vCPUs (and on 1 thread); all ran: the same after every AP ran too; VMM API: a VMM's own VM whose vCPU threads each call VcpuReset::reset, then VmDevices::restore; recreate: drop the VM, build it again (VM, memory, irqchip, PIT, vCPUs, CPUID, RESET)\n\
             {} rounds per vCPU count, the paths alternating; median [min–max] over rounds\n\n",
            super::host_line(),
            host_cpus(),
            vcpu_reset::engine::parallel::MIN_VCPUS_PER_THREAD,
            self.rounds
        );
        let mut rows = Vec::new();
        for r in &self.rows {
            rows.push(vec![
                r.vcpus.to_string(),
                "in place".to_owned(),
                r.in_place.display(0),
                "1".to_owned(),
                format!(
                    "{:.1} (+{VM_IOCTLS_PER_REBOOT} VM)",
                    r.in_place_ioctls_per_vcpu
                ),
            ]);
            rows.push(vec![
                r.vcpus.to_string(),
                "in place, 1 thread".to_owned(),
                r.in_place_serial.display(0),
                format!("{} of spread", r.parallel_gain.display(2)),
                String::new(),
            ]);
            rows.push(vec![
                r.vcpus.to_string(),
                "in place, all ran".to_owned(),
                r.in_place_all_ran.display(0),
                format!("recreate is {}×", r.speedup_all_ran.display(1)),
                format!("{:.1}", r.all_ran_ioctls_per_vcpu),
            ]);
            rows.push(vec![
                r.vcpus.to_string(),
                "VMM API".to_owned(),
                r.vmm_api.display(0),
                format!("{} of in place", r.vmm_api_vs_in_place.display(2)),
                format!(
                    "{:.1} (+{VM_IOCTLS_PER_REBOOT} VM)",
                    r.vmm_api_ioctls_per_vcpu
                ),
            ]);
            rows.push(vec![
                r.vcpus.to_string(),
                "recreate".to_owned(),
                r.recreate.display(0),
                r.speedup.display(1),
                format!("{:.1}", r.recreate_ioctls_per_vcpu),
            ]);
        }
        out.push_str(&table(
            &[
                "vCPUs",
                "path",
                "µs/reboot",
                "× in place",
                "vCPU ioctls/vCPU",
            ],
            &rows,
        ));
        out.push('\n');
        let worst = |f: fn(&RebootRow) -> f64| self.rows.iter().map(f).min_by(f64::total_cmp);
        if let Some(worst) = worst(|r| r.speedup.median) {
            let met = self.rows.iter().all(RebootRow::met);
            out.push_str(&format!(
                "target in place ≥ {TARGET_SPEEDUP:.0}× faster than recreate: {} (smallest median speedup {worst:.1}×)\n",
                if met { "met" } else { "NOT met" },
            ));
        }
        if let Some(worst) = worst(|r| r.speedup_all_ran.median) {
            let met = self.rows.iter().all(RebootRow::met_all_ran);
            out.push_str(&format!(
                "  the same after every vCPU ran: {} (smallest median speedup {worst:.1}×)\n",
                if met { "met" } else { "NOT met" },
            ));
        }
        let most = |f: fn(&RebootRow) -> f64| self.rows.iter().map(f).max_by(f64::total_cmp);
        if let (Some(ran), Some(waited)) = (
            most(|r| r.all_ran_ioctls_per_vcpu),
            most(|r| r.in_place_ioctls_per_vcpu),
        ) {
            out.push_str(&format!(
                "target ≤ {TARGET_IOCTLS_PER_VCPU:.0} vCPU ioctls per vCPU per RESET in place: {} (at most {ran:.1} per vCPU after every vCPU ran, {waited:.1} when only the BSP ran)\n",
                if ran <= TARGET_IOCTLS_PER_VCPU {
                    "met"
                } else {
                    "NOT met"
                },
            ));
        }
        out
    }
}

/// Run `bench reboot`: for each vCPU count, build a [`RebootRig`] and time `rounds` reboots of
/// each path, alternating which goes first.
///
/// # Errors
/// [`BenchError::Option`] for zero rounds or vCPUs; otherwise as [`RebootRig`].
pub fn run(options: &RebootOptions) -> Result<RebootReport, BenchError> {
    if options.rounds == 0 {
        return Err(BenchError::Option {
            option: "--rounds",
            value: 0,
            why: "at least 1 round",
        });
    }
    super::check_vcpus(&options.vcpus, crate::host::open()?.caps().max_vcpus as u64)?;
    let mut rows = Vec::new();
    for &vcpus in &options.vcpus {
        let mut rig = RebootRig::new(crate::host::open()?, vcpus)?;
        // One of each, untimed, so both paths start warm.
        rig.in_place()?;
        rig.recreate()?;
        rig.in_place_on(1)?;
        rig.in_place_all_ran()?;
        rig.vmm_api()?;
        let mut in_place = Vec::new();
        let mut vmm_api = Vec::new();
        let mut serial = Vec::new();
        let mut all_ran = Vec::new();
        let mut recreate = Vec::new();
        for round in 0..options.rounds {
            if round % 2 == 0 {
                in_place.push(rig.in_place()?);
                serial.push(rig.in_place_on(1)?);
                all_ran.push(rig.in_place_all_ran()?);
                vmm_api.push(rig.vmm_api()?);
                recreate.push(rig.recreate()?);
            } else {
                recreate.push(rig.recreate()?);
                vmm_api.push(rig.vmm_api()?);
                all_ran.push(rig.in_place_all_ran()?);
                serial.push(rig.in_place_on(1)?);
                in_place.push(rig.in_place()?);
            }
        }
        rows.push(RebootRow::from_samples(
            vcpus, &in_place, &serial, &all_ran, &vmm_api, &recreate,
        )?);
    }
    Ok(RebootReport {
        rounds: options.rounds,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(us: u64, vcpu_ioctls: u64) -> RebootSample {
        RebootSample {
            elapsed: Duration::from_micros(us),
            vcpu_ioctls,
        }
    }

    #[test]
    fn a_row_summarises_rounds_and_takes_ratios_per_round() {
        let row = RebootRow::from_samples(
            2,
            &[s(100, 16), s(200, 16), s(100, 16)],
            &[s(150, 16), s(200, 16), s(200, 16)],
            &[s(300, 8), s(300, 8), s(250, 8)],
            &[s(120, 8), s(200, 8), s(150, 8)],
            &[s(3000, 60), s(3000, 60), s(2500, 60)],
        )
        .expect("row");
        assert_eq!(row.in_place.median, 100.0);
        assert_eq!(row.recreate.median, 3000.0);
        // 30, 15, 25 per round.
        assert_eq!(row.speedup.median, 25.0);
        // 1.5, 1, 2 per round.
        assert_eq!(row.parallel_gain.median, 1.5);
        assert_eq!(row.in_place_ioctls_per_vcpu, 8.0);
        assert_eq!(row.recreate_ioctls_per_vcpu, 30.0);
        assert_eq!(row.all_ran_ioctls_per_vcpu, 4.0);
        // 10 per round.
        assert_eq!(row.speedup_all_ran.median, 10.0);
        assert!(row.met());
        assert!(!row.met_all_ran());
        assert_eq!(row.vmm_api.median, 150.0);
        // 1.2, 1, 1.5 per round.
        assert_eq!(row.vmm_api_vs_in_place.median, 1.2);
        assert_eq!(row.vmm_api_ioctls_per_vcpu, 4.0);
    }

    #[test]
    fn mismatched_or_missing_rounds_are_an_error() {
        let one = [s(1, 1)];
        assert!(RebootRow::from_samples(1, &[], &[], &[], &[], &[]).is_err());
        assert!(RebootRow::from_samples(1, &one, &one, &one, &one, &[]).is_err());
        assert!(RebootRow::from_samples(1, &one, &one, &[], &one, &one).is_err());
        assert!(RebootRow::from_samples(1, &one, &one, &one, &[], &one).is_err());
    }

    #[test]
    fn the_text_has_both_paths_per_count_and_the_verdict() {
        let fast = RebootRow::from_samples(
            1,
            &[s(100, 8)],
            &[s(100, 8)],
            &[s(100, 8)],
            &[s(100, 8)],
            &[s(5000, 30)],
        )
        .expect("row");
        let slow = RebootRow::from_samples(
            32,
            &[s(1000, 66)],
            &[s(1500, 66)],
            &[s(3000, 128)],
            &[s(1000, 66)],
            &[s(9000, 960)],
        )
        .expect("row");
        let report = RebootReport {
            rounds: 1,
            rows: vec![fast, slow],
        };
        let text = report.to_text();
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("  in place  ") || l.contains("  recreate  "))
            .collect();
        assert_eq!(rows.len(), 4, "{text}");
        assert_eq!(text.matches("in place, all ran").count(), 2, "{text}");
        assert!(
            rows[0].starts_with("1 ") && rows[0].contains("8.0 (+4 VM)"),
            "{text}"
        );
        assert!(
            rows[1].contains("5000") && rows[1].contains("50.0"),
            "{text}"
        );
        assert!(
            rows[3].starts_with("32") && rows[3].contains("9.0"),
            "{text}"
        );
        assert!(
            text.contains(
                "target in place ≥ 20× faster than recreate: NOT met (smallest median speedup 9.0×)"
            ),
            "{text}"
        );
        assert!(
            text.contains("the same after every vCPU ran: NOT met (smallest median speedup 3.0×)"),
            "{text}"
        );
        assert!(
            text.contains(
                "target ≤ 3 vCPU ioctls per vCPU per RESET in place: NOT met (at most 8.0 per vCPU after every vCPU ran, 8.0 when only the BSP ran)"
            ),
            "{text}"
        );
    }
}
