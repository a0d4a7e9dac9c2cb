//! The probe's framed record format, and its host-side parser.
//!
//! The probe prints plain ASCII lines, so that the same bytes work as a stream of KVM port-I/O
//! exits, in a QEMU `-debugcon` log, and on a serial console that carries other text too.
//!
//! # Format (version 2; version 1 differs only in the marker and the checksum)
//!
//! Every record is one line:
//!
//! ```text
//! #VR2 <key> <value>\n
//! ```
//!
//! - `#VR2 ` (with its single space) is the marker; version 1 logs use `#VR1 `. Lines without a
//!   marker are noise and are skipped; text before the marker on the same line (another
//!   writer's partial line) is ignored too. A `\r` before the `\n` is dropped (serial consoles
//!   add them). All lines of one run carry the same marker.
//! - `<key>` is one or more of `a-z 0-9 . _` characters: a spec field name as
//!   [`Field::name`] gives it (`rax`, `cr0`, `cs.selector`, `msr.ia32_pat`, `lapic.lvt_lint0`), an
//!   MSR without a spec field as `msr.0x<index in hex>`, a blob (`fxsave`), what CPUID reports
//!   (`cpuid.<leaf>.<subleaf>.<eax|ebx|ecx|edx>`, leaf and subleaf in hex without leading
//!   zeros, e.g. `cpuid.80000001.0.ecx`; see [`cpuid_key`]), or a probe-specific fact under
//!   `entry.*` or `probe.*`.
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
//! - A run is bracketed by `#VR2 begin <tag>` and `#VR2 end <count> <checksum>`. `<tag>` is
//!   `[A-Za-z0-9._-]+`. `<count>` (hex) is the number of record lines between the two.
//!   `<checksum>` (hex) covers every byte of the `begin` line and of those record lines, each
//!   taken as `#VR2 ...\n` (marker to newline inclusive, without any `\r` or noise), in order:
//!   - version 2: their CRC-32 (the IEEE 802.3 / zlib polynomial, reflected, initial value and
//!     final XOR `FFFFFFFFh`; [`crc32`]), which the probe computes in real mode as it prints.
//!     It catches every change of one or two bytes, swapped digits or values and reordered
//!     lines. The probe prints it as eight digits;
//!   - version 1: the 16-bit wrapping sum of those bytes ([`checksum`]), printed as four
//!     digits. A byte sum misses swapped digits, reordered lines and cancelling changes, so a
//!     version 1 run is accepted with a warning ([`LogFormat::V1`]).
//!
//!   The parser accepts one to eight lower-case digits for both numbers.
//! - `begin` and `end` are not keys. A key occurs at most once in a run, and so does an MSR:
//!   `msr.0x<index>` is the same key as the spec field's name for that MSR (`msr.0x277` is
//!   `msr.ia32_pat`), and leading zeros of the index do not count (`msr.0x0dead` is
//!   `msr.0xdead`).
//!
//! The parser reports a broken run precisely: no `end` ([`RecordError::MissingEnd`]), wrong
//! count ([`RecordError::CountMismatch`]), wrong checksum ([`RecordError::ChecksumMismatch`]), a
//! marker line that does not parse ([`RecordError::Malformed`]) and so on. It reads the log once,
//! in time linear in its length, and allocates nothing from a size the log claims; messages
//! quote at most [`QUOTE_LIMIT`] bytes of the log.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::OnceLock;

use thiserror::Error;

use vcpu_reset::spec::{Field, LapicReg};

/// The marker every record line of a version 1 log starts with.
pub const MARKER_V1: &str = "#VR1 ";
/// The marker every record line of a version 2 log starts with (what the probe prints).
pub const MARKER: &str = "#VR2 ";

/// Most bytes of the log an error message quotes.
pub const QUOTE_LIMIT: usize = 80;

/// The version of a run's format, given by its marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogFormat {
    /// `#VR1 `: checksum is a 16-bit byte sum, which misses swapped digits, reordered lines and
    /// cancelling changes. Still accepted; judges should warn.
    V1,
    /// `#VR2 `: checksum is a CRC-32 ([`crc32`]).
    V2,
}

impl LogFormat {
    /// The line marker of this version.
    pub fn marker(self) -> &'static str {
        match self {
            LogFormat::V1 => MARKER_V1,
            LogFormat::V2 => MARKER,
        }
    }

    /// The version number (1 or 2).
    pub fn number(self) -> u8 {
        match self {
            LogFormat::V1 => 1,
            LogFormat::V2 => 2,
        }
    }
}

/// At most [`QUOTE_LIMIT`] bytes of `bytes` as text, saying how long the whole was when cut.
pub fn quote(bytes: &[u8]) -> String {
    if bytes.len() <= QUOTE_LIMIT {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    format!(
        "{}... ({} bytes)",
        String::from_utf8_lossy(&bytes[..QUOTE_LIMIT]),
        bytes.len()
    )
}

/// Most hex digits a value may have that is read as a number.
pub const MAX_NUMBER_DIGITS: usize = 32;

/// The FXSAVE decoding lives in the spec crate, shared with the KVM backend.
pub use vcpu_reset::spec::x87::{FXSAVE_SIZE, FxsaveFormat, FxsaveImage, tag_of as full_tag};

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
        "run {tag:?}: end on line {line} declares checksum {declared:x}, the records give {actual:x} ({}): the log was changed or damaged in transit",
        if *format == LogFormat::V1 { "16-bit byte sum, format 1" } else { "CRC-32, format 2" }
    )]
    ChecksumMismatch {
        /// The run's tag (at most [`QUOTE_LIMIT`] bytes of it).
        tag: String,
        /// 1-based line of the `end`.
        line: usize,
        /// The run's format, which says which checksum it is.
        format: LogFormat,
        /// Checksum the probe printed.
        declared: u32,
        /// Checksum of the records seen.
        actual: u32,
    },
    /// A line with the marker that does not parse.
    #[error("line {line}: malformed record ({reason}): {text:?}")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: &'static str,
        /// The line from the marker on, at most [`QUOTE_LIMIT`] bytes of it (see [`quote`]).
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
    /// Two keys of one run that name the same MSR (`msr.0x277` and `msr.ia32_pat`).
    #[error("run {tag:?}: key {key:?} on line {line} records the same MSR as {first:?}")]
    DuplicateMsr {
        /// The run's tag.
        tag: String,
        /// The key of the repeat.
        key: String,
        /// The key the run recorded the MSR under first.
        first: String,
        /// 1-based line of the repeat.
        line: usize,
    },
    /// A blob that is not a valid FXSAVE image: its number of hex digits (an odd number is no
    /// whole number of bytes).
    #[error("fxsave blob has {0} hex digits, expected 1024 (512 bytes)")]
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
    /// The format version its lines used.
    pub format: LogFormat,
}

impl ProbeRun {
    /// The value of `key`, if recorded (a linear search: look up many keys through
    /// [`ProbeRun::index`]).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.records.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Every record by key, for many look-ups.
    pub fn index(&self) -> HashMap<&str, &Value> {
        self.records.iter().map(|(k, v)| (k.as_str(), v)).collect()
    }

    /// What CPUID leaf `leaf`, subleaf `subleaf` returned in register `reg` (0 = EAX, 1 = EBX,
    /// 2 = ECX, 3 = EDX), if the run recorded it.
    pub fn cpuid(&self, leaf: u32, subleaf: u32, reg: usize) -> Option<u32> {
        self.number(&cpuid_key(leaf, subleaf, reg))
            .and_then(|v| u32::try_from(v).ok())
    }

    /// The number value of `key`, if recorded as a number.
    pub fn number(&self, key: &str) -> Option<u128> {
        self.get(key).and_then(Value::number)
    }

    /// The decoded FXSAVE image, if the run has a `fxsave` blob.
    ///
    /// The probe runs FXSAVE in real mode, so the image has the legacy (non-REX.W) layout.
    /// A blob of another length than 1024 digits, an odd number included, is
    /// [`RecordError::BadFxsave`]; a fault or `!na` instead of a blob is `None`.
    pub fn fxsave(&self) -> Option<Result<FxsaveImage, RecordError>> {
        let v = self.get("fxsave")?;
        let Value::Hex(digits) = v else { return None };
        let bad = || RecordError::BadFxsave(digits.len());
        Some(
            v.blob().ok_or_else(bad).and_then(|bytes| {
                FxsaveImage::decode(&bytes, FxsaveFormat::Legacy).map_err(|_| bad())
            }),
        )
    }

    /// Every record that names a spec field, plus the fields decoded from the FXSAVE image
    /// (which fill in only what no direct record gave, e.g. `x87.fcw` from FNSTCW wins).
    ///
    /// Records of other keys (`probe.*`, `entry.*`, MSRs without a field) are left out.
    pub fn fields(&self) -> Result<BTreeMap<Field, Seen>, RecordError> {
        let all = Field::all();
        let by_name: HashMap<String, Field> = all.iter().map(|&f| (f.name(), f)).collect();
        let by_msr: HashMap<u32, Field> = all
            .iter()
            .filter_map(|&f| f.msr_index().map(|i| (i, f)))
            .collect();
        let mut out = BTreeMap::new();
        for (key, value) in &self.records {
            let field = by_name.get(key).copied().or_else(|| {
                key.strip_prefix("msr.0x")
                    .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                    .and_then(|i| by_msr.get(&i).copied())
            });
            let Some(field) = field else { continue };
            out.insert(field, Seen::from_value(field, value));
        }
        match self.get("fxsave") {
            Some(Value::Hex(_)) => {
                if let Some(img) = self.fxsave() {
                    for (f, v) in img?.fields() {
                        out.entry(f).or_insert(Seen::Value {
                            value: v,
                            mask: f.mask(),
                        });
                    }
                }
            }
            Some(other) => {
                for f in FxsaveImage::field_list(FxsaveFormat::Legacy) {
                    out.entry(f).or_insert_with(|| Seen::from_value(f, other));
                }
            }
            None => {}
        }
        Ok(out)
    }
}

/// What the probe saw of one spec field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
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

impl Seen {
    fn from_value(field: Field, v: &Value) -> Seen {
        match v {
            Value::Hex(_) => match (v.number(), v.bits()) {
                (Some(n), Some(bits)) => {
                    let seen = if bits >= 128 {
                        u128::MAX
                    } else {
                        (1u128 << bits) - 1
                    };
                    Seen::Value {
                        value: n & field.mask(),
                        mask: seen & field.mask(),
                    }
                }
                _ => Seen::NotAvailable,
            },
            Value::Fault(f) => Seen::Fault(f.clone()),
            Value::NotAvailable => Seen::NotAvailable,
        }
    }
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

/// The CPUID registers' names, in the order [`ProbeRun::cpuid`] numbers them.
pub const CPUID_REGS: [&str; 4] = ["eax", "ebx", "ecx", "edx"];

/// The record key of CPUID leaf `leaf`, subleaf `subleaf`, register `reg` (0 = EAX .. 3 = EDX):
/// `cpuid.<leaf hex>.<subleaf hex>.<reg>`, e.g. `cpuid.1.0.eax`.
pub fn cpuid_key(leaf: u32, subleaf: u32, reg: usize) -> String {
    format!(
        "cpuid.{leaf:x}.{subleaf:x}.{}",
        CPUID_REGS.get(reg).copied().unwrap_or("eax")
    )
}

/// Formats one version 1 record line, `#VR1 <key> <value>\n`.
pub fn format_record_v1(key: &str, value: &Value) -> String {
    format!("{MARKER_V1}{key} {value}\n")
}

/// The 16-bit wrapping sum of `bytes`: the checksum of format version 1.
pub fn checksum(bytes: &[u8]) -> u16 {
    bytes
        .iter()
        .fold(0u16, |s, &b| s.wrapping_add(u16::from(b)))
}

/// The table of the byte-wise CRC-32 (reflected polynomial EDB88320H), as the probe embeds it.
pub const CRC32_TABLE: [u32; 256] = crc32_table();

const fn crc32_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

/// Feeds `bytes` into a running CRC-32 register (start from `0xFFFF_FFFF`, finish with `!`).
pub fn crc32_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = CRC32_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// The CRC-32 of `bytes` (IEEE 802.3 / zlib: `crc32(b"123456789") == 0xCBF43926`): the
/// checksum of format version 2.
pub fn crc32(bytes: &[u8]) -> u32 {
    !crc32_update(0xffff_ffff, bytes)
}

/// Formats a whole run in format version 2, as the probe prints it (with a leading newline).
pub fn format_run(tag: &str, records: &[(String, Value)]) -> String {
    let mut body = format!("{MARKER}begin {tag}\n");
    for (k, v) in records {
        body.push_str(&format_record(k, v));
    }
    format!(
        "\n{body}{MARKER}end {:04x} {:08x}\n",
        records.len(),
        crc32(body.as_bytes())
    )
}

/// Formats a whole run in format version 1, as older probes printed it (with a leading
/// newline).
pub fn format_run_v1(tag: &str, records: &[(String, Value)]) -> String {
    let mut body = format!("{MARKER_V1}begin {tag}\n");
    for (k, v) in records {
        body.push_str(&format_record_v1(k, v));
    }
    format!(
        "\n{body}{MARKER_V1}end {:04x} {:04x}\n",
        records.len(),
        checksum(body.as_bytes())
    )
}

/// The key a record is unique by in its run: for `msr.0x<index>`, the name of the MSR's spec
/// field if it has one, else `msr.0x<index>` without leading zeros; any other key itself.
fn unique_key(key: &str) -> Cow<'_, str> {
    static FIELD_OF_MSR: OnceLock<HashMap<u32, String>> = OnceLock::new();
    let Some(index) = key
        .strip_prefix("msr.0x")
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
    else {
        return Cow::Borrowed(key);
    };
    let names = FIELD_OF_MSR.get_or_init(|| {
        Field::all()
            .into_iter()
            .filter_map(|f| f.msr_index().map(|i| (i, f.name())))
            .collect()
    });
    match names.get(&index) {
        Some(name) => Cow::Owned(name.clone()),
        None => Cow::Owned(format!("msr.0x{index:x}")),
    }
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
    format: LogFormat,
    records: Vec<(String, Value)>,
    /// Every key so far, by the key it is unique by ([`unique_key`]).
    keys: HashMap<String, String>,
    count: u32,
    sum: u16,
    crc: u32,
    /// The first thing found wrong inside the run; reported when the run closes.
    error: Option<RecordError>,
}

impl Open {
    /// The run that `begin` opens, tagged `tag`.
    fn new(begin: &MarkedLine<'_>, tag: &str) -> Open {
        let mut o = Open {
            tag: tag.to_string(),
            line: begin.line,
            format: begin.format,
            records: Vec::new(),
            keys: HashMap::new(),
            count: 0,
            sum: 0,
            crc: 0xffff_ffff,
            error: None,
        };
        o.add_line(begin.rec);
        o
    }

    fn close_truncated(self) -> RecordError {
        self.error.unwrap_or_else(|| RecordError::MissingEnd {
            tag: quote(self.tag.as_bytes()),
            line: self.line,
        })
    }

    /// Adds a marker-to-newline line (without its `\n`) to both checksums.
    fn add_line(&mut self, rec: &[u8]) {
        self.sum = self
            .sum
            .wrapping_add(checksum(rec))
            .wrapping_add(u16::from(b'\n'));
        self.crc = crc32_update(crc32_update(self.crc, rec), b"\n");
    }

    /// Counts a line of the run after `begin` and adds it to the checksums.
    fn count_line(&mut self, rec: &[u8]) {
        self.count = self.count.wrapping_add(1);
        self.add_line(rec);
    }

    /// Adds the record `parts` (`<key> <value>`) of `l`; `Err`: what is wrong with it.
    fn add_record(&mut self, l: &MarkedLine<'_>, parts: &[&str]) -> Result<(), RecordError> {
        let [key, value] = parts else {
            return Err(l.malformed("expected `<key> <value>`"));
        };
        if !valid_key(key) || *key == "begin" || *key == "end" {
            return Err(l.malformed("bad key"));
        }
        let Some(v) = parse_value(value) else {
            return Err(l.malformed("bad value"));
        };
        let unique = unique_key(key);
        if let Some(first) = self.keys.get(unique.as_ref()) {
            let (tag, line) = (quote(self.tag.as_bytes()), l.line);
            return Err(if first == key {
                RecordError::DuplicateKey {
                    tag,
                    key: quote(key.as_bytes()),
                    line,
                }
            } else {
                RecordError::DuplicateMsr {
                    tag,
                    key: quote(key.as_bytes()),
                    first: quote(first.as_bytes()),
                    line,
                }
            });
        }
        self.keys.insert(unique.into_owned(), (*key).to_string());
        self.records.push(((*key).to_string(), v));
        Ok(())
    }

    /// The run, closed by the `end` line `l` that declares `count` records and checksum `sum`:
    /// verified, or the first error that breaks it.
    fn close(self, l: &MarkedLine<'_>, count: &str, sum: &str) -> Result<ProbeRun, RecordError> {
        let (Some(count), Some(sum)) = (parse_hex_u32(count), parse_hex_u32(sum)) else {
            return Err(self.error.unwrap_or(l.malformed("bad end line")));
        };
        if let Some(e) = self.error {
            return Err(e);
        }
        let actual = match self.format {
            LogFormat::V1 => u32::from(self.sum),
            LogFormat::V2 => !self.crc,
        };
        if count != self.count {
            Err(RecordError::CountMismatch {
                tag: quote(self.tag.as_bytes()),
                line: l.line,
                declared: count,
                actual: self.count,
            })
        } else if sum != actual {
            Err(RecordError::ChecksumMismatch {
                tag: quote(self.tag.as_bytes()),
                line: l.line,
                format: self.format,
                declared: sum,
                actual,
            })
        } else {
            Ok(ProbeRun {
                tag: self.tag,
                records: self.records,
                format: self.format,
            })
        }
    }
}

/// A line of the log that carries a marker.
struct MarkedLine<'a> {
    /// 1-based line number.
    line: usize,
    /// The marker's version.
    format: LogFormat,
    /// The line from the marker on, without `\r\n`.
    rec: &'a [u8],
}

impl<'a> MarkedLine<'a> {
    /// This line as malformed, for `reason`.
    fn malformed(&self, reason: &'static str) -> RecordError {
        RecordError::Malformed {
            line: self.line,
            reason,
            text: quote(self.rec),
        }
    }

    /// The fields after the marker, split at single spaces, and how many there are: none
    /// when there are more than three or they are not UTF-8.
    fn parts(&self) -> ([&'a str; 3], usize) {
        std::str::from_utf8(&self.rec[MARKER.len()..])
            .ok()
            .and_then(split3)
            .unwrap_or(([""; 3], 0))
    }
}

/// The first marker of either version in `line`: its offset and version.
fn find_marker(line: &[u8]) -> Option<(usize, LogFormat)> {
    let mut from = 0;
    while let Some(off) = line.get(from..)?.iter().position(|&b| b == b'#') {
        let at = from + off;
        match line.get(at..at + 5) {
            Some(b"#VR1 ") => return Some((at, LogFormat::V1)),
            Some(b"#VR2 ") => return Some((at, LogFormat::V2)),
            Some(_) => from = at + 1,
            None => return None,
        }
    }
    None
}

/// The line's fields after the marker, split at single spaces: at most three are kept (more
/// is malformed anyway); `None` when there are more than three.
fn split3(body: &str) -> Option<([&str; 3], usize)> {
    let mut out = [""; 3];
    let mut n = 0;
    for part in body.split(' ') {
        if n == 3 {
            return None;
        }
        out[n] = part;
        n += 1;
    }
    Some((out, n))
}

/// Every complete line of `log` that carries a marker, in order. The last piece has no
/// newline: a line cut off mid-way is not a record.
fn marked_lines(log: &[u8]) -> impl Iterator<Item = MarkedLine<'_>> {
    let mut pieces = log.split(|&b| b == b'\n');
    // The piece after the last newline is dropped.
    pieces.next_back();
    pieces.enumerate().filter_map(|(i, raw)| {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let (pos, format) = find_marker(raw)?;
        Some(MarkedLine {
            line: i + 1,
            format,
            rec: &raw[pos..],
        })
    })
}

/// The runs of a log as they are parsed, line by line.
#[derive(Default)]
struct RunParser {
    /// The runs closed so far, each verified or with its error, and errors outside runs.
    out: Vec<Result<ProbeRun, RecordError>>,
    /// The run begun and not yet ended.
    open: Option<Open>,
}

impl RunParser {
    /// One marked line: a line of another version than its run's breaks the run, else it is
    /// a `begin`, an `end` or a record.
    fn line(&mut self, l: &MarkedLine<'_>) {
        if let Some(o) = self.open.as_mut()
            && o.format != l.format
        {
            // Counted and summed like any line of the run, so that the error is this one.
            o.count_line(l.rec);
            if o.error.is_none() {
                o.error = Some(l.malformed("marker version differs from its run's begin line"));
            }
            return;
        }
        let (parts, n) = l.parts();
        match &parts[..n] {
            ["begin", tag] => self.begin(l, tag),
            ["end", count, sum] => self.end(l, count, sum),
            parts => self.record(l, parts),
        }
    }

    /// A `begin` line: the open run, if any, is truncated; a new one opens.
    fn begin(&mut self, l: &MarkedLine<'_>, tag: &str) {
        if let Some(o) = self.open.take() {
            self.out.push(Err(o.close_truncated()));
        }
        if valid_tag(tag) {
            self.open = Some(Open::new(l, tag));
        } else {
            self.out.push(Err(l.malformed("bad tag")));
        }
    }

    /// An `end` line: the open run closes.
    fn end(&mut self, l: &MarkedLine<'_>, count: &str, sum: &str) {
        let closed = match self.open.take() {
            Some(o) => o.close(l, count, sum),
            None => Err(RecordError::EndWithoutBegin { line: l.line }),
        };
        self.out.push(closed);
    }

    /// Any other line: a record of the open run, or an error outside one.
    fn record(&mut self, l: &MarkedLine<'_>, parts: &[&str]) {
        let Some(o) = self.open.as_mut() else {
            self.out.push(Err(match parts {
                [key, _] if valid_key(key) => RecordError::RecordOutsideRun {
                    line: l.line,
                    key: quote(key.as_bytes()),
                },
                _ => l.malformed("record outside a run"),
            }));
            return;
        };
        o.count_line(l.rec);
        if o.error.is_none() {
            o.error = o.add_record(l, parts).err();
        }
    }

    /// Every run, a run still open at the end of the log truncated.
    fn finish(mut self) -> Vec<Result<ProbeRun, RecordError>> {
        if let Some(o) = self.open.take() {
            self.out.push(Err(o.close_truncated()));
        }
        self.out
    }
}

/// Parses every run in `log`, each either verified or with the first error that breaks it.
///
/// Noise lines are skipped; a record outside a run or an `end` without `begin` is reported as
/// an error in the place where it occurs. Runs of format version 1 and 2 are both accepted
/// ([`ProbeRun::format`] says which); one run's lines must all use the same version. The log is
/// read once, in time linear in its length.
pub fn parse_all(log: &[u8]) -> Vec<Result<ProbeRun, RecordError>> {
    let mut parser = RunParser::default();
    for l in marked_lines(log) {
        parser.line(&l);
    }
    parser.finish()
}

/// Parses every run in `log`; the first broken run is an error.
pub fn parse(log: &[u8]) -> Result<Vec<ProbeRun>, RecordError> {
    parse_all(log).into_iter().collect()
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
    fn v1_checksum_and_count_are_what_old_probes_printed() {
        let log = format_run_v1("t", &[("cr0".into(), Value::Hex("10".into()))]);
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
        assert_eq!(
            parse(log.as_bytes()).expect("parses")[0].format,
            LogFormat::V1
        );
    }

    #[test]
    fn v2_checksum_is_the_crc32_of_the_run() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        let log = format_run("t", &[("cr0".into(), Value::Hex("10".into()))]);
        let body = "#VR2 begin t\n#VR2 cr0 10\n";
        assert_eq!(
            log,
            format!("\n{body}#VR2 end 0001 {:08x}\n", crc32(body.as_bytes()))
        );
        let runs = parse(log.as_bytes()).expect("parses");
        assert_eq!(runs[0].format, LogFormat::V2);
        assert_eq!(runs[0].number("cr0"), Some(0x10));
    }

    /// Changes a byte sum cannot see, each one caught by the version 2 CRC.
    #[test]
    fn v2_catches_what_the_byte_sum_misses() {
        let recs = vec![
            ("rax".to_string(), Value::Hex("00001234".into())),
            ("rbx".to_string(), Value::Hex("00005678".into())),
            ("cr0".to_string(), Value::Hex("60000010".into())),
        ];
        type Change = fn(&str) -> String;
        let changes: [(&str, Change); 4] = [
            ("swapped digits", |l| l.replacen("00001234", "00002134", 1)),
            // +1 in one byte, -1 in another.
            ("cancelling flips", |l| {
                l.replacen("00001234", "00001334", 1)
                    .replacen("00005678", "00005578", 1)
            }),
            ("swapped values", |l| {
                l.replacen("rax 00001234", "rax 00005678", 1).replacen(
                    "rbx 00005678",
                    "rbx 00001234",
                    1,
                )
            }),
            ("reordered lines", |l| {
                l.replacen(
                    "rax 00001234\n#VR2 rbx 00005678",
                    "rbx 00005678\n#VR2 rax 00001234",
                    1,
                )
            }),
        ];
        for (what, change) in changes {
            let v1 = format_run_v1("t", &recs).replace("#VR1 ", "#VR2 ");
            let v1 = change(&v1).replace("#VR2 ", "#VR1 ");
            assert!(
                parse(v1.as_bytes()).is_ok(),
                "{what}: the byte sum of version 1 misses it"
            );
            let v2 = change(&format_run("t", &recs));
            assert_ne!(v2, format_run("t", &recs), "{what}: changed");
            assert!(
                matches!(
                    parse(v2.as_bytes()),
                    Err(RecordError::ChecksumMismatch {
                        format: LogFormat::V2,
                        ..
                    })
                ),
                "{what}: {:?}",
                parse(v2.as_bytes())
            );
        }
    }

    #[test]
    fn one_run_keeps_one_marker_version() {
        let log = format_run("t", &sample()).replacen("#VR2 cr0", "#VR1 cr0", 1);
        assert!(matches!(
            parse(log.as_bytes()),
            Err(RecordError::Malformed { line: 5, .. })
        ));
        // Runs of both versions in one log.
        let two = format!(
            "{}{}",
            format_run_v1("a", &sample()),
            format_run("b", &sample())
        );
        let runs = parse(two.as_bytes()).expect("parses");
        assert_eq!(
            runs.iter().map(|r| r.format).collect::<Vec<_>>(),
            [LogFormat::V1, LogFormat::V2]
        );
        assert_eq!(runs[0].records, runs[1].records);
    }

    #[test]
    fn messages_quote_at_most_80_bytes() {
        let long = "a".repeat(20 << 20);
        let log = format!("#VR2 begin t\n#VR2 {long} 1 2\n#VR2 end 0001 0\n");
        let e = parse(log.as_bytes()).expect_err("malformed");
        let msg = e.to_string();
        assert!(msg.len() < 200, "{} bytes", msg.len());
        assert!(msg.contains("... (20971529 bytes)"), "{msg}");
        let log = format!("#VR2 begin {long}\n");
        let msg = parse(log.as_bytes()).expect_err("truncated").to_string();
        assert!(msg.len() < 200, "{} bytes", msg.len());
        let log = format!("#VR2 {long} 1\n");
        let msg = parse(log.as_bytes()).expect_err("outside").to_string();
        assert!(msg.len() < 200, "{} bytes", msg.len());
    }

    #[test]
    fn many_records_parse_in_linear_time() {
        // 200 000 records: a quadratic duplicate check would take minutes.
        let recs: Vec<(String, Value)> = (0..200_000)
            .map(|i| (format!("probe.k{i}"), Value::Hex(format!("{i:08x}"))))
            .collect();
        let log = format_run("big", &recs);
        let runs = parse(log.as_bytes()).expect("parses");
        assert_eq!(runs[0].records.len(), 200_000);
        assert_eq!(
            runs[0].index()["probe.k199999"],
            &Value::Hex("00030d3f".into())
        );
    }

    #[test]
    fn noise_is_skipped() {
        let run = format_run("a", &sample());
        let mut noisy = String::from("SeaBIOS (version 1.16)\r\nBooting from ROM...\n");
        for (i, l) in run.lines().enumerate() {
            noisy.push_str(l);
            noisy.push_str(if i % 2 == 0 { "\r\n" } else { "\n" });
            noisy.push_str("[    0.000000] unrelated kernel line #VR3 x y #VR x\n");
        }
        // Another writer's partial line before a marker.
        noisy = noisy.replacen("#VR2 cr0", "garbage#VR2 cr0", 1);
        noisy.push_str("trailing junk without newline #VR2 rax 1");
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
        let log = format_run("x", &sample()).replacen("#VR2 cr0 60000010\n", "", 1);
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
        let log = format_run_v1("x", &sample()).replacen("60000010", "60000011", 1);
        match parse(log.as_bytes()) {
            Err(RecordError::ChecksumMismatch {
                tag,
                declared,
                actual,
                ..
            }) => {
                assert_eq!(tag, "x");
                assert_eq!(actual, (declared + 1) & 0xffff);
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
        let log = format!("{}#VR2 rax 0\n", format_run("x", &[]));
        assert!(matches!(
            parse(log.as_bytes()),
            Err(RecordError::RecordOutsideRun { line: 4, .. })
        ));
        assert_eq!(
            parse(b"#VR2 end 0000 0000\n"),
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
    fn an_msr_under_two_keys_is_refused() {
        let value = || Value::Hex("0".repeat(16));
        for (first, second) in [
            ("msr.ia32_pat", "msr.0x277"),
            ("msr.0x277", "msr.ia32_pat"),
            ("msr.0xdead", "msr.0x0dead"),
            ("efer", "msr.0xc0000080"),
        ] {
            let log = format_run("t", &[(first.into(), value()), (second.into(), value())]);
            let e = parse(log.as_bytes()).unwrap_err();
            assert_eq!(
                e,
                RecordError::DuplicateMsr {
                    tag: "t".into(),
                    key: second.into(),
                    first: first.into(),
                    line: 4,
                },
                "{first} {second}"
            );
        }
        let log = format_run(
            "t",
            &[
                ("msr.0xdead".into(), value()),
                ("msr.0xbeef".into(), value()),
            ],
        );
        assert!(parse(log.as_bytes()).is_ok());
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
        assert_eq!(f[&Field::X87(vcpu_reset::spec::X87::Ftw)], 0x4ffe);
        assert_eq!(f[&Field::St(0)], (0x3fffu128 << 64) | (1u128 << 63));
        assert!(!f.contains_key(&Field::Xmm(8)));
        let log = format_run("short", &[("fxsave".into(), Value::Hex("00".repeat(10)))]);
        let runs = parse(log.as_bytes()).expect("parses");
        assert_eq!(runs[0].fxsave(), Some(Err(RecordError::BadFxsave(20))));
        let log = format_run("odd", &[("fxsave".into(), Value::Hex("0".repeat(1023)))]);
        let runs = parse(log.as_bytes()).expect("parses");
        assert_eq!(runs[0].fxsave(), Some(Err(RecordError::BadFxsave(1023))));
        assert_eq!(runs[0].fields(), Err(RecordError::BadFxsave(1023)));
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
            f[&Field::Gpr(vcpu_reset::spec::Gpr::Rax)],
            Seen::Value {
                value: 1,
                mask: 0xffff_ffff
            }
        );
        // FNSTCW wins over the FXSAVE image.
        assert_eq!(
            f[&Field::X87(vcpu_reset::spec::X87::Fcw)],
            Seen::Value {
                value: 0x40,
                mask: 0xffff
            }
        );
        assert_eq!(
            f[&Field::Msr(vcpu_reset::spec::Msr::Pat)],
            Seen::Value {
                value: 0x0007_0406_0007_0406,
                mask: u64::MAX.into()
            }
        );
        assert_eq!(
            f[&Field::Mxcsr],
            Seen::Value {
                value: 0x1f80,
                mask: 0xffff_ffff
            }
        );
        assert!(!f.contains_key(&Field::Xmm(8)));
        // An FXSAVE that faulted marks the x87/SSE fields it would have given.
        let log = format_run("u", &[("fxsave".into(), Value::Fault(Fault::Ud))]);
        let run = parse(log.as_bytes()).expect("parses").remove(0);
        let f = run.fields().expect("fields");
        assert_eq!(f[&Field::Xmm(0)], Seen::Fault(Fault::Ud));
        assert_eq!(
            f[&Field::X87(vcpu_reset::spec::X87::Ftw)],
            Seen::Fault(Fault::Ud)
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
                    log.push_str(&n.replace("#VR1 ", "#VR0 ").replace("#VR2 ", "#VR0 "));
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
                prop_assert_eq!(runs, Ok(vec![ProbeRun { tag, records: recs, format: LogFormat::V2 }]));
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
