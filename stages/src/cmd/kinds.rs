//! `stageflow kinds`: every stage kind pipeline files can use, with its settings.

use stageflow::config::Registry;

/// Arguments of `stageflow kinds`.
#[derive(Debug, Clone, clap::Args)]
pub struct KindsArgs {
    /// Writes the reference page docs/kinds.md instead of the plain list.
    #[arg(long)]
    pub markdown: bool,
}

/// Runs `stageflow kinds`: the plain list, or with `--markdown` the reference page.
pub fn kinds_command(registry: &Registry, args: &KindsArgs) -> Result<(), String> {
    if args.markdown {
        print!("{}", kinds_markdown(registry));
    } else {
        print!("{}", kinds_report(registry));
    }
    Ok(())
}

/// `stageflow kinds`: every stage kind with its settings.
pub fn kinds_report(registry: &Registry) -> String {
    let mut text = String::new();
    for kind in registry.kinds() {
        let takes = kind.input().map_or("-", |t| t.name);
        let emits = kind.output().map_or("-", |t| t.name);
        text.push_str(&format!(
            "{}  ({:?}; takes {takes}, emits {emits})\n    {}\n",
            kind.name(),
            kind.role(),
            kind.summary()
        ));
        for setting in kind.settings() {
            let required = if setting.required { " (required)" } else { "" };
            text.push_str(&format!("    {}{required}: {}\n", setting.name, setting.help));
        }
    }
    text
}

/// `stageflow kinds --markdown`: docs/kinds.md, the stage kind reference,
/// made from the registry (names, roles, event types, the settings structs'
/// doc comments) so it cannot drift from the code.
pub fn kinds_markdown(registry: &Registry) -> String {
    let mut text = String::from(
        "# Stage kinds\n\n\
         Every `kind` a pipeline file can use, with its settings. Generated from the\n\
         kind registry by `stageflow kinds --markdown > docs/kinds.md`; a test fails\n\
         when this page and the code differ. Settings every stage takes (`workers`,\n\
         `buffer_size`, `subscribe_to`, ...) are in [pipelines.md](pipelines.md).\n",
    );
    for kind in registry.kinds() {
        let takes = kind.input().map_or("-", |t| t.name);
        let emits = kind.output().map_or("-", |t| t.name);
        text.push_str(&format!("\n## `{}`\n\n{}\n\n", kind.name(), kind.summary()));
        text.push_str(&format!("{:?}; takes {takes}, emits {emits}.\n", kind.role()));
        let settings = kind.settings();
        if !settings.is_empty() {
            text.push_str("\n| setting | required | what it is |\n|---|---|---|\n");
            for setting in settings {
                let required = if setting.required { "yes" } else { "" };
                let help = setting.help.replace('|', "\\|");
                text.push_str(&format!("| `{}` | {required} | {help} |\n", setting.name));
            }
        }
    }
    text
}
