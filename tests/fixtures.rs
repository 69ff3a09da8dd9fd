//! Parser and checker fixtures: `fixtures/ok/*.attn` must check cleanly and snapshot their
//! AST; `fixtures/err/*.attn` must fail and snapshot their rendered diagnostics. Every file
//! also has its spans checked (children inside parents, labels inside the file).

use attnc::diagnostic::has_errors;
use attnc::driver::{self, Source};
use attnc_tests::{attn_files, check_ast_spans, root, spans_inside};

fn name_of(p: &std::path::Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn ok_fixtures_check_cleanly() {
    let files = attn_files(&root().join("tests/fixtures/ok"));
    assert!(
        files.len() >= 10,
        "expected at least 10 ok fixtures, found {}",
        files.len()
    );
    for path in files {
        let src = Source::load(&path).expect("fixture readable");
        let rel = format!("ok/{}.attn", name_of(&path));
        let ast = attnc::syntax::parse(&src.text)
            .unwrap_or_else(|d| panic!("{rel}:\n{}", src.render(&d, false)));
        check_ast_spans(&ast, src.text.len()).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let diags = driver::check(&src, &[]);
        assert!(
            !has_errors(&diags),
            "{rel} should check cleanly:\n{}",
            src.render(&diags, false)
        );
        let mut snap = attnc::syntax::print::print_file(&ast);
        if !diags.is_empty() {
            snap.push_str("\n--- warnings ---\n");
            snap.push_str(&src.render(&diags, false));
        }
        insta::assert_snapshot!(format!("ok__{}", name_of(&path)), snap);
    }
}

#[test]
fn err_fixtures_fail_with_diagnostics() {
    let files = attn_files(&root().join("tests/fixtures/err"));
    assert!(
        files.len() >= 25,
        "expected at least 25 error fixtures, found {}",
        files.len()
    );
    for path in files {
        let src = Source::load(&path).expect("fixture readable");
        let rel = format!("err/{}.attn", name_of(&path));
        let diags = driver::check(&src, &[]);
        assert!(has_errors(&diags), "{rel} should fail to check");
        spans_inside(&diags, src.text.len()).unwrap_or_else(|e| panic!("{rel}: {e}"));
        for d in &diags {
            assert!(
                !d.labels.is_empty() || !d.notes.is_empty(),
                "{rel}: `{}` has neither a span nor a note",
                d.message
            );
        }
        // Render with the file name only, so snapshots do not depend on the checkout path.
        let shown = Source::new(rel.clone(), src.text.clone());
        insta::assert_snapshot!(
            format!("err__{}", name_of(&path)),
            shown.render(&diags, false)
        );
    }
}
