//! Did-you-mean: the near miss a typo in a pipeline file most likely meant.

/// The candidate closest to `word` if it is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::damerau_levenshtein(word, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= 2.max(candidate.len() / 3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_only_close_names() {
        assert_eq!(closest("sleep_mx", ["sleep_max", "batch_size"]), Some("sleep_max"));
        assert_eq!(closest("zzz", ["sleep_max", "batch_size"]), None);
    }
}
