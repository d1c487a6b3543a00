//! The contract is the only place its strings are spelled: production code elsewhere
//! names subjects, streams, event types, consumers and headers through this crate.

use std::path::{Path, PathBuf};

/// Every string constant this crate defines.
fn contract_values() -> Vec<String> {
    let mut values = Vec::new();
    for file in rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        let consumers = file.ends_with("consumers.rs");
        for line in production(&text).lines() {
            let value = line
                .split_once(": &str = \"")
                .or_else(|| line.trim_start().strip_prefix("name: \"").map(|r| ("", r)));
            if let Some((_, rest)) = value {
                let value = rest.split('"').next().unwrap();
                // Plain words and header names like `content-type` are everybody's.
                let ours = value.contains('.')
                    || value.chars().all(|c| c.is_ascii_uppercase())
                    || value.starts_with("sb-")
                    || value.starts_with("Nats-")
                    || consumers;
                if ours {
                    values.push(value.to_owned());
                }
            }
        }
    }
    values
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The part of a source file before its unit tests.
fn production(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// Whether `line` spells a contract string.
fn spelled(line: &str, values: &[String]) -> bool {
    values.iter().any(|v| line.contains(&format!("\"{v}\"")))
        || line.contains("\"events.")
        || line.contains("\"internal.")
}

#[test]
fn the_scan_sees_what_it_looks_for() {
    let values = contract_values();
    for line in [
        r#"let s = "events.{}.x";"#,
        r#"Some("internal.actions.action_completed".into())"#,
        r#"name: "CONVERSATIONS".into(),"#,
        r#"SubscriptionConfig::new("flows-effects", log)"#,
        r#"headers.insert("sb-event-type", t);"#,
        r#"e.event_type == "flow_run.ended""#,
    ] {
        assert!(spelled(line, &values), "{line}");
    }
    assert!(!spelled(r#"v.push("auth.username", "required")"#, &values));
}

#[test]
fn no_contract_string_is_spelled_outside_the_contract() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let values = contract_values();
    assert!(values.iter().any(|v| v == "conversation.updated"));
    assert!(
        values
            .iter()
            .any(|v| v == "internal.flows.action_requested")
    );
    let mut found = Vec::new();
    for area in ["services", "libs"] {
        for krate in std::fs::read_dir(root.join(area)).unwrap() {
            let krate = krate.unwrap().path();
            if krate.ends_with("contract") {
                continue;
            }
            let src = krate.join("src");
            if !src.is_dir() {
                continue;
            }
            for file in rust_files(&src) {
                let text = std::fs::read_to_string(&file).unwrap();
                for (n, line) in production(&text).lines().enumerate() {
                    if line.trim_start().starts_with("//") {
                        continue;
                    }
                    if spelled(line, &values) {
                        found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "use switchboard_contract instead of spelling these:\n{}",
        found.join("\n")
    );
}
