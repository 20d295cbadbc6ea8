//! Pressure stall information (PSI, Linux 4.20+): the share of time in
//! which some (or all) runnable tasks waited for a resource, averaged over
//! 10, 60 and 300 seconds, and the total stall time. Read from
//! `/proc/pressure/{cpu,memory,io}` for the machine and from a cgroup's
//! `{cpu,memory,io}.pressure` for the tasks in it; both have this form:
//!
//! ```text
//! some avg10=3.29 avg60=3.34 avg300=2.21 total=8486859447
//! full avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! ```

use std::path::Path;

use serde::Serialize;

/// One resource's pressure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Pressure {
    /// Share of the last 10 s in which some task waited, percent.
    pub some_avg10: f32,
    /// Over the last 60 s, percent.
    pub some_avg60: f32,
    /// Over the last 300 s, percent.
    pub some_avg300: f32,
    /// Total time some task waited, µs.
    pub some_total_us: u64,
    /// Share of the last 10 s in which every task waited, percent (not
    /// given for the machine's CPU by older kernels).
    pub full_avg10: Option<f32>,
}

/// CPU, memory and I/O pressure; `None` where not available.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct AllPressure {
    /// Waiting for a CPU.
    pub cpu: Option<Pressure>,
    /// Waiting for memory (reclaim, swap-in).
    pub memory: Option<Pressure>,
    /// Waiting for I/O.
    pub io: Option<Pressure>,
}

impl AllPressure {
    /// The machine's (`/proc/pressure`).
    pub fn machine() -> Self {
        let read = |name: &str| read(&Path::new("/proc/pressure").join(name));
        Self { cpu: read("cpu"), memory: read("memory"), io: read("io") }
    }

    /// A cgroup's (`<dir>/{cpu,memory,io}.pressure`).
    pub fn of_cgroup(dir: &Path) -> Self {
        let read = |name: &str| read(&dir.join(format!("{name}.pressure")));
        Self { cpu: read("cpu"), memory: read("memory"), io: read("io") }
    }
}

/// Reads a pressure file; `None` when it is missing or unreadable.
pub fn read(path: &Path) -> Option<Pressure> {
    parse(&std::fs::read_to_string(path).ok()?)
}

/// Parses a pressure file's text; `None` without a well-formed `some`
/// line (fields it does not know are skipped, for kernels to come).
pub fn parse(text: &str) -> Option<Pressure> {
    let mut p = None::<Pressure>;
    let mut full = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let kind = words.next();
        let mut fields = [None::<f32>; 3];
        let mut total = None::<u64>;
        for word in words {
            let Some((key, value)) = word.split_once('=') else { continue };
            match key {
                "avg10" => fields[0] = value.parse().ok().filter(|v: &f32| v.is_finite()),
                "avg60" => fields[1] = value.parse().ok().filter(|v: &f32| v.is_finite()),
                "avg300" => fields[2] = value.parse().ok().filter(|v: &f32| v.is_finite()),
                "total" => total = value.parse().ok(),
                _ => {}
            }
        }
        match (kind, fields, total) {
            (Some("some"), [Some(a10), Some(a60), Some(a300)], Some(total)) => {
                p = Some(Pressure {
                    some_avg10: a10,
                    some_avg60: a60,
                    some_avg300: a300,
                    some_total_us: total,
                    full_avg10: None,
                });
            }
            (Some("full"), [Some(a10), ..], _) => full = Some(a10),
            _ => {}
        }
    }
    p.map(|p| Pressure { full_avg10: full, ..p })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn both_lines_are_read_and_damaged_text_gives_none() {
        let p = parse(
            "some avg10=3.29 avg60=3.34 avg300=2.21 total=8486859447\nfull avg10=0.50 avg60=0.00 avg300=0.00 total=12\n",
        )
        .unwrap();
        assert_eq!((p.some_avg10, p.some_avg60, p.some_avg300), (3.29, 3.34, 2.21));
        assert_eq!((p.some_total_us, p.full_avg10), (8_486_859_447, Some(0.5)));
        // The machine's CPU without a `full` line (older kernels).
        let cpu = parse("some avg10=1.00 avg60=2.00 avg300=3.00 total=4").unwrap();
        assert_eq!(cpu.full_avg10, None);
        // A field added by a later kernel is skipped.
        assert!(parse("some avg10=1.00 avg60=2.00 avg300=3.00 avg900=4.00 total=4").is_some());
        for bad in [
            "",
            "some avg10=1.00",
            "some avg10=x avg60=2 avg300=3 total=4",
            "full avg10=1 avg60=1 avg300=1 total=1",
            "some avg10=NaN avg60=1 avg300=1 total=1",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn this_machine_reports_pressure_or_says_it_cannot() {
        // Kernels without PSI have no /proc/pressure: then nothing, not zeros.
        let m = AllPressure::machine();
        if Path::new("/proc/pressure/cpu").exists() {
            assert!(m.cpu.is_some_and(|c| (0.0..=100.0).contains(&c.some_avg10)), "{m:?}");
        } else {
            assert_eq!(m, AllPressure::default());
        }
    }
}
