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

/// The built-in test source stands for a camera: it shows the picture of
/// the moment a frame is due by the clock without drills. An appliance
/// whose media clock is off by less than half a frame numbers the same
/// pictures (identical segments); more than half a frame off, it numbers
/// the neighbouring ones, as a camera on that clock would, and its
/// segments differ (what the swarm's drift prediction must head off).
#[test]
fn a_clock_more_than_half_a_frame_off_numbers_other_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let renditions = [("90p", 90, 120)];
    // Offsets of the media clock (25 fps: half a frame is 20 ms).
    let offsets_ms = [0, 12, 30];
    let runs: Vec<_> = offsets_ms
        .iter()
        .map(|ms| {
            let d = dir.path().join(format!("off{ms}"));
            std::fs::create_dir_all(&d).unwrap();
            let text = config(&d.join("out"), 160, 90, None, &renditions)
                + &format!("[clock.fault]\noffset_ns = {}\n", ms * 1_000_000);
            let path = d.join("lockstep.toml");
            std::fs::write(&path, text).unwrap();
            let child = lockstep().args(["run", "--config"]).arg(&path).args(["--duration", "7"]).spawn().unwrap();
            (d, child)
        })
        .collect();
    let roots: Vec<_> = runs
        .into_iter()
        .map(|(d, child)| {
            assert!(child.wait_with_output().unwrap().status.success());
            d.join("out/ch")
        })
        .collect();
    let inputs = |root: &std::path::Path| -> std::collections::BTreeMap<i64, (String, String)> {
        manifest(&root.join("90p")).into_iter().map(|e| (e.index, (e.input_sha256, e.sha256))).collect()
    };
    let (exact, near, far) = (inputs(&roots[0]), inputs(&roots[1]), inputs(&roots[2]));
    let both = |other: &std::collections::BTreeMap<i64, (String, String)>| -> Vec<i64> {
        exact.keys().copied().filter(|i| other.contains_key(i)).collect()
    };
    assert!(both(&near).len() >= 2 && both(&far).len() >= 2, "overlap: {exact:?} {near:?} {far:?}");
    for i in both(&near) {
        assert_eq!(exact[&i], near[&i], "segment {i}: 12 ms off is within half a frame: the same pictures");
    }
    for i in both(&far) {
        assert_ne!(exact[&i].0, far[&i].0, "segment {i}: 30 ms off numbers the neighbouring pictures");
        assert_ne!(exact[&i].1, far[&i].1, "segment {i}: so its bytes differ");
    }
}
