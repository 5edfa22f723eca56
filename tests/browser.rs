//! The web pages in headless Chromium: each test runs one Node script of `tests/browser/`
//! against this build of `boothcast`. The scripts start the relay, the floor and booth clients
//! and the browser themselves, print their measured figures as JSON lines, and exit 0 on
//! success. They need `/usr/bin/chromium` and `npm ci --prefix web-client` (scripts/test.sh).

use std::process::Command;

/// Runs `node tests/browser/<name>.mjs`, failing with everything it printed if it fails.
fn run_script(name: &str) {
    let script = format!("tests/browser/{name}.mjs");
    let out = Command::new("node")
        .arg(&script)
        .env("BOOTHCAST_BIN", env!("CARGO_BIN_EXE_boothcast"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run node {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    print!("{stdout}");
}

#[test]
fn engineer_console() {
    run_script("console");
}

#[test]
fn delegate_page() {
    run_script("delegate");
}

#[test]
fn delegate_page_fallback() {
    run_script("fallback");
}

#[test]
fn delegate_page_access_code() {
    run_script("access");
}

#[test]
fn delegate_page_playout_rules() {
    run_script("playout");
}
