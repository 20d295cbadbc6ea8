//! `lockstep bench channels`: 1, 2, … channels of the demo ladder encoded
//! at once in real time in this process, as the daemon runs them (one
//! pipeline each). Each count is measured against one channel alone in the
//! same run: the CPU a channel costs, and whether every channel still keeps
//! real time (no frame dropped, every segment published within its own
//! duration). The last line is the headline: the most channels that keep
//! real time on this machine.

use crate::admin::bench::{Run, pipeline_run};
use crate::config::Config;

/// What one count of channels looked like.
struct Count {
    runs: Vec<Run>,
    /// Cores busy while the channels ran: process CPU time over the media
    /// time one channel captured (the wait for the first boundary, when
    /// nothing runs, is left out).
    cores: f64,
}

impl Count {
    fn dropped(&self) -> u64 {
        self.runs.iter().map(|r| r.dropped).sum()
    }

    fn frames(&self) -> u64 {
        self.runs.iter().map(|r| r.frames).sum()
    }

    fn slowest_ms(&self) -> f64 {
        self.runs.iter().map(Run::max_latency).fold(0.0, f64::max)
    }

    /// Every channel captured every frame and published every segment
    /// before the next one was complete.
    fn keeps_real_time(&self, segment_ms: f64) -> bool {
        self.dropped() == 0 && self.slowest_ms() < segment_ms && self.runs.iter().all(|r| r.frames > 0)
    }
}

/// `n` channels of `base` at once for `seconds` of media.
fn run_count(base: &Config, n: usize, seconds: f64) -> anyhow::Result<Count> {
    let configs: Vec<Config> = (0..n)
        .map(|i| {
            let mut c = base.clone();
            c.channel.id = format!("bench-{n}-{i}");
            c
        })
        .collect();
    let c0 = crate::bench::cpu_seconds();
    let runs = std::thread::scope(|s| {
        let handles: Vec<_> = configs
            .iter()
            .map(|c| s.spawn(move || pipeline_run(c, &crate::channels::driver::taps(), seconds)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("a channel's pipeline panicked"))?)
            .collect::<anyhow::Result<Vec<Run>>>()
    })?;
    let cpu = crate::bench::cpu_seconds() - c0;
    let fps = base.source_rate()?.fps();
    let media_s = runs.iter().map(|r| r.frames).sum::<u64>() as f64 / fps / n as f64;
    let cores = if media_s > 0.0 { cpu / media_s } else { 0.0 };
    Ok(Count { runs, cores })
}

/// `lockstep bench channels`.
pub fn run(max: usize, seconds: f64) -> anyhow::Result<()> {
    anyhow::ensure!((1..=super::MAX_CHANNELS).contains(&max), "--max must be between 1 and {}", super::MAX_CHANNELS);
    anyhow::ensure!((4.0..=600.0).contains(&seconds), "--seconds must be between 4 and 600");
    let dir = std::env::temp_dir().join(format!("lockstep-bench-channels-{}", std::process::id()));
    let mut base = Config::embedded_demo();
    base.output.dir = dir.join("out");
    base.origin.listen = None;
    base.admin.listen = None;
    base.pipeline.realtime = false;
    base.validate()?;
    let segment_ms = base.channel.segment_seconds * 1000.0;
    let ladder: Vec<String> = base.renditions.iter().map(|r| format!("{} {} kbit/s", r.name, r.bitrate_kbps)).collect();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "bench channels: demo ladder ({}x{} @ {} fps test source; {}; audio {}), {seconds} s of media per run, 1 to {max} channels at once on {cpus} CPUs",
        base.source.width,
        base.source.height,
        base.source.fps,
        ladder.join(", "),
        if base.audio.enabled { "on" } else { "off" },
    );
    let mut alone: Option<f64> = None;
    let mut most = 0;
    let mut last_share = 0.0;
    for n in 1..=max {
        let count = run_count(&base, n, seconds)?;
        let share = count.cores / n as f64;
        let baseline = *alone.get_or_insert(share);
        let keeps = count.keeps_real_time(segment_ms);
        println!(
            "{n} channel{}: {:.2} cores busy, {:.0}% of a core per channel ({:.2}x one channel alone), {} frames, {} dropped, slowest segment published {:.0} ms after its last frame: {}",
            if n == 1 { "" } else { "s" },
            count.cores,
            share * 100.0,
            share / baseline,
            count.frames(),
            count.dropped(),
            count.slowest_ms(),
            if keeps { "real time" } else { "behind real time" },
        );
        if !keeps {
            break;
        }
        most = n;
        last_share = share;
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "headline: {most} channel{} of the demo ladder keep real time on this machine ({cpus} CPUs; tried up to {max}); one channel alone takes {:.0}% of a core, each of {most} takes {:.0}%",
        if most == 1 { "" } else { "s" },
        alone.unwrap_or(0.0) * 100.0,
        last_share * 100.0,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(frames: u64, dropped: u64, latency_ms: &[f64]) -> Run {
        Run { frames, dropped, latency_ms: latency_ms.to_vec() }
    }

    #[test]
    fn real_time_means_no_drop_and_every_segment_within_its_duration() {
        let good = Count { runs: vec![run(200, 0, &[40.0, 90.0]), run(200, 0, &[50.0])], cores: 0.5 };
        assert!(good.keeps_real_time(2000.0));
        assert_eq!((good.frames(), good.slowest_ms()), (400, 90.0));
        let dropped = Count { runs: vec![run(200, 0, &[40.0]), run(190, 10, &[50.0])], cores: 0.5 };
        assert!(!dropped.keeps_real_time(2000.0));
        let late = Count { runs: vec![run(200, 0, &[2100.0])], cores: 0.5 };
        assert!(!late.keeps_real_time(2000.0));
        let idle = Count { runs: vec![run(0, 0, &[])], cores: 0.0 };
        assert!(!idle.keeps_real_time(2000.0), "a channel that captured nothing kept nothing");
    }
}
