//! The web pages in the browsers: each test runs one Node script of `tests/browser/` against
//! this build of `boothcast`. The scripts start the relay, the floor and booth clients and the
//! browser themselves, print their measured figures as JSON lines, and exit 0 on success. They
//! need `/usr/bin/chromium`, `npm ci --prefix web-client` and, for the other engines and the
//! tests at the sound server, Firefox ESR, WebKitWebDriver under xvfb-run, zbarimg and a
//! PulseAudio daemon (all installed and started by scripts/test.sh).

use std::process::Command;

/// Runs `node tests/browser/<name>.mjs`, failing with everything it printed if it fails.
fn run_script(name: &str) {
    run_script_with(name, &[]);
}

/// Runs `node tests/browser/<name>.mjs ARGS…`.
fn run_script_with(name: &str, args: &[&str]) {
    let script = format!("tests/browser/{name}.mjs");
    let out = Command::new("node")
        .arg(&script)
        .args(args)
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
fn delegate_page_on_a_phone() {
    run_script("phone");
}

#[test]
fn delegate_page_outside_the_hall() {
    run_script("remote");
}

#[test]
fn delegate_page_halls() {
    run_script("halls");
}

#[test]
fn delegate_page_languages() {
    run_script("languages");
}

#[test]
fn delegate_page_playout_rules() {
    run_script("playout");
}

/// What Chromium plays, recorded at a PulseAudio sink: main path and fallback, discontinuities
/// of the sine and the delay shown against the delay measured at the sink.
#[test]
fn sound_at_the_sink_chromium() {
    run_script_with("sound", &["chromium"]);
}

/// The same in Firefox ESR (WebDriver BiDi).
#[test]
fn sound_at_the_sink_firefox() {
    run_script_with("sound", &["firefox"]);
}

/// The same in WebKitGTK (WebKitWebDriver, MiniBrowser under xvfb-run).
#[test]
fn sound_at_the_sink_webkit() {
    run_script_with("sound", &["webkit"]);
}

/// "Original underneath" in Chromium, at the sink: the floor's tone under the interpretation's
/// at the level chosen, following a change of level, gone when turned off; kept across a
/// reconnection and a reload; heard once while the channel is on auto-floor; both paths.
#[test]
fn sound_of_the_original_underneath_chromium() {
    run_script("under");
}
