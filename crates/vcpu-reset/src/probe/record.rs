//! The probe's framed record format, and its host-side parser.
//!
//! The probe prints plain ASCII lines, so that the same bytes work as a stream of KVM port-I/O
//! exits, in a QEMU `-debugcon` log, and on a serial console that carries other text too.
//!
//! # Format (version 1)
//!
//! Every record is one line:
//!
//! ```text
//! #VR1 <key> <value>\n
//! ```
//!
//! - `#VR1 ` (with its single space) is the marker. Lines without it are noise and are skipped;
//!   text before the marker on the same line (another writer's partial line) is ignored too. A
//!   `\r` before the `\n` is dropped (serial consoles add them).
//! - `<key>` is one or more of `a-z 0-9 . _` characters: a spec field name as
//!   [`Field::name`] gives it (`rax`, `cr0`, `cs.selector`, `msr.ia32_pat`, `lapic.lvt_lint0`), an
//!   MSR without a spec field as `msr.0x<index in hex>`, a blob (`fxsave`), or a probe-specific
//!   fact under `entry.*` or `probe.*`.
//! - `<value>` is one of
//!   - lower-case hex digits without `0x`, **fixed width**: the probe prints exactly as many
//!     digits as it read bits (8 for a 32-bit real-mode read of EAX or CR0, 16 for RDMSR, 4 for a
//!     selector), so the digit count says how much of the field was observed. Up to 32 digits it
//!     is a number, most significant digit first. Longer values are blobs: their bytes in memory
//!     order, two digits each (`fxsave` is the 512-byte FXSAVE image as 1024 digits);
//!   - `!` and a two-letter lower-case exception mnemonic when reading the value faulted and the
//!     probe's own handler caught it: `!gp` (e.g. RDMSR of an absent MSR), `!ud`, `!nm`;
//!   - `!na` when the probe could not measure the value (e.g. the local APIC is disabled in
//!     IA32_APIC_BASE, so there is nothing at its MMIO page).
//! - A run is bracketed by `#VR1 begin <tag>` and `#VR1 end <count> <checksum>`. `<tag>` is
//!   `[A-Za-z0-9._-]+`. `<count>` (hex) is the number of record lines between the two, and
//!   `<checksum>` (hex) is the 16-bit wrapping sum of every byte of the `begin` line and of
//!   those record lines, each taken as `#VR1 ...\n` (marker to newline inclusive, without any
//!   `\r` or noise). The probe prints both as four digits; the parser accepts one to eight
//!   lower-case digits.
//! - `begin` and `end` are not keys. A key occurs at most once in a run.
//!
//! The parser reports a broken run precisely: no `end` ([`RecordError::MissingEnd`]), wrong
//! count ([`RecordError::CountMismatch`]), wrong checksum ([`RecordError::ChecksumMismatch`]), a
//! marker line that does not parse ([`RecordError::Malformed`]) and so on.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use thiserror::Error;

use crate::spec::{Field, LapicReg};

/// The marker every record line starts with.
pub const MARKER: &str = "#VR1 ";

/// Most hex digits a value may have that is read as a number.
pub const MAX_NUMBER_DIGITS: usize = 32;

/// Size of an FXSAVE image.
pub const FXSAVE_SIZE: usize = 512;

/// Errors from parsing a probe log or decoding its records.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    /// A `begin` whose run has no `end`: the log stops, or another `begin` comes first.
    #[error("run {tag:?} begun on line {line} has no end (truncated)")]
    MissingEnd {
        /// The run's tag.
        tag: String,
        /// 1-based line of its `begin`.
        line: usize,
    },
    /// An `end` line outside any run.
    #[error("line {line}: `end` without `begin`")]
    EndWithoutBegin {
        /// 1-based line.
        line: usize,
    },
    /// A record line outside any run (its `begin` was lost).
    #[error("line {line}: record {key:?} outside a run")]
    RecordOutsideRun {
        /// 1-based line.
        line: usize,
        /// The record's key.
        key: String,
    },
    /// The `end` line's count differs from the records seen.
    #[error("run {tag:?}: end on line {line} declares {declared} records, {actual} seen")]
    CountMismatch {
        /// The run's tag.
        tag: String,
        /// 1-based line of the `end`.
        line: usize,
        /// Count the probe printed.
        declared: u32,
        /// Count the parser saw.
        actual: u32,
    },
    /// The `end` line's checksum differs from the records seen.
    #[error(
        "run {tag:?}: end on line {line} declares checksum {declared:04x}, records sum to {actual:04x}"
    )]
    ChecksumMismatch {
        /// The run's tag.
        tag: String,
        /// 1-based line of the `end`.
        line: usize,
        /// Checksum the probe printed.
        declared: u16,
        /// Checksum of the records seen.
        actual: u16,
    },
    /// A line with the marker that does not parse.
    #[error("line {line}: malformed record ({reason}): {text:?}")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: &'static str,
        /// The line from the marker on.
        text: String,
    },
    /// The same key twice in one run.
    #[error("run {tag:?}: key {key:?} repeated on line {line}")]
    DuplicateKey {
        /// The run's tag.
        tag: String,
        /// The key.
        key: String,
        /// 1-based line of the repeat.
        line: usize,
    },
    /// A blob that is not a valid FXSAVE image.
    #[error("fxsave blob has {0} bytes, expected 512")]
    BadFxsave(usize),
}

/// An exception the probe caught while reading a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Fault {
    /// #GP (`!gp`).
    Gp,
    /// #UD (`!ud`).
    Ud,
    /// #NM (`!nm`).
    Nm,
    /// Another two-letter code.
    Other(String),
}

impl Fault {
    fn from_code(code: &str) -> Fault {
        match code {
            "gp" => Fault::Gp,
            "ud" => Fault::Ud,
            "nm" => Fault::Nm,
            other => Fault::Other(other.to_string()),
        }
    }

    /// The two-letter code.
    pub fn code(&self) -> &str {
        match self {
            Fault::Gp => "gp",
            Fault::Ud => "ud",
            Fault::Nm => "nm",
            Fault::Other(s) => s,
        }
    }
}

/// The value of one record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// Hex digits as printed (lower case, fixed width).
    Hex(String),
    /// Reading the value faulted.
    Fault(Fault),
    /// The probe could not measure the value.
    NotAvailable,
}

impl Value {
    /// The value as a number, if it is hex of at most [`MAX_NUMBER_DIGITS`] digits.
    pub fn number(&self) -> Option<u128> {
        match self {
            Value::Hex(d) if d.len() <= MAX_NUMBER_DIGITS => u128::from_str_radix(d, 16).ok(),
            _ => None,
        }
    }

    /// How many bits the probe observed (4 per digit), for hex values.
    pub fn bits(&self) -> Option<u32> {
        match self {
            Value::Hex(d) => u32::try_from(d.len() * 4).ok(),
            _ => None,
        }
    }

    /// The value as a blob, bytes in memory order, if it is hex of an even number of digits.
    pub fn blob(&self) -> Option<Vec<u8>> {
        let Value::Hex(d) = self else { return None };
        if !d.len().is_multiple_of(2) {
            return None;
        }
        d.as_bytes()
            .chunks(2)
            .map(|p| {
                std::str::from_utf8(p)
                    .ok()
                    .and_then(|s| u8::from_str_radix(s, 16).ok())
            })
            .collect()
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Hex(d) => f.write_str(d),
            Value::Fault(x) => write!(f, "!{}", x.code()),
            Value::NotAvailable => f.write_str("!na"),
        }
    }
}

/// One complete, verified run of the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRun {
    /// The tag of its `begin` line.
    pub tag: String,
    /// The records, in the order printed.
    pub records: Vec<(String, Value)>,
}

impl ProbeRun {
    /// The value of `key`, if recorded.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.records.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The number value of `key`, if recorded as a number.
    pub fn number(&self, key: &str) -> Option<u128> {
        self.get(key).and_then(Value::number)
    }

    /// The decoded FXSAVE image, if the run has a `fxsave` blob.
    ///
    /// The probe runs FXSAVE in real mode, so the image has the legacy (non-REX.W) layout.
    pub fn fxsave(&self) -> Option<Result<FxsaveImage, RecordError>> {
        let v = self.get("fxsave")?;
        let bytes = v.blob()?;
        Some(FxsaveImage::decode(&bytes, FxsaveFormat::Legacy))
    }

    /// Every record that names a spec field, plus the fields decoded from the FXSAVE image
    /// (which fill in only what no direct record gave, e.g. `x87.fcw` from FNSTCW wins).
    ///
    /// Records of other keys (`probe.*`, `entry.*`, MSRs without a field) are left out.
    pub fn fields(&self) -> Result<BTreeMap<Field, Observed>, RecordError> {
        let by_name: HashMap<String, Field> =
            Field::all().into_iter().map(|f| (f.name(), f)).collect();
        let mut out = BTreeMap::new();
        for (key, value) in &self.records {
            let field = by_name.get(key).copied().or_else(|| msr_field(key));
            let Some(field) = field else { continue };
            out.insert(field, Observed::from_value(field, value));
        }
        match self.get("fxsave") {
            Some(Value::Hex(_)) => {
                if let Some(img) = self.fxsave() {
                    for (f, v) in img?.fields() {
                        out.entry(f).or_insert(Observed::Value {
                            value: v,
                            mask: f.mask(),
                        });
                    }
                }
            }
            Some(other) => {
                for f in FxsaveImage::field_list(FxsaveFormat::Legacy) {
                    out.entry(f)
                        .or_insert_with(|| Observed::from_value(f, other));
                }
            }
            None => {}
        }
        Ok(out)
    }
}

/// What the probe saw of one spec field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// A value; only the bits in `mask` were observed (e.g. the low 32 bits of RAX in real
    /// mode), the others read as 0.
    Value {
        /// The value.
        value: u128,
        /// The bits the probe could see.
        mask: u128,
    },
    /// Reading it faulted.
    Fault(Fault),
    /// Not measured.
    NotAvailable,
}

impl Observed {
    fn from_value(field: Field, v: &Value) -> Observed {
        match v {
            Value::Hex(_) => match (v.number(), v.bits()) {
                (Some(n), Some(bits)) => {
                    let seen = if bits >= 128 {
                        u128::MAX
                    } else {
                        (1u128 << bits) - 1
                    };
                    Observed::Value {
                        value: n & field.mask(),
                        mask: seen & field.mask(),
                    }
                }
                _ => Observed::NotAvailable,
            },
            Value::Fault(f) => Observed::Fault(f.clone()),
            Value::NotAvailable => Observed::NotAvailable,
        }
    }
}

/// The field of an MSR record key: `msr.0x<hex>` of an MSR that has a spec field.
fn msr_field(key: &str) -> Option<Field> {
    let hex = key.strip_prefix("msr.0x")?;
    let index = u32::from_str_radix(hex, 16).ok()?;
    field_for_msr(index)
}

/// The spec field read through RDMSR of `index`, if any.
pub fn field_for_msr(index: u32) -> Option<Field> {
    Field::all()
        .into_iter()
        .find(|f| f.msr_index() == Some(index))
}

/// The record key for RDMSR of `index`: the spec field's name, or `msr.0x<index>`.
pub fn msr_key(index: u32) -> String {
    field_for_msr(index)
        .map(|f| f.name())
        .unwrap_or_else(|| format!("msr.0x{index:x}"))
}

/// The record key for a local APIC register.
pub fn lapic_key(reg: LapicReg) -> String {
    Field::Lapic(reg).name()
}

/// Formats one record line, `#VR1 <key> <value>\n`.
pub fn format_record(key: &str, value: &Value) -> String {
    format!("{MARKER}{key} {value}\n")
}

/// The 16-bit wrapping sum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    bytes
        .iter()
        .fold(0u16, |s, &b| s.wrapping_add(u16::from(b)))
}

/// Formats a whole run, as the probe would print it (with a leading newline).
pub fn format_run(tag: &str, records: &[(String, Value)]) -> String {
    let mut body = format!("{MARKER}begin {tag}\n");
    for (k, v) in records {
        body.push_str(&format_record(k, v));
    }
    format!(
        "\n{body}{MARKER}end {:04x} {:04x}\n",
        records.len(),
        checksum(body.as_bytes())
    )
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_')
}

/// Whether `t` is a valid run tag.
pub fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn parse_value(s: &str) -> Option<Value> {
    if let Some(code) = s.strip_prefix('!') {
        if code.len() == 2 && code.bytes().all(|b| b.is_ascii_lowercase()) {
            return Some(if code == "na" {
                Value::NotAvailable
            } else {
                Value::Fault(Fault::from_code(code))
            });
        }
        return None;
    }
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Some(Value::Hex(s.to_string()));
    }
    None
}

fn parse_hex_u32(s: &str) -> Option<u32> {
    if s.is_empty()
        || s.len() > 8
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

struct Open {
    tag: String,
    line: usize,
    records: Vec<(String, Value)>,
    count: u32,
    sum: u16,
    /// The first thing found wrong inside the run; reported when the run closes.
    error: Option<RecordError>,
}

impl Open {
    fn close_truncated(self) -> RecordError {
        self.error.unwrap_or(RecordError::MissingEnd {
            tag: self.tag,
            line: self.line,
        })
    }
}

/// Parses every run in `log`, each either verified or with the first error that breaks it.
///
/// Noise lines are skipped; a record outside a run or an `end` without `begin` is reported as
/// an error in the place where it occurs.
pub fn parse_all(log: &[u8]) -> Vec<Result<ProbeRun, RecordError>> {
    let mut out = Vec::new();
    let mut open: Option<Open> = None;
    let mut lines = log.split(|&b| b == b'\n').enumerate().peekable();
    while let Some((i, raw)) = lines.next() {
        let line_no = i + 1;
        // The last piece has no newline: a line cut off mid-way is not a record.
        if lines.peek().is_none() {
            break;
        }
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Some(pos) = raw
            .windows(MARKER.len())
            .position(|w| w == MARKER.as_bytes())
        else {
            continue;
        };
        let rec = &raw[pos..];
        let malformed = |reason| RecordError::Malformed {
            line: line_no,
            reason,
            text: String::from_utf8_lossy(rec).into_owned(),
        };
        let body = std::str::from_utf8(&rec[MARKER.len()..]).ok();
        let parts: Vec<&str> = body.map(|b| b.split(' ').collect()).unwrap_or_default();
        match parts.as_slice() {
            ["begin", tag] => {
                if let Some(o) = open.take() {
                    out.push(Err(o.close_truncated()));
                }
                if !valid_tag(tag) {
                    out.push(Err(malformed("bad tag")));
                    continue;
                }
                open = Some(Open {
                    tag: (*tag).to_string(),
                    line: line_no,
                    records: Vec::new(),
                    count: 0,
                    sum: checksum(rec).wrapping_add(u16::from(b'\n')),
                    error: None,
                });
            }
            ["end", count, sum] => {
                let Some(o) = open.take() else {
                    out.push(Err(RecordError::EndWithoutBegin { line: line_no }));
                    continue;
                };
                let (Some(count), Some(sum)) = (parse_hex_u32(count), parse_hex_u32(sum)) else {
                    out.push(Err(o.error.unwrap_or(malformed("bad end line"))));
                    continue;
                };
                out.push(if let Some(e) = o.error {
                    Err(e)
                } else if count != o.count {
                    Err(RecordError::CountMismatch {
                        tag: o.tag,
                        line: line_no,
                        declared: count,
                        actual: o.count,
                    })
                } else if sum != u32::from(o.sum) {
                    Err(RecordError::ChecksumMismatch {
                        tag: o.tag,
                        line: line_no,
                        declared: (sum & 0xffff) as u16,
                        actual: o.sum,
                    })
                } else {
                    Ok(ProbeRun {
                        tag: o.tag,
                        records: o.records,
                    })
                });
            }
            parts => {
                let Some(o) = open.as_mut() else {
                    out.push(Err(match parts {
                        [key, _] if valid_key(key) => RecordError::RecordOutsideRun {
                            line: line_no,
                            key: (*key).to_string(),
                        },
                        _ => malformed("record outside a run"),
                    }));
                    continue;
                };
                o.count = o.count.wrapping_add(1);
                o.sum = o
                    .sum
                    .wrapping_add(checksum(rec))
                    .wrapping_add(u16::from(b'\n'));
                if o.error.is_some() {
                    continue;
                }
                let err = match parts {
                    [key, value] => {
                        if !valid_key(key) || *key == "begin" || *key == "end" {
                            Some(malformed("bad key"))
                        } else if let Some(v) = parse_value(value) {
                            if o.records.iter().any(|(k, _)| k == key) {
                                Some(RecordError::DuplicateKey {
                                    tag: o.tag.clone(),
                                    key: (*key).to_string(),
                                    line: line_no,
                                })
                            } else {
                                o.records.push(((*key).to_string(), v));
                                None
                            }
                        } else {
                            Some(malformed("bad value"))
                        }
                    }
                    _ => Some(malformed("expected `<key> <value>`")),
                };
                o.error = err;
            }
        }
    }
    if let Some(o) = open {
        out.push(Err(o.close_truncated()));
    }
    out
}

/// Parses every run in `log`; the first broken run is an error.
pub fn parse(log: &[u8]) -> Result<Vec<ProbeRun>, RecordError> {
    parse_all(log).into_iter().collect()
}

/// Which FXSAVE layout an image has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FxsaveFormat {
    /// FXSAVE outside 64-bit mode (or without REX.W): 32-bit FIP/FDP with FCS/FDS, XMM0–XMM7.
    Legacy,
    /// FXSAVE64 (REX.W): 64-bit FIP/FDP, XMM0–XMM15.
    Rex64,
}

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

fn le(bytes: &[u8], at: usize, n: usize) -> u128 {
    bytes[at..at + n]
        .iter()
        .rev()
        .fold(0u128, |acc, &b| (acc << 8) | u128::from(b))
}

/// The full two-bit tag of an 80-bit register value that the abridged tag marks as in use
/// (Intel SDM Vol. 1, §10.5.1.1, "Recreating FSAVE format"): 00 valid, 01 zero, 10 special.
pub fn full_tag(value: u128) -> u16 {
    let exponent = (value >> 64) & 0x7fff;
    let significand = value & u128::from(u64::MAX);
    let j = (value >> 63) & 1;
    if exponent == 0x7fff {
        0b10
    } else if exponent == 0 {
        if significand == 0 { 0b01 } else { 0b10 }
    } else if j == 0 {
        0b10
    } else {
        0b00
    }
}

impl FxsaveImage {
    /// Decodes a 512-byte image.
    #[allow(clippy::cast_possible_truncation)] // `le` of n bytes fits the target width
    pub fn decode(bytes: &[u8], format: FxsaveFormat) -> Result<FxsaveImage, RecordError> {
        if bytes.len() != FXSAVE_SIZE {
            return Err(RecordError::BadFxsave(bytes.len()));
        }
        let (fip, fcs, fdp, fds) = match format {
            FxsaveFormat::Legacy => (
                le(bytes, 8, 4) as u64,
                le(bytes, 12, 2) as u16,
                le(bytes, 16, 4) as u64,
                le(bytes, 20, 2) as u16,
            ),
            FxsaveFormat::Rex64 => (le(bytes, 8, 8) as u64, 0, le(bytes, 16, 8) as u64, 0),
        };
        let nxmm = match format {
            FxsaveFormat::Legacy => 8,
            FxsaveFormat::Rex64 => 16,
        };
        let mut st = [0u128; 8];
        for (i, s) in st.iter_mut().enumerate() {
            *s = le(bytes, 32 + 16 * i, 10);
        }
        let mut xmm = [0u128; 16];
        for (i, x) in xmm.iter_mut().enumerate().take(nxmm) {
            *x = le(bytes, 160 + 16 * i, 16);
        }
        Ok(FxsaveImage {
            format,
            fcw: le(bytes, 0, 2) as u16,
            fsw: le(bytes, 2, 2) as u16,
            ftw_abridged: bytes[4],
            fop: (le(bytes, 6, 2) as u16) & 0x7ff,
            fip,
            fcs,
            fdp,
            fds,
            mxcsr: le(bytes, 24, 4) as u32,
            mxcsr_mask: le(bytes, 28, 4) as u32,
            st,
            xmm,
        })
    }

    /// The full x87 tag word as FNSTENV reports it, rebuilt from the abridged tag and the
    /// register contents. Physical register `r` is stack slot `(r - TOP) mod 8`.
    pub fn ftw(&self) -> u16 {
        let top = (self.fsw >> 11) & 7;
        (0..8u16).fold(0u16, |acc, r| {
            let tag = if self.ftw_abridged & (1 << r) == 0 {
                0b11
            } else {
                full_tag(self.st[usize::from((r + 8 - top) & 7)])
            };
            acc | (tag << (2 * r))
        })
    }

    /// The spec fields this layout holds.
    pub fn field_list(format: FxsaveFormat) -> Vec<Field> {
        let nxmm = if format == FxsaveFormat::Legacy {
            8
        } else {
            16
        };
        let mut v: Vec<Field> = crate::spec::X87::ALL.map(Field::X87).to_vec();
        if format == FxsaveFormat::Rex64 {
            v.retain(|f| {
                !matches!(
                    f,
                    Field::X87(crate::spec::X87::Fcs) | Field::X87(crate::spec::X87::Fds)
                )
            });
        }
        v.extend((0..8).map(Field::St));
        v.push(Field::Mxcsr);
        v.extend((0..nxmm).map(Field::Xmm));
        v
    }

    /// The spec fields with their values.
    pub fn fields(&self) -> Vec<(Field, u128)> {
        use crate::spec::X87;
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

    fn sample() -> Vec<(String, Value)> {
        vec![
            ("rax".into(), Value::Hex("00000000".into())),
            ("rdx".into(), Value::Hex("00000600".into())),
            ("cr0".into(), Value::Hex("60000010".into())),
            ("msr.ia32_pat".into(), Value::Hex("0007040600070406".into())),
            ("msr.0xdead".into(), Value::Fault(Fault::Gp)),
            ("lapic.svr".into(), Value::NotAvailable),
        ]
    }

    #[test]
    fn round_trip() {
        let log = format_run("boot-0", &sample());
        let runs = parse(log.as_bytes()).expect("parses");
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].tag, "boot-0");
        assert_eq!(runs[0].records, sample());
        assert_eq!(runs[0].number("rdx"), Some(0x600));
        assert_eq!(runs[0].number("msr.ia32_pat"), Some(0x0007_0406_0007_0406));
        assert_eq!(runs[0].get("msr.0xdead"), Some(&Value::Fault(Fault::Gp)));
        assert_eq!(runs[0].get("lapic.svr"), Some(&Value::NotAvailable));
    }

    #[test]
    fn checksum_and_count_are_what_the_probe_prints() {
        let log = format_run("t", &[("cr0".into(), Value::Hex("10".into()))]);
        let begin = "#VR1 begin t\n";
        let line = "#VR1 cr0 10\n";
        let sum = checksum(format!("{begin}{line}").as_bytes());
        assert_eq!(log, format!("\n{begin}{line}#VR1 end 0001 {sum:04x}\n"));
        assert_eq!(
            sum,
            begin
                .bytes()
                .chain(line.bytes())
                .map(u16::from)
                .sum::<u16>()
        );
        // A changed tag is caught too.
        let bad = log.replacen("begin t", "begin u", 1);
        assert!(matches!(
            parse(bad.as_bytes()),
            Err(RecordError::ChecksumMismatch { .. })
        ));
        // The end line's numbers are strict lower-case hex.
        assert!(parse(log.replacen("end 0001", "end +001", 1).as_bytes()).is_err());
        let upper = log.replacen(&format!("{sum:04x}"), &format!("{sum:04X}"), 1);
        if upper != log {
            assert!(parse(upper.as_bytes()).is_err());
        }
    }

    #[test]
    fn noise_is_skipped() {
        let run = format_run("a", &sample());
        let mut noisy = String::from("SeaBIOS (version 1.16)\r\nBooting from ROM...\n");
        for (i, l) in run.lines().enumerate() {
            noisy.push_str(l);
            noisy.push_str(if i % 2 == 0 { "\r\n" } else { "\n" });
            noisy.push_str("[    0.000000] unrelated kernel line #VR2 x y\n");
        }
        // Another writer's partial line before a marker.
        noisy = noisy.replacen("#VR1 cr0", "garbage#VR1 cr0", 1);
        noisy.push_str("trailing junk without newline #VR1 rax 1");
        let runs = parse(noisy.as_bytes()).expect("parses");
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].records, sample());
    }

    #[test]
    fn two_runs() {
        let log = format!(
            "{}{}",
            format_run("cpu0", &sample()),
            format_run("cpu1", &[])
        );
        let runs = parse(log.as_bytes()).expect("parses");
        assert_eq!(
            runs.iter().map(|r| r.tag.as_str()).collect::<Vec<_>>(),
            ["cpu0", "cpu1"]
        );
        assert!(runs[1].records.is_empty());
    }

    #[test]
    fn truncation_is_reported() {
        let log = format_run("cut", &sample());
        let cut = &log[..log.len() - 20];
        assert_eq!(
            parse(cut.as_bytes()),
            Err(RecordError::MissingEnd {
                tag: "cut".into(),
                line: 2
            })
        );
        // A run cut off by the next begin.
        let two = format!("{}{}", &log[..log.len() - 20], format_run("next", &[]));
        let all = parse_all(two.as_bytes());
        assert_eq!(all.len(), 2);
        assert!(matches!(&all[0], Err(RecordError::MissingEnd { tag, .. }) if tag == "cut"));
        assert!(all[1].is_ok());
    }

    #[test]
    fn lost_line_is_a_count_mismatch() {
        let log = format_run("x", &sample()).replacen("#VR1 cr0 60000010\n", "", 1);
        assert!(matches!(
            parse(log.as_bytes()),
            Err(RecordError::CountMismatch {
                declared: 6,
                actual: 5,
                ..
            })
        ));
    }

    #[test]
    fn bad_checksum_is_reported() {
        // One digit changed: still well-formed, caught by the checksum.
        let log = format_run("x", &sample()).replacen("60000010", "60000011", 1);
        match parse(log.as_bytes()) {
            Err(RecordError::ChecksumMismatch {
                tag,
                declared,
                actual,
                ..
            }) => {
                assert_eq!(tag, "x");
                assert_eq!(actual, declared.wrapping_add(1));
            }
            other => panic!("expected checksum mismatch, got {other:?}"),
        }
    }

    #[test]
    fn garbled_lines_are_reported() {
        let log = format_run("x", &sample()).replacen("60000010", "6000zz10", 1);
        assert!(matches!(
            parse(log.as_bytes()),
            Err(RecordError::Malformed {
                reason: "bad value",
                line: 5,
                ..
            })
        ));
        let log = format_run("x", &sample()).replacen("cr0 ", "cr0  ", 1);
        assert!(matches!(
            parse(log.as_bytes()),
            Err(RecordError::Malformed { .. })
        ));
        let log = format!("{}#VR1 rax 0\n", format_run("x", &[]));
        assert!(matches!(
            parse(log.as_bytes()),
            Err(RecordError::RecordOutsideRun { line: 4, .. })
        ));
        assert_eq!(
            parse(b"#VR1 end 0000 0000\n"),
            Err(RecordError::EndWithoutBegin { line: 1 })
        );
        let dup = format_run(
            "d",
            &[
                ("rax".into(), Value::Hex("1".into())),
                ("rax".into(), Value::Hex("2".into())),
            ],
        );
        assert!(matches!(
            parse(dup.as_bytes()),
            Err(RecordError::DuplicateKey { .. })
        ));
    }

    #[test]
    fn fault_values() {
        for (text, v) in [
            ("!gp", Value::Fault(Fault::Gp)),
            ("!ud", Value::Fault(Fault::Ud)),
            ("!nm", Value::Fault(Fault::Nm)),
            ("!db", Value::Fault(Fault::Other("db".into()))),
            ("!na", Value::NotAvailable),
        ] {
            assert_eq!(parse_value(text), Some(v.clone()));
            assert_eq!(v.to_string(), text);
        }
        assert_eq!(parse_value("!GP"), None);
        assert_eq!(parse_value("!gpx"), None);
        assert_eq!(parse_value("0x10"), None);
        assert_eq!(parse_value("ABC"), None);
    }

    #[test]
    fn value_widths() {
        let v = Value::Hex("0000ffff".into());
        assert_eq!(v.number(), Some(0xffff));
        assert_eq!(v.bits(), Some(32));
        assert_eq!(v.blob(), Some(vec![0, 0, 0xff, 0xff]));
        assert_eq!(Value::Hex("0".repeat(34)).number(), None);
    }

    #[test]
    fn keys() {
        assert_eq!(msr_key(0x277), "msr.ia32_pat");
        assert_eq!(msr_key(0xc000_0080), "efer");
        assert_eq!(msr_key(0x200), "msr.ia32_mtrr_physbase0");
        assert_eq!(msr_key(0xdead), "msr.0xdead");
        assert_eq!(lapic_key(LapicReg::LvtLint0), "lapic.lvt_lint0");
    }

    /// An FXSAVE image in the legacy layout with a few registers in use.
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
        // ST0 = 1.0 (valid): exponent 0x3fff, J = 1.
        let one: u128 = (0x3fffu128 << 64) | (1u128 << 63);
        b[32..42].copy_from_slice(&one.to_le_bytes()[..10]);
        // ST1 = +0 (zero).
        // ST2 = +inf (special): exponent 0x7fff.
        let inf: u128 = (0x7fffu128 << 64) | (1u128 << 63);
        b[64..74].copy_from_slice(&inf.to_le_bytes()[..10]);
        b[160..176].copy_from_slice(&0x0011_2233_4455_6677_8899_aabb_ccdd_eeffu128.to_le_bytes());
        // Something in the XMM8 slot, which the legacy layout ignores.
        b[288] = 0x5a;
        b
    }

    #[test]
    fn fxsave_decodes() {
        let img = FxsaveImage::decode(&image(), FxsaveFormat::Legacy).expect("decodes");
        assert_eq!(img.fcw, 0x037f);
        assert_eq!(img.fsw, 0x3200);
        assert_eq!(img.fop, 0x1d9);
        assert_eq!(
            (img.fip, img.fcs, img.fdp, img.fds),
            (0x1234, 0xf000, 0x500, 0x40)
        );
        assert_eq!(img.mxcsr, 0x1f80);
        assert_eq!(img.mxcsr_mask, 0xffff);
        assert_eq!(img.xmm[0], 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);
        assert_eq!(img.xmm[8], 0);
        // Physical 6 = ST0 valid (00), physical 7 = ST1 zero (01), physical 0 = ST2 special
        // (10), the rest empty (11).
        assert_eq!(img.ftw(), 0b01_00_11_11_11_11_11_10);
        let f: BTreeMap<Field, u128> = img.fields().into_iter().collect();
        assert_eq!(f[&Field::X87(crate::spec::X87::Ftw)], 0x4ffe);
        assert_eq!(f[&Field::St(0)], (0x3fffu128 << 64) | (1u128 << 63));
        assert!(!f.contains_key(&Field::Xmm(8)));
        assert_eq!(
            FxsaveImage::decode(&[0; 10], FxsaveFormat::Legacy),
            Err(RecordError::BadFxsave(10))
        );
    }

    #[test]
    fn empty_fpu_tag_word() {
        let mut b = vec![0u8; FXSAVE_SIZE];
        b[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        let img = FxsaveImage::decode(&b, FxsaveFormat::Legacy).expect("decodes");
        assert_eq!(img.ftw(), 0xffff);
        // Power-on state: all registers +0.0 and tagged in use → full tag 0x5555.
        b[4] = 0xff;
        let img = FxsaveImage::decode(&b, FxsaveFormat::Legacy).expect("decodes");
        assert_eq!(img.ftw(), 0x5555);
    }

    #[test]
    fn fields_merge_direct_records_and_fxsave() {
        let hex: String = image().iter().map(|b| format!("{b:02x}")).collect();
        let recs = vec![
            ("rax".into(), Value::Hex("00000001".into())),
            ("x87.fcw".into(), Value::Hex("0040".into())),
            ("msr.0x277".into(), Value::Hex("0007040600070406".into())),
            ("msr.0xdead".into(), Value::Fault(Fault::Gp)),
            ("probe.version".into(), Value::Hex("1".into())),
            ("fxsave".into(), Value::Hex(hex)),
        ];
        let log = format_run("m", &recs);
        let run = parse(log.as_bytes())
            .expect("parses")
            .pop()
            .expect("one run");
        let f = run.fields().expect("fields");
        assert_eq!(
            f[&Field::Gpr(crate::spec::Gpr::Rax)],
            Observed::Value {
                value: 1,
                mask: 0xffff_ffff
            }
        );
        // FNSTCW wins over the FXSAVE image.
        assert_eq!(
            f[&Field::X87(crate::spec::X87::Fcw)],
            Observed::Value {
                value: 0x40,
                mask: 0xffff
            }
        );
        assert_eq!(
            f[&Field::Msr(crate::spec::Msr::Pat)],
            Observed::Value {
                value: 0x0007_0406_0007_0406,
                mask: u64::MAX.into()
            }
        );
        assert_eq!(
            f[&Field::Mxcsr],
            Observed::Value {
                value: 0x1f80,
                mask: 0xffff_ffff
            }
        );
        assert!(!f.contains_key(&Field::Xmm(8)));
        // An FXSAVE that faulted marks the x87/SSE fields it would have given.
        let log = format_run("u", &[("fxsave".into(), Value::Fault(Fault::Ud))]);
        let run = parse(log.as_bytes()).expect("parses").remove(0);
        let f = run.fields().expect("fields");
        assert_eq!(f[&Field::Xmm(0)], Observed::Fault(Fault::Ud));
        assert_eq!(
            f[&Field::X87(crate::spec::X87::Ftw)],
            Observed::Fault(Fault::Ud)
        );
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = Value> {
            prop_oneof![
                "[0-9a-f]{1,40}".prop_map(Value::Hex),
                "[a-z]{2}".prop_map(|c| if c == "na" {
                    Value::NotAvailable
                } else {
                    Value::Fault(Fault::from_code(&c))
                }),
            ]
        }

        fn records() -> impl Strategy<Value = Vec<(String, Value)>> {
            prop::collection::btree_map("[a-z][a-z0-9._]{0,16}", value(), 0..16).prop_map(|m| {
                m.into_iter()
                    .filter(|(k, _)| k != "begin" && k != "end")
                    .collect()
            })
        }

        proptest! {
            #[test]
            fn round_trip_through_noise(
                tag in "[A-Za-z0-9._-]{1,12}",
                recs in records(),
                noise in prop::collection::vec(("[ -~]{0,40}", any::<bool>()), 0..24),
            ) {
                let run = format_run(&tag, &recs);
                let mut lines = run.lines();
                let mut log = String::new();
                for (n, crlf) in &noise {
                    log.push_str(&n.replace("#VR1 ", "#VR0 "));
                    log.push_str(if *crlf { "\r\n" } else { "\n" });
                    if let Some(l) = lines.next() {
                        log.push_str(l);
                        log.push_str(if *crlf { "\r\n" } else { "\n" });
                    }
                }
                for l in lines {
                    log.push_str(l);
                    log.push('\n');
                }
                let runs = parse(log.as_bytes());
                prop_assert_eq!(runs, Ok(vec![ProbeRun { tag, records: recs }]));
            }

            #[test]
            fn any_changed_byte_is_detected(
                tag in "[A-Za-z0-9._-]{1,12}",
                recs in records(),
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
            ) {
                let mut log = format_run(&tag, &recs).into_bytes();
                // Any byte from the begin marker to the end line's newline.
                let i = 1 + at.index(log.len() - 1);
                prop_assume!(log[i] != byte);
                log[i] = byte;
                prop_assert!(parse(&log).is_err(), "{:?}", String::from_utf8_lossy(&log));
            }
        }
    }
}
