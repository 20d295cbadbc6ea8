//! The management client against real ptp4l (linuxptp from Debian): a
//! master and a slave in two network namespaces joined by a veth pair,
//! software timestamping, the slave with `free_running 1` so nothing
//! touches this machine's clock. The client's answers must match `pmc`'s.
//! Through the project's PTP proxy (a third namespace) pmc must read the
//! offset and the drift the proxy adds to the master's timestamps.
//!
//! Needs root (namespaces), `ip` (iproute2) and linuxptp; it fails, never
//! skips, when one is missing (`./run test` installs them).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use lockstep_ptp::testbed::{Testbed, field};
use lockstep_ptp::{DataSet, Pmc, Response};

#[test]
fn answers_match_pmc_for_a_real_ptp4l_pair() {
    let bed = Testbed::start();
    let suds = bed.slave_socket.clone();

    // The client runs in this test's namespace: the UNIX socket is a file,
    // reachable from any network namespace.
    let mut client = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    let status = loop {
        assert!(Instant::now() < deadline, "the slave never reported a grandmaster: {last}\n{}", bed.logs());
        std::thread::sleep(Duration::from_millis(250));
        if client.is_none() {
            client = Pmc::connect(&suds, &bed.dir().join("client.sock"), 0, Duration::from_millis(500)).ok();
        }
        let Some(c) = client.as_mut() else { continue };
        match c.get(DataSet::TimeStatusNp) {
            Ok(r) => match r.as_slice() {
                // Offsets come once the slave has measured the path delay.
                [Response::TimeStatus(ts)] if ts.gm_present && ts.master_offset_ns != 0 => break *ts,
                other => last = format!("{other:?}"),
            },
            Err(e) => last = e.to_string(),
        }
    };
    let c = client.as_mut().unwrap();

    // Grandmaster identity: ours, pmc's, and the master's own clock id.
    let text = bed.pmc("TIME_STATUS_NP");
    assert_eq!(status.gm_identity.to_string(), field(&text, "gmIdentity"), "{text}");
    let parent = match c.get(DataSet::ParentDataSet).unwrap().as_slice() {
        [Response::Parent(p)] => *p,
        other => panic!("{other:?}"),
    };
    assert_eq!(parent.gm_identity, status.gm_identity);
    assert_eq!(parent.gm_priority1, 100, "the master's priority1 from its config");
    let text = bed.pmc("PARENT_DATA_SET");
    assert_eq!(parent.gm_identity.to_string(), field(&text, "grandmasterIdentity"));
    assert_eq!(parent.gm_priority1.to_string(), field(&text, "grandmasterPriority1"));

    // Offsets: software timestamps on a veth pair, a free-running slave.
    // Ours and pmc's are read moments apart, so they agree in magnitude.
    let pmc_offset: i64 = field(&bed.pmc("TIME_STATUS_NP"), "master_offset").parse().unwrap();
    assert!(status.master_offset_ns.abs() < 1_000_000, "offset {} ns", status.master_offset_ns);
    assert!(pmc_offset != 0 && pmc_offset.abs() < 1_000_000, "pmc offset {pmc_offset} ns");
    eprintln!("grandmaster {}, offset {} ns (pmc: {pmc_offset} ns)", status.gm_identity, status.master_offset_ns);

    let port = match c.get(DataSet::PortDataSet).unwrap().as_slice() {
        [Response::Port(p)] => *p,
        other => panic!("{other:?}"),
    };
    let text = bed.pmc("PORT_DATA_SET");
    assert_eq!(format!("{:?}", port.state).to_uppercase(), field(&text, "portState"), "{text}");
    assert_eq!(port.port.to_string(), field(&text, "portIdentity"));
    let current = match c.get(DataSet::CurrentDataSet).unwrap().as_slice() {
        [Response::Current(cur)] => *cur,
        other => panic!("{other:?}"),
    };
    assert_eq!(current.steps_removed.to_string(), field(&bed.pmc("CURRENT_DATA_SET"), "stepsRemoved"));
    let props = match c.get(DataSet::TimePropertiesDataSet).unwrap().as_slice() {
        [Response::TimeProperties(tp)] => *tp,
        other => panic!("{other:?}"),
    };
    let text = bed.pmc("TIME_PROPERTIES_DATA_SET");
    assert_eq!(props.current_utc_offset_s.to_string(), field(&text, "currentUtcOffset "), "{text}");
    assert_eq!(u8::from(props.utc_offset_valid).to_string(), field(&text, "currentUtcOffsetValid"), "{text}");
    assert_eq!(u8::from(props.ptp_timescale).to_string(), field(&text, "ptpTimescale"), "{text}");
    assert_eq!(c.malformed, 0);
}

/// pmc's `master_offset`, once the slave reports one near `want` (within
/// `within` ns); panics after `limit`.
fn offset_near(bed: &Testbed, want: i64, within: i64, limit: Duration) -> i64 {
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        // Until the slave answers, pmc prints no data set: wait on.
        let text = bed.pmc("TIME_STATUS_NP");
        let value = |key: &str| text.lines().find_map(|l| l.trim().strip_prefix(key).map(str::trim));
        if let Some(Ok(offset)) = value("master_offset").map(str::parse::<i64>) {
            if (offset - want).abs() <= within && value("gmPresent") == Some("true") {
                return offset;
            }
            seen.push(offset);
        }
        assert!(started.elapsed() < limit, "pmc never reported {want} ± {within} ns: {seen:?}\n{}", bed.logs());
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_proxy_gives_the_slave_a_known_offset_and_drift() {
    let bed = Testbed::with_proxy();
    let proxy = bed.proxy.as_ref().unwrap();
    // Unshifted, the master and the slave share this machine's clock.
    let zero = offset_near(&bed, 0, 200_000, Duration::from_secs(30));
    proxy.set(3_000_000, 0);
    // The slave is free-running: its offset jumps to minus the shift.
    let shifted = offset_near(&bed, -3_000_000, 200_000, Duration::from_secs(15));
    eprintln!("through the proxy: {zero} ns unshifted, {shifted} ns with the master's timestamps 3 ms later");
    // A master 50 ppm fast: the offset falls by 50 µs a second.
    proxy.set(-3_000_000, 50_000);
    offset_near(&bed, 3_000_000, 200_000, Duration::from_secs(15));
    // One pmc reading is one Sync (tens of µs of jitter): a least-squares
    // line through readings over 8 s.
    let t0 = Instant::now();
    let mut points = Vec::new();
    while t0.elapsed() < Duration::from_secs(8) {
        let text = bed.pmc("TIME_STATUS_NP");
        if let Some(Ok(offset)) =
            text.lines().find_map(|l| l.trim().strip_prefix("master_offset").map(|v| v.trim().parse::<f64>()))
        {
            points.push((t0.elapsed().as_secs_f64(), offset));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let n = points.len() as f64;
    let (mt, mo) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - mo)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    let ppm = -sxy / sxx / 1000.0;
    eprintln!("{} readings over 8 s: the master runs {ppm:.1} ppm fast", points.len());
    assert!(points.len() >= 20, "pmc answered {} times in 8 s", points.len());
    assert!((ppm - 50.0).abs() < 15.0, "drift of 50 ppm measured as {ppm:.1} ppm");
    let (forwarded, shifted) = proxy.forwarded();
    assert!(shifted > 50 && forwarded > shifted, "forwarded {forwarded} messages, {shifted} shifted");
}
