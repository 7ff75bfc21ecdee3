//! Reading a pipeline file into located declarations.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::env::expand_env;
use super::suggest::closest;
use super::{
    ClusterDecl, ConfigError, ConfigErrors, DispatcherDecl, Location, PipelineFile, Setting, StageDecl,
    SubscriptionDecl,
};
use crate::buffer::BufferKeep;
use crate::demand::DemandBounds;
use crate::link::CancelMode;
use crate::pool::{Autoscale, PoolConfig, Routing};

type RawTable = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    pipeline: RawPipeline,
    #[serde(default)]
    stage: Vec<Spanned<RawTable>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    settings: toml::Table,
    #[serde(default)]
    cluster: Option<Spanned<RawTable>>,
}

/// The keys every stage table may have; anything else is a kind-specific setting.
pub(crate) const COMMON_KEYS: [&str; 10] = [
    "id",
    "kind",
    "subscribe_to",
    "dispatcher",
    "buffer_size",
    "buffer_keep",
    "workers",
    "part",
    "dead_letter",
    "max_attempts",
];

const SUBSCRIPTION_KEYS: [&str; 7] =
    ["id", "max_demand", "min_demand", "partition", "selector", "cancel", "partition_by"];
const WORKER_KEYS: [&str; 6] = ["min", "max", "autoscale", "routing", "events_per_worker", "frame_ms"];

struct Reader<'a> {
    path: &'a Path,
    text: &'a str,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<ConfigError>,
}

impl Reader<'_> {
    fn at(&self, offset: usize) -> Location {
        Location::of_offset(self.text, offset)
    }

    fn error(&mut self, location: Location, stage: Option<&str>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.path.to_path_buf(),
            location: Some(location),
            stage: stage.map(str::to_string),
            message: message.into(),
        });
    }

    /// Expands `${VAR}` in every string inside `value`.
    fn expand(&self, value: &toml::Value) -> Result<toml::Value, String> {
        Ok(match value {
            toml::Value::String(text) => toml::Value::String(expand_env(text, self.lookup)?),
            toml::Value::Array(items) => {
                toml::Value::Array(items.iter().map(|item| self.expand(item)).collect::<Result<_, _>>()?)
            }
            toml::Value::Table(table) => toml::Value::Table(
                table
                    .iter()
                    .map(|(key, item)| Ok((key.clone(), self.expand(item)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }

    fn stage(&mut self, table: Spanned<RawTable>) -> Option<StageDecl> {
        let table_location = self.at(table.span().start);
        let table = table.into_inner();
        let find = |key: &str| table.iter().find(|(name, _)| name.get_ref() == key);
        let text_of = |key: &str| -> Option<(Result<String, String>, Location)> {
            find(key).map(|(name, value)| {
                // Point at the value: it is what is wrong when a kind or id is.
                let _ = name;
                let location = Location::of_offset(self.text, value.span().start);
                match value.get_ref() {
                    toml::Value::String(text) => (Ok(text.clone()), location),
                    other => (Err(format!("`{key}` must be a string, got {}", other.type_str())), location),
                }
            })
        };
        let id = match text_of("id") {
            Some((Ok(id), location)) if !id.is_empty() => (id, location),
            Some((Ok(_), location)) => {
                self.error(location, None, "`id` must not be empty");
                return None;
            }
            Some((Err(why), location)) => {
                self.error(location, None, why);
                return None;
            }
            None => {
                self.error(table_location, None, "a [[stage]] table needs an `id`");
                return None;
            }
        };
        let stage_id = id.0.clone();
        let kind = match text_of("kind") {
            Some((Ok(kind), location)) => (kind, location),
            Some((Err(why), location)) => {
                self.error(location, Some(&stage_id), why);
                return None;
            }
            None => {
                self.error(id.1, Some(&stage_id), "missing `kind` (which stage kind this is)");
                return None;
            }
        };
        let mut decl = StageDecl { kind_location: kind.1, ..StageDecl::new(&stage_id, &kind.0, id.1) };
        for (key, value) in &table {
            let location = self.at(key.span().start);
            let value = match self.expand(value.get_ref()) {
                Ok(value) => value,
                Err(why) => {
                    self.error(location, Some(&stage_id), format!("`{}`: {why}", key.get_ref()));
                    continue;
                }
            };
            let result = match key.get_ref().as_str() {
                "id" | "kind" => Ok(()),
                "subscribe_to" => self.subscriptions(&value, location).map(|list| decl.subscribe_to = list),
                "dispatcher" => dispatcher(&value).map(|d| decl.dispatcher = Some((d, location))),
                "buffer_size" => count(&value, "buffer_size").map(|size| decl.buffer_size = Some(size)),
                "buffer_keep" => buffer_keep(&value).map(|keep| decl.buffer_keep = Some(keep)),
                "workers" => workers(&value).map(|pool| decl.workers = Some((pool, location))),
                "part" => part(&value).map(|part| decl.part = Some((part, location))),
                "dead_letter" => {
                    dead_letter(&value).map(|target| decl.dead_letter = Some((target, location)))
                }
                "max_attempts" => {
                    max_attempts(&value).map(|attempts| decl.max_attempts = Some((attempts, location)))
                }
                other => {
                    decl.settings.push(Setting { key: other.to_string(), value, location });
                    Ok(())
                }
            };
            if let Err(why) = result {
                self.error(location, Some(&stage_id), why);
            }
        }
        Some(decl)
    }

    fn cluster(&mut self, table: Spanned<RawTable>) -> ClusterDecl {
        let location = self.at(table.span().start);
        let mut settings = Vec::new();
        for (key, value) in table.into_inner() {
            let at = self.at(key.span().start);
            match self.expand(value.get_ref()) {
                Ok(value) => settings.push(Setting { key: key.into_inner(), value, location: at }),
                Err(why) => self.error(at, None, format!("[pipeline.cluster] `{}`: {why}", key.get_ref())),
            }
        }
        ClusterDecl { location, settings }
    }

    fn subscriptions(
        &self,
        value: &toml::Value,
        location: Location,
    ) -> Result<Vec<SubscriptionDecl>, String> {
        let items = match value {
            toml::Value::String(_) => std::slice::from_ref(value),
            toml::Value::Array(items) => items.as_slice(),
            other => {
                return Err(format!(
                    "`subscribe_to` must be a list of stage ids or {{ id = ..., max_demand = ... }} tables, got {}",
                    other.type_str()
                ));
            }
        };
        items.iter().map(|item| subscription(item, location)).collect()
    }
}

fn subscription(item: &toml::Value, location: Location) -> Result<SubscriptionDecl, String> {
    let mut decl = SubscriptionDecl::to("", location);
    let table = match item {
        toml::Value::String(producer) => {
            decl.producer = producer.clone();
            return Ok(decl);
        }
        toml::Value::Table(table) => table,
        other => {
            return Err(format!(
                "a `subscribe_to` entry must be a stage id or a table, got {}",
                other.type_str()
            ));
        }
    };
    let (mut max_demand, mut min_demand) = (None, None);
    for (key, value) in table {
        match key.as_str() {
            "id" => {
                decl.producer =
                    value.as_str().ok_or("`subscribe_to` entry `id` must be a string")?.to_string()
            }
            "max_demand" => max_demand = Some(count(value, "max_demand")?),
            "min_demand" => min_demand = Some(count(value, "min_demand")?),
            "partition" => decl.partition = Some(count(value, "partition")?),
            "selector" => {
                decl.selector = Some(value.as_str().ok_or("`selector` must be a string")?.to_string())
            }
            "partition_by" => {
                decl.partition_by = Some(
                    value.as_str().ok_or("`partition_by` must be a string, e.g. \"user_id\"")?.to_string(),
                )
            }
            "cancel" => {
                decl.cancel = match value.as_str() {
                    Some("permanent") => CancelMode::Permanent,
                    Some("transient") => CancelMode::Transient,
                    Some("temporary") => CancelMode::Temporary,
                    _ => return Err("`cancel` must be \"permanent\", \"transient\" or \"temporary\"".into()),
                }
            }
            other => return Err(unknown(other, "`subscribe_to` entry", &SUBSCRIPTION_KEYS)),
        }
    }
    if decl.producer.is_empty() {
        return Err("a `subscribe_to` table needs the producer's `id`".into());
    }
    let max = max_demand.unwrap_or(DemandBounds::default().max_demand());
    let min = min_demand.unwrap_or(max / 2);
    decl.bounds =
        DemandBounds::new(max, min).map_err(|why| crate::demand::bounds_problem(&decl.producer, &why))?;
    Ok(decl)
}

fn unknown(key: &str, what: &str, known: &[&str]) -> String {
    let hint = closest(key, known.iter().copied())
        .map(|near| format!(" (did you mean `{near}`?)"))
        .unwrap_or_default();
    format!("unknown key `{key}` in {what}{hint}; expected one of: {}", known.join(", "))
}

fn count(value: &toml::Value, what: &str) -> Result<usize, String> {
    match value.as_integer() {
        Some(number) if number >= 0 => Ok(number as usize),
        Some(number) => Err(format!("`{what}` must not be negative, got {number}")),
        None => Err(format!("`{what}` must be a whole number, got {}", value.type_str())),
    }
}

fn dispatcher(value: &toml::Value) -> Result<DispatcherDecl, String> {
    const EXPECTED: &str =
        "`dispatcher` must be \"demand\", \"broadcast\" or { kind = \"partition\", partitions = N }";
    let (kind, partitions) = match value {
        toml::Value::String(kind) => (kind.as_str(), None),
        toml::Value::Table(table) => {
            for key in table.keys() {
                if key != "kind" && key != "partitions" {
                    return Err(unknown(key, "`dispatcher`", &["kind", "partitions"]));
                }
            }
            let kind = table.get("kind").and_then(toml::Value::as_str).ok_or(EXPECTED)?;
            (kind, table.get("partitions").map(|p| count(p, "partitions")).transpose()?)
        }
        _ => return Err(EXPECTED.into()),
    };
    match (kind, partitions) {
        ("demand", None) => Ok(DispatcherDecl::Demand),
        ("broadcast", None) => Ok(DispatcherDecl::Broadcast),
        ("partition", Some(0)) => Err("a partition dispatcher needs at least 1 partition".into()),
        ("partition", Some(partitions)) => Ok(DispatcherDecl::Partition { partitions }),
        ("partition", None) => Err("a partition dispatcher needs `partitions = N`".into()),
        _ => Err(EXPECTED.into()),
    }
}

fn dead_letter(value: &toml::Value) -> Result<String, String> {
    match value.as_str() {
        Some(target) if !target.trim().is_empty() => Ok(target.to_string()),
        _ => Err(format!(
            "`dead_letter` must name a target, e.g. \"file\", \"file:rejected.jsonl\" or \"broker://127.0.0.1:8000/dead\", got {value}"
        )),
    }
}

fn max_attempts(value: &toml::Value) -> Result<u32, String> {
    match value.as_integer() {
        Some(attempts) if (1..=1_000).contains(&attempts) => Ok(attempts as u32),
        _ => Err(format!("`max_attempts` must be a whole number from 1 to 1000, got {value}")),
    }
}

fn part(value: &toml::Value) -> Result<String, String> {
    match value.as_str() {
        Some(part)
            if !part.is_empty()
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
        {
            Ok(part.to_string())
        }
        _ => Err(format!("`part` must be a name of letters, digits, `_` or `-`, got {value}")),
    }
}

fn buffer_keep(value: &toml::Value) -> Result<BufferKeep, String> {
    match value.as_str() {
        Some("first") => Ok(BufferKeep::First),
        Some("last") => Ok(BufferKeep::Last),
        _ => Err("`buffer_keep` must be \"first\" or \"last\"".into()),
    }
}

fn workers(value: &toml::Value) -> Result<PoolConfig, String> {
    let table =
        value.as_table().ok_or("`workers` must be a table like { min = 1, max = 8, autoscale = true }")?;
    for key in table.keys() {
        if !WORKER_KEYS.contains(&key.as_str()) {
            return Err(unknown(key, "`workers`", &WORKER_KEYS));
        }
    }
    let min = table.get("min").map(|v| count(v, "workers.min")).transpose()?.unwrap_or(1);
    let max = table.get("max").map(|v| count(v, "workers.max")).transpose()?.unwrap_or(min);
    let routing = match table.get("routing").map(|v| v.as_str()) {
        None | Some(Some("round_robin")) => Routing::RoundRobin,
        Some(Some("least_loaded")) => Routing::LeastLoaded,
        Some(_) => return Err("`workers.routing` must be \"round_robin\" or \"least_loaded\"".into()),
    };
    let autoscale = match table.get("autoscale") {
        None => false,
        Some(value) => value.as_bool().ok_or("`workers.autoscale` must be true or false")?,
    };
    let mut scaler = Autoscale::default();
    if let Some(rate) = table.get("events_per_worker") {
        scaler.events_per_worker = rate
            .as_float()
            .or_else(|| rate.as_integer().map(|n| n as f64))
            .ok_or("`workers.events_per_worker` must be a number")?;
    }
    if let Some(frame) = table.get("frame_ms") {
        scaler.frame = Duration::from_millis(count(frame, "workers.frame_ms")? as u64);
    }
    let pool = PoolConfig { min, max, routing, autoscale: autoscale.then_some(scaler) };
    pool.validate()?;
    Ok(pool)
}

/// Reads a pipeline file. `lookup` resolves `${VAR}` references (pass
/// `|name| std::env::var(name).ok()` for the process environment). Every
/// problem found is returned, each with its line and column.
pub fn parse_pipeline(
    path: &Path,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<PipelineFile, ConfigErrors> {
    let raw: RawFile = toml::from_str(text).map_err(|error| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            location: error.span().map(|span| Location::of_offset(text, span.start)),
            stage: None,
            message: error.message().trim_end().to_string(),
        }])
    })?;
    let mut reader = Reader { path, text, lookup, errors: Vec::new() };
    let _ = raw.pipeline.description;
    let stages: Vec<StageDecl> = raw.stage.into_iter().filter_map(|table| reader.stage(table)).collect();
    let cluster = raw.pipeline.cluster.map(|table| reader.cluster(table));
    if reader.errors.is_empty() {
        Ok(PipelineFile {
            path: path.to_path_buf(),
            name: raw.pipeline.name,
            settings: raw.pipeline.settings,
            stages,
            cluster,
        })
    } else {
        Err(ConfigErrors(reader.errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<PipelineFile, ConfigErrors> {
        parse_pipeline(Path::new("p.toml"), text, &no_env)
    }

    #[test]
    fn reads_every_common_key() {
        let file = parse(
            r#"
[pipeline]
name = "demo"

[[stage]]
id = "numbers"
kind = "numbers"
count = 10
dispatcher = { kind = "partition", partitions = 2 }
buffer_size = 50
buffer_keep = "first"

[[stage]]
id = "sum"
kind = "sum"
subscribe_to = [{ id = "numbers", max_demand = 10, partition = 1, cancel = "transient" }]
workers = { min = 1, max = 4, autoscale = true, routing = "least_loaded" }
"#,
        )
        .unwrap();
        assert_eq!(file.name, "demo");
        let numbers = &file.stages[0];
        assert_eq!(numbers.setting("count").unwrap().value, toml::Value::Integer(10));
        assert_eq!(numbers.setting("count").unwrap().location, Location { line: 8, column: 1 });
        assert_eq!(numbers.dispatcher.unwrap().0, DispatcherDecl::Partition { partitions: 2 });
        assert_eq!((numbers.buffer_size, numbers.buffer_keep), (Some(50), Some(BufferKeep::First)));
        let sum = &file.stages[1];
        let subscription = &sum.subscribe_to[0];
        assert_eq!(subscription.bounds, DemandBounds::new(10, 5).unwrap());
        assert_eq!((subscription.partition, subscription.cancel), (Some(1), CancelMode::Transient));
        assert_eq!(sum.workers.unwrap().0.routing, Routing::LeastLoaded);
        assert_eq!(sum.location, Location { line: 14, column: 6 });
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let errors = parse("[pipeline]\nname = \"x\"\n[[stage]\nid = 1\n").unwrap_err();
        assert_eq!(errors.0[0].location.unwrap().line, 3, "{errors}");
    }

    #[test]
    fn bad_values_are_all_reported_with_their_stage() {
        let errors = parse(
            r#"[pipeline]
name = "x"
[[stage]]
id = "a"
kind = "numbers"
buffer_keep = "middle"
subscribe_to = [{ id = "b", max_demand = 0 }]
[[stage]]
id = "b"
kind = "sum"
workers = { min = 3, max = 2 }
subscribe_to = [{ id = "a", max_demand = 10, min_demand = 10, prtition = 1 }]
"#,
        )
        .unwrap_err();
        let text = errors.to_string();
        assert!(text.contains("p.toml:6:1: stage 'a': `buffer_keep` must be"), "{text}");
        assert!(
            text.contains("p.toml:7:1: stage 'a': subscription to 'b': max_demand must be at least 1"),
            "{text}"
        );
        assert!(
            text.contains("p.toml:11:1: stage 'b': workers.min (3) must not exceed workers.max (2)"),
            "{text}"
        );
        assert!(
            text.contains("unknown key `prtition` in `subscribe_to` entry (did you mean `partition`?)"),
            "{text}"
        );
    }

    #[test]
    fn environment_references_are_expanded_or_named() {
        let text = "[pipeline]\nname = \"x\"\n[[stage]]\nid = \"sink\"\nkind = \"mongo\"\nuri = \"${MONGODB_URI}\"\n";
        let file = parse_pipeline(Path::new("p.toml"), text, &|_| Some("mongodb://h".into())).unwrap();
        assert_eq!(file.stages[0].setting("uri").unwrap().value.as_str(), Some("mongodb://h"));
        let error = parse(text).unwrap_err().to_string();
        assert!(
            error.contains("p.toml:6:1: stage 'sink': `uri`: environment variable MONGODB_URI is not set"),
            "{error}"
        );
    }

    #[test]
    fn missing_pipeline_table_and_unknown_top_level_tables_are_errors() {
        assert!(parse("[[stage]]\nid = \"a\"\nkind = \"k\"\n").unwrap_err().to_string().contains("pipeline"));
        let error = parse("[pipeline]\nname = \"x\"\n[stages]\n").unwrap_err().to_string();
        assert!(error.contains("stages"), "{error}");
    }

    #[test]
    fn locations_count_lines_and_characters() {
        assert_eq!(Location::of_offset("ab\ncd", 4), Location { line: 2, column: 2 });
        assert_eq!(Location::of_offset("é\nx", 3), Location { line: 2, column: 1 });
    }
}
