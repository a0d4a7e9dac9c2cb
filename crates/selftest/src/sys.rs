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
