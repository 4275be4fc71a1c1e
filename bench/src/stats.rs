//! Percentiles and medians.

use serde::Serialize;

/// Raw latency samples of one run: nanoseconds, times `scale` for one-way times (0.5 for
/// round trips).
pub struct Samples {
    pub ns: Vec<u64>,
    pub scale: f64,
}

/// Latency percentiles, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub samples: usize,
}

impl Percentiles {
    /// From raw samples; `scale` converts each (0.5 to halve round trips into one-way times).
    pub fn of(samples: &[u64], scale: f64) -> Option<Percentiles> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let at = |q: f64| {
            let index = ((sorted.len() - 1) as f64 * q).round() as usize;
            sorted[index] as f64 * scale
        };
        Some(Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            samples: sorted.len(),
        })
    }
}

/// Median of a few repeated measurements (the middle one; the lower middle of an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(sorted[(sorted.len() - 1) / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_ranks() {
        let samples: Vec<u64> = (1..=1000).collect();
        let p = Percentiles::of(&samples, 1.0).expect("samples");
        assert_eq!(p.p50, 501.0);
        assert_eq!(p.p99, 990.0);
        assert_eq!(p.p999, 999.0);
        let half = Percentiles::of(&[10, 20, 30], 0.5).expect("samples");
        assert_eq!(half.p50, 10.0);
        assert!(Percentiles::of(&[], 1.0).is_none());
    }

    #[test]
    fn median_of_repeats() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(1.0));
        assert_eq!(median(&[]), None);
    }
}
