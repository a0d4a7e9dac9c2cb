//! Argument values shared by several subcommands: the vendor, and time limits.

use clap::ValueEnum;
use vcpu_reset::spec::Vendor;
use vcpu_reset_selftest::files::{QUOTE_MAX, quote};

#[derive(Clone, Copy, ValueEnum)]
pub enum VendorArg {
    Intel,
    Amd,
}

impl From<VendorArg> for Vendor {
    fn from(v: VendorArg) -> Vendor {
        match v {
            VendorArg::Intel => Vendor::Intel,
            VendorArg::Amd => Vendor::Amd,
        }
    }
}

/// At most [`QUOTE_MAX`] bytes of a bad value, for messages.
pub fn shown(s: &str) -> String {
    format!("{:?}", quote(s.as_bytes(), QUOTE_MAX))
}

/// Longest --timeout accepted: a year, far beyond any guest run and far from the clock's limit.
const MAX_TIMEOUT_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// Seconds, more than 0 and at most a year; refused with a clear message otherwise (NaN,
/// infinite, negative, 1e300) instead of panicking in a Duration conversion.
pub fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{} is not a number of seconds", shown(s)))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= MAX_TIMEOUT_SECS) {
        return Err(format!(
            "{} seconds is out of range — give more than 0 and at most {MAX_TIMEOUT_SECS} (a year)",
            shown(s)
        ));
    }
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| format!("{}: {e}", shown(s)))
}
