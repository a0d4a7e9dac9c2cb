//! How often the vCPU has entered the guest, from KVM's binary statistics
//! ([`HostInitBackend::touch_count`](crate::backend::HostInitBackend::touch_count)).
//!
//! KVM_GET_STATS_FD (Linux 5.14, KVM_CAP_BINARY_STATS_FD; `Documentation/virt/kvm/api.rst`,
//! "KVM_GET_STATS_FD") gives a file per vCPU: a header, descriptors naming each statistic, and
//! their values. The x86 statistic `exits` is a cumulative count of VM exits, raised once per
//! exit in `vcpu_enter_guest()` (`arch/x86/kvm/x86.c`). Every guest entry ends in an exit before
//! KVM_RUN returns, so a count that has not moved proves the vCPU executed no guest
//! instruction in between: KVM_RUN on an AP waiting for SIPI, or one signalled out before it
//! entered, leaves it alone. The value is read with one `pread` of the stats file: no vCPU
//! ioctl, and no `vcpu_load` in the kernel.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use super::vcpu_io::VcpuIo;
use vmm_sys_util::errno;

use super::ioctls::KVM_GET_STATS_FD;

/// The statistic counted.
const EXITS: &[u8] = b"exits";
/// `KVM_STATS_TYPE_MASK`: the type bits of a descriptor's flags.
const TYPE_MASK: u32 = 0xf;
/// Size of `struct kvm_stats_header` and of `struct kvm_stats_desc` without its name.
const HEADER: usize = 24;
const DESC: usize = 16;
/// Bounds on what a stats file may describe, far above what KVM has (about 60 vCPU statistics
/// with 48-byte names), so a malformed file cannot make the reader allocate without limit.
const MAX_DESCS: usize = 4096;
const MAX_NAME: usize = 1024;

/// The open statistics of one vCPU and where its `exits` count is.
#[derive(Debug)]
pub(super) struct EntryCount {
    file: File,
    at: u64,
}

/// The statistics file of the vCPU behind `fd` (one ioctl, KVM_GET_STATS_FD); the errno where
/// the host has no binary statistics.
pub(super) fn stats_file(fd: &VcpuIo) -> Result<File, errno::Error> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and touches no memory of this process; on
    // the vCPU fd `fd` owns it returns a new file descriptor or -1.
    let raw = unsafe { vmm_sys_util::ioctl::ioctl(fd, KVM_GET_STATS_FD()) };
    if raw < 0 {
        return Err(errno::Error::last());
    }
    // SAFETY: `raw` is a file descriptor KVM_GET_STATS_FD just opened for this process;
    // nothing else owns it, so `OwnedFd` may close it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(raw) }))
}

impl EntryCount {
    /// The `exits` count in `file`, a vCPU's statistics ([`stats_file`]). `None` where it has
    /// no such count.
    pub(super) fn in_file(file: File) -> Option<EntryCount> {
        let at = find(&file)?;
        let count = EntryCount { file, at };
        count.read().map(|_| count)
    }

    /// The vCPU's exits so far.
    pub(super) fn read(&self) -> Option<u64> {
        let mut b = [0u8; 8];
        self.file.read_exact_at(&mut b, self.at).ok()?;
        Some(u64::from_ne_bytes(b))
    }
}

/// The offset in `file` of the cumulative, single-valued `exits` statistic.
fn find(file: &File) -> Option<u64> {
    let mut header = [0u8; HEADER];
    file.read_exact_at(&mut header, 0).ok()?;
    locate(&header, |offset, buf| file.read_exact_at(buf, offset).ok())
}

/// [`find`] on a header and a way to read the descriptors: separate so that it can be tested
/// on made-up files.
fn locate(
    header: &[u8; HEADER],
    read_at: impl FnOnce(u64, &mut [u8]) -> Option<()>,
) -> Option<u64> {
    let word = |i: usize| {
        let b = header.get(i * 4..i * 4 + 4)?;
        Some(u32::from_ne_bytes(b.try_into().ok()?))
    };
    let name_size = usize::try_from(word(1)?).ok()?;
    let descs = usize::try_from(word(2)?).ok()?;
    let desc_offset = u64::from(word(4)?);
    let data_offset = u64::from(word(5)?);
    if name_size > MAX_NAME || descs > MAX_DESCS {
        return None;
    }
    let size = DESC + name_size;
    let mut table = vec![0u8; size.checked_mul(descs)?];
    read_at(desc_offset, &mut table)?;
    table.chunks_exact(size).find_map(|d| {
        let flags = u32::from_ne_bytes(d.get(0..4)?.try_into().ok()?);
        let values = u16::from_ne_bytes(d.get(6..8)?.try_into().ok()?);
        let offset = u32::from_ne_bytes(d.get(8..12)?.try_into().ok()?);
        let name = d.get(DESC..)?;
        let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
        (name == EXITS
            && flags & TYPE_MASK == kvm_bindings::KVM_STATS_TYPE_CUMULATIVE
            && values == 1)
            .then(|| data_offset.checked_add(u64::from(offset)))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stats file of `descs` (name, flags, size, offset) with names of `name_size` bytes.
    fn file(name_size: u32, descs: &[(&str, u32, u16, u32)]) -> ([u8; HEADER], Vec<u8>) {
        let mut h = [0u8; HEADER];
        for (i, v) in [0, name_size, descs.len() as u32, 24, 24, 4096]
            .iter()
            .enumerate()
        {
            h[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        let mut t = Vec::new();
        for (name, flags, size, offset) in descs {
            t.extend(flags.to_ne_bytes());
            t.extend(0i16.to_ne_bytes());
            t.extend(size.to_ne_bytes());
            t.extend(offset.to_ne_bytes());
            t.extend(0u32.to_ne_bytes());
            let mut n = name.as_bytes().to_vec();
            n.resize(name_size as usize, 0);
            t.extend(n);
        }
        (h, t)
    }

    fn locate_in(h: &[u8; HEADER], t: &[u8]) -> Option<u64> {
        locate(h, |off, buf| {
            assert_eq!(off, 24);
            buf.copy_from_slice(t.get(..buf.len())?);
            Some(())
        })
    }

    #[test]
    fn the_exits_count_is_found_after_other_statistics() {
        let (h, t) = file(48, &[("halt_exits", 0, 1, 8), ("exits", 0, 1, 40)]);
        assert_eq!(locate_in(&h, &t), Some(4096 + 40));
    }

    #[test]
    fn an_exits_statistic_that_is_not_a_single_cumulative_count_is_not_used() {
        let (h, t) = file(16, &[("exits", 1, 1, 8)]);
        assert_eq!(locate_in(&h, &t), None, "an instant value");
        let (h, t) = file(16, &[("exits", 0, 2, 8)]);
        assert_eq!(locate_in(&h, &t), None, "two values");
        let (h, t) = file(16, &[("exits_more", 0, 1, 8)]);
        assert_eq!(locate_in(&h, &t), None, "another name");
    }

    #[test]
    fn a_header_asking_for_too_much_is_refused_without_reading() {
        let mut h = [0u8; HEADER];
        h[4..8].copy_from_slice(&(MAX_NAME as u32 + 1).to_ne_bytes());
        h[8..12].copy_from_slice(&1u32.to_ne_bytes());
        assert_eq!(locate(&h, |_, _| panic!("read")), None);
        let mut h = [0u8; HEADER];
        h[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(locate(&h, |_, _| panic!("read")), None);
    }

    #[test]
    fn a_real_vcpu_counts_its_exits_and_a_vcpu_that_never_ran_counts_none() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            println!("skipped: no /dev/kvm");
            return;
        };
        if kvm.check_extension_raw(u64::from(kvm_bindings::KVM_CAP_BINARY_STATS_FD)) <= 0 {
            println!("skipped: no KVM_CAP_BINARY_STATS_FD on this host (Linux < 5.14)");
            return;
        }
        let Ok(vm) = kvm.create_vm() else {
            println!("skipped: no /dev/kvm (KVM_CREATE_VM failed)");
            return;
        };
        let Ok(vcpu) = vm.create_vcpu(0) else {
            println!("skipped: no /dev/kvm (KVM_CREATE_VCPU failed)");
            return;
        };
        let io = VcpuIo::owned(vcpu);
        let file = stats_file(&io).expect("KVM_CAP_BINARY_STATS_FD: the statistics file");
        let count = EntryCount::in_file(file).expect("the exits statistic");
        assert_eq!(
            count.read(),
            Some(0),
            "a new vCPU has not entered the guest"
        );
    }
}
