//! Fuzz targets and a small mutation fuzzer that runs on stable Rust, with no extra tools.
//!
//! Targets (each takes arbitrary bytes and must never panic, hang or allocate without bound):
//! - [`Target::ProbeLog`]: the probe-log parser and the judge (`check --from-log`'s whole path:
//!   [`crate::check::probe_log::judge_log`], then every report format).
//! - [`Target::Firmware`]: the firmware loader ([`crate::runner::Firmware::from_bytes`], and
//!   now and then [`crate::runner::Firmware::load`] through a real file and the bounded read).
//! - [`Target::StateJson`]: a vCPU state as JSON ([`crate::files::parse_state_json`]), then the
//!   spec's INIT from that state for both vendors and a serialise/parse round trip, which must
//!   give the same state back.
//! - [`Target::PeerOutput`]: what a peer VMM writes, as its log read piece by piece
//!   ([`crate::check::peers::process::LogWatch`], which must count the runs the whole log holds
//!   however it is cut) and as text and file names printed back
//!   ([`crate::files::escape`], [`crate::files::shown_path`], [`crate::files::quote`]: no control
//!   character may come out, and escaping twice must change nothing).
//!
//! The fuzzer is deterministic for a seed: a xorshift generator drives byte-level mutations
//! (flips, interesting bytes, inserts, deletes, splices, line swaps, dictionary tokens, long
//! lines) and, for probe logs, structure-aware ones that parse a log, change its records (values,
//! keys, order, duplicates, tags, runs) and frame it again with
//! [`crate::probe::record::format_run`], so mutated logs get past the integrity check and reach
//! the judge. An input whose outcome (error kind, verdict counts) was not seen before joins the
//! corpus. A panic in a target is caught, counted as a crash and its input saved.
//!
//! Run it with `cargo run --release -p vcpu-reset --example fuzz -- --seconds 600` (see the
//! README); `tests/fuzz_short.rs` runs a short pass.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::probe::record::{self, Value};
use vcpu_reset::spec::{self, CpuModel, Transition, VcpuIdentity, Vendor};

/// A fuzz target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Probe-log parser and judge.
    ProbeLog,
    /// Firmware loader.
    Firmware,
    /// vCPU state JSON.
    StateJson,
    /// A peer's output and log, and names printed back.
    PeerOutput,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 4] = [
        Target::ProbeLog,
        Target::Firmware,
        Target::StateJson,
        Target::PeerOutput,
    ];

    /// Name, as on the command line and as the seed folder.
    pub fn name(self) -> &'static str {
        match self {
            Target::ProbeLog => "probe-log",
            Target::Firmware => "firmware",
            Target::StateJson => "state-json",
            Target::PeerOutput => "peer-output",
        }
    }

    /// The target named `s`.
    pub fn from_name(s: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Largest input the mutator makes for this target.
    fn max_len(self) -> usize {
        match self {
            Target::ProbeLog => 1 << 20,
            // Past the 16 MiB limit now and then (see `mutate_firmware`), small otherwise.
            Target::Firmware => 256 << 10,
            Target::StateJson => 256 << 10,
            Target::PeerOutput => 256 << 10,
        }
    }
}

/// What one execution of a target gave, as a short signature for corpus feedback.
type Outcome = u64;

fn hash_of<T: Hash>(t: T) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

/// The kind of an error message: its words without digits, so "line 12" and "line 13" match.
fn kind_of_message(m: &str) -> u64 {
    hash_of(
        m.chars()
            .take(60)
            .filter(|c| !c.is_ascii_hexdigit())
            .collect::<String>(),
    )
}

/// Run the probe-log target on `input`: parse, judge for Intel or AMD, and with `render`
/// render every report format. Returns the outcome signature, the longest message the
/// report holds, and whether any field was judged (the input got past the parser).
pub fn probe_log(
    input: &[u8],
    vendor: Vendor,
    signature_known: bool,
    render: bool,
) -> (Outcome, usize, bool) {
    // Without a known signature the judge takes the vendor and signature from the log's own
    // CPUID records, so both paths are exercised.
    let opts = crate::check::probe_log::LogOptions {
        vendor: signature_known.then_some(vendor),
        signature: signature_known.then_some(CpuModel::generic(vendor).signature),
    };
    let report = crate::check::probe_log::judge_log(input, &opts);
    let s = report.summary();
    let longest = report
        .scenarios
        .iter()
        .filter_map(|s| s.error.as_ref().map(String::len))
        .chain(report.results.iter().map(|r| {
            r.reason.as_ref().map_or(0, String::len) + r.actual.as_ref().map_or(0, String::len)
        }))
        .max()
        .unwrap_or(0);
    let errors: Vec<u64> = report
        .scenarios
        .iter()
        .map(|s| s.error.as_deref().map_or(0, kind_of_message))
        .collect();
    let _ = report.exit_code(false);
    if render {
        let _ = report.to_table();
        let _ = report.to_tap(true);
        let _ = report.to_json();
    }
    (
        hash_of((
            errors,
            s.pass.min(1000) / 8,
            s.fail.min(64),
            s.finding.min(64),
            s.host_limit.min(1000) / 8,
        )),
        longest,
        !report.results.is_empty(),
    )
}

/// Run the firmware target on `input`; with `file`, also write it there and load it back.
pub fn firmware(input: &[u8], file: Option<&Path>) -> Outcome {
    use crate::runner::Firmware;
    let r = Firmware::from_bytes(input.to_vec(), "fuzz");
    if let Ok(fw) = &r {
        let (addr, part) = fw.low_alias();
        assert_eq!(
            addr + part.len() as u64,
            1 << 20,
            "the low alias ends at 1 MiB"
        );
        assert_eq!(
            fw.base() + fw.bytes().len() as u64,
            1 << 32,
            "the image ends at 4 GiB"
        );
    }
    if let Some(path) = file
        && std::fs::write(path, input).is_ok()
    {
        let loaded = Firmware::load(path);
        assert_eq!(
            loaded.is_ok(),
            r.is_ok(),
            "load and from_bytes agree: {:?}",
            loaded.err().map(|e| e.to_string())
        );
    }
    hash_of(
        r.map(|f| f.bytes().len().trailing_zeros())
            .map_err(|e| kind_of_message(&e.to_string())),
    )
}

/// Run the state-JSON target on `input`.
pub fn state_json(input: &[u8]) -> Outcome {
    match crate::files::parse_state_json(input) {
        Ok(state) => {
            for vendor in [Vendor::Intel, Vendor::Amd] {
                let model = CpuModel::generic(vendor);
                let after =
                    spec::expected_state(&model, VcpuIdentity::new(0), Transition::Init(&state));
                let _ =
                    spec::expected_state(&model, VcpuIdentity::new(1), Transition::Init(&after));
            }
            let again = serde_json::to_vec(&state).expect("a parsed state serialises");
            let back = crate::files::parse_state_json(&again).expect("a serialised state parses");
            assert_eq!(back, state, "the JSON round trip keeps the state");
            1
        }
        Err(e) => kind_of_message(&e.to_string()),
    }
}

/// A xorshift64* generator: small, fast, reproducible from its seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced by a fixed odd constant).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

const TOKENS: &[&[u8]] = &[
    b"#VR1 ",
    b"#VR2 ",
    b"#VR1 begin probe\n",
    b"#VR1 begin probe-cf9-hard\n",
    b"#VR1 begin probe-kbc\n",
    b"#VR1 end 0000 0000\n",
    b"#VR2 end 0000 00000000\n",
    b"begin ",
    b"end ",
    b"!gp",
    b"!ud",
    b"!na",
    b"!zz",
    b"\r\n",
    b"\n",
    b" ",
    b"ffffffffffffffff",
    b"00000000",
    b"fxsave ",
    b"msr.0x",
    b"cr0 ",
    b"rdx ",
    b"lapic.",
    b"\"gprs\":",
    b"null",
    b"-1",
    b"18446744073709551616",
    b"1e999",
    b"[[[[[[[[[[[[[[[[",
    b"{\"a\":",
];

fn line_spans(data: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    for (i, &b) in data.iter().enumerate() {
        if b == b'\n' {
            spans.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < data.len() {
        spans.push((start, data.len()));
    }
    spans
}

/// One byte-level mutation of `data` in place; `other` is another corpus input for splices.
pub fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8], max_len: usize) {
    const HEX: &[u8] = b"0123456789abcdef";
    match rng.below(13) {
        0 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] ^= 1 << rng.below(8);
        }
        1 if !data.is_empty() => {
            let i = rng.below(data.len());
            const SPECIAL: &[u8] = b"\0\xff\n\r #!0f9a.-_{}[]\":,";
            data[i] = if rng.one_in(3) {
                rng.next_u64() as u8
            } else {
                SPECIAL[rng.below(SPECIAL.len())]
            };
        }
        2 if !data.is_empty() => {
            let i = rng.below(data.len());
            let n = 1 + rng.below(64.min(data.len() - i));
            data.drain(i..i + n);
        }
        3 => {
            let i = rng.below(data.len() + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(i..i, bytes);
        }
        4 if !data.is_empty() => {
            let i = rng.below(data.len());
            let n = 1 + rng.below(256.min(data.len() - i));
            let chunk = data[i..i + n].to_vec();
            let at = rng.below(data.len() + 1);
            data.splice(at..at, chunk);
        }
        5 if !other.is_empty() => {
            let cut = rng.below(data.len() + 1);
            let from = rng.below(other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        6 => {
            let lines = line_spans(data);
            if lines.len() >= 2 {
                let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
                let (a, b) = (a.min(b), a.max(b));
                if a != b {
                    let (la, lb) = (lines[a], lines[b]);
                    let mut out = data[..la.0].to_vec();
                    out.extend_from_slice(&data[lb.0..lb.1]);
                    out.extend_from_slice(&data[la.1..lb.0]);
                    out.extend_from_slice(&data[la.0..la.1]);
                    out.extend_from_slice(&data[lb.1..]);
                    *data = out;
                }
            }
        }
        7 => {
            let lines = line_spans(data);
            if !lines.is_empty() {
                let (s, e) = lines[rng.below(lines.len())];
                if rng.one_in(2) {
                    data.drain(s..e);
                } else {
                    let most = if rng.one_in(50) { 2000 } else { 3 };
                    let times = 1 + rng.below(most);
                    // One splice of every copy, no more than the target takes.
                    let room = max_len.saturating_sub(data.len());
                    let copies: Vec<u8> = data[s..e]
                        .iter()
                        .copied()
                        .cycle()
                        .take((e - s).saturating_mul(times).min(room))
                        .collect();
                    data.splice(e..e, copies);
                }
            }
        }
        8 => {
            let token = TOKENS[rng.below(TOKENS.len())];
            let i = rng.below(data.len() + 1);
            data.splice(i..i, token.iter().copied());
        }
        9 if !data.is_empty() => {
            // Change a hex digit into another: keeps the line well-formed.
            let i = rng.below(data.len());
            if let Some(j) = data[i..].iter().position(|b| HEX.contains(b)) {
                data[i + j] = HEX[rng.below(16)];
            }
        }
        10 => {
            // A long run of one character: long lines, long numbers, deep nesting.
            let i = rng.below(data.len() + 1);
            let n = if rng.one_in(20) {
                rng.below(200_000)
            } else {
                rng.below(2000)
            };
            let b = [b'f', b'0', b'[', b' ', b'x', b'#'][rng.below(6)];
            data.splice(i..i, std::iter::repeat_n(b, n));
        }
        11 if !data.is_empty() => data.truncate(rng.below(data.len())),
        _ => {
            if !data.is_empty() {
                let i = rng.below(data.len());
                data[i] = data[i].wrapping_add(1 + rng.below(3) as u8);
            }
        }
    }
    data.truncate(max_len);
}

/// A structure-aware mutation of a probe log: parse it, change its runs' records, frame it
/// again (so the integrity check passes). `None` when `data` holds no valid run.
pub fn mutate_probe_log(rng: &mut Rng, data: &[u8]) -> Option<Vec<u8>> {
    let mut runs: Vec<(String, Vec<(String, Value)>)> = crate::probe::parse(data)
        .ok()?
        .into_iter()
        .map(|r| (r.tag, r.records))
        .collect();
    if runs.is_empty() {
        return None;
    }
    for _ in 0..1 + rng.below(4) {
        let r = rng.below(runs.len());
        let n = runs[r].1.len();
        match rng.below(10) {
            0..=2 if n > 0 => {
                let i = rng.below(n);
                let v = &mut runs[r].1[i].1;
                *v = match rng.below(6) {
                    0 => Value::NotAvailable,
                    1 => Value::Fault(
                        [
                            record::Fault::Gp,
                            record::Fault::Ud,
                            record::Fault::Nm,
                            record::Fault::Other("zz".into()),
                        ][rng.below(4)]
                        .clone(),
                    ),
                    2 => {
                        let width = [1, 2, 4, 8, 16, 32, 33, 64, 1024][rng.below(9)];
                        Value::Hex(
                            (0..width)
                                .map(|_| b"0123456789abcdef"[rng.below(16)] as char)
                                .collect(),
                        )
                    }
                    _ => match v {
                        Value::Hex(d) if !d.is_empty() => {
                            let mut d = d.clone().into_bytes();
                            let j = rng.below(d.len());
                            d[j] = b"0123456789abcdef"[rng.below(16)];
                            Value::Hex(String::from_utf8_lossy(&d).into_owned())
                        }
                        _ => Value::Hex("0".repeat(8)),
                    },
                };
            }
            3 if n > 0 => {
                runs[r].1.remove(rng.below(n));
            }
            4 if n > 1 => {
                let (a, b) = (rng.below(n), rng.below(n));
                runs[r].1.swap(a, b);
            }
            5 if n > 1 => {
                // Swap two records' values: a verdict must not silently change unnoticed.
                let (a, b) = (rng.below(n), rng.below(n));
                let va = runs[r].1[a].1.clone();
                runs[r].1[a].1 = runs[r].1[b].1.clone();
                runs[r].1[b].1 = va;
            }
            6 if n > 0 => {
                let i = rng.below(n);
                let dup = runs[r].1[i].clone();
                runs[r].1.push(dup);
            }
            7 => {
                const TAGS: &[&str] = &[
                    "probe",
                    "probe-cf9-hard",
                    "probe-cf9-soft",
                    "probe-port92",
                    "probe-kbc",
                    "x",
                ];
                runs[r].0 = TAGS[rng.below(TAGS.len())].to_string();
            }
            8 => {
                let copy = runs[rng.below(runs.len())].clone();
                runs.insert(rng.below(runs.len() + 1), copy);
            }
            _ if runs.len() > 1 => {
                runs.remove(r);
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (tag, records) in &runs {
        if rng.one_in(8) {
            out.extend_from_slice(b"noise from another writer\n");
        }
        out.extend_from_slice(record::format_run(tag, records).as_bytes());
    }
    Some(out)
}

fn mutate_firmware(rng: &mut Rng, data: &mut Vec<u8>) {
    match rng.below(6) {
        0 => data.resize(4096 * (1 + rng.below(16)), 0),
        1 => data.resize(4096 * (1 + rng.below(16)) + rng.below(3) - 1, 0xff),
        2 if rng.one_in(64) => {
            // Around the 16 MiB limit, rarely (each costs a 16 MiB buffer).
            let max = crate::runner::firmware::MAX_FIRMWARE;
            data.resize([max, max + 1, max + 4096, max - 4096][rng.below(4)], 0);
        }
        _ => {}
    }
}

/// Options of a fuzz run.
#[derive(Clone, Debug)]
pub struct FuzzOptions {
    /// Targets to run, in turn.
    pub targets: Vec<Target>,
    /// Stop after this many executions (over all targets).
    pub max_execs: u64,
    /// Stop after this long.
    pub max_time: Duration,
    /// Seed of the random generator.
    pub seed: u64,
    /// Folder with one sub-folder of seed inputs per target (`probe-log/`, ...); missing is fine.
    pub seed_dir: Option<PathBuf>,
    /// Where crashing inputs are written (`crash-<target>-<n>.bin`); `None`: not saved.
    pub crash_dir: Option<PathBuf>,
    /// Print a progress line this often (`None`: never).
    pub progress: Option<Duration>,
}

impl Default for FuzzOptions {
    fn default() -> Self {
        FuzzOptions {
            targets: Target::ALL.to_vec(),
            max_execs: u64::MAX,
            max_time: Duration::from_secs(60),
            seed: 1,
            seed_dir: None,
            crash_dir: None,
            progress: None,
        }
    }
}

/// Per-target figures of a fuzz run.
#[derive(Clone, Debug, Default)]
pub struct TargetStats {
    /// Executions.
    pub execs: u64,
    /// Panics caught.
    pub crashes: u64,
    /// Inputs in the corpus at the end (seeds and inputs with new outcomes).
    pub corpus: usize,
    /// Slowest execution.
    pub slowest: Duration,
    /// Size of the input of the slowest execution.
    pub slowest_len: usize,
    /// Longest message a report held (probe-log target).
    pub longest_message: usize,
    /// Executions whose input got past the parser to the judge (probe-log target).
    pub judged: u64,
}

/// What a fuzz run did.
#[derive(Clone, Debug, Default)]
pub struct FuzzReport {
    /// Per target, in [`FuzzOptions::targets`] order.
    pub targets: Vec<(Target, TargetStats)>,
    /// Wall time.
    pub elapsed: Duration,
    /// Inputs that crashed, as saved (or described when not saved).
    pub crash_inputs: Vec<String>,
}

impl FuzzReport {
    /// Executions over all targets.
    pub fn execs(&self) -> u64 {
        self.targets.iter().map(|(_, s)| s.execs).sum()
    }

    /// Crashes over all targets.
    pub fn crashes(&self) -> u64 {
        self.targets.iter().map(|(_, s)| s.crashes).sum()
    }

    /// A few lines of text.
    pub fn to_text(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let mut s = format!(
            "fuzz: {} executions in {:.0} s ({:.0}/s), {} crash(es)\n",
            self.execs(),
            secs,
            self.execs() as f64 / secs.max(1e-9),
            self.crashes()
        );
        for (t, st) in &self.targets {
            s.push_str(&format!(
                "  {:<10} {:>12} execs ({} judged), {} crashes, corpus {}, slowest {:.1} ms ({} bytes), longest message {} bytes\n",
                t.name(),
                st.execs,
                st.judged,
                st.crashes,
                st.corpus,
                st.slowest.as_secs_f64() * 1e3,
                st.slowest_len,
                st.longest_message
            ));
        }
        for c in &self.crash_inputs {
            s.push_str(&format!("  crash input: {c}\n"));
        }
        s
    }
}

/// Seed inputs for `target`: the files in `dir/<target>/`, plus built-in ones.
pub fn seeds(target: Target, dir: Option<&Path>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if let Some(dir) = dir
        && let Ok(entries) = std::fs::read_dir(dir.join(target.name()))
    {
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if let Ok(b) = crate::files::read_bounded(&p, 16 << 20, "fuzz seed") {
                out.push(b);
            }
        }
    }
    match target {
        Target::ProbeLog => {
            let model = CpuModel::generic(Vendor::Intel);
            let state = spec::expected_state(&model, VcpuIdentity::new(0), Transition::Reset);
            let records = vec![
                ("rax".to_string(), Value::Hex("00000000".into())),
                (
                    "rdx".to_string(),
                    Value::Hex(format!("{:08x}", state.gprs[2] as u32)),
                ),
                ("cr0".to_string(), Value::Hex("60000010".into())),
                (
                    "msr.ia32_pat".to_string(),
                    Value::Hex("0007040600070406".into()),
                ),
                ("msr.0x10".to_string(), Value::Fault(record::Fault::Gp)),
                ("lapic.id".to_string(), Value::NotAvailable),
            ];
            out.push(record::format_run("probe", &records).into_bytes());
            let mut two = record::format_run("probe-kbc", &records).into_bytes();
            two.extend_from_slice(record::format_run("probe-kbc", &records).as_bytes());
            out.push(two);
        }
        Target::Firmware => {
            out.push(vec![0; 4096]);
            let mut opts = crate::probe::ProbeOptions::reset_vector("probe");
            opts.out_ports = vec![0xe9];
            if let Ok(img) = crate::probe::firmware_image(&opts) {
                out.push(img);
            }
        }
        Target::PeerOutput => {
            out.push(
                b"Bochs noise\r\n#VR2 begin probe-kbc\n#VR2 end 0001 00ff\r\n\x1b]0;title\x07"
                    .to_vec(),
            );
            out.push("\u{202e}evil\n#VR1 end\r#VR2 end 0 0\n".as_bytes().to_vec());
        }
        Target::StateJson => {
            for vendor in [Vendor::Intel, Vendor::Amd] {
                let model = CpuModel::generic(vendor);
                let s = spec::expected_state(&model, VcpuIdentity::new(1), Transition::Reset);
                if let Ok(j) = serde_json::to_vec_pretty(&s) {
                    out.push(j);
                }
            }
        }
    }
    out
}

fn execute(target: Target, input: &[u8], turn: u64, file: &Path) -> (Outcome, usize, bool) {
    match target {
        Target::ProbeLog => {
            let vendor = if turn.is_multiple_of(2) {
                Vendor::Intel
            } else {
                Vendor::Amd
            };
            // Rendering costs more than judging; every 16th execution is enough for it.
            probe_log(
                input,
                vendor,
                turn.is_multiple_of(3),
                turn.is_multiple_of(16),
            )
        }
        Target::Firmware => (
            firmware(input, (turn.is_multiple_of(256)).then_some(file)),
            0,
            false,
        ),
        Target::StateJson => (state_json(input), 0, false),
        Target::PeerOutput => (peer_output(input, turn), 0, false),
    }
}

/// The peer-output target: the log watcher must count the runs of the whole input whatever
/// pieces it is read in, and nothing printed back may hold a control character.
pub fn peer_output(input: &[u8], turn: u64) -> Outcome {
    use crate::check::peers::process::{LogWatch, ended_runs};
    // Lines the watcher has seen whole: up to the last newline.
    let complete = input
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(&input[..0], |i| &input[..=i]);
    let whole = ended_runs(complete);
    let piece = 1 + (turn as usize % 97);
    let mut watch = LogWatch::default();
    let mut runs = 0;
    for chunk in input.chunks(piece) {
        runs = watch.feed(chunk);
    }
    assert_eq!(runs, whole, "runs counted in pieces of {piece}");
    let text = String::from_utf8_lossy(input);
    let escaped = crate::files::escape(&text);
    assert!(
        !escaped.chars().any(char::is_control),
        "escape left a control character"
    );
    assert_eq!(
        crate::files::escape(&escaped),
        escaped,
        "escape is not idempotent"
    );
    let quoted = crate::files::quote(input, crate::files::QUOTE_MAX);
    assert!(
        !quoted.chars().any(char::is_control),
        "quote left a control character"
    );
    let shown = crate::files::shown_path(Path::new(&*text));
    assert!(
        !shown.chars().any(char::is_control),
        "a path printed a control character"
    );
    hash_of((
        whole.min(4),
        escaped.len() == text.len(),
        input.len() > 4096,
    ))
}

/// A target's corpus, outcomes seen and figures during a run.
type TargetState = (Target, Vec<Vec<u8>>, HashSet<Outcome>, TargetStats);

/// Run the fuzzer. Panics in targets are caught and counted; the default panic hook still
/// prints each one.
pub fn fuzz(options: &FuzzOptions) -> FuzzReport {
    const MAX_CORPUS: usize = 4096;
    let start = Instant::now();
    let mut rng = Rng::new(options.seed);
    // The firmware target's file round trip writes here: a private temp dir, removed at the end.
    let scratch_dir = crate::tempdir::TempDir::new("fuzz").ok();
    let scratch = scratch_dir.as_ref().map_or_else(
        || std::path::PathBuf::from("/nonexistent/vcpu-reset-fuzz.bin"),
        |d| d.path().join("firmware.bin"),
    );
    let mut report = FuzzReport::default();
    let mut states: Vec<TargetState> = options
        .targets
        .iter()
        .map(|&t| {
            let mut corpus = seeds(t, options.seed_dir.as_deref());
            if corpus.is_empty() {
                corpus.push(Vec::new());
            }
            (t, corpus, HashSet::new(), TargetStats::default())
        })
        .collect();
    let mut last_progress = Instant::now();
    let mut execs: u64 = 0;
    'outer: while !states.is_empty() {
        for (target, corpus, seen, stats) in &mut states {
            if execs >= options.max_execs || start.elapsed() >= options.max_time {
                break 'outer;
            }
            let base = &corpus[rng.below(corpus.len())];
            let mut input = if *target == Target::ProbeLog && rng.one_in(2) {
                mutate_probe_log(&mut rng, base).unwrap_or_else(|| base.clone())
            } else {
                base.clone()
            };
            let other = corpus[rng.below(corpus.len())].clone();
            for _ in 0..1 + rng.below(4) {
                if *target == Target::ProbeLog && rng.one_in(3) {
                    break; // keep some re-framed logs intact so they reach the judge
                }
                mutate_bytes(&mut rng, &mut input, &other, target.max_len());
            }
            if *target == Target::Firmware {
                mutate_firmware(&mut rng, &mut input);
            }
            let t0 = Instant::now();
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                execute(*target, &input, stats.execs, &scratch)
            }));
            let took = t0.elapsed();
            stats.execs += 1;
            execs += 1;
            if took > stats.slowest {
                stats.slowest = took;
                stats.slowest_len = input.len();
            }
            match result {
                Ok((outcome, longest, judged)) => {
                    stats.longest_message = stats.longest_message.max(longest);
                    stats.judged += u64::from(judged);
                    if seen.insert(outcome) && corpus.len() < MAX_CORPUS && input.len() < (4 << 20)
                    {
                        corpus.push(input);
                    }
                }
                Err(_) => {
                    stats.crashes += 1;
                    let name = format!("crash-{}-{}.bin", target.name(), stats.crashes);
                    let saved = options.crash_dir.as_ref().and_then(|d| {
                        let p = d.join(&name);
                        std::fs::create_dir_all(d).ok()?;
                        std::fs::write(&p, &input).ok()?;
                        Some(p.display().to_string())
                    });
                    report.crash_inputs.push(
                        saved.unwrap_or_else(|| {
                            format!("{name} ({} bytes, not saved)", input.len())
                        }),
                    );
                }
            }
        }
        if let Some(every) = options.progress
            && last_progress.elapsed() >= every
        {
            last_progress = Instant::now();
            let crashes: u64 = states.iter().map(|s| s.3.crashes).sum();
            eprintln!(
                "fuzz: {execs} executions, {crashes} crash(es), {:.0} s",
                start.elapsed().as_secs_f64()
            );
        }
    }
    drop(scratch_dir);
    report.elapsed = start.elapsed();
    report.targets = states
        .into_iter()
        .map(|(t, corpus, _, mut st)| {
            st.corpus = corpus.len();
            (t, st)
        })
        .collect();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_reproducible() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert_eq!(
            (0..4).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..4).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn reframed_logs_still_parse() {
        let log = &seeds(Target::ProbeLog, None)[0];
        let mut rng = Rng::new(3);
        let mut parsed = 0;
        for _ in 0..50 {
            let out = mutate_probe_log(&mut rng, log).unwrap();
            if crate::probe::parse(&out).is_ok() {
                parsed += 1;
            }
        }
        assert!(parsed > 25, "{parsed} of 50 re-framed logs parse");
    }
}
