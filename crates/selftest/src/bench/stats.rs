//! The arithmetic and layout of bench reports: medians and spreads of repeated measurements,
//! per-repetition ratios, and aligned text tables. Nothing here touches KVM.

/// Median, minimum and maximum of a set of repeated measurements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest sample.
    pub min: f64,
    /// The largest sample.
    pub max: f64,
    /// How many samples.
    pub count: usize,
}

impl Summary {
    /// Summarise `samples`; `None` when there are none or any is not a finite number.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            count: n,
        })
    }

    /// The spread as a fraction of the median: (max − min) / median (0 for a zero median).
    pub fn relative_spread(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.max - self.min) / self.median
        }
    }

    /// `median [min–max]` with `decimals` digits after the point; just the median for a
    /// single sample.
    pub fn display(&self, decimals: usize) -> String {
        if self.count <= 1 {
            format!("{:.decimals$}", self.median)
        } else {
            format!(
                "{:.decimals$} [{:.decimals$}–{:.decimals$}]",
                self.median, self.min, self.max
            )
        }
    }
}

/// Element-wise `num[i] / den[i]`, for ratios taken within one repetition (so slow drift of
/// the machine affects numerator and denominator alike). Stops at the shorter slice.
pub fn ratios(num: &[f64], den: &[f64]) -> Vec<f64> {
    num.iter().zip(den).map(|(n, d)| n / d).collect()
}

/// A text table: a header row, a rule, and the rows, each column padded to its widest cell
/// (counted in characters, so `µ` and `–` take one column). Columns are separated by two
/// spaces; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.take(cols).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(cell);
            if i + 1 < cols {
                let pad = width[i].saturating_sub(cell.chars().count());
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(&mut header.iter().copied());
    let total: usize = width.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
    out.extend(std::iter::repeat_n('-', total));
    out.push('\n');
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).expect("samples");
        assert_eq!((s.median, s.min, s.max, s.count), (2.0, 1.0, 3.0, 3));
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).expect("samples");
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        let s = Summary::of(&[7.5]).expect("one sample");
        assert_eq!((s.median, s.min, s.max), (7.5, 7.5, 7.5));
    }

    #[test]
    fn nothing_or_nonsense_has_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
        assert_eq!(Summary::of(&[f64::INFINITY]), None);
    }

    #[test]
    fn spread_and_display() {
        let s = Summary::of(&[7.7, 7.6, 8.0]).expect("samples");
        assert!((s.relative_spread() - 0.4 / 7.7).abs() < 1e-12);
        assert_eq!(s.display(2), "7.70 [7.60–8.00]");
        assert_eq!(
            Summary::of(&[1.23456]).expect("one").display(3),
            "1.235",
            "one sample has no spread to show"
        );
        let zero = Summary::of(&[0.0, 0.0]).expect("zeros");
        assert_eq!(zero.relative_spread(), 0.0);
    }

    #[test]
    fn ratios_pair_up_repetitions() {
        assert_eq!(ratios(&[2.0, 9.0, 5.0], &[1.0, 3.0]), vec![2.0, 3.0]);
    }

    #[test]
    fn tables_align_by_characters() {
        let t = table(
            &["path", "µs", "x"],
            &[
                vec!["a".into(), "7.70 [7.60–8.00]".into(), "1".into()],
                vec!["longer".into(), "1".into(), "".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], "path    µs                x");
        assert_eq!(lines[1], "-".repeat(6 + 2 + 16 + 2 + 1));
        assert_eq!(lines[2], "a       7.70 [7.60–8.00]  1");
        assert_eq!(lines[3], "longer  1", "trailing padding is trimmed");
    }
}
