//! The pipeline file `serve` runs, adapted for serving: `${EMULATOR_URL}`
//! from `--sse-url`, `--set`, `--streams` (one `sse` stage per stream) and
//! `--broker` (two publishing stages) applied, then checked.

use std::collections::{HashMap, HashSet};

use stageflow::config::{
    DispatcherDecl, Location, PipelineFile, Registry, Setting, StageDecl, SubscriptionDecl,
};

use super::ServeConfig;
use super::lines::LINES_STAGE;
use crate::pipelines::EMULATOR_URL;

/// The pipeline file `serve` runs: read, `${EMULATOR_URL}` resolved, `--set`,
/// `--streams` and `--broker` applied, checked (nothing built yet).
pub(crate) fn prepare_file(config: &ServeConfig, registry: &Registry) -> Result<PipelineFile, String> {
    let base = config.sse_url.trim_end_matches('/');
    let emulator = base.strip_suffix("/tweets").unwrap_or(base);
    let vars = HashMap::from([(EMULATOR_URL.to_string(), emulator.to_string())]);
    let mut file = crate::pipelines::load(registry, &config.pipeline_file, &config.overrides, &vars)?;
    if let Some(count) = config.streams {
        set_streams(&mut file, base, count)?;
    }
    if let Some(addr) = &config.broker {
        add_broker(&mut file, addr)?;
    }
    let loggers = file.stages.iter().filter(|stage| stage.kind == "logger").count();
    if loggers == 0 {
        return Err(format!(
            "{}: no stage of kind \"logger\": serve shows the logger's lines",
            config.pipeline_file.display()
        ));
    }
    if file.stages.iter().any(|stage| stage.id == LINES_STAGE) {
        return Err(format!(
            "{}: the stage id '{LINES_STAGE}' is taken by serve; rename that stage",
            config.pipeline_file.display()
        ));
    }
    registry.check(&file).map_err(|errors| errors.to_string())?;
    Ok(file)
}

/// Replaces the file's `sse` stages by `count` streams `stream1`… reading
/// `<base>/1`…, each like the first `sse` stage, and points their subscribers at all of them.
pub(crate) fn set_streams(file: &mut PipelineFile, base: &str, count: usize) -> Result<(), String> {
    if !(1..=16).contains(&count) {
        return Err(format!("--streams must be from 1 to 16 (the emulator serves 16), got {count}"));
    }
    let first =
        file.stages.iter().position(|stage| stage.kind == "sse").ok_or_else(|| {
            format!("{}: --streams needs a stage of kind \"sse\" to copy", file.path.display())
        })?;
    let template = file.stages[first].clone();
    let old: HashSet<String> =
        file.stages.iter().filter(|stage| stage.kind == "sse").map(|stage| stage.id.clone()).collect();
    file.stages.retain(|stage| stage.kind != "sse");
    let ids: Vec<String> = (1..=count).map(|n| format!("stream{n}")).collect();
    if let Some(taken) = file.stages.iter().find(|stage| ids.contains(&stage.id)) {
        return Err(format!("--streams names its sources stream1…; '{}' is another stage's id", taken.id));
    }
    let streams = ids.iter().enumerate().map(|(index, id)| {
        let mut stage = template.clone();
        stage.id = id.clone();
        stage.set("url", toml::Value::String(format!("{base}/{}", index + 1)));
        stage
    });
    let at = first.min(file.stages.len());
    file.stages.splice(at..at, streams);
    for stage in &mut file.stages {
        let Some(model) = stage.subscribe_to.iter().find(|s| old.contains(&s.producer)).cloned() else {
            continue;
        };
        stage.subscribe_to.retain(|s| !old.contains(&s.producer));
        stage
            .subscribe_to
            .extend(ids.iter().map(|id| SubscriptionDecl { producer: id.clone(), ..model.clone() }));
    }
    Ok(())
}

/// Adds `broker_tweets` (fed by the aggregator, which becomes a broadcast) and
/// `broker_stats` (fed by the statistics stage), both publishing to `addr`.
pub(crate) fn add_broker(file: &mut PipelineFile, addr: &str) -> Result<(), String> {
    let path = file.path.display().to_string();
    let setting = |key: &str, value: &str| Setting {
        key: key.into(),
        value: toml::Value::String(value.into()),
        location: Location::default(),
    };
    let sink = |id: &str, kind: &str, producer: &str| StageDecl {
        settings: vec![setting("addr", addr)],
        subscribe_to: vec![SubscriptionDecl::to(producer, Location::default())],
        ..StageDecl::new(id, kind, Location::default())
    };
    let aggregator =
        file.stages.iter_mut().find(|stage| stage.kind == "aggregator").ok_or_else(|| {
            format!("{path}: --broker needs a stage of kind \"aggregator\" to publish from")
        })?;
    match aggregator.dispatcher {
        Some((DispatcherDecl::Partition { .. }, _)) => {
            return Err(format!("{path}: --broker needs the aggregator's dispatcher to be broadcast"));
        }
        _ => aggregator.dispatcher = Some((DispatcherDecl::Broadcast, Location::default())),
    }
    let aggregator = aggregator.id.clone();
    file.stages.push(sink("broker_tweets", "broker_tweets", &aggregator));
    if let Some(statistics) = file.stages.iter().find(|stage| stage.kind == "statistics") {
        let statistics = statistics.id.clone();
        file.stages.push(sink("broker_stats", "broker_stats", &statistics));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tweets_file(registry: &Registry) -> PipelineFile {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/tweets.toml");
        let vars = HashMap::from([(EMULATOR_URL.to_string(), "http://127.0.0.1:4000".to_string())]);
        crate::pipelines::load(registry, &path, &[], &vars).expect("tweets.toml loads")
    }

    fn registry() -> Registry {
        crate::registry()
    }

    #[test]
    fn streams_replace_the_sse_stages_and_the_hub_takes_them_all() {
        let registry = registry();
        let mut file = tweets_file(&registry);
        set_streams(&mut file, "http://h:1/tweets", 3).unwrap();
        let sources: Vec<(String, String)> = file
            .stages
            .iter()
            .filter(|stage| stage.kind == "sse")
            .map(|stage| {
                (stage.id.clone(), stage.setting("url").unwrap().value.as_str().unwrap().to_string())
            })
            .collect();
        assert_eq!(
            sources,
            [1, 2, 3].map(|n| (format!("stream{n}"), format!("http://h:1/tweets/{n}"))).to_vec()
        );
        let hub = file.stages.iter().find(|stage| stage.id == "tweets").unwrap();
        let producers: Vec<&str> = hub.subscribe_to.iter().map(|s| s.producer.as_str()).collect();
        assert_eq!(producers, ["stream1", "stream2", "stream3"]);
        assert!(hub.subscribe_to.iter().all(|s| s.bounds.max_demand() == 200), "bounds copied");
        registry.check(&file).expect("still a valid file");
        set_streams(&mut file, "http://h:1/tweets", 1).unwrap();
        assert_eq!(file.stages.iter().filter(|stage| stage.kind == "sse").count(), 1);
        assert!(set_streams(&mut file, "x", 0).unwrap_err().contains("from 1 to 16"));
    }

    #[test]
    fn broker_adds_two_publishers_and_makes_the_aggregator_broadcast() {
        let registry = registry();
        let mut file = tweets_file(&registry);
        add_broker(&mut file, "127.0.0.1:8000").unwrap();
        let aggregator = file.stages.iter().find(|stage| stage.kind == "aggregator").unwrap();
        assert!(matches!(aggregator.dispatcher, Some((DispatcherDecl::Broadcast, _))));
        let added: Vec<(&str, &str)> = file.stages[file.stages.len() - 2..]
            .iter()
            .map(|stage| (stage.kind.as_str(), stage.subscribe_to[0].producer.as_str()))
            .collect();
        assert_eq!(added, [("broker_tweets", "aggregator"), ("broker_stats", "statistics")]);
        registry.check(&file).expect("still a valid file");
    }
}
