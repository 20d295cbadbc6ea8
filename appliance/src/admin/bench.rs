//! `lockstep bench api`: the admin API under a load of concurrent clients
//! while the pipeline encodes in real time, against the same pipeline run
//! without load, in the same process. The last line is the headline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::channels::{Channel, Channels};
use crate::config::Config;
use crate::daemon;
use crate::pipeline::{self, RunLimits, Taps};

/// What one pipeline run looked like.
#[derive(Debug, Default)]
pub(crate) struct Run {
    pub(crate) frames: u64,
    pub(crate) dropped: u64,
    pub(crate) latency_ms: Vec<f64>,
}

impl Run {
    pub(crate) fn mean_latency(&self) -> f64 {
        if self.latency_ms.is_empty() {
            0.0
        } else {
            self.latency_ms.iter().sum::<f64>() / self.latency_ms.len() as f64
        }
    }
    pub(crate) fn max_latency(&self) -> f64 {
        self.latency_ms.iter().copied().fold(0.0, f64::max)
    }
}

/// Runs the pipeline for `seconds` of media, sampling the segment latency.
pub(crate) fn pipeline_run(config: &Config, taps: &Taps, seconds: f64) -> anyhow::Result<Run> {
    let (frames0, dropped0) = (
        taps.status.capture.frames_captured.load(Ordering::Relaxed),
        taps.status.capture.frames_dropped.load(Ordering::Relaxed),
    );
    let mut segments = taps.segments.as_ref().map(tokio::sync::broadcast::Sender::subscribe);
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (status, done) = (Arc::clone(&taps.status), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut latency = Vec::new();
            while !done.load(Ordering::Relaxed) {
                if let Some(rx) = segments.as_mut() {
                    while let Ok(s) = rx.try_recv() {
                        if s.track != "audio" {
                            latency.push(status.encode_latency_us.load(Ordering::Relaxed) as f64 / 1000.0);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            latency
        })
    };
    let limits = RunLimits { duration_s: Some(seconds), ..Default::default() };
    let result = pipeline::run(config, &limits, taps);
    done.store(true, Ordering::Relaxed);
    let latency_ms = sampler.join().map_err(|_| anyhow::anyhow!("latency sampler panicked"))?;
    result?;
    Ok(Run {
        frames: taps.status.capture.frames_captured.load(Ordering::Relaxed) - frames0,
        dropped: taps.status.capture.frames_dropped.load(Ordering::Relaxed) - dropped0,
        latency_ms,
    })
}

/// One GET with a bearer token over a fresh connection; true on a 200.
fn get(addr: SocketAddr, path: &str, token: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    let mut buf = Vec::with_capacity(16 * 1024);
    s.write_all(req.as_bytes()).is_ok() && s.read_to_end(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
}

/// The routes a console or a scraper polls.
const PATHS: [&str; 5] =
    ["/api/v1/status", "/api/v1/swarm", "/api/v1/channels/bench", "/api/v1/analysis?limit=60", "/metrics"];

/// `lockstep bench api`.
pub fn run(seconds: f64, clients: usize) -> anyhow::Result<()> {
    anyhow::ensure!((4.0..=600.0).contains(&seconds), "--seconds must be between 4 and 600");
    anyhow::ensure!((1..=1024).contains(&clients), "--clients must be between 1 and 1024");
    let dir = std::env::temp_dir().join(format!("lockstep-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tokens = dir.join("tokens");
    let token = super::auth::add_token(&tokens, "bench")?;
    let mut config = Config::embedded_demo();
    config.channel.id = "bench".into();
    config.output.dir = dir.join("out");
    config.origin.listen = Some("127.0.0.1:0".into());
    config.admin.listen = Some("127.0.0.1:0".into());
    config.admin.tokens_file = Some(tokens);
    config.validate()?;
    let (first, _commands) = Channel::first(&config);
    let taps = first.taps.clone();
    let channels = Channels::new(first, &RunLimits::default(), None);
    let services = daemon::services(&config, &channels)?;
    let addr = services.admin.as_ref().map(|a| a.addr).ok_or_else(|| anyhow::anyhow!("admin API did not start"))?;
    println!(
        "bench api: demo ladder in real time, {seconds} s per run; {clients} clients (threads of this process at nice 19) polling {} routes",
        PATHS.len()
    );

    let quiet = pipeline_run(&config, &taps, seconds)?;
    println!(
        "without load: {} frames, {} dropped, segment latency mean {:.1} ms, max {:.1} ms",
        quiet.frames,
        quiet.dropped,
        quiet.mean_latency(),
        quiet.max_latency()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, ok, failed, token) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed), token.clone());
            std::thread::spawn(move || {
                // The clients stand in for remote machines: they must not
                // take the CPU from what they measure.
                crate::rt::lower_priority(19);
                let mut times = Vec::new();
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let good = get(addr, PATHS[i % PATHS.len()], &token);
                    times.push(t.elapsed().as_secs_f64() * 1000.0);
                    if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                times
            })
        })
        .collect();
    let started = Instant::now();
    let loaded = pipeline_run(&config, &taps, seconds);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut times: Vec<f64> = workers.into_iter().filter_map(|w| w.join().ok()).flatten().collect();
    let loaded = loaded?;
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        times.get(((times.len() as f64 * p) as usize).min(times.len().saturating_sub(1))).copied().unwrap_or(0.0)
    };
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "under load:   {} frames, {} dropped, segment latency mean {:.1} ms, max {:.1} ms",
        loaded.frames,
        loaded.dropped,
        loaded.mean_latency(),
        loaded.max_latency()
    );
    println!(
        "API: {ok} answers ({:.0}/s), {failed} failed, latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ok as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
    let ratio = if quiet.mean_latency() > 0.0 { loaded.mean_latency() / quiet.mean_latency() } else { 0.0 };
    println!(
        "headline: under {clients} API clients ({:.0} answers/s, p99 {:.1} ms) the pipeline dropped {} frames (without load {}); segment latency {ratio:.2}x the unloaded run",
        ok as f64 / elapsed,
        pct(0.99),
        loaded.dropped,
        quiet.dropped
    );
    Ok(())
}
