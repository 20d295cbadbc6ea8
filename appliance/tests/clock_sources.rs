//! Time sources that misbehave: no ptp4l socket, a socket this user may
//! not use, a peer answering garbage. The clock must run on (on the
//! system clock), say that it falls back and name what is wrong.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lockstep::clock::{Clock, ClockState, MediaClock};
use lockstep::config::{ClockConfig, ClockSource};

fn ptp4l_config(socket: &Path) -> ClockConfig {
    ClockConfig {
        source: ClockSource::Ptp4l,
        ptp4l_socket: socket.to_path_buf(),
        poll_interval_ms: 20,
        holdover_after_ms: 100,
        lock_wait_s: 0.3,
        ..ClockConfig::default()
    }
}

#[test]
fn garbage_from_the_socket_is_counted_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ptp4l");
    let server = UnixDatagram::bind(&path).unwrap();
    server.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let answering = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        let mut answered = 0;
        while let Ok((_, from)) = server.recv_from(&mut buf) {
            let Some(from) = from.as_pathname() else { continue };
            // A PTP-looking header with a wrong length, then random bytes.
            let _ = server.send_to(&[0x0D, 0x02, 0x00, 0xff, 0, 0, 0, 0], from);
            let _ = server.send_to(b"\x01\x02garbage", from);
            answered += 1;
        }
        answered
    });
    let clock = Clock::open(&ptp4l_config(&path)).unwrap();
    let q = clock.quality();
    drop(clock);
    assert!(answering.join().unwrap() > 0, "the clock asked");
    assert!(q.fallback, "{q:?}");
    assert_eq!(q.state, ClockState::Freerun);
    assert!(q.malformed >= 2, "malformed replies are counted: {q:?}");
    let e = q.last_error.unwrap();
    assert!(e.contains("did not answer") && e.contains("malformed"), "{e}");
}

#[test]
fn a_socket_without_permission_is_named() {
    assert!(common::is_root(), "this test drops to user nobody with setpriv and needs root");
    let dir = tempfile::tempdir().unwrap();
    // A world-readable directory holding a socket only root may use.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = dir.path().join("ptp4l");
    let _server = UnixDatagram::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = dir.path().join("clock.toml");
    let defaults = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml")).unwrap();
    let text = defaults.replacen(
        "source = \"system\"",
        &format!("source = \"ptp4l\"\nptp4l_socket = \"{}\"\nlock_wait_s = 0.5", path.display()),
        1,
    );
    std::fs::write(&config, text).unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let exe = env!("CARGO_BIN_EXE_lockstep");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", exe, "clock", "--json", "--seconds", "0.3"])
        .arg("--config")
        .arg(&config)
        .env("TMPDIR", "/tmp")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Permission denied") && stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("media time is the system clock"), "says it falls back: {stderr}");
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().expect("a line")).unwrap();
    assert_eq!(first["quality"]["fallback"], true, "{first}");
    assert_eq!(first["quality"]["state"], "freerun", "{first}");
}

#[test]
fn the_clock_command_prints_the_system_clock() {
    let out = common::lockstep().args(["clock", "--seconds", "0.25", "--interval-ms", "100"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!((2..=4).contains(&lines.len()), "{stdout}");
    assert!(lines[0].starts_with("TAI ") && lines[0].contains("system clock"), "{stdout}");
}

#[test]
fn bad_clock_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    for (setting, appended, key) in [
        ("source = \"phc\"", "", "clock.phc"),
        ("source = \"gps\"", "", "gps"),
        ("poll_interval_ms = 5", "", "clock.poll_interval_ms"),
        ("holdover_after_ms = 100\npoll_interval_ms = 100", "", "clock.holdover_after_ms"),
        ("source = \"system\"", "[clock.fault]\nfrequency_ppm = 5000\n", "clock.fault.frequency_ppm"),
    ] {
        let defaults = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml")).unwrap();
        let text = defaults.replacen("source = \"system\"", setting, 1) + appended;
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let out = common::lockstep().arg("check-config").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{setting} accepted");
        assert!(stderr.contains(key), "{setting}: {stderr}");
    }
}

#[test]
fn the_pipeline_exports_clock_quality() {
    let dir = tempfile::tempdir().unwrap();
    let text = common::config(&dir.path().join("out"), 320, 180, Some(0), &[("low", 180, 300)]);
    let out = common::run_config(dir.path(), &text, &["--frames", "50"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics = std::fs::read_to_string(dir.path().join("out/ch/metrics.prom")).unwrap();
    // The system clock is locked or free-running as the kernel's NTP state says.
    let states: Vec<&str> = metrics.lines().filter(|l| l.starts_with("lockstep_clock_state{")).collect();
    assert_eq!(states.len(), 4, "{metrics}");
    assert_eq!(states.iter().filter(|l| l.ends_with(" 1")).count(), 1, "{metrics}");
    assert!(metrics.contains("lockstep_clock_fallback{channel=\"ch\"} 0"), "{metrics}");
}

#[test]
fn a_missing_phc_or_an_interface_without_one_is_named() {
    for (cfg, expect) in [
        (ClockConfig { phc: Some("/dev/ptp99".into()), ..ClockConfig::default() }, "/dev/ptp99"),
        (
            ClockConfig { interface: Some("lo".into()), ..ClockConfig::default() },
            "interface lo has no PTP hardware clock",
        ),
        (ClockConfig { interface: Some("lockstep-none0".into()), ..ClockConfig::default() }, "lockstep-none0"),
    ] {
        let cfg = ClockConfig {
            source: ClockSource::Phc,
            poll_interval_ms: 20,
            holdover_after_ms: 100,
            lock_wait_s: 0.2,
            ..cfg
        };
        let clock = Clock::open(&cfg).unwrap();
        let q = clock.quality();
        assert!(q.fallback && q.state == ClockState::Freerun, "{q:?}");
        let e = q.last_error.unwrap_or_default();
        assert!(e.contains(expect), "error names {expect}: {e}");
        assert!(q.source.contains("PHC"), "{}", q.source);
    }
}
