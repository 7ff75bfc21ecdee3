//! `stageflow pipelines`: the pipelines built into the binary.

/// `stageflow pipelines`: one line per built-in pipeline, its name and what it is.
pub fn pipelines_report() -> String {
    let width = crate::pipelines::BUILT_IN.iter().map(|pipeline| pipeline.name.len()).max().unwrap_or(0);
    crate::pipelines::BUILT_IN
        .iter()
        .map(|pipeline| format!("{:<width$}  {}\n", pipeline.name, pipeline.summary()))
        .collect()
}
