//! The x87 tag word: FXSAVE's abridged byte to the full 16-bit FTW and back.
//!
//! FXSAVE and XSAVE keep one bit per physical register (1 = not empty). FNSTENV's full tag word
//! has two bits per physical register: 00 valid, 01 zero, 10 special (NaN, infinity, denormal,
//! unnormal), 11 empty. The full tags of non-empty registers follow from their contents, as
//! FNSTENV computes them (Intel SDM Vol. 1, §8.1.7 and Figure 8-7; Vol. 2A, FXSAVE, Table 3-45).
//! The data registers are stored in stack order: ST(i) is physical register (TOP + i) mod 8.

/// Tag of an empty register.
const EMPTY: u16 = 0b11;

/// TOP, the stack top field of the status word (bits 13:11).
pub(super) fn top(fsw: u16) -> u16 {
    (fsw >> 11) & 7
}

/// The full tag (00 valid, 01 zero, 10 special) of a non-empty register holding `value`, an
/// 80-bit extended-precision number in the low bits.
pub(super) fn tag_of(value: u128) -> u16 {
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

/// The full tag word from the abridged one, the status word (for TOP) and ST0–ST7.
pub(super) fn full_tag_word(abridged: u8, fsw: u16, st: &[u128; 8]) -> u16 {
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

/// The abridged tag byte: bit `i` set when physical register `i` is not empty.
pub(super) fn abridged_tag_word(ftw: u16) -> u8 {
    (0..8u8).fold(0, |abridged, physical| {
        if (ftw >> (2 * physical)) & EMPTY == EMPTY {
            abridged
        } else {
            abridged | (1 << physical)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // The sign bit (79) does not change the class.
        assert_eq!(tag_of(ONE | (1 << 79)), 0b00);
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
}
