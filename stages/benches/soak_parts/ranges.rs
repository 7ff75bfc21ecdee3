//! The soak's read-back of stored ids, range by range.

use std::collections::BTreeSet;

/// Cuts the string space at every `chunk`-th expected id: the ranges
/// `[None, b1)`, `[b1, b2)` … `[bn, None)` together hold every string, so an
/// unexpected id is read too, in whichever range it falls.
pub fn id_ranges(expected: &BTreeSet<String>, chunk: usize) -> Vec<(Option<String>, Option<String>)> {
    let cuts: Vec<&String> = expected.iter().skip(chunk).step_by(chunk.max(1)).collect();
    let mut ranges = Vec::with_capacity(cuts.len() + 1);
    let mut low: Option<String> = None;
    for cut in cuts {
        ranges.push((low.take(), Some(cut.clone())));
        low = Some(cut.clone());
    }
    ranges.push((low, None));
    ranges
}
