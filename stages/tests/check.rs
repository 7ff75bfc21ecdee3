//! `stageflow check`: every broken file in tests/broken names the right line,
//! column and stage; every shipped pipeline passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use stageflow::config::parse_pipeline;
use stageflow_stages::pipelines::EMULATOR_URL;
use stageflow_stages::registry;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("stages/ is inside the repository").to_path_buf()
}

/// Runs the checks the CLI runs, returning every error line.
fn check(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).expect("readable fixture");
    let name = Path::new(path.file_name().expect("a file name"));
    // As `stageflow check` does: ${EMULATOR_URL} defaults to where `stageflow emulate` listens.
    let lookup = |var: &str| (var == EMULATOR_URL).then(|| "http://127.0.0.1:4000".to_string());
    let file = parse_pipeline(name, &text, &lookup).map_err(|errors| errors.to_string())?;
    registry().check(&file).map_err(|errors| errors.to_string())
}

#[test]
fn each_broken_file_is_reported_at_its_line_and_stage() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken");
    let mut checked = 0;
    for entry in std::fs::read_dir(&directory).expect("tests/broken exists") {
        let path = entry.expect("a directory entry").path();
        let text = std::fs::read_to_string(&path).expect("readable fixture");
        let expected = text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} must start with '# expect: <message>'", path.display()));
        let errors = check(&path).expect_err(&format!("{} must be rejected", path.display()));
        assert!(
            errors.lines().any(|line| line.starts_with(expected)),
            "{}: expected a line starting with\n  {expected}\ngot\n  {errors}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 10, "one fixture per error kind, found {checked}");
}

#[test]
fn every_shipped_pipeline_passes_check() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repository().join("pipelines")).expect("pipelines/ exists") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|extension| extension == "toml") {
            // As a user runs it: from the repository, where relative paths in the files point.
            let output = Command::new(env!("CARGO_BIN_EXE_stageflow"))
                .current_dir(repository())
                .arg("check")
                .arg(&path)
                .env_remove("EMULATOR_URL")
                .env_remove("MONGODB_URI")
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{} fails check:\n{}",
                path.display(),
                String::from_utf8_lossy(&output.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "tweets, tweets-mongo, csv-import and demo at least; checked {checked}");
}

#[test]
fn the_check_command_exits_non_zero_and_counts_the_problems() {
    let broken = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken/missing-stage.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_stageflow")).arg("check").arg(&broken).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("stage 'sum': subscribes to 'dobule'"), "{stderr}");
    assert!(stderr.contains("1 problem found"), "{stderr}");

    let good = repository().join("pipelines/demo.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_stageflow")).arg("check").arg(&good).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok — pipeline 'demo', 3 stages"));
}

#[test]
fn run_drains_and_summarises_with_overrides_and_rejects_bad_ones() {
    let data = tempfile::tempdir().unwrap();
    let demo = repository().join("pipelines/demo.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_stageflow"))
        .args(["run"])
        .arg(&demo)
        .args(["--set", "numbers.count=5000", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("pipeline 'demo' finished"), "{stdout}");
    let sum_row = stdout.lines().find(|line| line.starts_with("| sum")).expect("a summary row for sum");
    assert!(sum_row.contains("| 5000 "), "sum took all 5000 numbers: {sum_row}");
    // 2 * (1 + ... + 5000)
    assert!(stderr.contains("total=25005000"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_stageflow"))
        .arg("run")
        .arg(&demo)
        .args(["--set", "nubmers.count=5"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--set nubmers.count=5: no stage 'nubmers' in this file (did you mean 'numbers'?)"),
        "{stderr}"
    );
}

#[test]
fn graph_prints_mermaid_and_dot() {
    let demo = repository().join("pipelines/demo.toml");
    let mermaid = Command::new(env!("CARGO_BIN_EXE_stageflow")).arg("graph").arg(&demo).output().unwrap();
    let mermaid = String::from_utf8_lossy(&mermaid.stdout);
    assert!(mermaid.contains("flowchart LR") && mermaid.contains("s0 -->|\"max 1000\"| s1"), "{mermaid}");
    let dot = Command::new(env!("CARGO_BIN_EXE_stageflow"))
        .arg("graph")
        .arg(&demo)
        .args(["--format", "dot"])
        .output()
        .unwrap();
    let dot = String::from_utf8_lossy(&dot.stdout);
    assert!(dot.contains("\"double\" -> \"sum\""), "{dot}");
}

/// `stageflow kinds` prints what tests/kinds.txt holds: every kind, its role,
/// event types, summary and settings (from the settings structs' doc
/// comments). After an intended change: `stageflow kinds > stages/tests/kinds.txt`.
#[test]
fn the_kinds_command_lists_every_kind_with_its_settings() {
    let output = Command::new(env!("CARGO_BIN_EXE_stageflow")).arg("kinds").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let listed = String::from_utf8(output.stdout).expect("UTF-8");
    let expected_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kinds.txt");
    let expected = std::fs::read_to_string(&expected_path).expect("tests/kinds.txt");
    for (line, (got, want)) in listed.lines().zip(expected.lines()).enumerate() {
        assert_eq!(
            got,
            want,
            "line {} of `stageflow kinds` differs from {}",
            line + 1,
            expected_path.display()
        );
    }
    assert_eq!(listed.lines().count(), expected.lines().count(), "`stageflow kinds` lists other kinds");
    let kinds = listed.lines().filter(|line| !line.starts_with(' ')).count();
    assert_eq!(kinds, registry().kinds().count(), "one entry per registered kind");
}

/// docs/kinds.md is what `stageflow kinds --markdown` makes from the registry,
/// so the reference cannot drift from the code. After an intended change:
/// `cargo run -- kinds --markdown > docs/kinds.md`.
#[test]
fn the_kinds_reference_page_is_made_from_the_registry() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/kinds.md");
    let page = std::fs::read_to_string(&path).expect("docs/kinds.md");
    let made = stageflow_stages::cmd::kinds::kinds_markdown(&registry());
    for (line, (got, want)) in page.lines().zip(made.lines()).enumerate() {
        assert_eq!(
            got,
            want,
            "line {} of {} is stale; regenerate: cargo run -- kinds --markdown > docs/kinds.md",
            line + 1,
            path.display()
        );
    }
    assert_eq!(
        page,
        made,
        "{} is stale; regenerate: cargo run -- kinds --markdown > docs/kinds.md",
        path.display()
    );
    for kind in registry().kinds() {
        assert!(page.contains(&format!("\n## `{}`\n", kind.name())), "{} has no section", kind.name());
    }
    for (number, line) in page.lines().enumerate() {
        assert_eq!(
            html_looking_tag(line),
            None,
            "line {} of {}: a markdown viewer (and rustdoc, for the doc comment it comes from) takes this for an \
             HTML tag and hides it; put the placeholder in backticks in the kind's doc comment",
            number + 1,
            path.display()
        );
    }
}

/// The first `<word` outside a code span of a markdown line, which renderers treat as HTML.
fn html_looking_tag(line: &str) -> Option<&str> {
    line.split('`').step_by(2).find_map(|prose| {
        prose.match_indices('<').find_map(|(at, _)| {
            let rest = &prose[at..];
            rest[1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '/').then_some(rest)
        })
    })
}

#[test]
fn a_placeholder_outside_backticks_looks_like_an_html_tag() {
    assert_eq!(html_looking_tag("a word<TAB>score file"), Some("<TAB>score file"));
    assert_eq!(html_looking_tag("ids are `<prefix>-<n>` (a < b, x <= 3)"), None);
    assert_eq!(html_looking_tag("`code` then </b>"), Some("</b>"));
}
