//! Loading a pipeline file: read, `${NAME}` resolved, `--set` overrides
//! applied, checked against the kind registry and the scale-out rules.
//! `run`, `check`, `graph` and the telnet server all load files this way.

use std::collections::HashMap;
use std::path::Path;

use stageflow::config::{ConfigErrors, PipelineFile, Registry, parse_pipeline};

/// The variable a pipeline file uses for the address of the emulator the
/// `run` command starts in-process when the file has `[pipeline.settings.emulator]`.
pub const EMULATOR_URL: &str = "EMULATOR_URL";

/// Where `stageflow emulate` listens by default: what `check` and `graph`
/// substitute for `${EMULATOR_URL}` when it is not set.
const DEFAULT_EMULATOR_URL: &str = "http://127.0.0.1:4000";

/// Reads and checks a pipeline file, applying `--set stage.key=value` overrides;
/// `vars` resolve `${NAME}` before the environment does.
pub fn load(
    registry: &Registry,
    path: &Path,
    overrides: &[String],
    vars: &HashMap<String, String>,
) -> Result<PipelineFile, String> {
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let lookup = |name: &str| {
        vars.get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
            .or_else(|| (name == EMULATOR_URL).then(|| DEFAULT_EMULATOR_URL.to_string()))
    };
    let mut file = parse_pipeline(path, &text, &lookup).map_err(|errors| describe(&errors))?;
    for assignment in overrides {
        apply_override(&mut file, assignment).map_err(|why| format!("--set {assignment}: {why}"))?;
    }
    registry.check(&file).map_err(|errors| describe(&errors))?;
    let scale_out = crate::cluster::check(&file, registry);
    if !scale_out.is_empty() {
        return Err(describe(&ConfigErrors(scale_out)));
    }
    Ok(file)
}

/// Every check error on its own line, then how many there were.
pub fn describe(errors: &ConfigErrors) -> String {
    let count = errors.0.len();
    format!("{errors}\n{count} problem{} found", if count == 1 { "" } else { "s" })
}

/// Applies one `stage.key=value` override; the value is read as TOML, or as a plain string.
pub fn apply_override(file: &mut PipelineFile, assignment: &str) -> Result<(), String> {
    let (target, raw) = assignment.split_once('=').ok_or("expected stage.key=value")?;
    let (stage_id, key) = target.split_once('.').ok_or("expected stage.key=value")?;
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let ids: Vec<&str> = file.stages.iter().map(|s| s.id.as_str()).collect();
    let hint =
        stageflow::config::closest(stage_id, ids.iter().copied()).map(|n| format!(" (did you mean '{n}'?)"));
    let stage = file
        .stages
        .iter_mut()
        .find(|stage| stage.id == stage_id)
        .ok_or_else(|| format!("no stage '{stage_id}' in this file{}", hint.unwrap_or_default()))?;
    stage.set(key, value);
    Ok(())
}
