//! The rendezvous of a crew of worker threads that live for a whole run: the runner's vCPU
//! threads, one per vCPU, across every boot of [`super::Vm::run`].
//!
//! A boot runs until a worker reports how it ended ([`Member::report`]) or the main thread's
//! deadline passes ([`Crew::wait_end`]). The main thread then publishes the next step
//! ([`Crew::publish`]: a reboot of some kind, or finish) before it raises the stop flag, and
//! kicks the workers that have not yet left their loop until all have
//! ([`Crew::kick_until_out`]). Each worker, out of its loop ([`Member::leave`]), reads the
//! step: on a reboot it does its own part at once and hands in its result ([`Member::done`]),
//! then waits for the next boot ([`Member::wait_start`]); on finish it returns. The main thread
//! waits for the last result ([`Crew::wait_done`]), does the shared part, and starts the next
//! boot ([`Crew::start`]). The main thread is woken once per event (the report, the last worker
//! out, the last worker done), not once per worker.
//!
//! A worker that ends, by returning or by panicking, is marked gone when its [`Member`] drops,
//! so the main thread never waits for it; one that ends before the run is finishing is
//! reported as lost ([`Wake::Lost`]). Nothing here needs KVM: the tests below drive fake
//! workers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// What the main thread published for the workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step<K> {
    /// A boot is running.
    Run,
    /// The boot is over and a reboot of this kind follows: each worker does its part.
    Reboot(K),
    /// The run is over: workers return.
    Finish,
}

/// Why [`Crew::wait_end`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake<E> {
    /// The first report of the boot.
    Report(E),
    /// The deadline passed first.
    Timeout,
    /// This worker ended (returned or panicked) while the run still needed it.
    Lost(usize),
}

/// Where a worker is in the current generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// In its loop (or about to enter it).
    Running,
    /// Out of its loop, waiting for the step or doing its part.
    Out,
    /// Its result handed in.
    Done,
    /// Ended for good.
    Gone,
}

struct State<E, K, R> {
    generation: u64,
    step: Step<K>,
    /// The first report of the current boot.
    end: Option<E>,
    /// The first worker that ended before the run was finishing.
    lost: Option<usize>,
    phases: Vec<Phase>,
    results: Vec<Option<R>>,
    /// Workers in [`Phase::Running`].
    running: usize,
    /// Workers neither [`Phase::Done`] nor [`Phase::Gone`].
    pending: usize,
}

/// The shared state of a crew: reports `E`, reboot kinds `K`, per-worker results `R`.
pub struct Crew<E, K, R> {
    state: Mutex<State<E, K, R>>,
    /// The main thread waits here.
    main: Condvar,
    /// Workers wait here.
    workers: Condvar,
    stop: AtomicBool,
}

impl<E, K: Copy, R> Crew<E, K, R> {
    /// A crew of `workers` workers, its first boot (generation 1) already started.
    pub fn new(workers: usize) -> Self {
        Crew {
            state: Mutex::new(State {
                generation: 1,
                step: Step::Run,
                end: None,
                lost: None,
                phases: vec![Phase::Running; workers],
                results: (0..workers).map(|_| None).collect(),
                running: workers,
                pending: workers,
            }),
            main: Condvar::new(),
            workers: Condvar::new(),
            stop: AtomicBool::new(false),
        }
    }

    /// The state stays consistent whatever a panicking thread was doing (no code here panics
    /// with the lock held), so a poisoned lock is simply taken.
    fn lock(&self) -> MutexGuard<'_, State<E, K, R>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_main<'a>(
        &self,
        guard: MutexGuard<'a, State<E, K, R>>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, State<E, K, R>> {
        match timeout {
            None => self
                .main
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner),
            Some(t) => {
                self.main
                    .wait_timeout(guard, t)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        }
    }

    /// Worker `index`'s handle, to be moved into its thread: dropping it (the thread returning
    /// or unwinding, or a thread that could not be started) marks the worker gone. Call once
    /// per index.
    pub fn member(&self, index: usize) -> Member<'_, E, K, R> {
        Member { crew: self, index }
    }

    /// Main thread: wait for the end of the boot (no deadline: wait as long as it takes).
    pub fn wait_end(&self, deadline: Option<Instant>) -> Wake<E> {
        let mut g = self.lock();
        loop {
            if let Some(i) = g.lost {
                return Wake::Lost(i);
            }
            if let Some(e) = g.end.take() {
                return Wake::Report(e);
            }
            let left = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Wake::Timeout,
                },
            };
            g = self.wait_main(g, left);
        }
    }

    /// Main thread: publish the next step, then raise the stop flag (in that order, so a
    /// worker that sees the flag finds the step), and wake the workers already out.
    pub fn publish(&self, step: Step<K>) {
        let mut g = self.lock();
        g.step = step;
        self.stop.store(true, Ordering::SeqCst);
        drop(g);
        self.workers.notify_all();
    }

    /// Main thread, after [`Crew::publish`]: call `kick(i)` for every worker still in its
    /// loop, again after each `pause` while some are, until every worker is out or gone. A
    /// kick can be lost (a signal that lands just before a blocking call), hence the repeats.
    pub fn kick_until_out(&self, pause: Duration, mut kick: impl FnMut(usize)) {
        let mut slow = Vec::new();
        let mut g = self.lock();
        while g.running > 0 {
            slow.clear();
            slow.extend(
                g.phases
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| **p == Phase::Running)
                    .map(|(i, _)| i),
            );
            drop(g);
            for &i in &slow {
                kick(i);
            }
            g = self.lock();
            if g.running > 0 {
                g = self.wait_main(g, Some(pause));
            }
        }
    }

    /// Main thread, after [`Crew::kick_until_out`] of a [`Step::Reboot`]: wait until every
    /// worker has handed in its result or is gone; each worker's result, `None` for one gone.
    pub fn wait_done(&self) -> Vec<Option<R>> {
        let mut g = self.lock();
        while g.pending > 0 {
            g = self.wait_main(g, None);
        }
        g.results.iter_mut().map(Option::take).collect()
    }

    /// Main thread, once every worker is done: clear the stop flag and start the next boot.
    pub fn start(&self) {
        let mut g = self.lock();
        self.stop.store(false, Ordering::SeqCst);
        g.step = Step::Run;
        g.generation += 1;
        g.end = None;
        let mut alive = 0;
        for p in g.phases.iter_mut().filter(|p| **p != Phase::Gone) {
            *p = Phase::Running;
            alive += 1;
        }
        g.running = alive;
        g.pending = alive;
        drop(g);
        self.workers.notify_all();
    }
}

/// A worker's handle on its crew; dropping it marks the worker gone.
pub struct Member<'c, E, K: Copy, R> {
    crew: &'c Crew<E, K, R>,
    index: usize,
}

impl<E, K: Copy, R> Member<'_, E, K, R> {
    /// The crew's stop flag: raised once a step is published, cleared when the next boot
    /// starts; a worker's loop checks it before each blocking call.
    pub fn stop_flag(&self) -> &AtomicBool {
        &self.crew.stop
    }

    /// Wait for a boot after generation `seen` (0 at first) and note it; `false` when the run
    /// is finishing instead. A worker late for its boot (one that already ended, e.g. before
    /// a new thread got to run) still goes in: its loop finds the stop flag raised, and it
    /// leaves at once and does its part.
    pub fn wait_start(&self, seen: &mut u64) -> bool {
        let c = self.crew;
        let mut g = c.lock();
        loop {
            if matches!(g.step, Step::Finish) {
                return false;
            }
            if g.generation > *seen {
                *seen = g.generation;
                return true;
            }
            g = c.workers.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Report how the boot ended; only the first report of a boot counts, and none once the
    /// main thread has decided.
    pub fn report(&self, end: E) {
        let c = self.crew;
        let mut g = c.lock();
        if matches!(g.step, Step::Run) && g.end.is_none() {
            g.end = Some(end);
            drop(g);
            c.main.notify_all();
        }
    }

    /// Out of the loop: count this worker out (the last one out wakes the main thread), wait
    /// for the step to be published and return it ([`Step::Reboot`] or [`Step::Finish`]).
    pub fn leave(&self) -> Step<K> {
        let c = self.crew;
        let mut g = c.lock();
        if g.phases[self.index] == Phase::Running {
            g.phases[self.index] = Phase::Out;
            g.running = g.running.saturating_sub(1);
            if g.running == 0 {
                c.main.notify_all();
            }
        }
        while matches!(g.step, Step::Run) {
            g = c.workers.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
        g.step
    }

    /// Hand in this worker's result for the reboot (the last one wakes the main thread).
    pub fn done(&self, result: R) {
        let c = self.crew;
        let mut g = c.lock();
        if g.phases[self.index] != Phase::Out {
            return;
        }
        g.phases[self.index] = Phase::Done;
        g.results[self.index] = Some(result);
        g.pending = g.pending.saturating_sub(1);
        if g.pending == 0 {
            drop(g);
            c.main.notify_all();
        }
    }
}

impl<E, K: Copy, R> Drop for Member<'_, E, K, R> {
    fn drop(&mut self) {
        let c = self.crew;
        let mut g = c.lock();
        let i = self.index;
        let (was_running, was_pending) = match g.phases[i] {
            Phase::Running => (true, true),
            Phase::Out => (false, true),
            Phase::Done | Phase::Gone => (false, false),
        };
        g.phases[i] = Phase::Gone;
        let mut wake = false;
        if was_running {
            g.running = g.running.saturating_sub(1);
            wake |= g.running == 0;
        }
        if was_pending {
            g.pending = g.pending.saturating_sub(1);
            wake |= g.pending == 0;
        }
        if !matches!(g.step, Step::Finish) {
            g.lost.get_or_insert(i);
            wake = true;
        }
        drop(g);
        if wake {
            c.main.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A fake worker: its "loop" spins until the stop flag (or reports `report` at once when
    /// it is its turn), its part of a reboot returns `index * 100 + kind`; `panic_at` makes it
    /// panic in that generation, in its loop (kind 0) or in its part (kind 1).
    fn worker(
        me: &Member<'_, u32, u32, u64>,
        index: usize,
        reporter: impl Fn(u64) -> Option<u32>,
        panic_at: Option<(u64, u32)>,
        parts: &AtomicUsize,
    ) {
        let mut seen = 0;
        while me.wait_start(&mut seen) {
            if panic_at == Some((seen, 0)) {
                panic!("worker {index} panics in its loop (generation {seen})");
            }
            if let Some(end) = reporter(seen) {
                me.report(end);
            } else {
                while !me.stop_flag().load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
            }
            match me.leave() {
                Step::Reboot(kind) => {
                    if panic_at == Some((seen, 1)) {
                        panic!("worker {index} panics in its part (generation {seen})");
                    }
                    parts.fetch_add(1, Ordering::SeqCst);
                    me.done(index as u64 * 100 + u64::from(kind));
                }
                Step::Run | Step::Finish => return,
            }
        }
    }

    const PAUSE: Duration = Duration::from_micros(20);

    /// Runs `n` fake workers: worker `g % n` reports `g` in generation `g`; reboots of kind
    /// `g % 2` until generation `last`, whose report ends the run. Returns what the main side
    /// saw: the wakes, the results per reboot, and the join results.
    #[allow(clippy::type_complexity)]
    fn drive(
        n: usize,
        last: u64,
        panic_at: Option<(usize, u64, u32)>,
    ) -> (Vec<Wake<u32>>, Vec<Vec<Option<u64>>>, Vec<bool>, usize) {
        let crew: Crew<u32, u32, u64> = Crew::new(n);
        let parts = AtomicUsize::new(0);
        let kicks = AtomicUsize::new(0);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let me = crew.member(i);
                    let parts = &parts;
                    let panic_at = panic_at.and_then(|(w, g, k)| (w == i).then_some((g, k)));
                    s.spawn(move || {
                        let reporter = |g: u64| (g % n as u64 == i as u64).then_some(g as u32);
                        worker(&me, i, reporter, panic_at, parts)
                    })
                })
                .collect();
            let mut wakes = Vec::new();
            let mut results = Vec::new();
            loop {
                let wake = crew.wait_end(Some(Instant::now() + Duration::from_secs(20)));
                let go_on = matches!(wake, Wake::Report(g) if u64::from(g) < last);
                wakes.push(wake);
                if !go_on {
                    break;
                }
                let kind = (wakes.len() % 2) as u32;
                crew.publish(Step::Reboot(kind));
                crew.kick_until_out(PAUSE, |_| {
                    kicks.fetch_add(1, Ordering::SeqCst);
                });
                let r = crew.wait_done();
                let complete = r.iter().all(Option::is_some);
                results.push(r);
                if !complete {
                    break;
                }
                crew.start();
            }
            crew.publish(Step::Finish);
            crew.kick_until_out(PAUSE, |_| {});
            let joined: Vec<bool> = handles.into_iter().map(|h| h.join().is_ok()).collect();
            (wakes, results, joined, parts.load(Ordering::SeqCst))
        })
    }

    #[test]
    fn workers_go_through_many_generations_and_every_result_arrives() {
        let n = 4;
        let (wakes, results, joined, parts) = drive(n, 9, None);
        let reports: Vec<Wake<u32>> = (1..=9).map(Wake::Report).collect();
        assert_eq!(wakes, reports);
        assert_eq!(results.len(), 8);
        for (r, got) in results.iter().enumerate() {
            let kind = ((r + 1) % 2) as u64;
            let want: Vec<Option<u64>> = (0..n as u64).map(|i| Some(i * 100 + kind)).collect();
            assert_eq!(got, &want, "reboot {r}");
        }
        assert_eq!(parts, 8 * n);
        assert_eq!(joined, vec![true; n]);
    }

    #[test]
    fn a_worker_that_panics_in_its_part_does_not_hang_the_main_side() {
        // Worker 2 panics in its part of the reboot after generation 3.
        let (wakes, results, joined, _) = drive(4, 9, Some((2, 3, 1)));
        assert_eq!(wakes.len(), 3);
        let last = results.last().expect("a reboot");
        assert_eq!(last[2], None, "{last:?}");
        assert!(last[0].is_some() && last[1].is_some() && last[3].is_some());
        assert_eq!(joined, vec![true, true, false, true]);
    }

    #[test]
    fn a_worker_that_panics_in_its_loop_is_reported_lost() {
        // Worker 3 panics in generation 2 while the others spin (worker 2 reports generation 2
        // unless the loss is seen first).
        let (wakes, _, joined, _) = drive(4, 9, Some((3, 2, 0)));
        assert!(
            matches!(wakes.last(), Some(Wake::Lost(3)) | Some(Wake::Report(2))),
            "{wakes:?}"
        );
        assert_eq!(joined, vec![true, true, true, false]);
    }

    #[test]
    fn a_boot_nobody_ends_times_out_and_the_spinning_workers_are_stopped() {
        let crew: Crew<u32, u32, u64> = Crew::new(3);
        let parts = AtomicUsize::new(0);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .map(|i| {
                    let me = crew.member(i);
                    let parts = &parts;
                    s.spawn(move || worker(&me, i, |_| None, None, parts))
                })
                .collect();
            let start = Instant::now();
            let wake = crew.wait_end(Some(start + Duration::from_millis(50)));
            assert_eq!(wake, Wake::Timeout);
            assert!(start.elapsed() >= Duration::from_millis(50));
            crew.publish(Step::Finish);
            crew.kick_until_out(PAUSE, |_| {});
            for h in handles {
                assert!(h.join().is_ok());
            }
        });
        assert_eq!(parts.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_worker_late_for_a_boot_that_already_ended_still_does_its_part() {
        // Worker 0 ends boot 1 before worker 1's thread is even started.
        let crew: Crew<u32, u32, u64> = Crew::new(2);
        let parts = AtomicUsize::new(0);
        let (a, b) = (crew.member(0), crew.member(1));
        a.report(1);
        assert_eq!(crew.wait_end(None), Wake::Report(1));
        crew.publish(Step::Reboot(1));
        let mut seen = 0;
        assert!(a.wait_start(&mut seen));
        assert_eq!(a.leave(), Step::Reboot(1));
        a.done(1);
        std::thread::scope(|s| {
            let parts = &parts;
            s.spawn(move || worker(&b, 1, |_| None, None, parts));
            crew.kick_until_out(PAUSE, |_| {});
            assert_eq!(crew.wait_done(), vec![Some(1), Some(101)]);
            crew.publish(Step::Finish);
        });
        assert_eq!(parts.load(Ordering::SeqCst), 1);
        drop(a);
    }

    #[test]
    fn only_the_first_report_of_a_boot_counts() {
        let crew: Crew<u32, u32, u64> = Crew::new(2);
        let (a, b) = (crew.member(0), crew.member(1));
        a.report(7);
        b.report(8);
        assert_eq!(crew.wait_end(None), Wake::Report(7));
        crew.publish(Step::Finish);
        b.report(9);
        assert_eq!(
            crew.wait_end(Some(Instant::now())),
            Wake::Timeout,
            "no report once the step is published"
        );
        assert_eq!(a.leave(), Step::Finish);
        assert_eq!(b.leave(), Step::Finish);
        drop((a, b));
        assert!(crew.lock().phases.iter().all(|p| *p == Phase::Gone));
        assert_eq!(crew.lock().lost, None, "ending on Finish is not a loss");
    }

    #[test]
    fn a_member_dropped_before_its_thread_ran_is_lost_and_not_waited_for() {
        // As when a vCPU thread cannot be started: its member is dropped unused.
        let crew: Crew<u32, u32, u64> = Crew::new(2);
        let a = crew.member(0);
        drop(crew.member(1));
        assert_eq!(crew.wait_end(None), Wake::Lost(1));
        crew.publish(Step::Finish);
        // Only worker 0 is waited for.
        std::thread::scope(|s| {
            s.spawn(move || {
                assert_eq!(a.leave(), Step::Finish);
            });
            crew.kick_until_out(PAUSE, |_| {});
        });
    }
}
