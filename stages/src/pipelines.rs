//! Pipeline files: the ones shipped inside the binary (so `stageflow run
//! tweets` works from any directory), and loading one — read from a path or
//! a built-in name, `${NAME}` resolved, `--set` overrides applied, checked
//! against the kind registry and the scale-out rules. `run`, `check`,
//! `graph` and the telnet server all load files this way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use stageflow::config::{ConfigErrors, PipelineFile, Registry, parse_pipeline};

/// The variable a pipeline file uses for the address of the emulator the
/// `run` command starts in-process when the file has `[pipeline.settings.emulator]`.
pub const EMULATOR_URL: &str = "EMULATOR_URL";

/// Where `stageflow emulate` listens by default: what `check` and `graph`
/// substitute for `${EMULATOR_URL}` when it is not set.
const DEFAULT_EMULATOR_URL: &str = "http://127.0.0.1:4000";

/// A pipeline file shipped inside the binary, usable by name from any directory.
#[derive(Debug, Clone, Copy)]
pub struct BuiltIn {
    /// Its name: `stageflow run tweets`.
    pub name: &'static str,
    /// The file's text, as in `pipelines/<name>.toml` of the source tree.
    pub text: &'static str,
}

impl BuiltIn {
    /// The path its errors name: `<built-in>/<name>.toml`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("{BUILT_IN_DIR}/{}.toml", self.name))
    }

    /// What it is, from the first sentence of its leading comment.
    pub fn summary(&self) -> String {
        first_sentence(self.text)
    }
}

/// The folder built-in pipelines seem to live in, in error messages.
pub const BUILT_IN_DIR: &str = "<built-in>";

/// Every shipped pipeline, by name.
pub const BUILT_IN: &[BuiltIn] = &[
    BuiltIn { name: "demo", text: include_str!("../../pipelines/demo.toml") },
    BuiltIn { name: "tweets", text: include_str!("../../pipelines/tweets.toml") },
    BuiltIn { name: "tweets-broker", text: include_str!("../../pipelines/tweets-broker.toml") },
    BuiltIn { name: "tweets-mongo", text: include_str!("../../pipelines/tweets-mongo.toml") },
    BuiltIn { name: "tweets-cluster", text: include_str!("../../pipelines/tweets-cluster.toml") },
    BuiltIn { name: "numbers-cluster", text: include_str!("../../pipelines/numbers-cluster.toml") },
    BuiltIn { name: "csv-import", text: include_str!("../../pipelines/csv-import.toml") },
    BuiltIn { name: "broker-echo", text: include_str!("../../pipelines/broker-echo.toml") },
    BuiltIn { name: "broker-to-nats", text: include_str!("../../pipelines/broker-to-nats.toml") },
];

/// The built-in pipeline called `name`, if there is one.
pub fn built_in(name: &str) -> Option<&'static BuiltIn> {
    BUILT_IN.iter().find(|pipeline| pipeline.name == name)
}

/// The first sentence of a file's leading `#` comment (its first paragraph), or "".
pub fn first_sentence(text: &str) -> String {
    let paragraph: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|line| line.starts_with('#') && line.trim_start_matches('#').trim() != "")
        .map(|line| line.trim_start_matches('#').trim())
        .collect();
    let joined = paragraph.join(" ");
    // A full stop ends the sentence; an ellipsis ("...") does not.
    let bytes = joined.as_bytes();
    let end = (0..bytes.len().saturating_sub(1))
        .find(|&i| bytes[i] == b'.' && bytes[i + 1] == b' ' && (i == 0 || bytes[i - 1] != b'.'));
    match end {
        Some(end) => joined[..=end].to_string(),
        None => joined,
    }
}

/// The text of a pipeline given as a path or as a built-in name, and the
/// path its errors should name. An existing file wins over a built-in of the
/// same name; a name that is neither says which built-ins there are.
pub fn read(source: &Path) -> Result<(PathBuf, String), String> {
    match std::fs::read_to_string(source) {
        Ok(text) => Ok((source.to_path_buf(), text)),
        Err(error) => match source.to_str().and_then(built_in) {
            Some(pipeline) => Ok((pipeline.path(), pipeline.text.to_string())),
            None => {
                let names: Vec<&str> = BUILT_IN.iter().map(|pipeline| pipeline.name).collect();
                Err(format!(
                    "cannot read {}: {error} (nor is it a built-in pipeline: {}; see `stageflow pipelines`)",
                    source.display(),
                    names.join(", ")
                ))
            }
        },
    }
}

/// Reads (from a path, else a built-in name) and checks a pipeline file,
/// applying `--set stage.key=value` overrides; `vars` resolve `${NAME}`
/// before the environment does.
pub fn load(
    registry: &Registry,
    path: &Path,
    overrides: &[String],
    vars: &HashMap<String, String>,
) -> Result<PipelineFile, String> {
    let (path, text) = read(path)?;
    let lookup = |name: &str| {
        vars.get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
            .or_else(|| (name == EMULATOR_URL).then(|| DEFAULT_EMULATOR_URL.to_string()))
    };
    let mut file = parse_pipeline(&path, &text, &lookup).map_err(|errors| describe(&errors))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_file_is_built_in_once() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines");
        let mut shipped: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter_map(|name| name.strip_suffix(".toml").map(str::to_string))
            .collect();
        shipped.sort();
        let mut built_in: Vec<String> = BUILT_IN.iter().map(|pipeline| pipeline.name.to_string()).collect();
        built_in.sort();
        assert_eq!(built_in, shipped, "pipelines/*.toml and BUILT_IN differ");
        for pipeline in BUILT_IN {
            let on_disk = std::fs::read_to_string(dir.join(format!("{}.toml", pipeline.name))).unwrap();
            assert_eq!(pipeline.text, on_disk, "{}", pipeline.name);
        }
    }

    #[test]
    fn a_name_reads_the_built_in_and_a_path_wins_over_it() {
        let (path, text) = read(Path::new("demo")).unwrap();
        assert_eq!(path, Path::new("<built-in>/demo.toml"));
        assert_eq!(text, built_in("demo").unwrap().text);
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("demo");
        std::fs::write(&local, "# mine").unwrap();
        assert_eq!(read(&local).unwrap(), (local.clone(), "# mine".to_string()));
    }

    #[test]
    fn an_unknown_name_lists_the_built_ins() {
        let error = read(Path::new("tweet")).unwrap_err();
        assert!(error.starts_with("cannot read tweet: "), "{error}");
        assert!(error.contains("nor is it a built-in pipeline: demo, tweets,"), "{error}");
        assert!(error.contains("stageflow pipelines"), "{error}");
    }

    #[test]
    fn the_summary_is_the_first_sentence_of_the_leading_comment() {
        assert_eq!(first_sentence("# One: two\n# three. Four.\n#\n# Later.\n[pipeline]"), "One: two three.");
        assert_eq!(first_sentence("# No full stop\n\n[pipeline]"), "No full stop");
        assert_eq!(first_sentence("# As in a -> ... -> b. More."), "As in a -> ... -> b.");
        assert_eq!(first_sentence("[pipeline]\n# not leading"), "");
        assert!(BUILT_IN.iter().all(|pipeline| !pipeline.summary().is_empty()));
    }
}
