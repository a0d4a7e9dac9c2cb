//! The two facts `check --kernel` reads from ELF files: whether an executable needs a dynamic
//! loader (it then cannot run in the guest's initramfs), and a kernel module's `.modinfo`
//! section (its `depends=`). ELF64 little-endian only (x86-64), bounds-checked throughout.

/// A little-endian integer of `N` bytes at `off`, or `None` past the end.
fn le(bytes: &[u8], off: usize, n: usize) -> Option<u64> {
    let b = bytes.get(off..off.checked_add(n)?)?;
    Some(b.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
}

fn usize_at(bytes: &[u8], off: usize, n: usize) -> Option<usize> {
    usize::try_from(le(bytes, off, n)?).ok()
}

/// Whether `bytes` is an ELF64 little-endian file.
fn is_elf64(bytes: &[u8]) -> bool {
    bytes.get(..6) == Some(b"\x7fELF\x02\x01")
}

/// `Some(true)` when the ELF64 executable `bytes` has a PT_INTERP program header (it is
/// dynamically linked), `Some(false)` when not, `None` when it is no ELF64 file.
pub fn needs_interpreter(bytes: &[u8]) -> Option<bool> {
    if !is_elf64(bytes) {
        return None;
    }
    // ELF64 header: e_phoff at 0x20, e_phentsize at 0x36, e_phnum at 0x38.
    let phoff = usize_at(bytes, 0x20, 8)?;
    let phentsize = usize_at(bytes, 0x36, 2)?;
    let phnum = usize_at(bytes, 0x38, 2)?;
    const PT_INTERP: u64 = 3;
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if le(bytes, ph, 4)? == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

/// The contents of the section named `name` of the ELF64 file `bytes`.
pub fn section<'a>(bytes: &'a [u8], name: &str) -> Option<&'a [u8]> {
    if !is_elf64(bytes) {
        return None;
    }
    // e_shoff at 0x28, e_shentsize at 0x3a, e_shnum at 0x3c, e_shstrndx at 0x3e.
    let shoff = usize_at(bytes, 0x28, 8)?;
    let shentsize = usize_at(bytes, 0x3a, 2)?;
    let shnum = usize_at(bytes, 0x3c, 2)?;
    let shstrndx = usize_at(bytes, 0x3e, 2)?;
    // Section header: sh_name at 0, sh_offset at 0x18, sh_size at 0x20.
    let header = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    let range = |h: usize| -> Option<&'a [u8]> {
        let off = usize_at(bytes, h.checked_add(0x18)?, 8)?;
        let size = usize_at(bytes, h.checked_add(0x20)?, 8)?;
        bytes.get(off..off.checked_add(size)?)
    };
    let names = range(header(shstrndx)?)?;
    for i in 0..shnum {
        let h = header(i)?;
        let at = usize_at(bytes, h, 4)?;
        let rest = names.get(at..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        if &rest[..end] == name.as_bytes() {
            return range(h);
        }
    }
    None
}

/// The modules a kernel module depends on: its `.modinfo` `depends=` entry, split at commas
/// (empty when it depends on none). `None` when `bytes` is no ELF64 file with a `.modinfo`.
pub fn module_depends(bytes: &[u8]) -> Option<Vec<String>> {
    let info = section(bytes, ".modinfo")?;
    let mut out = Vec::new();
    for entry in info.split(|&b| b == 0) {
        if let Some(list) = entry.strip_prefix(b"depends=") {
            out.extend(
                String::from_utf8_lossy(list)
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.replace('-', "_")),
            );
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_test_binary_is_an_elf_file() {
        let exe = std::env::current_exe().expect("current exe");
        let bytes = std::fs::read(exe).expect("read");
        assert!(needs_interpreter(&bytes).is_some());
        assert!(section(&bytes, ".text").is_some_and(|t| !t.is_empty()));
        assert!(section(&bytes, ".no-such-section").is_none());
    }

    #[test]
    fn what_is_not_elf_has_neither_interpreter_nor_sections() {
        assert_eq!(needs_interpreter(b"#!/bin/sh\n"), None);
        assert_eq!(needs_interpreter(b"\x7fELF\x02\x01"), None);
        assert_eq!(module_depends(b"\x7fELF\x02\x01\x01\0"), None);
    }

    #[test]
    fn section_headers_at_the_end_of_the_address_space_are_no_section() {
        // e_shoff so large that a section header's sh_offset field lies past usize::MAX.
        let mut elf = vec![0u8; 0x40];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let shoff = u64::MAX - 0x10;
        elf[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(section(&elf, ".modinfo"), None);
        assert_eq!(module_depends(&elf), None);
    }
}
