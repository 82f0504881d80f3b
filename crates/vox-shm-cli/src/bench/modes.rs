//! Finding the two modes of a bimodal latency distribution: on a VM the
//! same round trip can take either of two times (a fast and a slow state of
//! the machine), and a p50 alone then hides one of them.

use serde::{Deserialize, Serialize};

/// One mode of a latency distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Mode {
    /// The median latency of the samples in this mode (ns).
    pub ns: u64,
    /// The fraction of all samples in this mode.
    pub share: f64,
}

/// Histogram bins per doubling of latency (each about 9% wide).
const BINS_PER_OCTAVE: f64 = 8.0;
/// A second mode must hold at least this fraction of the samples, so a
/// tail of outliers (a p99) is not called a mode.
const MIN_SHARE: f64 = 0.05;
/// And the histogram between the two peaks must fall below this fraction of
/// the smaller peak.
const MAX_VALLEY: f64 = 0.5;
/// Fewer samples than this are too few to tell.
const MIN_SAMPLES: usize = 100;

fn bin(ns: u64) -> usize {
    ((ns.max(1) as f64).log2() * BINS_PER_OCTAVE) as usize
}

/// The two modes of `sorted` (latencies in ns, ascending), fastest first,
/// if it has two; empty if it has one (or too few samples to tell).
///
/// The samples are binned on a log scale and smoothed; the second mode is
/// the peak, other than the highest, that holds the most samples on its side
/// of the deepest point between the two, provided that point falls below
/// half the smaller peak and the side holds at least 5% of the samples.
pub fn modes(sorted: &[u64]) -> Vec<Mode> {
    let n = sorted.len();
    if n < MIN_SAMPLES {
        return Vec::new();
    }
    let first = bin(sorted[0]);
    let mut counts = vec![0f64; bin(sorted[n - 1]) - first + 1];
    for &x in sorted {
        counts[bin(x) - first] += 1.0;
    }
    let at = |i: isize| if i < 0 { 0.0 } else { counts.get(i as usize).copied().unwrap_or(0.0) };
    let smooth: Vec<f64> = (0..counts.len() as isize).map(|i| (at(i - 1) + 2.0 * at(i) + at(i + 1)) / 4.0).collect();
    let top = (0..smooth.len()).max_by(|&a, &b| smooth[a].total_cmp(&smooth[b])).expect("one bin at least");
    // Samples with a bin below each index, to weigh each side of a valley.
    let below: Vec<f64> = std::iter::once(0.0)
        .chain(counts.iter().scan(0.0, |sum, c| {
            *sum += c;
            Some(*sum)
        }))
        .collect();
    let mut best: Option<(f64, usize)> = None; // (share, valley bin)
    for peak in 0..smooth.len() {
        let left = if peak == 0 { 0.0 } else { smooth[peak - 1] };
        let right = smooth.get(peak + 1).copied().unwrap_or(0.0);
        if peak == top || smooth[peak] == 0.0 || smooth[peak] < left || smooth[peak] < right {
            continue;
        }
        let (lo, hi) = (peak.min(top), peak.max(top));
        let Some(valley) = (lo + 1..hi).min_by(|&a, &b| smooth[a].total_cmp(&smooth[b])) else {
            continue;
        };
        if smooth[valley] >= MAX_VALLEY * smooth[peak].min(smooth[top]) {
            continue;
        }
        // The valley's own bin goes with the upper mode.
        let side = if peak < top { below[valley] } else { n as f64 - below[valley] };
        let share = side / n as f64;
        if share >= MIN_SHARE && best.is_none_or(|(s, _)| share > s) {
            best = Some((share, valley));
        }
    }
    let Some((_, valley)) = best else {
        return Vec::new();
    };
    let split = sorted.partition_point(|&x| bin(x) < first + valley);
    [&sorted[..split], &sorted[split..]]
        .iter()
        .map(|part| Mode { ns: part[part.len() / 2], share: part.len() as f64 / n as f64 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` samples spread evenly over ±4% around `center`.
    fn around(center: u64, count: u64) -> impl Iterator<Item = u64> {
        (0..count).map(move |i| center - center / 25 + (2 * center / 25) * i / count)
    }

    fn sorted(parts: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let mut v: Vec<u64> = parts.into_iter().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn a_fast_and_a_slow_state_are_two_modes() {
        let v = sorted(around(41_000, 700).chain(around(83_000, 300)));
        let m = modes(&v);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!((40_000..42_000).contains(&m[0].ns) && (81_000..85_000).contains(&m[1].ns), "{m:?}");
        assert!((m[0].share - 0.7).abs() < 0.01 && (m[1].share - 0.3).abs() < 0.01, "{m:?}");
        // Whichever state holds more of the samples.
        let v = sorted(around(41_000, 200).chain(around(83_000, 800)));
        let m = modes(&v);
        assert!(m.len() == 2 && (m[0].share - 0.2).abs() < 0.01, "{m:?}");
    }

    #[test]
    fn a_tail_of_outliers_is_not_a_mode() {
        // 2% of the samples far out, as a p99 would be.
        let v = sorted(around(41_000, 980).chain((0..20).map(|i| 100_000 + 20_000 * i)));
        assert!(modes(&v).is_empty(), "{:?}", modes(&v));
    }

    #[test]
    fn one_broad_peak_is_one_mode() {
        // Spread over a factor of two with no gap: one state, however wide.
        let v = sorted((0..1000).map(|i| 40_000 + 40 * i));
        assert!(modes(&v).is_empty(), "{:?}", modes(&v));
        assert!(modes(&[5; 10]).is_empty(), "too few to tell");
        assert!(modes(&sorted(std::iter::repeat_n(700, 500))).is_empty(), "all equal");
    }
}
