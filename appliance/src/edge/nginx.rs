//! A CDN edge as operators run them: nginx (Debian's package) as a
//! caching reverse proxy in front of the appliances' origins. The project
//! writes its configuration and runs it in the foreground; the demo
//! (`lockstep demo --edge`) and the tests start two, one pathway each.
//!
//! What the edge does:
//! - segments and init segments are cached (the origin marks them
//!   `max-age=3600`; a segment's bytes never change); playlists are not
//!   (`no-cache`), so players see the live edge at once;
//! - the first origin is its upstream, the others are backups tried on a
//!   connection error, a timeout, a 404 (a segment the first has not yet)
//!   or a 5xx;
//! - every answer says which edge gave it (`X-Edge`), whether from its
//!   cache (`X-Cache-Status`) and what the upstream answered
//!   (`X-Upstream-Status`), which the edge health agent reads;
//! - `/lockstep-edge/status` is nginx's stub status (connections and
//!   requests), and `/healthz` goes to the origin uncached: the agent's
//!   probe of the whole path.
//!
//! Started as root, nginx's workers run as `nobody`; their cache and
//! temporary files then live in a private directory made for the edge in
//! the system's temporary directory (a demo's output directory may sit
//! where `nobody` cannot enter), removed when the edge stops.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Path of nginx's stub status on an edge.
pub const STATUS_PATH: &str = "/lockstep-edge/status";

/// How long an edge has to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One edge to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSpec {
    /// Its name (the pathway's id).
    pub id: String,
    /// Where players reach it.
    pub listen: SocketAddr,
    /// The origins behind it: the first is its upstream, the others backups.
    pub origins: Vec<SocketAddr>,
    /// Its configuration, logs and pid file.
    pub dir: PathBuf,
}

impl EdgeSpec {
    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// nginx's configuration: caches under `cache`; workers as `user`
    /// (user, group) when given (only when started as root).
    pub fn nginx_conf(&self, cache: &Path, user: Option<(&str, &str)>) -> String {
        let dir = self.dir.display();
        let cache = cache.display();
        let mut s = String::with_capacity(2048);
        let _ = writeln!(s, "# Written by lockstep for the edge `{}`; rewritten at every start.", self.id);
        let _ = writeln!(s, "daemon off;");
        if let Some((user, group)) = user {
            let _ = writeln!(s, "user {user} {group};");
        }
        let _ = writeln!(s, "worker_processes 1;");
        let _ = writeln!(s, "pid {dir}/nginx.pid;");
        let _ = writeln!(s, "error_log {dir}/error.log warn;");
        let _ = writeln!(s, "events {{ worker_connections 512; }}");
        let _ = writeln!(s, "http {{");
        let _ = writeln!(
            s,
            "  log_format edge '$time_iso8601 $status $request_time $upstream_cache_status \
             $upstream_status $upstream_response_time \"$request_uri\"';"
        );
        let _ = writeln!(s, "  access_log {dir}/access.log edge;");
        let _ = writeln!(s, "  server_tokens off;");
        for (directive, sub) in [
            ("client_body_temp_path", "body"),
            ("proxy_temp_path", "proxy"),
            ("fastcgi_temp_path", "fastcgi"),
            ("uwsgi_temp_path", "uwsgi"),
            ("scgi_temp_path", "scgi"),
        ] {
            let _ = writeln!(s, "  {directive} {cache}/{sub};");
        }
        let _ = writeln!(
            s,
            "  proxy_cache_path {cache}/store levels=1:2 keys_zone=segments:4m max_size=512m inactive=2m \
             use_temp_path=off;"
        );
        let _ = writeln!(s, "  upstream origins {{");
        for (i, origin) in self.origins.iter().enumerate() {
            let backup = if i == 0 { " max_fails=1 fail_timeout=2s" } else { " backup" };
            let _ = writeln!(s, "    server {origin}{backup};");
        }
        let _ = writeln!(s, "    keepalive 16;");
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "  server {{");
        let _ = writeln!(s, "    listen {};", self.listen);
        let _ = writeln!(s, "    add_header X-Edge \"{}\" always;", self.id);
        let _ = writeln!(s, "    add_header X-Cache-Status $upstream_cache_status always;");
        let _ = writeln!(s, "    add_header X-Upstream-Status $upstream_status always;");
        let _ = writeln!(s, "    proxy_http_version 1.1;");
        let _ = writeln!(s, "    proxy_set_header Connection \"\";");
        let _ = writeln!(s, "    proxy_connect_timeout 1s;");
        let _ = writeln!(s, "    proxy_read_timeout 4s;");
        let _ = writeln!(s, "    proxy_next_upstream error timeout http_404 http_500 http_502 http_503 http_504;");
        let _ = writeln!(s, "    location = {STATUS_PATH} {{ stub_status; access_log off; }}");
        let _ = writeln!(s, "    location = /healthz {{ proxy_pass http://origins; proxy_cache off; }}");
        let _ = writeln!(s, "    location / {{");
        let _ = writeln!(s, "      proxy_pass http://origins;");
        let _ = writeln!(s, "      proxy_cache segments;");
        let _ = writeln!(s, "      proxy_cache_lock on;");
        let _ = writeln!(s, "      proxy_cache_key $uri;");
        let _ = writeln!(s, "    }}");
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "}}");
        s
    }
}

/// A running edge; stopped (SIGTERM) when dropped.
#[derive(Debug)]
pub struct Edge {
    /// What it runs.
    pub spec: EdgeSpec,
    child: Child,
    _cache: tempfile::TempDir,
}

impl Edge {
    /// Writes the configuration and starts nginx, returning once it
    /// listens. An error names what is missing (nginx itself: `./run
    /// deps` installs it) or what nginx said.
    pub fn start(spec: EdgeSpec) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&spec.dir).with_context(|| format!("edge {}: {}", spec.id, spec.dir.display()))?;
        let cache = tempfile::Builder::new()
            .prefix(&format!("lockstep-edge-{}-", spec.id))
            .tempdir()
            .with_context(|| format!("edge {}: its cache directory", spec.id))?;
        let workers = if nix::unistd::geteuid().is_root() { Some(unprivileged(cache.path())?) } else { None };
        let conf = spec.dir.join("nginx.conf");
        let text = spec.nginx_conf(cache.path(), workers.as_ref().map(|(u, g)| (u.as_str(), g.as_str())));
        std::fs::write(&conf, text).with_context(|| format!("edge {}: {}", spec.id, conf.display()))?;
        let error_log = spec.dir.join("error.log");
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(&spec.dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&error_log)
            .stdin(Stdio::null())
            // Its own process group (master and workers): the edge can be
            // killed whole, as a failing machine would take it.
            .process_group(0)
            .spawn()
            .with_context(|| format!("edge {}: cannot start nginx (`./run deps` installs Debian's nginx)", spec.id))?;
        let mut edge = Self { spec, child, _cache: cache };
        edge.wait_listening(&error_log)?;
        Ok(edge)
    }

    /// nginx's master process; also its process group (master and
    /// workers).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether nginx still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn wait_listening(&mut self, error_log: &Path) -> anyhow::Result<()> {
        let since = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                let said = std::fs::read_to_string(error_log).unwrap_or_default();
                let last = said.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(nothing in its log)");
                anyhow::bail!("edge {} (nginx) exited with {status}: {last}", self.spec.id);
            }
            if std::net::TcpStream::connect_timeout(&self.spec.listen, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            anyhow::ensure!(
                since.elapsed() < START_TIMEOUT,
                "edge {} (nginx) did not listen on {} within {} s",
                self.spec.id,
                self.spec.listen,
                START_TIMEOUT.as_secs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops nginx (SIGTERM: a fast shutdown) and waits for it; workers
    /// left by a master that was killed are killed too.
    pub fn stop(&mut self) {
        use nix::sys::signal::{Signal, kill, killpg};
        let Ok(pid) = i32::try_from(self.child.id()) else { return };
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = kill(pid, Signal::SIGTERM);
        let _ = self.child.wait();
        let _ = killpg(pid, Signal::SIGKILL);
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.stop();
    }
}

/// nginx from `PATH`, or Debian's `/usr/sbin/nginx` (root's `PATH` has
/// it, others' often not).
fn nginx_binary() -> PathBuf {
    let sbin = Path::new("/usr/sbin/nginx");
    let in_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file());
    in_path.unwrap_or_else(|| sbin.to_path_buf())
}

/// `nobody` and its group, owning `cache` (the workers write there).
fn unprivileged(cache: &Path) -> anyhow::Result<(String, String)> {
    let user = nix::unistd::User::from_name("nobody")?.context("edge: no user `nobody` for nginx's workers")?;
    let group = nix::unistd::Group::from_gid(user.gid)?.map_or_else(|| user.gid.to_string(), |g| g.name);
    nix::unistd::chown(cache, Some(user.uid), Some(user.gid))
        .with_context(|| format!("edge: giving {} to nobody", cache.display()))?;
    Ok((user.name, group))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_caches_segments_from_its_first_origin_and_falls_back_to_the_others() {
        let spec = EdgeSpec {
            id: "edge-1".into(),
            listen: "127.0.0.1:8180".parse().unwrap(),
            origins: vec!["127.0.0.1:8080".parse().unwrap(), "127.0.0.1:8081".parse().unwrap()],
            dir: "/out/edge-1".into(),
        };
        let conf = spec.nginx_conf(Path::new("/tmp/cache"), Some(("nobody", "nogroup")));
        assert!(conf.contains("user nobody nogroup;"));
        assert!(conf.contains("server 127.0.0.1:8080 max_fails=1 fail_timeout=2s;"));
        assert!(conf.contains("server 127.0.0.1:8081 backup;"));
        assert!(conf.contains("listen 127.0.0.1:8180;"));
        assert!(conf.contains("proxy_cache_path /tmp/cache/store "));
        assert!(conf.contains("proxy_temp_path /tmp/cache/proxy;"));
        assert!(conf.contains("location = /lockstep-edge/status { stub_status;"));
        assert!(conf.contains("add_header X-Edge \"edge-1\" always;"));
        assert_eq!(conf.matches('{').count(), conf.matches('}').count(), "{conf}");
        assert!(!spec.nginx_conf(Path::new("/c"), None).contains("user "));
        assert_eq!(spec.url(), "http://127.0.0.1:8180");
    }
}
