//! The few operating-system calls the library makes outside the KVM backend and the runner's
//! guest memory, each behind a safe function: the one place their `unsafe` lives.

use std::os::fd::AsRawFd;
use std::os::raw::c_int;
use std::thread::ScopedJoinHandle;
use std::time::Duration;

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`), or `None` if the clock
/// cannot be read.
pub fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one `timespec` through the pointer, which `&mut ts`
    // provides; CLOCK_THREAD_CPUTIME_ID is a clock every Linux has. The result is checked.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if ret != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    Some(Duration::new(secs, nanos))
}

/// Sends SIGKILL to the process group `leader` leads (a child spawned with
/// `process_group(0)`), so a wrapper's children die with it. Errors (the group is gone) are
/// ignored: the caller reaps the child next.
pub fn kill_process_group(leader: u32) {
    let Ok(pid) = i32::try_from(leader) else {
        return;
    };
    if pid <= 0 {
        // kill(0, ...) and kill(-1, ...) would hit our own group or every process.
        return;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; `-pid` names the
    // process group `pid` leads, never our own (pid > 0 is a child's id).
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

/// A thread that can be interrupted with a signal, e.g. to make its `KVM_RUN` return `EINTR`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kickable {
    tid: Option<libc::pthread_t>,
}

impl Kickable {
    /// The calling thread.
    pub fn current() -> Self {
        // SAFETY: pthread_self has no preconditions.
        let tid = unsafe { libc::pthread_self() };
        Self { tid: Some(tid) }
    }

    /// Sends `signal` to the thread, which `alive` (the scoped handle of the thread this was
    /// made on) shows has not been joined, so its pthread id is still valid. A thread that
    /// has finished but is not joined yet takes the signal harmlessly.
    pub fn kick<T>(&self, alive: &ScopedJoinHandle<'_, T>, signal: c_int) {
        let Some(tid) = self.tid else { return };
        if alive.is_finished() {
            return;
        }
        // SAFETY: `tid` is the pthread id of a scoped thread whose handle `alive` is borrowed
        // here, so it has not been joined (joining consumes the handle) and the id is valid.
        unsafe {
            libc::pthread_kill(tid, signal);
        }
    }
}

/// Clears O_NONBLOCK on `file` (opened non-blocking so that opening a FIFO cannot hang), so
/// writes wait for the reader as usual.
///
/// # Errors
/// fcntl's error.
pub fn set_blocking(file: &std::fs::File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl with F_GETFL/F_SETFL on a descriptor `file` owns and keeps open for the
    // duration of the call; it touches no memory of ours.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The signal that asked this process to stop while an [`InterruptGuard`] was installed, or 0.
static INTERRUPTED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// The signals a user or a supervisor stops a run with.
const STOP_SIGNALS: [c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn note_interrupt(signal: c_int) {
    // Async-signal-safe: one atomic store.
    INTERRUPTED.store(signal, std::sync::atomic::Ordering::SeqCst);
}

/// While alive, SIGINT, SIGTERM and SIGHUP do not end the process at once: they are noted for
/// [`interrupted`], so the code that owns child processes and temporary files (a peer VMM and
/// its temp dir) can kill and remove them first, then end the process with [`die_of`]. Dropping
/// the guard puts the previous handlers back.
pub struct InterruptGuard {
    previous: Vec<(c_int, libc::sigaction)>,
}

impl InterruptGuard {
    /// Installs the handlers.
    pub fn install() -> InterruptGuard {
        let mut previous = Vec::with_capacity(STOP_SIGNALS.len());
        for signal in STOP_SIGNALS {
            // SAFETY: an all-zero sigaction is a valid value (no flags, empty mask, no
            // handler); the handler set below only stores to an atomic, which is
            // async-signal-safe.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = note_interrupt as extern "C" fn(c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            // SAFETY: as above.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: sigaction reads `action` and writes `old`, both live locals of the right
            // type; `signal` is a valid, catchable signal number.
            let ret = unsafe { libc::sigaction(signal, &action, &mut old) };
            if ret == 0 {
                previous.push((signal, old));
            }
        }
        InterruptGuard { previous }
    }
}

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        for (signal, old) in self.previous.drain(..).rev() {
            // SAFETY: puts back the action sigaction returned for `signal` in `install`.
            unsafe {
                libc::sigaction(signal, &old, std::ptr::null_mut());
            }
        }
    }
}

/// The signal noted while an [`InterruptGuard`] was installed, if any.
pub fn interrupted() -> Option<c_int> {
    match INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Ends the process as `signal` would have (its default action), after the caller cleaned
/// up; exit status 128 + `signal` if the default action does not end it.
pub fn die_of(signal: c_int) -> ! {
    // SAFETY: signal(2) with SIG_DFL and raise(3) take plain integers and touch no memory of
    // ours.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
    std::process::exit(128 + signal)
}

/// Waits up to `limit` for the child `pid` to exit (without reaping it), returning early when a
/// signal arrives. Where the kernel offers pidfds (Linux 5.3), a poll(2) on one returns the
/// moment the child exits, so a caller that times the child adds no polling delay; elsewhere
/// this sleeps `limit`.
pub fn wait_for_exit(pid: u32, limit: Duration) {
    let millis = c_int::try_from(limit.as_millis()).unwrap_or(c_int::MAX);
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        std::thread::sleep(limit);
        return;
    };
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory
    // of ours is touched.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let Ok(fd) = c_int::try_from(fd) else {
        std::thread::sleep(limit);
        return;
    };
    if fd < 0 {
        std::thread::sleep(limit);
        return;
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one `pollfd` `&mut pfd` points to; `fd` is the pidfd
    // opened above, closed right after and never used again.
    unsafe {
        libc::poll(&mut pfd, 1, millis);
        libc::close(fd);
    }
}
