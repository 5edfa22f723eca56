//! The command line as a user meets it: broken configs, wrong secrets.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_boothcast");

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("boothcast-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_broken_config_stops_the_server_naming_file_line_and_field() {
    let path = write(
        "broken.toml",
        "[event]\nname = \"Forum\"\n\n[[rooms]]\nid = \"plenary\"\n\n[[rooms.channels]]\nlang = \"en\"\nname = \"English\"\nnative = \"English\"\nhold_ms = \"long\"\n",
    );
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:11: hold_ms:", path.display());
    assert!(err.contains(&expected), "expected `{expected}` in:\n{err}");
    assert!(
        err.contains("invalid type: string \"long\", expected u64"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "one clear message:\n{err}"
    );

    let path = write(
        "booth.toml",
        "[event]\nname = \"Forum\"\n[[rooms]]\nid = \"plenary\"\n[[rooms.channels]]\nlang = \"en\"\nname = \"English\"\nnative = \"English\"\n[[rooms.booths]]\nid = \"de\"\nlanguages = [\"de\"]\n",
    );
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:11: rooms[0].booths[0].languages: booth `de` works into `de`, which is not a channel of room `plenary`",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn the_shipped_configs_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    for entry in std::fs::read_dir(format!("{root}/config")).unwrap() {
        let path = entry.unwrap().path();
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("is valid") && text.contains("/floor"),
            "{text}"
        );
    }
}

#[test]
fn a_wrong_secret_is_refused_with_the_reason_and_without_the_secret() {
    // A relay with a known booth secret, and a booth that gives the wrong one.
    let dir = std::env::temp_dir().join(format!("boothcast-cli-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("tone.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav, spec).unwrap();
    for i in 0..16_000 {
        w.write_sample(((i as f32 * 0.1).sin() * 8000.0) as i16)
            .unwrap();
    }
    w.finalize().unwrap();
    let mut relay = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("BOOTHCAST_BOOTH_SECRET_EN", "right-secret")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(relay.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().unwrap().unwrap();
        assert!(
            !line.contains("right-secret"),
            "a secret from the environment is never printed"
        );
        if let Some(i) = line.find("http://") {
            break line[i + 7..].trim().to_string();
        }
    };
    let out = Command::new(BIN)
        .args([
            "booth",
            "--server",
            &format!("ws://{addr}"),
            "--booth",
            "en",
            "--input-file",
        ])
        .arg(&wav)
        .env("BOOTHCAST_SECRET", "wrong-secret-42")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let _ = relay.kill();
    let _ = relay.wait();
    let mut logs = String::new();
    use std::io::Read;
    relay
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the relay refused: wrong or missing secret for booth en (Unauthorized)"),
        "{err}"
    );
    assert!(!err.contains("wrong-secret-42"));
    assert!(
        logs.contains("refused") && logs.contains("wrong or missing secret for booth en"),
        "{logs}"
    );
    assert!(
        !logs.contains("wrong-secret-42") && !logs.contains("right-secret"),
        "a secret reached the logs:\n{logs}"
    );
}

#[test]
fn sigterm_stops_the_relay_in_order_telling_every_delegate_why() {
    use std::io::BufRead;
    use tokio_tungstenite::tungstenite::{connect, Message};
    let mut relay = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(relay.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(i) = line.find("http://") {
            break line[i + 7..].trim().trim_end_matches('/').to_string();
        }
    };
    let (mut ws, _) = connect(format!("ws://{addr}/ws")).unwrap();
    ws.send(Message::Text(
        r#"{"type":"hello","role":"listener","channel":"en"}"#.into(),
    ))
    .unwrap();
    assert!(matches!(ws.read().unwrap(), Message::Text(t) if t.contains("welcome")));
    // SIGTERM, as systemd, docker and `kill` send.
    // SAFETY: a signal to the child process this test started and has not yet waited for.
    let rc = unsafe { libc::kill(relay.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let close = loop {
        match ws.read() {
            Ok(Message::Close(c)) => break c,
            Ok(_) => {}
            Err(e) => panic!("the connection broke without a close: {e}"),
        }
    };
    let close = close.expect("a close code and reason");
    assert_eq!(close.reason.as_str(), "shutting_down", "{close:?}");
    let exit = relay.wait().unwrap();
    assert!(exit.success(), "the relay stopped in order: {exit:?}");
}
