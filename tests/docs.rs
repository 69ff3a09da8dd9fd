//! The docs cannot rot: every ```attn block in docs/*.md and README.md must check cleanly,
//! and every ```attn-error block must fail to check.

use attnc::diagnostic::has_errors;
use attnc::driver::{self, Source};
use attnc_tests::root;

/// (file, line, fence info, text) of every fenced block whose info starts with "attn".
fn blocks() -> Vec<(String, usize, String, String)> {
    let mut files = vec![root().join("README.md")];
    if let Ok(rd) = std::fs::read_dir(root().join("docs")) {
        let mut md: Vec<_> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .collect();
        md.sort();
        files.extend(md);
    }
    let mut out = vec![];
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let name = f.strip_prefix(root()).unwrap_or(&f).display().to_string();
        let mut current: Option<(usize, String, String)> = None;
        for (i, line) in text.lines().enumerate() {
            let t = line.trim_start();
            match current.take() {
                None => {
                    if let Some(info) = t.strip_prefix("```") {
                        if info.starts_with("attn") {
                            current = Some((i + 1, info.trim().to_string(), String::new()));
                        }
                    }
                }
                Some((start, info, mut body)) => {
                    if t.starts_with("```") {
                        out.push((name.clone(), start, info, body));
                    } else {
                        body.push_str(line);
                        body.push('\n');
                        current = Some((start, info, body));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn attn_blocks_in_docs_check() {
    let blocks = blocks();
    assert!(
        blocks.len() >= 20,
        "expected the docs to hold at least 20 .attn examples, found {}",
        blocks.len()
    );
    for (file, line, info, text) in blocks {
        let src = Source::new(format!("{file}:{line}"), text.clone());
        let diags = driver::check(&src, &[]);
        match info.as_str() {
            "attn" => assert!(
                !has_errors(&diags),
                "{file}:{line} should check:\n{}",
                src.render(&diags, false)
            ),
            "attn-error" => assert!(
                has_errors(&diags),
                "{file}:{line} is marked attn-error but checks cleanly"
            ),
            other => panic!("{file}:{line}: unknown fence `{other}` (use attn or attn-error)"),
        }
    }
}

#[test]
fn readme_shows_the_pipeline_commands() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    for cmd in ["./run.sh", "./test.sh", "attnc explain", "--emit"] {
        assert!(readme.contains(cmd), "README.md should mention `{cmd}`");
    }
}
