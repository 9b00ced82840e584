//! The documentation stays true to the code: docs/configuration.md's settings table names exactly
//! the env vars of `granda::config::Settings` (with their defaults), and README.md stands alone
//! (no pointer outside the repository, every `docs/*.md` it links to exists). Needs no services.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use clap::{CommandFactory, Parser};

/// Settings as clap sees them, the way the process commands flatten them.
#[derive(Parser)]
struct Only {
    #[command(flatten)]
    s: granda::config::Settings,
}

/// Env vars the table may name that are not fields of `Settings`.
const NOT_SETTINGS: &[&str] = &["RUST_LOG"];

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every env var clap knows for `Settings`, with its default value when it has a non-empty one.
fn settings_env() -> BTreeMap<String, Option<String>> {
    Only::command()
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_str()?.to_string();
            let default = arg
                .get_default_values()
                .first()
                .and_then(|d| d.to_str())
                .filter(|d| !d.is_empty())
                .map(str::to_string);
            Some((env, default))
        })
        .collect()
}

/// The settings table of docs/configuration.md: its rows' first cell (a backticked env var) and
/// second cell (the default as written).
fn table_rows(doc: &str) -> Vec<(String, String)> {
    let mut lines = doc.lines().skip_while(|l| !l.starts_with("| env var"));
    assert!(
        lines.next().is_some(),
        "docs/configuration.md has no table whose header starts with `| env var`"
    );
    lines
        .skip(1) // the |---| line
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1).copied().unwrap_or_default();
            let name = name.trim_matches('`').to_string();
            (name, cells.get(2).copied().unwrap_or_default().to_string())
        })
        .collect()
}

#[test]
fn config_table_matches_settings() {
    let known = settings_env();
    assert!(known.len() > 30, "clap lists only {} settings", known.len());
    let rows = table_rows(&read("docs/configuration.md"));
    let mut seen = BTreeSet::new();
    for (name, default) in &rows {
        assert!(
            seen.insert(name.clone()),
            "{name} has two rows in docs/configuration.md"
        );
        if NOT_SETTINGS.contains(&name.as_str()) {
            continue;
        }
        let Some(clap_default) = known.get(name) else {
            panic!("docs/configuration.md has a row `{name}` that names no setting of Settings");
        };
        if let Some(d) = clap_default {
            assert!(
                default.contains(&format!("`{d}`")),
                "docs/configuration.md gives {name} the default {default:?}; Settings says `{d}`"
            );
        }
    }
    let missing: Vec<_> = known.keys().filter(|k| !seen.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "settings missing from docs/configuration.md: {missing:?}"
    );
}

/// A markdown file's lines outside fenced code blocks.
fn prose(doc: &str) -> Vec<&str> {
    let mut fenced = false;
    doc.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// The anchors of a markdown file's headings, as GitHub makes them.
fn anchors(doc: &str) -> BTreeSet<String> {
    prose(doc)
        .into_iter()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

/// The relative link targets of a markdown file (`[text](target)`, outside code blocks).
fn links(doc: &str) -> Vec<String> {
    prose(doc)
        .into_iter()
        .flat_map(|l| l.split("](").skip(1))
        .filter_map(|piece| piece.split(')').next())
        .filter(|t| !t.starts_with("http://") && !t.starts_with("https://"))
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_stands_alone_and_its_doc_links_exist() {
    let readme = read("README.md");
    assert!(
        !readme.contains("../shared"),
        "README.md points outside the repository"
    );
    let linked: BTreeSet<_> = links(&readme)
        .into_iter()
        .filter_map(|t| t.split('#').next().map(str::to_string))
        .filter(|t| t.starts_with("docs/") && t.ends_with(".md"))
        .collect();
    assert!(linked.len() >= 5, "README.md links to only {linked:?}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for target in &linked {
        assert!(
            root.join(target).is_file(),
            "README.md links to {target}, which does not exist"
        );
    }
}

/// Every relative link in README.md and docs/*.md leads to a file that exists, and every
/// `#anchor` to a heading of that file.
#[test]
fn doc_links_and_anchors_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    for file in &files {
        let doc = std::fs::read_to_string(file).unwrap();
        assert!(
            !doc.contains("../shared"),
            "{} points outside the repository",
            file.display()
        );
        for link in links(&doc) {
            let (path, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            assert!(
                target.exists(),
                "{} links to {link}, which does not exist",
                file.display()
            );
            if !anchor.is_empty() {
                let text = std::fs::read_to_string(&target).unwrap();
                assert!(
                    anchors(&text).contains(anchor),
                    "{} links to {link}, but {} has no heading #{anchor}",
                    file.display(),
                    target.display()
                );
            }
        }
    }
}
