//! schemathesis against the API's own OpenAPI document: every operation is
//! called with generated requests, valid and invalid, authenticated as an
//! administrator, and every answer is checked against the document — no 5xx,
//! no status code, content type or body the document does not declare.
//!
//! schemathesis is a Python program; `.ci/run` installs it into
//! `target/st-venv`. `GEONEX_TEST_SCHEMATHESIS` names another `st`.

use std::path::PathBuf;
use std::time::Duration;

use crate::helpers::{Mode, TestConfig, spawn_app_with};

fn schemathesis() -> PathBuf {
    if let Ok(p) = std::env::var("GEONEX_TEST_SCHEMATHESIS") {
        return p.into();
    }
    let st = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/st-venv/bin/st");
    assert!(
        st.exists(),
        "schemathesis is not installed at {}: run `bash .ci/run`, or \
         `python3 -m venv target/st-venv && target/st-venv/bin/pip install schemathesis` \
         (or set GEONEX_TEST_SCHEMATHESIS to an `st` program)",
        st.display()
    );
    st
}

/// The checks that the API must pass on every operation.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";

async fn fuzz(mode: Mode) {
    let st = schemathesis();
    let app = spawn_app_with(TestConfig::in_mode(mode)).await;
    let doc = app.get("/openapi.json").await;
    assert_eq!(doc.status, 200);
    let dir = crate::helpers::TestDir::new("geonex-fuzz");
    let schema = dir.0.join("openapi.json");
    std::fs::write(&schema, doc.body.to_string()).expect("write the document");

    let mut cmd = tokio::process::Command::new(st);
    cmd.arg("run")
        .arg(&schema)
        .args(["--url", &app.address])
        .args(["--header", &format!("Authorization: Bearer {}", app.token)])
        .args(["--checks", CHECKS])
        // Bounded: about a minute per mode on two cores. One worker thread:
        // Python 3.11's parser is not safe to run from several threads at once
        // (hypothesis parses sources while it describes a strategy, and two
        // threads doing so fail with "AST constructor recursion depth mismatch").
        .args(["--max-examples", "30", "--seed", "20261202", "--workers", "1", "--request-timeout", "20"])
        // Logging out would revoke the token the run uses.
        .args(["--exclude-path", "/logout"])
        .args(["--no-color", "--report", "junit", "--report-dir"])
        .arg(dir.0.join("report"))
        .current_dir(&dir.0)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(420), cmd.output())
        .await
        .expect("schemathesis finished within seven minutes")
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}");
    assert!(out.status.success(), "schemathesis found failures ({mode:?} mode):\n{report}\n{}", String::from_utf8_lossy(&out.stderr));
}

in_both_modes!(schemathesis_finds_no_server_error_and_no_answer_the_document_does_not_declare);

async fn schemathesis_finds_no_server_error_and_no_answer_the_document_does_not_declare(mode: Mode) {
    fuzz(mode).await
}
