//! The fault soak's RSS trend (`benches/soak_parts/trend.rs`), its choice
//! of faults (`benches/soak_parts/faults.rs`) and the ranges of its read-back
//! (`benches/soak_parts/ranges.rs`), tested with the suite.

#[path = "../benches/soak_parts/faults.rs"]
mod faults;
#[path = "../benches/soak_parts/ranges.rs"]
mod ranges;

#[path = "../benches/soak_parts/trend.rs"]
#[allow(dead_code)]
mod trend;

use trend::*;

/// `minutes` of one sample a second: `base` MB growing by `per_hour` % an hour, plus `wiggle`.
fn samples(
    minutes: usize,
    base: f64,
    per_hour: f64,
    mut wiggle: impl FnMut(usize) -> f64,
) -> Vec<(f64, f64)> {
    (0..minutes * 60)
        .map(|s| (s as f64, base * (1.0 + per_hour / 100.0 * s as f64 / 3600.0) + wiggle(s)))
        .collect()
}

#[test]
fn a_steady_growth_is_measured_with_an_interval_around_it() {
    let trend =
        theil_sen(&block_medians(&samples(40, 30.0, 5.0, |s| 0.05 * ((s % 7) as f64 - 3.0)))).unwrap();
    assert!((trend.slope - 5.0).abs() < 0.3, "{trend:?}");
    assert!(trend.low <= trend.slope && trend.slope <= trend.high, "{trend:?}");
    assert_eq!(trend.points, 80);
    assert_eq!(verdict(Some(trend)), Verdict::Over);
}

#[test]
fn a_flat_series_with_fault_bumps_is_under_the_limit() {
    // A 3 MB bump for 5 s every minute (a fault), on a flat 30 MB.
    let bumps = |s: usize| if s % 60 < 5 { 3.0 } else { 0.0 };
    let points = samples(40, 30.0, 0.0, bumps);
    let trend = theil_sen(&block_medians(&points)).unwrap();
    assert!(trend.slope.abs() < 0.05 && trend.high < MAX_SLOPE, "{trend:?}");
    assert_eq!(verdict(Some(trend)), Verdict::Under);
    // The same bumps near the end tilt a least-squares fit of the raw samples more than the median's.
    let mut late = points.clone();
    for point in late.iter_mut().rev().take(20) {
        point.1 += 3.0;
    }
    let robust = theil_sen(&block_medians(&late)).unwrap().slope;
    assert!(
        robust.abs() < slope_percent_per_hour(&late).abs(),
        "{robust} vs {}",
        slope_percent_per_hour(&late)
    );
}

#[test]
fn a_short_noisy_run_cannot_pass() {
    // Five minutes of uniform ±1 MB noise on 30 MB cannot resolve 1 %/h (5 kB in 10 minutes).
    let mut state = 12345u64;
    let noise = move |_: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) % 2001) as f64 / 1000.0 - 1.0
    };
    let trend = theil_sen(&block_medians(&samples(5, 30.0, 0.0, noise))).expect("ten blocks");
    assert!(trend.high - trend.low > 2.0 * MAX_SLOPE, "a wide interval: {trend:?}");
    assert_ne!(verdict(Some(trend)), Verdict::Under, "{trend:?}");
}

#[test]
fn an_interval_that_reaches_the_limit_is_unresolved() {
    let trend = |slope, low, high| Some(Trend { slope, low, high, points: 40 });
    assert_eq!(verdict(trend(0.5, -3.0, 4.0)), Verdict::Unresolved);
    assert_eq!(verdict(trend(0.5, 0.1, 0.9)), Verdict::Under);
    assert_eq!(verdict(trend(-2.0, -3.0, 0.5)), Verdict::Under, "shrinking passes");
    assert_eq!(verdict(trend(1.5, 0.2, 1.8)), Verdict::Unresolved, "over, but not surely");
    assert_eq!(verdict(trend(3.0, 1.2, 4.8)), Verdict::Over);
    assert_eq!(theil_sen(&[(0.0, 1.0), (1.0, 1.0)]), None, "too few points");
    assert_eq!(verdict(None), Verdict::Unresolved);
}

#[test]
fn blocks_with_too_few_samples_are_left_out() {
    let points: Vec<(f64, f64)> = (0..74).map(|s| (s as f64, s as f64)).collect();
    let blocks = block_medians(&points);
    assert_eq!(blocks, vec![(15.0, 15.0), (45.0, 45.0)], "the last block has 14 samples of 30");
}

#[test]
fn the_faults_are_all_three_unless_named_and_a_wrong_name_is_an_error_that_names_it() {
    use faults::{Fault, faults_from};
    assert_eq!(faults_from(None), Ok(vec![Fault::Mongo, Fault::Broker, Fault::Sse]));
    assert_eq!(faults_from(Some("broker, sse")), Ok(vec![Fault::Broker, Fault::Sse]));
    assert_eq!(faults_from(Some("sse,mongo,")), Ok(vec![Fault::Sse, Fault::Mongo]));
    let error = faults_from(Some("broker,disk")).unwrap_err();
    assert!(error.contains("'disk'") && error.contains("STAGEFLOW_SOAK_FAULTS"), "{error}");
    assert!(faults_from(Some(" , ")).is_err());
}

#[test]
fn the_read_back_ranges_cover_every_string_and_cut_at_every_chunk_th_expected_id() {
    use ranges::id_ranges;
    let expected: std::collections::BTreeSet<String> = (10..20).map(|n| n.to_string()).collect();
    let ranges = id_ranges(&expected, 4);
    let cut = |s: &str| Some(s.to_string());
    assert_eq!(ranges, vec![(None, cut("14")), (cut("14"), cut("18")), (cut("18"), None)]);
    // Every string falls in exactly one range, expected or not.
    for id in ["", "0", "10", "13", "14", "17z", "18", "19", "99", "\u{10ffff}"] {
        let holding = ranges
            .iter()
            .filter(|(low, high)| {
                low.as_deref().is_none_or(|low| id >= low) && high.as_deref().is_none_or(|high| id < high)
            })
            .count();
        assert_eq!(holding, 1, "{id:?}");
    }
    assert_eq!(id_ranges(&expected, 100), vec![(None, None)]);
    assert_eq!(id_ranges(&std::collections::BTreeSet::new(), 4), vec![(None, None)]);
}
