//! The admin page in a real browser (Debian's headless Chromium, driven by
//! playwright-core from npm: appliance/web/browser-test.mjs) against a
//! 3-node demo swarm: log in, see the nodes, play the combined output,
//! change a bitrate and see it take effect, kill the chosen node and watch
//! the failover. Screenshots land in target/admin-screenshots/.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

#[test]
fn the_admin_page_runs_a_swarm_in_a_browser() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    common::require_browser(&web);
    let dir = tempfile::tempdir().unwrap();
    let (origin, admin, swarm) = (common::free_ports(3), common::free_ports(3), common::free_ports(3));
    let mut child = common::lockstep()
        .args(["demo", "--duration", "240", "--out"])
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{origin}"), "--admin", &format!("127.0.0.1:{admin}")])
        .args(["--swarm-port", &swarm.to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The demo prints `node-k pid P origin ... admin URL ...` per node.
    let stderr = child.stderr.take().unwrap();
    let demo = common::Stopped(child);
    let mut lines = BufReader::new(stderr).lines();
    let (mut pids, mut admins) = (BTreeMap::new(), BTreeMap::new());
    while pids.len() < 3 {
        let line = lines.next().expect("demo ended early").unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "pid") {
            let node = words[i - 1].to_string();
            pids.insert(node.clone(), words[i + 1].to_string());
            let a = words.iter().position(|w| *w == "admin").unwrap();
            admins.insert(node, words[a + 1].to_string());
        }
    }
    // Keep the demo's stderr drained.
    std::thread::spawn(move || for _ in lines {});
    let join = |m: &BTreeMap<String, String>| m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/admin-screenshots");
    // The clip a file channel plays until the test deletes it.
    let clip = dir.path().join("clip.mp4");
    let made = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=160x90:rate=25:duration=2"])
        .args(["-pix_fmt", "yuv420p", "-c:v", "libx264", "-y"])
        .arg(&clip)
        .status()
        .expect("this test needs ffmpeg (`./run deps` installs it)");
    assert!(made.success(), "ffmpeg made no clip");
    let started = Instant::now();
    let out = Command::new("node")
        .arg(web.join("browser-test.mjs"))
        .args(["--admin", &admins["node-1"], "--password-file"])
        .arg(dir.path().join(lockstep::demo::PASSWORD_FILE))
        .arg("--shots")
        .arg(&shots)
        .args(["--pids", &join(&pids), "--admins", &join(&admins)])
        .arg("--clip")
        .arg(&clip)
        .current_dir(&web)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "browser test failed after {:?}", started.elapsed());
    for step in [
        "wrong password is refused",
        "three healthy nodes",
        "preview plays",
        "lockstep panel shows three nodes in step",
        "chain panel shows source, three encoders, packager and origin",
        "bitrate change took effect",
        "channel pop created from the page",
        "channel pop deleted from the page",
        "failover event",
        "played on past what it held at the kill",
        "the chain shows the encoder of",
        "while the first channel keeps publishing",
    ] {
        assert!(stdout.contains(step), "step `{step}` not reported");
    }
    for shot in ["login", "overview", "bitrate", "channels", "failover"] {
        let png = shots.join(format!("{shot}.png"));
        assert!(std::fs::metadata(&png).is_ok_and(|m| m.len() > 10_000), "{} missing or empty", png.display());
    }
    drop(demo);
}
