//! `stageflow kinds`: every stage kind pipeline files can use, with its settings.

use stageflow::config::Registry;

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
