//! The conformance selftest: scenarios, verdicts and reports.

pub mod report;
pub mod verdict;

pub use report::{FieldResult, Report, ScenarioInfo, Summary, View};
pub use verdict::{Judge, Observed, Owner, Verdict, judge};
