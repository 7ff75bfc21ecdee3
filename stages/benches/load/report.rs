//! The figures and time series a run collects, printed as JSON lines and written to `report.json`.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// One named line of points, as drawn in a plot and stored in the report.
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend entry.
    pub name: String,
    /// `(x, y)` points in drawing order.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series named `name` with `points`.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series { name: name.into(), points }
    }

    /// The largest y, 0 for an empty series.
    pub fn max_y(&self) -> f64 {
        self.points.iter().map(|&(_, y)| y).fold(0.0, f64::max)
    }
}

/// Everything a run measured: scalar figures and the series behind each plot.
#[derive(Default)]
pub struct Report {
    figures: Vec<Value>,
    series: serde_json::Map<String, Value>,
    plots: Vec<String>,
    notes: Vec<String>,
}

impl Report {
    /// Records one figure and prints it as a JSON line on stdout.
    pub fn figure(&mut self, bench: &str, metric: &str, value: f64) {
        let value = (value * 100.0).round() / 100.0;
        let line = json!({"bench": bench, "metric": metric, "value": value});
        println!("{line}");
        self.figures.push(line);
    }

    /// Records the median of `values` (one per round) as `metric`, and their
    /// spread as `metric_min` and `metric_max`; nothing for no values.
    pub fn spread(&mut self, bench: &str, metric: &str, values: &[f64]) {
        let Some(median) = median(values) else { return };
        let (min, max) = values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        self.figure(bench, metric, median);
        self.figure(bench, &format!("{metric}_min"), min);
        self.figure(bench, &format!("{metric}_max"), max);
    }

    /// Stores the series drawn in plot `plot` under that name.
    pub fn series(&mut self, plot: &str, series: &[Series]) {
        let lines: Vec<Value> = series.iter().map(|s| json!({"name": s.name, "points": s.points})).collect();
        self.series.insert(plot.to_string(), Value::Array(lines));
    }

    /// Remembers a plot file written for this report.
    pub fn plot_written(&mut self, path: &Path) {
        println!("plot: {}", path.display());
        self.plots.push(path.display().to_string());
    }

    /// Adds a note (a skipped or failed section, a cap that was hit).
    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        println!("note: {text}");
        self.notes.push(text);
    }

    /// Writes `report.json` into `dir` with the run's settings.
    pub fn write(&self, dir: &Path, run: Value) -> std::io::Result<PathBuf> {
        let path = dir.join("report.json");
        let document = json!({
            "run": run,
            "figures": self.figures,
            "series": self.series,
            "plots": self.plots,
            "notes": self.notes,
        });
        let text = serde_json::to_string_pretty(&document).map_err(std::io::Error::other)?;
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

/// `bench-report/` in the workspace's target directory: `CARGO_TARGET_DIR` (a relative one taken from the workspace root) or `target/`.
pub fn report_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("stages/ has a parent");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace.join("target"), PathBuf::from);
    workspace.join(target).join("bench-report")
}

/// The median of `values` (the mean of the middle two for an even count); `None` for none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[middle]),
        _ => Some((sorted[middle - 1] + sorted[middle]) / 2.0),
    }
}
