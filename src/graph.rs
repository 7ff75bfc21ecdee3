//! Graph checks shared by the pipeline builder and the pipeline file loader.

/// The first cycle among stages, as the ids along the data flow, closing on the first.
///
/// `upstreams(i)` lists the indices stage `i` subscribes to.
pub(crate) fn find_cycle(ids: &[String], upstreams: &dyn Fn(usize) -> Vec<usize>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Closed,
    }
    fn visit(
        node: usize,
        ids: &[String],
        upstreams: &dyn Fn(usize) -> Vec<usize>,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        marks[node] = Mark::Open;
        path.push(node);
        for next in upstreams(node) {
            if marks[next] == Mark::Open {
                let start = path.iter().position(|&n| n == next).unwrap_or(0);
                // Each stage on the path subscribes to the next one, so data flows backwards along it.
                let mut cycle: Vec<String> = path[start..].iter().rev().map(|&n| ids[n].clone()).collect();
                cycle.push(cycle[0].clone());
                return Some(cycle);
            }
            if marks[next] == Mark::New
                && let Some(cycle) = visit(next, ids, upstreams, marks, path)
            {
                return Some(cycle);
            }
        }
        path.pop();
        marks[node] = Mark::Closed;
        None
    }
    let mut marks = vec![Mark::New; ids.len()];
    for node in 0..ids.len() {
        if marks[node] == Mark::New
            && let Some(cycle) = visit(node, ids, upstreams, &mut marks, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

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
    fn finds_the_cycle_in_flow_order() {
        let ids: Vec<String> = ["source", "a", "b"].iter().map(|s| s.to_string()).collect();
        // a subscribes to source and b; b subscribes to a.
        let upstreams = |i: usize| match i {
            1 => vec![0, 2],
            2 => vec![1],
            _ => vec![],
        };
        assert_eq!(find_cycle(&ids, &upstreams).unwrap(), vec!["b", "a", "b"]);
        assert_eq!(find_cycle(&ids, &|i| if i == 1 { vec![0] } else { vec![] }), None);
    }

    #[test]
    fn suggests_only_close_names() {
        assert_eq!(closest("sleep_mx", ["sleep_max", "batch_size"]), Some("sleep_max"));
        assert_eq!(closest("zzz", ["sleep_max", "batch_size"]), None);
    }
}
