//! Two appliances started at different moments on the same source cut the
//! same segments, byte for byte (video and audio).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

#[test]
fn pipelines_started_apart_agree_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let renditions = [("180p", 180, 400), ("90p", 90, 150)];
    let base = 7_000_000 * 50;
    // A joins 13 frames into segment 0 and runs 6 segments; B joins 71
    // frames later, mid-way through the next segment.
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let ra = run_config(&da, &config(&da.join("out"), 320, 180, Some(base + 13), &renditions), &["--frames", "287"]);
    let rb = run_config(&db, &config(&db.join("out"), 320, 180, Some(base + 84), &renditions), &["--frames", "300"]);
    assert!(ra.status.success() && rb.status.success());
    assert_overlap_identical(&da.join("out/ch"), &db.join("out/ch"), 3);
}

#[test]
fn realtime_appliances_started_apart_agree_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let renditions = [("180p", 180, 300), ("90p", 90, 120)];
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let (ca, cb) = (da.join("lockstep.toml"), db.join("lockstep.toml"));
    std::fs::write(&ca, config(&da.join("out"), 320, 180, None, &renditions)).unwrap();
    std::fs::write(&cb, config(&db.join("out"), 320, 180, None, &renditions)).unwrap();
    // Two processes on the media clock, the second started 1.3 s later.
    let a = lockstep().args(["run", "--config"]).arg(&ca).args(["--duration", "9"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1300));
    let b = lockstep().args(["run", "--config"]).arg(&cb).args(["--duration", "9"]).spawn().unwrap();
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(oa.status.success() && ob.status.success());
    assert_overlap_identical(&da.join("out/ch"), &db.join("out/ch"), 2);
}
