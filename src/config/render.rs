//! The stage graph of a pipeline file as text for drawing tools.

use super::{DispatcherDecl, PipelineFile, SubscriptionDecl};

fn label(subscription: &SubscriptionDecl) -> String {
    let mut parts = vec![format!("max {}", subscription.bounds.max_demand())];
    if let Some(partition) = subscription.partition {
        parts.push(format!("partition {partition}"));
    }
    if let Some(selector) = &subscription.selector {
        parts.push(format!("selector {selector}"));
    }
    parts.join(", ")
}

fn dispatcher_note(dispatcher: Option<(DispatcherDecl, super::Location)>) -> &'static str {
    match dispatcher.map(|(d, _)| d) {
        Some(DispatcherDecl::Broadcast) => " · broadcast",
        Some(DispatcherDecl::Partition { .. }) => " · partition",
        _ => "",
    }
}

fn quoted(text: &str) -> String {
    text.replace('"', "'")
}

/// Mermaid flowchart text (paste into any Mermaid renderer).
pub fn to_mermaid(file: &PipelineFile) -> String {
    let mut text = format!("%% pipeline {}\nflowchart LR\n", quoted(&file.name));
    for (index, stage) in file.stages.iter().enumerate() {
        text.push_str(&format!(
            "    s{index}[\"{}<br/><small>{}{}</small>\"]\n",
            quoted(&stage.id),
            quoted(&stage.kind),
            dispatcher_note(stage.dispatcher)
        ));
    }
    for (index, stage) in file.stages.iter().enumerate() {
        for subscription in &stage.subscribe_to {
            if let Some(from) = file.stages.iter().position(|s| s.id == subscription.producer) {
                text.push_str(&format!("    s{from} -->|\"{}\"| s{index}\n", quoted(&label(subscription))));
            }
        }
    }
    text
}

/// Graphviz DOT text (`dot -Tsvg`).
pub fn to_dot(file: &PipelineFile) -> String {
    let mut text = format!("digraph \"{}\" {{\n    rankdir=LR;\n    node [shape=box];\n", quoted(&file.name));
    for stage in &file.stages {
        text.push_str(&format!(
            "    \"{}\" [label=\"{}\\n{}{}\"];\n",
            quoted(&stage.id),
            quoted(&stage.id),
            quoted(&stage.kind),
            dispatcher_note(stage.dispatcher)
        ));
    }
    for stage in &file.stages {
        for subscription in &stage.subscribe_to {
            text.push_str(&format!(
                "    \"{}\" -> \"{}\" [label=\"{}\"];\n",
                quoted(&subscription.producer),
                quoted(&stage.id),
                quoted(&label(subscription))
            ));
        }
    }
    text.push_str("}\n");
    text
}
