//! The repository stands alone: every document a file cites is in the repository.
//!
//! Kernel facts are cited as `docs/protocol.md#anchor`; a research note kept outside the
//! repository cannot be followed by a reader of the code, so citing one fails here:
//! - a `*.md` path must resolve inside the repository (from its root or the citing
//!   file's folder; an installed path under `usr/share/doc/` by its file name in `docs/`
//!   or the root);
//! - a `protocol.md#anchor` must name a heading or an `<a id>` of `docs/protocol.md`;
//! - no file names the outside notes or cites by section sign, their numbering scheme.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// Names of the notes the project was started from, which live outside it. Built from
/// parts so this file does not match itself.
const OUTSIDE_NOTES: &[&str] = &[
    concat!("kernel-vma-lock", "-protocol"),
    concat!("aya", "-notes"),
];
const SECTION_SIGN: char = '\u{a7}';

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Every text file of the repository, build output and hidden folders left out.
fn text_files(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("readable folder")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                text_files(&path, out);
            }
        } else if let Ok(text) = String::from_utf8(std::fs::read(&path).expect("readable")) {
            out.push((path, text));
        }
    }
}

/// The `*.md` paths a text names, with the `#anchor` that follows, if any.
fn md_citations(text: &str) -> Vec<(String, Option<String>)> {
    let path_char = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
    let anchor_char = |c: char| c.is_ascii_alphanumeric() || "_-".contains(c);
    let mut out = Vec::new();
    for (at, _) in text.match_indices(".md") {
        let end = at + 3;
        if text[end..].chars().next().is_some_and(path_char) {
            continue; // `.mdx`, `.md.gz`, ...
        }
        let start = text[..at]
            .char_indices()
            .rev()
            .take_while(|&(_, c)| path_char(c))
            .last()
            .map_or(at, |(i, _)| i);
        if start == at {
            continue;
        }
        let anchor = text[end..].strip_prefix('#').map(|rest| {
            let len = rest.find(|c: char| !anchor_char(c)).unwrap_or(rest.len());
            rest[..len].to_string()
        });
        out.push((text[start..end].to_string(), anchor));
    }
    out
}

/// GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens.
fn heading_slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|&c| c.is_alphanumeric() || c == ' ' || c == '-' || c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.starts_with('#') {
            out.insert(heading_slug(line.trim_start_matches('#')));
        }
        for (at, _) in line.match_indices("<a id=\"") {
            let rest = &line[at + 7..];
            if let Some(end) = rest.find('"') {
                out.insert(rest[..end].to_string());
            }
        }
    }
    out
}

fn resolves(root: &Path, citing: &Path, cited: &str) -> bool {
    if cited.contains("usr/share/doc/") {
        let name = Path::new(cited).file_name().expect("a file name");
        return root.join("docs").join(name).is_file() || root.join(name).is_file();
    }
    let cited = cited.trim_start_matches("./");
    root.join(cited).is_file() || citing.parent().is_some_and(|d| d.join(cited).is_file())
}

#[test]
fn every_cited_document_is_in_the_repository() {
    let root = root();
    let protocol =
        std::fs::read_to_string(root.join("docs/protocol.md")).expect("docs/protocol.md");
    let protocol_anchors = anchors(&protocol);
    let mut files = Vec::new();
    text_files(&root, &mut files);
    assert!(files.len() > 50, "the walk found the repository");

    let mut wrong = Vec::new();
    for (path, text) in &files {
        if path.ends_with(file!()) || path.ends_with("tests/docs_stand_alone.rs") {
            continue; // its examples are what it rejects
        }
        let shown = path.strip_prefix(&root).unwrap_or(path).display();
        for (n, line) in text.lines().enumerate() {
            for note in OUTSIDE_NOTES {
                if line.contains(note) {
                    wrong.push(format!("{shown}:{}: names the outside note {note}", n + 1));
                }
            }
            if line.contains(SECTION_SIGN) {
                wrong.push(format!(
                    "{shown}:{}: cites by section sign; cite docs/protocol.md#anchor",
                    n + 1
                ));
            }
            for (cited, anchor) in md_citations(line) {
                if !resolves(&root, path, &cited) {
                    wrong.push(format!(
                        "{shown}:{}: {cited} is not in the repository",
                        n + 1
                    ));
                }
                if let Some(anchor) = anchor.filter(|_| cited.ends_with("protocol.md"))
                    && !protocol_anchors.contains(&anchor)
                {
                    wrong.push(format!(
                        "{shown}:{}: docs/protocol.md has no #{anchor}",
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_checks_catch_what_they_are_for() {
    let cited = md_citations("see `docs/protocol.md#race-8` and notes.md, not x.mdx");
    assert_eq!(
        cited,
        [
            ("docs/protocol.md".to_string(), Some("race-8".to_string())),
            ("notes.md".to_string(), None)
        ]
    );
    let root = root();
    let here = root.join("vmatrace/src/lib.rs");
    assert!(resolves(&root, &here, "docs/protocol.md"));
    assert!(resolves(&root, &root.join("docs/x.md"), "protocol.md"));
    assert!(resolves(&root, &here, "./usr/share/doc/vmatrace/fleet.md"));
    assert!(!resolves(
        &root,
        &here,
        concat!("kernel-vma-lock", "-protocol.md")
    ));
    let a = anchors("## Reader path\n<a id=\"race-1\"></a>\n### Race 1: `x` y\n");
    assert!(a.contains("reader-path") && a.contains("race-1") && a.contains("race-1-x-y"));
}
