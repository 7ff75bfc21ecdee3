//! Cutting a pipeline file into parts: which edges cross between parts and
//! what a process running some of the parts builds. Pure: no NATS here.

use std::collections::BTreeSet;

use stageflow::config::{ConfigError, DEFAULT_PART, DispatcherDecl, Location, PipelineFile, StageDecl};

/// One producer's events on their way to one other part: a JetStream subject per partition.
///
/// Every stage of the consuming part that subscribes to the producer shares
/// the edge: the consuming process rebuilds the producer's dispatcher locally
/// (a broadcast stays a broadcast, selectors included), so the stages that
/// join again downstream (sentiment and engagement into the aggregator) see
/// the same event in the same process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutEdge {
    /// The producing stage.
    pub producer: String,
    /// The part its events go to.
    pub part: String,
    /// What decides the partition (`partition_by` of the subscriptions); `None` hashes the event.
    pub partition_by: Option<String>,
    /// Unacked events a partition may hold in the consuming process: the largest `max_demand`.
    pub max_demand: usize,
    /// The first subscription making the edge, for errors.
    pub consumer: String,
    /// Where that subscription is.
    pub location: Location,
}

impl CutEdge {
    /// The edge's name in metrics and subjects: `producer.part`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.producer, self.part)
    }

    /// The subject of partition `k`: `<stream>.<producer>.<part>.p<k>`.
    pub fn subject(&self, stream: &str, k: usize) -> String {
        format!("{stream}.{}.{}.p{k}", self.producer, self.part)
    }

    /// The durable consumer of partition `k` (consumer names cannot hold dots).
    pub fn durable(&self, k: usize) -> String {
        format!("{}_{}_p{k}", self.producer, self.part)
    }
}

/// The parts a file names, in order (`main` for stages that name none).
pub fn parts(file: &PipelineFile) -> BTreeSet<String> {
    file.stages.iter().map(|stage| stage.part().to_string()).collect()
}

/// Every edge that crosses between parts, with the problems that stop it from crossing.
pub fn cut_edges(file: &PipelineFile) -> (Vec<CutEdge>, Vec<ConfigError>) {
    let mut edges: Vec<CutEdge> = Vec::new();
    let mut errors = Vec::new();
    let error = |stage: &StageDecl, location: Location, message: String| ConfigError {
        file: file.path.clone(),
        location: Some(location),
        stage: Some(stage.id.clone()),
        message,
    };
    for consumer in &file.stages {
        for subscription in &consumer.subscribe_to {
            let Some(producer) = file.stages.iter().find(|stage| stage.id == subscription.producer) else {
                continue; // the registry's check reports unknown producers
            };
            if producer.part() == consumer.part() {
                if subscription.partition_by.is_some() {
                    errors.push(error(
                        consumer,
                        subscription.location,
                        format!(
                            "`partition_by` is for subscriptions that cross between parts, and '{}' is in part \"{}\" too",
                            producer.id,
                            producer.part()
                        ),
                    ));
                }
                continue;
            }
            if let Some((DispatcherDecl::Partition { .. }, location)) = producer.dispatcher {
                errors.push(error(
                    producer,
                    location,
                    format!(
                        "a partition dispatcher cannot cross between parts ('{}' in part \"{}\" subscribes); \
                         use `partition_by` on the subscription instead",
                        consumer.id,
                        consumer.part()
                    ),
                ));
                continue;
            }
            for id in [&producer.id, &consumer.part().to_string()] {
                if !subject_token(id) {
                    errors.push(error(
                        consumer,
                        subscription.location,
                        format!(
                            "'{id}' names a JetStream subject between parts: use only letters, digits, `_` and `-`"
                        ),
                    ));
                }
            }
            let part = consumer.part().to_string();
            match edges.iter_mut().find(|edge| edge.producer == producer.id && edge.part == part) {
                Some(edge) => {
                    if edge.partition_by != subscription.partition_by {
                        errors.push(error(
                            consumer,
                            subscription.location,
                            format!(
                                "`partition_by` {} differs from {} of '{}': every stage of part \"{part}\" \
                                 subscribing to '{}' shares one partitioning",
                                show(&subscription.partition_by),
                                show(&edge.partition_by),
                                edge.consumer,
                                producer.id
                            ),
                        ));
                    }
                    edge.max_demand = edge.max_demand.max(subscription.bounds.max_demand());
                }
                None => edges.push(CutEdge {
                    producer: producer.id.clone(),
                    part,
                    partition_by: subscription.partition_by.clone(),
                    max_demand: subscription.bounds.max_demand(),
                    consumer: consumer.id.clone(),
                    location: subscription.location,
                }),
            }
        }
    }
    (edges, errors)
}

fn show(partition_by: &Option<String>) -> String {
    partition_by.as_ref().map_or("(none: a hash of the event)".to_string(), |by| format!("\"{by}\""))
}

/// Whether `text` can be one token of a NATS subject and a consumer name.
pub fn subject_token(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// What a process running `selected` parts builds.
#[derive(Debug, Clone)]
pub struct Cut {
    /// The stages of the selected parts, as written.
    pub stages: Vec<StageDecl>,
    /// Edges whose producer runs here: their events are published.
    pub outbound: Vec<CutEdge>,
    /// Edges whose consumers run here, each with its producer's declaration
    /// (the local replica takes its id, dispatcher and buffer).
    pub inbound: Vec<(CutEdge, StageDecl)>,
}

/// Cuts `file` for a process running the parts `selected`.
pub fn cut(file: &PipelineFile, edges: &[CutEdge], selected: &[String]) -> Result<Cut, String> {
    let known = parts(file);
    for part in selected {
        if !known.contains(part) {
            let hint = stageflow::config::closest(part, known.iter().map(String::as_str))
                .map(|near| format!(" (did you mean \"{near}\"?)"))
                .unwrap_or_default();
            let names: Vec<&str> = known.iter().map(String::as_str).collect();
            return Err(format!(
                "{}: --part {part}: no stage is in part \"{part}\"{hint}; the file's parts are: {}",
                file.path.display(),
                names.join(", ")
            ));
        }
    }
    let here = |part: &str| selected.iter().any(|selected| selected == part);
    let stages: Vec<StageDecl> = file.stages.iter().filter(|stage| here(stage.part())).cloned().collect();
    let producer_part = |edge: &CutEdge| {
        file.stages.iter().find(|stage| stage.id == edge.producer).map_or(DEFAULT_PART, |stage| stage.part())
    };
    let outbound =
        edges.iter().filter(|edge| here(producer_part(edge)) && !here(&edge.part)).cloned().collect();
    let inbound = edges
        .iter()
        .filter(|edge| !here(producer_part(edge)) && here(&edge.part))
        .map(|edge| {
            let producer =
                file.stages.iter().find(|stage| stage.id == edge.producer).expect("edges name stages");
            (edge.clone(), producer.clone())
        })
        .collect();
    Ok(Cut { stages, outbound, inbound })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn file(text: &str) -> PipelineFile {
        stageflow::config::parse_pipeline(Path::new("c.toml"), text, &|_| None).unwrap()
    }

    const TWO_PARTS: &str = r#"
[pipeline]
name = "t"
[[stage]]
id = "source"
kind = "numbers"
part = "ingest"
dispatcher = "broadcast"
[[stage]]
id = "double"
kind = "scale"
part = "process"
subscribe_to = [{ id = "source", partition_by = "value", max_demand = 50 }]
[[stage]]
id = "triple"
kind = "scale"
part = "process"
subscribe_to = [{ id = "source", partition_by = "value", max_demand = 80 }]
[[stage]]
id = "sum"
kind = "sum"
part = "process"
subscribe_to = ["double", "triple"]
"#;

    #[test]
    fn subscriptions_of_one_part_to_one_producer_share_an_edge() {
        let (edges, errors) = cut_edges(&file(TWO_PARTS));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(edges.len(), 1);
        let edge = &edges[0];
        assert_eq!((edge.producer.as_str(), edge.part.as_str()), ("source", "process"));
        assert_eq!((edge.partition_by.as_deref(), edge.max_demand), (Some("value"), 80));
        assert_eq!(edge.subject("stageflow_t", 3), "stageflow_t.source.process.p3");
        assert_eq!(edge.durable(3), "source_process_p3");
    }

    #[test]
    fn each_side_of_the_cut_gets_its_stages_and_edges() {
        let parsed = file(TWO_PARTS);
        let (edges, _) = cut_edges(&parsed);
        let ingest = cut(&parsed, &edges, &["ingest".into()]).unwrap();
        let ids: Vec<&str> = ingest.stages.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["source"]);
        assert_eq!((ingest.outbound.len(), ingest.inbound.len()), (1, 0));
        let process = cut(&parsed, &edges, &["process".into()]).unwrap();
        assert_eq!(process.stages.len(), 3);
        assert_eq!((process.outbound.len(), process.inbound.len()), (0, 1));
        assert_eq!(process.inbound[0].1.id, "source", "the replica takes the producer's declaration");
        let both = cut(&parsed, &edges, &["ingest".into(), "process".into()]).unwrap();
        assert_eq!((both.stages.len(), both.outbound.len(), both.inbound.len()), (4, 0, 0));
        let error = cut(&parsed, &edges, &["proces".into()]).unwrap_err();
        assert!(error.contains("did you mean \"process\"") && error.contains("ingest, process"), "{error}");
    }

    #[test]
    fn disagreeing_partition_keys_and_partition_dispatchers_are_reported_where_written() {
        let text = TWO_PARTS.replace("partition_by = \"value\", max_demand = 80", "partition_by = \"other\"");
        let (_, errors) = cut_edges(&file(&text));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].location.unwrap().line, 18);
        assert!(errors[0].message.contains("differs from \"value\" of 'double'"), "{}", errors[0].message);

        let text = TWO_PARTS
            .replace("dispatcher = \"broadcast\"", "dispatcher = { kind = \"partition\", partitions = 2 }");
        let (_, errors) = cut_edges(&file(&text));
        assert!(errors.iter().all(|e| e.message.contains("partition dispatcher cannot cross")), "{errors:?}");
        assert_eq!(errors[0].location.unwrap().line, 8);

        let text = TWO_PARTS.replace(
            "subscribe_to = [\"double\", \"triple\"]",
            "subscribe_to = [{ id = \"double\", partition_by = \"x\" }]",
        );
        let (_, errors) = cut_edges(&file(&text));
        assert!(
            errors[0].message.contains("only for subscriptions that cross")
                || errors[0].message.contains("is for subscriptions that cross"),
            "{errors:?}"
        );
    }

    #[test]
    fn ids_on_a_cut_must_be_subject_tokens() {
        assert!(subject_token("tweets_1-a"));
        assert!(!subject_token("a.b") && !subject_token("a b") && !subject_token("*") && !subject_token(""));
    }
}
