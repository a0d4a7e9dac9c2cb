//! Decoding the x87/SSE state as FXSAVE (and XSAVE's legacy region) stores it.
//!
//! - The tag word: FXSAVE keeps an abridged byte, one bit per physical register (1 = not
//!   empty); FNSTENV's full tag word has two bits per physical register: 00 valid, 01 zero,
//!   10 special (NaN, infinity, denormal, unnormal), 11 empty (Intel SDM Vol. 1, §8.1.7 "x87
//!   FPU Tag Word", Figure 8-7). The full tags of non-empty registers follow from their
//!   contents (Vol. 1, §10.5.1.1 "Recreating FSAVE Format"; Vol. 2A, FXSAVE, Table 3-45).
//!   [`VcpuState`](crate::VcpuState) keeps the full word ([`crate::Fpu::ftw`]).
//! - The 512-byte FXSAVE area (Intel SDM Vol. 1, §10.5.1 "FXSAVE Area", Table 10-2; Vol. 2A,
//!   FXSAVE, Tables 3-43 and 3-44 for the REX.W layout; AMD APM Vol. 2, §11.4.4): FCW at 0, FSW
//!   at 2, the abridged tag at 4, FOP at 6, FIP/FCS at 8, FDP/FDS at 16, MXCSR at 24,
//!   MXCSR_MASK at 28, ST0–ST7 in 16-byte slots from 32, XMM registers from 160.
//!
//! The data registers are stored in stack order: ST(i) is physical register (TOP + i) mod 8.
//! Everything here is pure: no I/O, no allocation except [`FxsaveImage::fields`] and
//! [`FxsaveImage::field_list`].

use alloc::vec::Vec;

use crate::field::{Field, X87};

/// Size of an FXSAVE image (and of XSAVE's legacy region).
pub const FXSAVE_SIZE: usize = 512;

/// Tag of an empty register.
const EMPTY: u16 = 0b11;

/// TOP, the stack-top field of the status word (bits 13:11; SDM Vol. 1, §8.1.3).
pub fn top(fsw: u16) -> u16 {
    (fsw >> 11) & 7
}

/// The full tag (00 valid, 01 zero, 10 special) of a non-empty register holding `value`, an
/// 80-bit extended-precision number in the low bits (SDM Vol. 1, §10.5.1.1; Vol. 2A, FXSAVE,
/// Table 3-45). The sign (bit 79) does not matter.
pub fn tag_of(value: u128) -> u16 {
    let exponent = (value >> 64) & 0x7fff;
    let significand = value & u128::from(u64::MAX);
    let integer_bit = significand >> 63;
    if exponent == 0 {
        if significand == 0 { 0b01 } else { 0b10 }
    } else if exponent == 0x7fff || integer_bit == 0 {
        0b10
    } else {
        0b00
    }
}

/// The full 16-bit tag word from the abridged byte, the status word (for TOP) and ST0–ST7 in
/// stack order.
pub fn full_tag_word(abridged: u8, fsw: u16, st: &[u128; 8]) -> u16 {
    let top = top(fsw);
    (0..8u16).fold(0, |ftw, physical| {
        let tag = if abridged & (1 << physical) == 0 {
            EMPTY
        } else {
            let stack_index = usize::from((physical + 8 - top) & 7);
            tag_of(st[stack_index])
        };
        ftw | (tag << (2 * physical))
    })
}

/// The abridged tag byte of a full tag word: bit `i` set when physical register `i` is not
/// empty.
pub fn abridged_tag_word(ftw: u16) -> u8 {
    (0..8u8).fold(0, |abridged, physical| {
        if (ftw >> (2 * physical)) & EMPTY == EMPTY {
            abridged
        } else {
            abridged | (1 << physical)
        }
    })
}

/// Which FXSAVE layout an image has (SDM Vol. 2A, FXSAVE, Tables 3-43 and 3-44).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FxsaveFormat {
    /// FXSAVE outside 64-bit mode (or without REX.W): 32-bit FIP/FDP with FCS/FDS, XMM0–XMM7.
    Legacy,
    /// FXSAVE64 (REX.W), and XSAVE's legacy region as KVM_GET_XSAVE returns it: 64-bit
    /// FIP/FDP, XMM0–XMM15.
    Rex64,
}

/// An FXSAVE image whose length is not [`FXSAVE_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FxsaveSizeError(pub usize);

impl core::fmt::Display for FxsaveSizeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "fxsave blob has {} bytes, expected {FXSAVE_SIZE}",
            self.0
        )
    }
}

impl core::error::Error for FxsaveSizeError {}

/// A decoded FXSAVE image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FxsaveImage {
    /// Layout it was decoded with.
    pub format: FxsaveFormat,
    /// FCW.
    pub fcw: u16,
    /// FSW.
    pub fsw: u16,
    /// Abridged tag byte (1 bit per physical register, 1 = not empty).
    pub ftw_abridged: u8,
    /// FOP (11 bits).
    pub fop: u16,
    /// FIP.
    pub fip: u64,
    /// FCS (legacy layout only, else 0).
    pub fcs: u16,
    /// FDP.
    pub fdp: u64,
    /// FDS (legacy layout only, else 0).
    pub fds: u16,
    /// MXCSR.
    pub mxcsr: u32,
    /// MXCSR_MASK.
    pub mxcsr_mask: u32,
    /// ST0–ST7 in stack order, 80 bits each.
    pub st: [u128; 8],
    /// XMM0–XMM15 (XMM8–15 only in the REX.W layout, else 0).
    pub xmm: [u128; 16],
}

/// `n` little-endian bytes at `at`; bytes past the end of `bytes` read as 0.
fn le(bytes: &[u8], at: usize, n: usize) -> u128 {
    (at..at + n).rev().fold(0u128, |acc, i| {
        (acc << 8) | u128::from(*bytes.get(i).unwrap_or(&0))
    })
}

impl FxsaveImage {
    /// Decodes a 512-byte image.
    pub fn decode(bytes: &[u8], format: FxsaveFormat) -> Result<FxsaveImage, FxsaveSizeError> {
        if bytes.len() != FXSAVE_SIZE {
            return Err(FxsaveSizeError(bytes.len()));
        }
        Ok(Self::read(bytes, format))
    }

    /// Decodes the first 512 bytes of `bytes`, e.g. the legacy region at the start of an XSAVE
    /// image; bytes beyond the end of a shorter slice read as 0.
    #[allow(clippy::cast_possible_truncation)] // `le` of n bytes fits the target width
    pub fn read(bytes: &[u8], format: FxsaveFormat) -> FxsaveImage {
        let (fip, fcs, fdp, fds) = match format {
            FxsaveFormat::Legacy => (
                le(bytes, 8, 4) as u64,
                le(bytes, 12, 2) as u16,
                le(bytes, 16, 4) as u64,
                le(bytes, 20, 2) as u16,
            ),
            FxsaveFormat::Rex64 => (le(bytes, 8, 8) as u64, 0, le(bytes, 16, 8) as u64, 0),
        };
        let mut st = [0u128; 8];
        for (i, s) in st.iter_mut().enumerate() {
            *s = le(bytes, 32 + 16 * i, 10);
        }
        let mut xmm = [0u128; 16];
        for (i, x) in xmm.iter_mut().enumerate().take(Self::xmm_count(format)) {
            *x = le(bytes, 160 + 16 * i, 16);
        }
        FxsaveImage {
            format,
            fcw: le(bytes, 0, 2) as u16,
            fsw: le(bytes, 2, 2) as u16,
            ftw_abridged: le(bytes, 4, 1) as u8,
            fop: (le(bytes, 6, 2) as u16) & 0x7ff,
            fip,
            fcs,
            fdp,
            fds,
            mxcsr: le(bytes, 24, 4) as u32,
            mxcsr_mask: le(bytes, 28, 4) as u32,
            st,
            xmm,
        }
    }

    fn xmm_count(format: FxsaveFormat) -> usize {
        match format {
            FxsaveFormat::Legacy => 8,
            FxsaveFormat::Rex64 => 16,
        }
    }

    /// The full x87 tag word as FNSTENV reports it, rebuilt from the abridged tag and the
    /// register contents ([`full_tag_word`]).
    pub fn ftw(&self) -> u16 {
        full_tag_word(self.ftw_abridged, self.fsw, &self.st)
    }

    /// The spec fields this layout holds.
    pub fn field_list(format: FxsaveFormat) -> Vec<Field> {
        let mut v: Vec<Field> = X87::ALL.map(Field::X87).to_vec();
        if format == FxsaveFormat::Rex64 {
            v.retain(|f| !matches!(f, Field::X87(X87::Fcs) | Field::X87(X87::Fds)));
        }
        v.extend((0..8).map(Field::St));
        v.push(Field::Mxcsr);
        v.extend((0..Self::xmm_count(format) as u8).map(Field::Xmm));
        v
    }

    /// The spec fields with their values.
    pub fn fields(&self) -> Vec<(Field, u128)> {
        Self::field_list(self.format)
            .into_iter()
            .map(|f| {
                let v: u128 = match f {
                    Field::X87(X87::Fcw) => self.fcw.into(),
                    Field::X87(X87::Fsw) => self.fsw.into(),
                    Field::X87(X87::Ftw) => self.ftw().into(),
                    Field::X87(X87::Fop) => self.fop.into(),
                    Field::X87(X87::Fip) => self.fip.into(),
                    Field::X87(X87::Fdp) => self.fdp.into(),
                    Field::X87(X87::Fcs) => self.fcs.into(),
                    Field::X87(X87::Fds) => self.fds.into(),
                    Field::St(i) => self.st[usize::from(i)],
                    Field::Mxcsr => self.mxcsr.into(),
                    Field::Xmm(i) => self.xmm[usize::from(i)],
                    _ => 0,
                };
                (f, v)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    const ONE: u128 = (0x3fff << 64) | (1 << 63);
    const INFINITY: u128 = (0x7fff << 64) | (1 << 63);
    const DENORMAL: u128 = 1;
    const UNNORMAL: u128 = 0x3fff << 64;

    #[test]
    fn tags_classify_values() {
        assert_eq!(tag_of(0), 0b01);
        assert_eq!(tag_of(ONE), 0b00);
        assert_eq!(tag_of(INFINITY), 0b10);
        assert_eq!(tag_of(DENORMAL), 0b10);
        assert_eq!(tag_of(UNNORMAL), 0b10);
        // A NaN (exponent all ones, fraction non-zero) is special too.
        assert_eq!(tag_of(INFINITY | 1), 0b10);
        // The sign bit (79) does not change the class.
        assert_eq!(tag_of(ONE | (1 << 79)), 0b00);
        assert_eq!(tag_of(1 << 79), 0b01);
    }

    #[test]
    fn all_empty_and_all_zero() {
        assert_eq!(full_tag_word(0, 0, &[0; 8]), 0xffff);
        assert_eq!(full_tag_word(0xff, 0, &[0; 8]), 0x5555);
        assert_eq!(abridged_tag_word(0xffff), 0);
        assert_eq!(abridged_tag_word(0x5555), 0xff);
    }

    #[test]
    fn physical_registers_follow_top() {
        // TOP = 6: ST0 is R6, ST1 is R7, ST2 is R0.
        let fsw = 6 << 11;
        assert_eq!(top(fsw | 0x0200), 6);
        let mut st = [0u128; 8];
        st[0] = ONE; // R6 valid
        st[1] = INFINITY; // R7 special
        st[2] = 0; // R0 zero
        let abridged = 0b1100_0001;
        let ftw = full_tag_word(abridged, fsw, &st);
        assert_eq!(ftw & 0b11, 0b01, "R0");
        assert_eq!((ftw >> 12) & 0b11, 0b00, "R6");
        assert_eq!((ftw >> 14) & 0b11, 0b10, "R7");
        assert_eq!(ftw, 0b1000_1111_1111_1101);
        assert_eq!(abridged_tag_word(ftw), abridged);
    }

    /// An FXSAVE image with a few registers in use; FIP/FCS and FDP/FDS as the legacy layout
    /// stores them.
    fn image() -> Vec<u8> {
        let mut b = vec![0u8; FXSAVE_SIZE];
        b[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        // TOP = 6, C1 set.
        b[2..4].copy_from_slice(&((6u16 << 11) | 0x0200).to_le_bytes());
        // Stack slots 0 and 1 (physical 6 and 7) in use; also physical 0 (slot 2).
        b[4] = 0b1100_0001;
        b[6..8].copy_from_slice(&0xf9d9u16.to_le_bytes()); // FOP keeps 11 bits: 0x1d9
        b[8..12].copy_from_slice(&0x0000_1234u32.to_le_bytes());
        b[12..14].copy_from_slice(&0xf000u16.to_le_bytes());
        b[16..20].copy_from_slice(&0x0000_0500u32.to_le_bytes());
        b[20..22].copy_from_slice(&0x0040u16.to_le_bytes());
        b[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        b[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
        b[32..42].copy_from_slice(&ONE.to_le_bytes()[..10]); // ST0 = 1.0
        // ST1 = +0.
        b[64..74].copy_from_slice(&INFINITY.to_le_bytes()[..10]); // ST2 = +inf
        b[160..176].copy_from_slice(&0x0011_2233_4455_6677_8899_aabb_ccdd_eeffu128.to_le_bytes());
        b[288] = 0x5a; // XMM8, which only the REX.W layout holds
        b
    }

    #[test]
    fn legacy_layout_decodes() {
        let img = FxsaveImage::decode(&image(), FxsaveFormat::Legacy).expect("512 bytes");
        assert_eq!((img.fcw, img.fsw, img.fop), (0x037f, 0x3200, 0x1d9));
        assert_eq!(
            (img.fip, img.fcs, img.fdp, img.fds),
            (0x1234, 0xf000, 0x500, 0x40)
        );
        assert_eq!((img.mxcsr, img.mxcsr_mask), (0x1f80, 0xffff));
        assert_eq!(img.st[0], ONE);
        assert_eq!(img.st[2], INFINITY);
        assert_eq!(img.xmm[0], 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);
        assert_eq!(img.xmm[8], 0);
        // Physical 6 = ST0 valid (00), physical 7 = ST1 zero (01), physical 0 = ST2 special
        // (10), the rest empty (11).
        assert_eq!(img.ftw(), 0b01_00_11_11_11_11_11_10);
        let f = img.fields();
        assert!(f.contains(&(Field::X87(X87::Ftw), 0x4ffe)));
        assert!(f.contains(&(Field::X87(X87::Fcs), 0xf000)));
        assert!(!f.iter().any(|(f, _)| *f == Field::Xmm(8)));
        assert_eq!(f.len(), FxsaveImage::field_list(FxsaveFormat::Legacy).len());
    }

    #[test]
    fn rex64_layout_has_64_bit_pointers_and_sixteen_xmm() {
        let img = FxsaveImage::decode(&image(), FxsaveFormat::Rex64).expect("512 bytes");
        assert_eq!(img.fip, 0xf000_0000_1234);
        assert_eq!(img.fdp, 0x0040_0000_0500);
        assert_eq!((img.fcs, img.fds), (0, 0));
        assert_eq!(img.xmm[8], 0x5a);
        let list = FxsaveImage::field_list(FxsaveFormat::Rex64);
        assert!(!list.contains(&Field::X87(X87::Fcs)));
        assert!(list.contains(&Field::Xmm(15)));
    }

    #[test]
    fn read_takes_the_legacy_region_of_a_longer_image_and_pads_a_shorter_one() {
        let mut long = image();
        long.resize(4096, 0xee);
        assert_eq!(
            FxsaveImage::read(&long, FxsaveFormat::Rex64),
            FxsaveImage::read(&image(), FxsaveFormat::Rex64)
        );
        let short = FxsaveImage::read(&image()[..3], FxsaveFormat::Legacy);
        assert_eq!((short.fcw, short.fsw), (0x037f, 0));
        assert_eq!(short.ftw_abridged, 0);
    }

    #[test]
    fn wrong_size_is_an_error() {
        let e = FxsaveImage::decode(&[0; 10], FxsaveFormat::Legacy);
        assert_eq!(e, Err(FxsaveSizeError(10)));
        assert_eq!(
            FxsaveSizeError(10).to_string(),
            "fxsave blob has 10 bytes, expected 512"
        );
    }
}
