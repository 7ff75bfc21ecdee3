//! `stageflow tap`: prints what a stage of a running pipeline emits.

/// Arguments of `stageflow tap`.
#[derive(Debug, Clone, clap::Args)]
pub struct TapArgs {
    /// The HTTP address of a running `stageflow run --http` (e.g. http://127.0.0.1:9090).
    pub url: String,
    /// The stage whose events to show.
    pub stage: String,
    /// Stop after this many events.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Share of the events to show, above 0 and at most 1 (e.g. 0.1 for one in ten).
    #[arg(long)]
    pub sample: Option<f64>,
}

/// Runs `stageflow tap` until the limit, the stage's end or Ctrl-C, writing to stdout.
pub async fn run_tap(args: TapArgs) -> Result<(), String> {
    crate::http::tap::run_tap(&args.url, &args.stage, args.limit, args.sample, std::io::stdout()).await
}
