//! The trend of a process's RSS in the fault soak: one median per block of
//! samples, a Theil–Sen slope over them with its 95 % interval, and what
//! that says of the criterion (under 1 % per hour).
//!
//! Shared by `benches/soak.rs` and its tests (`tests/soak_trend.rs`, which include this file).

use std::collections::BTreeMap;

/// Least-squares slope of `points` (x in seconds), as % of their mean per hour.
pub fn slope_percent_per_hour(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 3.0 {
        return 0.0;
    }
    let (mean_x, mean_y) = points.iter().fold((0.0, 0.0), |(sx, sy), &(x, y)| (sx + x / n, sy + y / n));
    let (mut covariance, mut variance) = (0.0, 0.0);
    for &(x, y) in points {
        covariance += (x - mean_x) * (y - mean_y);
        variance += (x - mean_x) * (x - mean_x);
    }
    if variance == 0.0 || mean_y == 0.0 { 0.0 } else { covariance / variance * 3600.0 / mean_y * 100.0 }
}

/// Seconds per block whose median RSS stands for the block in the trend fit.
pub const BLOCK_S: f64 = 30.0;

/// The median of each `BLOCK_S` block of `points` (x in seconds), at the block's middle.
///
/// Samples a second apart are not independent (the allocator holds what it
/// got for a while, a fault leaves a bump for seconds): one median per block
/// keeps a spike from counting as many points and makes the fit's interval honest.
pub fn block_medians(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut blocks: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for &(x, y) in points {
        blocks.entry((x / BLOCK_S).floor() as i64).or_default().push(y);
    }
    blocks
        .into_iter()
        .filter(|(_, ys)| ys.len() as f64 >= BLOCK_S / 2.0)
        .map(|(block, mut ys)| {
            ys.sort_by(f64::total_cmp);
            ((block as f64 + 0.5) * BLOCK_S, ys[ys.len() / 2])
        })
        .collect()
}

/// A trend of RSS: the Theil–Sen slope (the median of the slopes between
/// every two points, robust to the bumps faults leave) with its 95 %
/// interval (Sen 1968), all as % of the median RSS per hour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trend {
    /// The slope.
    pub slope: f64,
    /// The low end of its 95 % interval.
    pub low: f64,
    /// The high end.
    pub high: f64,
    /// Points fitted.
    pub points: usize,
}

pub fn theil_sen(points: &[(f64, f64)]) -> Option<Trend> {
    let n = points.len();
    if n < 4 {
        return None;
    }
    let mut slopes = Vec::with_capacity(n * (n - 1) / 2);
    for (i, &(x1, y1)) in points.iter().enumerate() {
        for &(x2, y2) in &points[i + 1..] {
            if x2 != x1 {
                slopes.push((y2 - y1) / (x2 - x1));
            }
        }
    }
    if slopes.is_empty() {
        return None;
    }
    slopes.sort_by(f64::total_cmp);
    let mut ys: Vec<f64> = points.iter().map(|&(_, y)| y).collect();
    ys.sort_by(f64::total_cmp);
    let level = ys[n / 2];
    if level <= 0.0 {
        return None;
    }
    let per_hour = |slope: f64| slope * 3600.0 / level * 100.0;
    let count = slopes.len();
    let median =
        if count % 2 == 1 { slopes[count / 2] } else { (slopes[count / 2 - 1] + slopes[count / 2]) / 2.0 };
    // Sen's interval: ranks (N ∓ z·σ)/2 of the sorted slopes, σ² = n(n-1)(2n+5)/18 (no ties).
    let nf = n as f64;
    let c = 1.96 * (nf * (nf - 1.0) * (2.0 * nf + 5.0) / 18.0).sqrt();
    let lower = (((count as f64 - c) / 2.0).floor().max(0.0) as usize).min(count - 1);
    let upper = (((count as f64 + c) / 2.0).ceil() as usize).min(count - 1);
    Some(Trend {
        slope: per_hour(median),
        low: per_hour(slopes[lower]),
        high: per_hour(slopes[upper]),
        points: n,
    })
}

/// The RSS criterion: under 1 % per hour after warm-up.
pub const MAX_SLOPE: f64 = 1.0;

/// What a trend says of the criterion. Only `Under` passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The whole 95 % interval is under the limit: the slope is under it.
    Under,
    /// The whole interval is at or over the limit: the RSS grows at least that fast.
    Over,
    /// The interval holds the limit: the run was too short or too noisy to tell.
    Unresolved,
}

/// The verdict of `trend` (`None`, too few points, cannot tell).
pub fn verdict(trend: Option<Trend>) -> Verdict {
    match trend {
        None => Verdict::Unresolved,
        Some(trend) if trend.high < MAX_SLOPE => Verdict::Under,
        Some(trend) if trend.low >= MAX_SLOPE => Verdict::Over,
        Some(_) => Verdict::Unresolved,
    }
}
