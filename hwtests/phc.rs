//! Real-device tests of `lockstep-ptp`'s PHC access, compiled into the
//! crate's unit tests (drivers/ptp/src/phc.rs includes this file) and run
//! by `hwtests/phc.sh`, which picks the clock and fails when there is none.
//!
//! LOCKSTEP_PHC names the clock (`/dev/ptpN`); LOCKSTEP_PHC_IFACE, if set,
//! names the network interface that clock belongs to. Nothing may step
//! the PHC or the system clock while they run (ptp4l and phc2sys settled
//! or stopped).

use super::*;

fn phc_under_test() -> PathBuf {
    match std::env::var_os("LOCKSTEP_PHC") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => panic!("LOCKSTEP_PHC is not set: run hwtests/phc.sh, which sets it"),
    }
}

/// One reading by the portable path: CLOCK_REALTIME, then the PHC through
/// clock_gettime, then CLOCK_REALTIME again.
fn bracketed_read(phc: &Phc) -> PhcOffset {
    let before = clock_ns(libc::CLOCK_REALTIME).expect("CLOCK_REALTIME");
    let phc_ns = phc.read().expect("clock_gettime on the PHC");
    let after = clock_ns(libc::CLOCK_REALTIME).expect("CLOCK_REALTIME");
    let window_ns = after - before;
    PhcOffset { phc_ns, system_ns: before + window_ns / 2, window_ns, method: OffsetMethod::Basic }
}

#[test]
#[ignore = "needs a PTP hardware clock: run hwtests/phc.sh"]
fn the_phc_measures_like_clock_gettime() {
    let path = phc_under_test();
    let mut phc = Phc::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let caps = phc.caps();
    eprintln!("{}: {caps:?}", path.display());

    let first = phc.offset().unwrap_or_else(|e| panic!("{e}"));
    let method = phc.method().expect("a method is kept after a measurement");
    assert_eq!(first.method, method);
    if caps.cross_timestamping {
        assert_eq!(method, OffsetMethod::Precise, "the clock claims cross timestamping");
    }
    for _ in 0..20 {
        let ioctl = phc.offset().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ioctl.method, method, "the method stays");
        assert!(ioctl.window_ns >= 0, "{ioctl:?}");
        if method == OffsetMethod::Precise {
            assert_eq!(ioctl.window_ns, 0);
        }
        // Both paths measure one offset: they must agree within their
        // brackets, plus drift between the readings (at most 1,000 ppm over
        // a few ms of preemption). Catches sign, midpoint and unit errors.
        let portable = bracketed_read(&phc);
        let difference = (ioctl.system_minus_phc_ns() - portable.system_minus_phc_ns()).abs();
        let allowed = ioctl.window_ns / 2 + portable.window_ns / 2 + 50_000;
        eprintln!("{method}: {ioctl:?}, clock_gettime: {portable:?}, difference {difference} ns");
        assert!(difference <= allowed, "ioctl {ioctl:?} and clock_gettime {portable:?} differ by {difference} ns");
    }
}

#[test]
#[ignore = "needs a PTP hardware clock: run hwtests/phc.sh"]
fn the_interface_names_its_phc() {
    let path = phc_under_test();
    let Some(interface) = std::env::var("LOCKSTEP_PHC_IFACE").ok().filter(|i| !i.is_empty()) else {
        // A ptp_kvm clock belongs to no interface; phc.sh says so when it runs.
        eprintln!("LOCKSTEP_PHC_IFACE not set: only checking that {} exists", path.display());
        Phc::open(&path).unwrap_or_else(|e| panic!("{e}"));
        return;
    };
    let info = ts_info(&interface).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{info:?}");
    assert_eq!(info.phc_path(), Some(path), "{interface}'s PHC");
    assert!(info.ptp_hardware_timestamping(), "{info:?}");
}
