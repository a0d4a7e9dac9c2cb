//! Flat firmware images, placed as on a PC: the image ends at 4 GiB, so the reset vector
//! FFFFFFF0H is its last 16 bytes, and its last 64 KiB are also visible just below 1 MiB
//! (000F0000H–000FFFFFH), where real-mode code after the first far jump runs.

use std::path::Path;

/// Largest image accepted: 16 MiB, the size of a large PC flash part.
pub const MAX_FIRMWARE: usize = 16 << 20;
/// Images are whole 4 KiB pages (KVM maps guest memory in pages).
pub const FIRMWARE_ALIGN: usize = 4 << 10;
/// How much of the image's top is also visible below 1 MiB.
pub const LOW_ALIAS: usize = 64 << 10;
/// End of the image in guest-physical space.
pub const FIRMWARE_END: u64 = 1 << 32;

/// Why a firmware image was refused.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// The file does not exist.
    #[error(
        "firmware {path}: no such file — give the path of a flat image (e.g. one written by `vcpu-reset probe-image`)"
    )]
    NotFound {
        /// The path.
        path: String,
    },
    /// The file could not be read, is not a regular file, or is larger than
    /// [`MAX_FIRMWARE`] (refused as soon as byte 16 MiB + 1 is read).
    #[error(transparent)]
    Unreadable(crate::files::InputError),
    /// Empty image.
    #[error(
        "firmware {what}: the image is empty — a flat image needs at least one 4 KiB page ending in the reset vector"
    )]
    Empty {
        /// The path or description.
        what: String,
    },
    /// Too big (`size` is MAX_FIRMWARE + 1 when the file was refused while reading it).
    #[error(
        "firmware {what}: {size} bytes or more is more than the 16 MiB that fit below 4 GiB here"
    )]
    TooLarge {
        /// The path or description.
        what: String,
        /// Its size.
        size: usize,
    },
    /// Not whole pages.
    #[error(
        "firmware {what}: {size} bytes is not a multiple of 4 KiB — pad the image at its start so that it still ends with the reset vector"
    )]
    NotPageMultiple {
        /// The path or description.
        what: String,
        /// Its size.
        size: usize,
    },
}

/// A flat real-mode firmware image of `size` bytes filled with `fill`, with `code` at its start
/// and, at the reset vector (its last 16 bytes: F000:FFF0 once it ends at 4 GiB and its last
/// 64 KiB alias below 1 MiB), a far jump (`EA ip cs`) to `cs:ip` = `jump_to`. `None` where `code`
/// would reach the reset vector or `size` is under 16 bytes.
pub fn reset_vector_image(
    size: usize,
    fill: u8,
    code: &[u8],
    jump_to: (u16, u16),
) -> Option<Vec<u8>> {
    let vector = size.checked_sub(16)?;
    if code.len() > vector {
        return None;
    }
    let mut image = vec![fill; size];
    image[..code.len()].copy_from_slice(code);
    let (cs, ip) = jump_to;
    image[vector] = 0xea;
    image[vector + 1..vector + 3].copy_from_slice(&ip.to_le_bytes());
    image[vector + 3..vector + 5].copy_from_slice(&cs.to_le_bytes());
    Some(image)
}

/// A validated flat firmware image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firmware {
    bytes: Vec<u8>,
}

impl Firmware {
    /// Validate `bytes` (described as `what` in errors).
    pub fn from_bytes(bytes: Vec<u8>, what: &str) -> Result<Self, FirmwareError> {
        let size = bytes.len();
        if size == 0 {
            return Err(FirmwareError::Empty { what: what.into() });
        }
        if size > MAX_FIRMWARE {
            return Err(FirmwareError::TooLarge {
                what: what.into(),
                size,
            });
        }
        if !size.is_multiple_of(FIRMWARE_ALIGN) {
            return Err(FirmwareError::NotPageMultiple {
                what: what.into(),
                size,
            });
        }
        Ok(Firmware { bytes })
    }

    /// Read and validate the image at `path`.
    pub fn load(path: &Path) -> Result<Self, FirmwareError> {
        use crate::files::{InputError, read_bounded, shown_path};
        let shown = shown_path(path);
        let bytes = read_bounded(path, MAX_FIRMWARE as u64, "firmware").map_err(|e| match e {
            InputError::NotFound { .. } => FirmwareError::NotFound {
                path: shown.clone(),
            },
            InputError::TooLarge { .. } => FirmwareError::TooLarge {
                what: shown.clone(),
                size: MAX_FIRMWARE + 1,
            },
            e => FirmwareError::Unreadable(e),
        })?;
        Self::from_bytes(bytes, &shown)
    }

    /// The image.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Guest-physical address of the image's first byte (it ends at 4 GiB).
    pub fn base(&self) -> u64 {
        FIRMWARE_END - self.bytes.len() as u64
    }

    /// The part of the image also visible below 1 MiB: its last 64 KiB (or all of it when
    /// smaller), and the guest-physical address where that part starts.
    pub fn low_alias(&self) -> (u64, &[u8]) {
        let n = self.bytes.len().min(LOW_ALIAS);
        let part = &self.bytes[self.bytes.len() - n..];
        ((1 << 20) - n as u64, part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reset_vector_is_a_far_jump_to_the_code() {
        let image = reset_vector_image(4096, 0xf4, &[0x90, 0x90], (0xf000, 0xf000)).expect("fits");
        assert_eq!(&image[..3], &[0x90, 0x90, 0xf4]);
        assert_eq!(&image[0xff0..0xff5], &[0xea, 0x00, 0xf0, 0x00, 0xf0]);
        assert!(reset_vector_image(4096, 0, &[0; 4081], (0, 0)).is_none());
        assert!(reset_vector_image(8, 0, &[], (0, 0)).is_none());
    }

    #[test]
    fn accepts_whole_pages_and_places_the_image_below_4g() {
        let fw = Firmware::from_bytes(vec![0; 8192], "t").unwrap();
        assert_eq!(fw.base(), 0xffff_e000);
        let (addr, part) = fw.low_alias();
        assert_eq!((addr, part.len()), (0x000f_e000, 8192));
        let big = Firmware::from_bytes(vec![0; 256 << 10], "t").unwrap();
        let (addr, part) = big.low_alias();
        assert_eq!((addr, part.len()), (0x000f_0000, 64 << 10));
    }

    #[test]
    fn refuses_bad_images_with_clear_errors() {
        assert!(matches!(
            Firmware::from_bytes(vec![], "t"),
            Err(FirmwareError::Empty { .. })
        ));
        assert!(matches!(
            Firmware::from_bytes(vec![0; 4097], "t"),
            Err(FirmwareError::NotPageMultiple { size: 4097, .. })
        ));
        assert!(matches!(
            Firmware::from_bytes(vec![0; MAX_FIRMWARE + 4096], "t"),
            Err(FirmwareError::TooLarge { .. })
        ));
        let e = Firmware::load(Path::new("/nonexistent/fw.bin")).unwrap_err();
        assert!(matches!(e, FirmwareError::NotFound { .. }));
        assert!(e.to_string().contains("no such file"));
    }
}
