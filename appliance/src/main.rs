//! `lockstep`: the Lockstep live-encoding appliance daemon.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand};

use lockstep::config::{self, Config, Pacing, SourceKind};
use lockstep::pipeline::{self, RunLimits, RunSummary};
use lockstep::{bench, origin};

/// Exit code when the run finished but some segments could not be written.
const EXIT_WRITE_ERRORS: u8 = 3;

#[derive(Debug, Parser)]
#[command(name = "lockstep", version, about = "Lockstep live-encoding appliance")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the appliance daemon with a configuration file.
    Run {
        /// TOML configuration (see docs/configuration.md).
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Run the demo: a local swarm of appliances on the built-in test
    /// source (light ladder), each with its HTTP origin.
    Demo {
        /// Output directory (node k writes under node-k/ when --nodes > 1).
        #[arg(long, default_value = "lockstep-demo")]
        out: PathBuf,
        /// Appliance processes (1 runs a single appliance in this process).
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Swarm UDP port of node 1 (node k uses the k-1 next ports).
        #[arg(long, default_value_t = 7946)]
        swarm_port: u16,
        /// Encode this file instead of the built-in source.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Origin listen address (node k listens on the k-1 next ports).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Do not start the HTTP origin.
        #[arg(long)]
        no_origin: bool,
        /// Admin page and API of node 1 (node k listens on the k-1 next ports).
        #[arg(long, default_value = "127.0.0.1:9080")]
        admin: String,
        /// Do not start the admin page and API.
        #[arg(long)]
        no_admin: bool,
        /// Encode as fast as possible instead of in real time.
        #[arg(long)]
        fast: bool,
        /// Run two CDN edges (Debian's nginx, caching) in front of the
        /// origins, and steer players between them (HLS Content Steering).
        #[arg(long)]
        edge: bool,
        /// Port of edge 1 with --edge (edge k listens on the k-1 next ports).
        #[arg(long, default_value_t = 8180)]
        edge_port: u16,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Analyse a file (any format ffmpeg reads): per-segment complexity,
    /// content type and scene cuts, without encoding.
    Analyze {
        /// The file.
        input: PathBuf,
        /// Print JSON.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Print CSV (one line per segment).
        #[arg(long)]
        csv: bool,
        /// Segment length in seconds.
        #[arg(long, default_value_t = 2.0)]
        segment_seconds: f64,
    },
    /// Run the configured media clock and print its time and quality
    /// (what operators watch; see docs/time.md).
    Clock {
        /// TOML configuration (default: the embedded one).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        seconds: Option<f64>,
        /// Time between lines, ms.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Compare the outputs of the nodes of a demo swarm (hashes, alignment, gaps).
    Verify {
        /// The demo's output directory (holding node-1/, node-2/, ...).
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set the admin password: reads it from standard input (one line) and
    /// writes its argon2 hash to FILE (mode 600), for `admin.password_file`.
    Passwd {
        /// The password hash file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Add an API token (for automation and Prometheus) to FILE, for
    /// `admin.tokens_file`; prints the token once, keeps only its hash.
    Token {
        /// The token hash file.
        #[arg(long)]
        file: PathBuf,
        /// A name for the token (shown in the audit log).
        #[arg(long)]
        name: String,
    },
    /// Fleet provisioning: fleet keys and per-appliance bundles from a
    /// fleet manifest (docs/provisioning.md).
    Fleet {
        #[command(subcommand)]
        what: FleetCommand,
    },
    /// Apply or check a provisioning bundle on this appliance.
    Provision {
        #[command(subcommand)]
        what: ProvisionCommand,
    },
    /// Check a configuration file and print what is wrong.
    CheckConfig {
        /// TOML configuration.
        config: PathBuf,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
    /// List capture devices, encoder backends and PTP hardware clocks found here.
    Devices {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks (print ratios against a baseline measured in the same run).
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// Write a new random fleet key (64 hex digits, mode 600) to FILE.
    Key {
        /// The key file (must not exist).
        #[arg(long)]
        file: PathBuf,
    },
    /// Make one provisioning bundle per appliance of a fleet manifest.
    Bundles {
        /// The fleet manifest (TOML).
        #[arg(long)]
        manifest: PathBuf,
        /// Directory for the bundles (`HOSTNAME.toml`, mode 600).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ProvisionCommand {
    /// Check a bundle without applying it.
    Check {
        /// The bundle.
        bundle: PathBuf,
    },
    /// Apply a bundle: new configuration, identity and secrets, or nothing
    /// when it is refused (the previous configuration stays).
    Apply {
        /// The bundle.
        #[arg(long)]
        bundle: PathBuf,
        /// The appliance's root file system (default `/`, which also sets
        /// the running host name).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct LimitArgs {
    /// Stop after this many seconds from the start (live sources: at the next segment boundary; a live
    /// configuration change does not restart the count).
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after exactly this many frames.
    #[arg(long)]
    frames: Option<u64>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LOCKSTEP_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", lockstep::errors::one_line(&*e));
            ExitCode::FAILURE
        }
    }
}

fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal asks for a clean stop (segments in flight are
        // finished, playlists ended); a second one exits at once.
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))?;
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    Ok(stop)
}

fn limits(args: &LimitArgs) -> anyhow::Result<RunLimits> {
    if let Some(d) = args.duration {
        anyhow::ensure!(d > 0.0 && d.is_finite(), "--duration must be a positive number of seconds");
    }
    Ok(RunLimits { frames: args.frames, duration_s: args.duration, stop: Some(stop_flag()?), ..Default::default() })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, limits: l } => {
            let (loaded, text) = Config::load_with_text(&config)?;
            let file = lockstep::daemon::ConfigFile { path: config, text };
            let config = loaded;
            match lockstep::daemon::run(&config, Some(&file), &limits(&l)?)? {
                Some(summary) => report(summary),
                None => {
                    eprintln!("lockstep: stopped (the channel was not running)");
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Passwd { file } => {
            let password = read_password()?;
            lockstep::admin::auth::set_password(&file, &password)?;
            eprintln!("admin password hash written to {} (mode 600)", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { file, name } => {
            let token = lockstep::admin::auth::add_token(&file, &name)?;
            eprintln!("token `{name}` added to {}; it is shown once:", file.display());
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            out,
            nodes,
            swarm_port,
            input,
            listen,
            no_origin,
            admin,
            no_admin,
            fast,
            edge,
            edge_port,
            limits: l,
        } if nodes != 1 => {
            let listen = listen
                .parse()
                .map_err(|_| anyhow::anyhow!("--listen `{listen}` is not an address like 127.0.0.1:8080"))?;
            let admin = if no_admin {
                None
            } else {
                Some(
                    admin
                        .parse()
                        .map_err(|_| anyhow::anyhow!("--admin `{admin}` is not an address like 127.0.0.1:9080"))?,
                )
            };
            let l = limits(&l)?;
            let d = lockstep::demo::SwarmDemo {
                out,
                input,
                listen,
                swarm_port,
                nodes,
                no_origin,
                fast,
                duration: l.duration_s,
                frames: l.frames,
                admin,
                edge_port: edge.then_some(edge_port),
            };
            let stop = l.stop.unwrap_or_default();
            Ok(if lockstep::demo::run(&d, &stop)? { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Demo { out, input, listen, no_origin, fast, edge, limits: l, .. } => {
            anyhow::ensure!(!edge, "--edge needs a swarm: --nodes 2 or more (the edges steer between its origins)");
            let mut config = Config::embedded_demo();
            config.output.dir = out;
            if let Some(path) = input {
                // Checked before anything is printed or listens.
                anyhow::Context::with_context(std::fs::File::open(&path), || format!("--input {}", path.display()))?;
                config.source.kind = SourceKind::File;
                config.source.path = Some(path);
            }
            if fast {
                config.source.pacing = Pacing::Fast;
            }
            config.validate()?;
            std::fs::create_dir_all(&config.output.dir)?;
            let root = std::fs::canonicalize(&config.output.dir)?;
            let origin = if no_origin {
                None
            } else {
                Some(
                    origin::start(&listen, root.clone(), Default::default(), None)
                        .map_err(|e| anyhow::anyhow!("{e}; choose a free port with --listen, or --no-origin"))?,
                )
            };
            eprintln!("lockstep demo: writing to {}", root.join(&config.channel.id).display());
            if let Some(o) = &origin {
                eprintln!("lockstep demo: playlist at http://{}/{}/master.m3u8", o.addr, config.channel.id);
            }
            eprintln!("lockstep demo: Ctrl-C stops");
            report(pipeline::run(&config, &limits(&l)?, &lockstep::channels::driver::taps())?)
        }
        Command::Analyze { input, json, csv, segment_seconds } => {
            anyhow::ensure!(
                segment_seconds > 0.0 && segment_seconds <= 600.0,
                "--segment-seconds must be between 0 and 600"
            );
            let terminal = std::io::stderr().is_terminal();
            let started = std::time::Instant::now();
            let mut progress = |frames: u64| {
                if terminal {
                    let fps = frames as f64 / started.elapsed().as_secs_f64().max(1e-3);
                    eprint!("\ranalysing: {frames} frames ({fps:.0} fps)   ");
                }
            };
            let report = lockstep::analysis::report::analyze_file(&input, segment_seconds, &mut progress)?;
            if terminal {
                eprintln!();
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if csv {
                print!("{}", lockstep::analysis::report::to_csv(&report));
            } else {
                print!("{}", lockstep::analysis::report::to_table(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Clock { config, seconds, interval_ms, json } => {
            let config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::embedded_default(),
            };
            watch_clock(&config, seconds, interval_ms, json)
        }
        Command::Verify { dir, json } => {
            let report = lockstep::demo::verify(&dir)?;
            let problems: usize = report.values().map(lockstep::demo::TrackReport::problems).sum();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for line in lockstep::demo::describe(&report) {
                    println!("{line}");
                }
            }
            Ok(if problems == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Fleet { what: FleetCommand::Key { file } } => {
            anyhow::ensure!(!file.exists(), "{} exists; a fleet key is never overwritten", file.display());
            let key = lockstep::swarm::wire::FleetKey::generate();
            lockstep::admin::auth::write_private(&file, &format!("{}\n", key.to_hex()))?;
            eprintln!("fleet key written to {} (mode 600)", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Fleet { what: FleetCommand::Bundles { manifest, out } } => {
            let made = lockstep::provision::bundles(&manifest)?;
            std::fs::create_dir_all(&out)?;
            for (hostname, text) in &made {
                let path = out.join(format!("{hostname}.toml"));
                lockstep::admin::auth::write_private(&path, text)?;
                println!("{}", path.display());
            }
            eprintln!("{} bundles written; each holds the fleet key: keep them private", made.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Provision { what: ProvisionCommand::Check { bundle } } => {
            let text = std::fs::read_to_string(&bundle)
                .map_err(|e| anyhow::anyhow!("cannot read bundle {}: {e}", bundle.display()))?;
            let b = lockstep::provision::open(&text, &bundle.display().to_string())?;
            println!(
                "{}: ok (host {}, fleet {}, node {}, role {:?})",
                bundle.display(),
                b.hostname,
                b.fleet,
                b.config.appliance.id,
                b.config.appliance.role
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Provision { what: ProvisionCommand::Apply { bundle, root } } => {
            let live = root == std::path::Path::new("/");
            match lockstep::provision::apply(&bundle, &root, live) {
                Ok(lockstep::provision::Outcome::Unchanged) => {
                    eprintln!("lockstep provision: {} was applied before; nothing changed", bundle.display());
                    Ok(ExitCode::SUCCESS)
                }
                Ok(lockstep::provision::Outcome::Applied { dir, previous }) => {
                    eprintln!(
                        "lockstep provision: applied {} (configuration in {}; previous: {})",
                        bundle.display(),
                        dir.display(),
                        previous.as_deref().map_or("none".into(), |p| p.display().to_string())
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("lockstep provision: REFUSED: {e}");
                    eprintln!("lockstep provision: the previous configuration is unchanged");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::CheckConfig { config } => {
            let c = Config::load(&config)?;
            for w in c.warnings() {
                eprintln!("warning: {}: {w}", config.display());
            }
            println!("{}: ok ({} renditions, source {:?})", config.display(), c.renditions.len(), c.source.kind);
            Ok(ExitCode::SUCCESS)
        }
        Command::DefaultConfig => {
            print!("{}", config::DEFAULT_TOML);
            Ok(ExitCode::SUCCESS)
        }
        Command::Devices { json } => {
            let report = lockstep::devices::report();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", lockstep::devices::text(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { which } => {
            bench::run(which)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `lockstep clock`: the media clock's reading and quality, once per interval.
fn watch_clock(config: &Config, seconds: Option<f64>, interval_ms: u64, json: bool) -> anyhow::Result<ExitCode> {
    use lockstep::clock::{Clock, MediaClock};
    anyhow::ensure!((1..=60_000).contains(&interval_ms), "--interval-ms must be between 1 and 60000");
    let stop = stop_flag()?;
    let rate = config.source_rate()?;
    let clock = Clock::open(&config.clock)?;
    let started = std::time::Instant::now();
    let until = seconds.map(std::time::Duration::from_secs_f64);
    let mut out = std::io::stdout().lock();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && until.is_none_or(|u| started.elapsed() < u) {
        let (local, tai) = clock.read();
        let q = clock.quality();
        let frame = rate.frame_at(tai);
        let line = if json {
            serde_json::json!({
                "local_ns": local,
                "tai_ns": i64::try_from(tai).unwrap_or(i64::MAX),
                "frame": frame,
                "quality": q,
            })
            .to_string()
        } else {
            format!(
                "TAI {}.{:09} frame {frame} | {} error {} offset {:.0} ns freq {:+.1} ppb | gm {} | {}{}",
                tai.div_euclid(1_000_000_000),
                tai.rem_euclid(1_000_000_000),
                q.state.name(),
                q.error_ns.map_or("?".into(), |e| format!("{e:.0} ns")),
                q.offset_ns,
                q.frequency_ppb,
                q.grandmaster.as_deref().unwrap_or("-"),
                q.source,
                q.last_error.as_deref().map(|e| format!(" | {e}")).unwrap_or_default(),
            )
        };
        use std::io::Write;
        writeln!(out, "{line}")?;
        out.flush()?;
        std::thread::sleep(std::time::Duration::from_millis(interval_ms));
    }
    Ok(ExitCode::SUCCESS)
}

/// The password for `lockstep passwd`: one line of standard input (asked
/// for twice on a terminal, without echo).
fn read_password() -> anyhow::Result<String> {
    let terminal = std::io::stdin().is_terminal();
    let read = |prompt: &str| -> anyhow::Result<String> {
        if terminal {
            eprint!("{prompt}");
            set_echo(false);
        }
        let mut line = String::new();
        let got = std::io::stdin().read_line(&mut line);
        if terminal {
            set_echo(true);
            eprintln!();
        }
        got?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    };
    let password = read("new admin password: ")?;
    if terminal {
        anyhow::ensure!(read("again: ")? == password, "the passwords differ; nothing written");
    }
    Ok(password)
}

/// Turns terminal echo of standard input on or off.
fn set_echo(on: bool) {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    if let Ok(mut t) = tcgetattr(&stdin) {
        t.local_flags.set(LocalFlags::ECHO, on);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &t);
    }
}

fn report(summary: RunSummary) -> anyhow::Result<ExitCode> {
    let tracks: Vec<String> = summary.packager.written.iter().map(|(n, c)| format!("{n}={c}")).collect();
    eprintln!(
        "lockstep: {} frames from frame {} (first segment {}), {} dropped; segments written: {}; output {}",
        summary.frames,
        summary.first_frame,
        summary.first_segment,
        summary.frames_dropped,
        tracks.join(" "),
        summary.root.display()
    );
    if summary.packager.write_errors > 0 {
        eprintln!(
            "error: {} segment writes failed (last: {}); segments already written are intact",
            summary.packager.write_errors,
            summary.packager.last_error.as_deref().unwrap_or("?")
        );
        return Ok(ExitCode::from(EXIT_WRITE_ERRORS));
    }
    Ok(ExitCode::SUCCESS)
}
