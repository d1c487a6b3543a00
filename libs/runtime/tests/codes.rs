//! The error-code registry is the one list: `docs/errors.md` is its rendering, every
//! `SB-<AREA>-<NNNN>` literal in the source tree is registered, and every code is explained.
//!
//! `UPDATE_DOCS=1 cargo test -p switchboard-runtime --test codes` rewrites `docs/errors.md`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use switchboard_runtime::codes::{self, ALL, AREAS, RENAMED};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

#[test]
fn docs_errors_md_is_the_rendering_of_the_registry() {
    let path = workspace_root().join("docs/errors.md");
    let rendered = codes::render_markdown();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::create_dir_all(path.parent().expect("docs/ has a parent")).expect("create docs/");
        std::fs::write(&path, &rendered).expect("write docs/errors.md");
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == rendered,
        "docs/errors.md is not the rendering of libs/runtime/src/codes.rs; regenerate it with\n  \
         UPDATE_DOCS=1 cargo test -p switchboard-runtime --test codes\nand commit the result"
    );
}

#[test]
fn ids_are_unique_well_formed_and_explained() {
    let mut seen = HashSet::new();
    for code in ALL {
        assert!(seen.insert(code.id), "{} is registered twice", code.id);
        assert!(
            well_formed(code.id),
            "{} is not SB-<AREA>-<NNNN> with a registered area",
            code.id
        );
        assert!(
            !code.meaning.trim().is_empty(),
            "{} has no meaning",
            code.id
        );
        assert!(
            !code.action.trim().is_empty(),
            "{} says nothing to do",
            code.id
        );
    }
}

#[test]
fn codes_are_listed_by_area_then_number() {
    let position = |code: &codes::Code| {
        let area = AREAS
            .iter()
            .position(|a| a.id == code.area())
            .unwrap_or(usize::MAX);
        (area, code.id)
    };
    for pair in ALL.windows(2) {
        assert!(
            position(&pair[0]) < position(&pair[1]),
            "{} should come after {} in codes::ALL",
            pair[0].id,
            pair[1].id
        );
    }
}

#[test]
fn renamed_codes_point_at_registered_ones() {
    for renamed in RENAMED {
        assert_ne!(renamed.old, renamed.new);
        assert!(well_formed(renamed.old), "{}", renamed.old);
        assert!(
            codes::find(renamed.new).is_some(),
            "{} was renamed to {}, which is not registered",
            renamed.old,
            renamed.new
        );
        assert!(!renamed.cases.trim().is_empty(), "{}", renamed.old);
    }
}

#[test]
fn a_code_builds_the_wire_message() {
    let status = codes::CONV_NOT_FOUND.status("conversation not found");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "SB-CONV-0404: conversation not found");
    assert_eq!(codes::CONV_NOT_FOUND.area(), "CONV");
    assert_eq!(
        codes::ACT_IN_PROGRESS.message(format_args!("key {}", 7)),
        "SB-ACT-0007: key 7"
    );
}

#[test]
fn every_code_literal_in_the_source_is_registered() {
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in ["services", "libs", "proto"] {
        collect_sources(&root.join(dir), &mut files);
    }
    assert!(
        !files.is_empty(),
        "no sources found under {}",
        root.display()
    );
    let mut unregistered = Vec::new();
    // The registry itself names retired ids (`RENAMED`).
    let registry = root.join("libs/runtime/src/codes.rs");
    for file in files.iter().filter(|f| **f != registry) {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (line, id) in code_literals(&without_unit_tests(&text)) {
            if codes::find(&id).is_none() {
                let shown = file.strip_prefix(&root).unwrap_or(file);
                unregistered.push(format!("{}:{line}: {id}", shown.display()));
            }
        }
    }
    assert!(
        unregistered.is_empty(),
        "error codes missing from libs/runtime/src/codes.rs (register them, or use a \
         registered constant):\n{}",
        unregistered.join("\n")
    );
}

/// `SB-<AREA>-<NNNN>` with an area from [`AREAS`].
fn well_formed(id: &str) -> bool {
    let Some((area, number)) = id.strip_prefix("SB-").and_then(|rest| rest.split_once('-')) else {
        return false;
    };
    AREAS.iter().any(|a| a.id == area)
        && number.len() == 4
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// Every `.rs` and `.proto` file under `dir`, leaving out `tests/` directories (integration
/// tests assert the wire format with literals) and build output.
fn collect_sources(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if !matches!(name.to_str(), Some("tests" | "target" | "benches")) {
                collect_sources(&path, files);
            }
        } else if path
            .extension()
            .is_some_and(|ext| ext == "rs" || ext == "proto")
        {
            files.push(path);
        }
    }
}

/// The text with every `#[cfg(test)] mod … { … }` block blanked (its lines kept, so line
/// numbers still match): unit tests may assert the wire format with literals.
fn without_unit_tests(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let starts_test_module = lines[i].trim() == "#[cfg(test)]"
            && lines.get(i + 1).is_some_and(|next| {
                let next = next.trim_start();
                (next.starts_with("mod ") || next.starts_with("pub mod "))
                    && next.trim_end().ends_with('{')
            });
        if !starts_test_module {
            kept.push(lines[i]);
            i += 1;
            continue;
        }
        // The block ends at the first `}` line indented like its `mod` line.
        let indent = &lines[i + 1][..lines[i + 1].len() - lines[i + 1].trim_start().len()];
        let end = format!("{indent}}}");
        let mut j = i + 2;
        while j < lines.len() && lines[j].trim_end() != end {
            j += 1;
        }
        let last = j.min(lines.len() - 1);
        kept.extend(std::iter::repeat_n("", last - i + 1));
        i = last + 1;
    }
    kept.join("\n")
}

/// `(line number, id)` of every `SB-<LETTERS>-<4 or more digits>` in `text` (more than four
/// digits is never registered, so it is reported).
fn code_literals(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let bytes = line.as_bytes();
        let mut from = 0;
        while let Some(at) = line[from..].find("SB-").map(|i| i + from) {
            from = at + 3;
            let letters = bytes[from..]
                .iter()
                .take_while(|b| b.is_ascii_uppercase())
                .count();
            let dash = from + letters;
            if letters == 0 || bytes.get(dash) != Some(&b'-') {
                continue;
            }
            let digits = bytes[dash + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits >= 4 {
                found.push((number + 1, line[at..dash + 1 + digits].to_owned()));
            }
        }
    }
    found
}
