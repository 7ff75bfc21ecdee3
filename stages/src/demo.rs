//! The demo pipeline the CLI runs until the TOML pipeline format lands:
//! numbers → double → sum, with settings read from a small TOML file.

use std::path::Path;

use serde::Deserialize;
use stageflow::DemandBounds;

/// Settings of the demo pipeline, as written in its TOML file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    /// The `[pipeline]` table.
    pub pipeline: PipelineTable,
    /// The `[source]` table.
    pub source: SourceTable,
    /// The `[demand]` table (defaults 1000 / 500).
    #[serde(default)]
    pub demand: DemandTable,
}

/// `[pipeline]`: what the pipeline is called.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineTable {
    /// Shown in the summary.
    pub name: String,
}

/// `[source]`: how many numbers the source emits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceTable {
    /// Numbers 1..=count are emitted.
    pub count: u64,
}

/// `[demand]`: credit bounds of every subscription.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemandTable {
    /// Credits granted at first.
    pub max_demand: usize,
    /// Outstanding credits at which more are asked.
    pub min_demand: usize,
}

impl Default for DemandTable {
    fn default() -> Self {
        let bounds = DemandBounds::default();
        DemandTable { max_demand: bounds.max_demand, min_demand: bounds.min_demand }
    }
}

/// Parses and checks a demo pipeline file; errors name the file, and line and column where TOML knows them.
pub fn parse_demo(text: &str, path: &Path) -> Result<(DemoConfig, DemandBounds), String> {
    let config: DemoConfig = toml::from_str(text)
        .map_err(|error| format!("{}: {}", path.display(), error.to_string().trim_end()))?;
    let bounds = DemandBounds::new(config.demand.max_demand, config.demand.min_demand)
        .map_err(|error| format!("{}: [demand]: {error}", path.display()))?;
    Ok((config, bounds))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[pipeline]\nname = \"demo\"\n[source]\ncount = 10\n";

    #[test]
    fn reads_a_file_with_default_demand() {
        let (config, bounds) = parse_demo(GOOD, Path::new("demo.toml")).unwrap();
        assert_eq!(config.source.count, 10);
        assert_eq!(bounds, DemandBounds::default());
    }

    #[test]
    fn unknown_setting_names_file_line_and_field() {
        let text = "[pipeline]\nname = \"demo\"\n[source]\ncount = 10\ncuont = 3\n";
        let error = parse_demo(text, Path::new("demo.toml")).unwrap_err();
        assert!(error.starts_with("demo.toml: "), "{error}");
        assert!(error.contains("line 5"), "{error}");
        assert!(error.contains("cuont"), "{error}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let error = parse_demo("[pipeline\nname = 1", Path::new("x.toml")).unwrap_err();
        assert!(error.contains("line 1"), "{error}");
    }

    #[test]
    fn invalid_demand_is_explained() {
        let text = format!("{GOOD}[demand]\nmax_demand = 10\nmin_demand = 10\n");
        let error = parse_demo(&text, Path::new("demo.toml")).unwrap_err();
        assert!(error.contains("min_demand (10) must be below max_demand (10)"), "{error}");
    }
}
