//! The initramfs archive: the "new" (newc) cpio format the kernel unpacks
//! (Linux `Documentation/driver-api/early-userspace/buffer-format.rst`): per entry a 110-byte
//! ASCII header (`070701` and thirteen 8-digit hex fields), the name with its NUL, padding to 4
//! bytes, the data, padding to 4 bytes; a `TRAILER!!!` entry ends it.

/// An archive being built in memory.
#[derive(Debug, Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let namesize = u32::try_from(name.len() + 1).unwrap_or(u32::MAX);
        let fields = [
            self.ino, mode, 0, 0, 1, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// A directory (mode 0755).
    pub fn dir(&mut self, name: &str) {
        self.entry(name, S_IFDIR | 0o755, (0, 0), &[]);
    }

    /// A regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, S_IFREG | (perm & 0o7777), (0, 0), data);
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, S_IFLNK | 0o777, (0, 0), target.as_bytes());
    }

    /// A character device node.
    pub fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, S_IFCHR | 0o600, (major, minor), &[]);
    }

    /// The archive, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_newc_headers_padded_to_four_bytes() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"#!/bin/sh\n");
        let out = c.finish();
        let head = std::str::from_utf8(&out[..110]).expect("ascii header");
        assert!(head.starts_with("070701"));
        // mode, then file size and name size.
        assert_eq!(&head[14..22], "000081ed");
        assert_eq!(&head[54..62], "0000000a");
        assert_eq!(&head[94..102], "00000005");
        assert_eq!(&out[110..115], b"init\0");
        // 110 + 5 = 115, padded to 116; 10 data bytes padded to 12.
        assert_eq!(&out[116..126], b"#!/bin/sh\n");
        assert_eq!(&out[128..134], b"070701");
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
        assert!(out.len().is_multiple_of(4));
    }
}
