//! A local swarm of separate daemon processes for the benchmarks that
//! drill one appliance (`lockstep bench resync`, `lockstep bench chain`):
//! `lockstep run` of this very binary on loopback, node `k` with id `n<k>`,
//! the built-in test source (16:9, 25 fps) and one rendition at its size,
//! one fleet key, and the admin API (a bearer token) on the nodes asked
//! for.
//! Every node writes its swarm view to `n<k>/swarm.json`.

use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use super::wire::FleetKey;

/// What the swarm is made of.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Appliances.
    pub nodes: usize,
    /// Seconds each runs before it ends by itself.
    pub run_s: f64,
    /// Lines of the picture (16:9); the rendition is `<height>p`.
    pub height: u32,
    /// The rendition's bitrate, kbit/s.
    pub bitrate_kbps: u32,
    /// More keys of every node's `[swarm]` table, one per line.
    pub swarm: String,
    /// More keys of every node's `[channel]` table, one per line.
    pub channel: String,
    /// The nodes with an admin API.
    pub admin: Vec<usize>,
    /// The standby units (`appliance.role = "standby"`); the others encode.
    pub standby: Vec<usize>,
}

/// One node's process, killed when dropped.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The running swarm; its processes are killed when it is dropped.
pub struct LocalSwarm {
    /// Where every node's configuration, output and log are.
    pub dir: PathBuf,
    /// Appliances.
    pub n: usize,
    /// The admin API's address of each node that has one.
    admins: Vec<Option<String>>,
    token: String,
    _nodes: Vec<Node>,
}

impl std::fmt::Debug for LocalSwarm {
    /// Leaves the bearer token out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSwarm").field("dir", &self.dir).field("n", &self.n).finish_non_exhaustive()
    }
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalSwarm {
    /// Writes the configurations under `dir` and starts every node.
    pub fn start(dir: &Path, o: &Options) -> anyhow::Result<Self> {
        let (n, h) = (o.nodes, o.height);
        std::fs::create_dir_all(dir)?;
        let key = dir.join("fleet.key");
        crate::files::write_atomic(
            &key,
            FleetKey::generate().to_hex().as_bytes(),
            crate::files::Mode::Exactly(0o600),
            false,
        )?;
        let passwd = dir.join("admin.passwd");
        crate::admin::auth::set_password(&passwd, &hex::encode(crate::admin::auth::random_bytes::<16>()?))?;
        let tokens = dir.join("tokens");
        let token = crate::admin::auth::add_token(&tokens, "bench")?;
        let swarm_ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect::<anyhow::Result<_>>()?;
        let exe = std::env::current_exe().context("the lockstep binary")?;
        let (mut nodes, mut admins) = (Vec::new(), Vec::new());
        for k in 0..n {
            let out = dir.join(format!("n{k}"));
            std::fs::create_dir_all(&out)?;
            let seeds: Vec<String> =
                (0..n).filter(|&j| j != k).map(|j| format!("\"127.0.0.1:{}\"", swarm_ports[j])).collect();
            let admin = o.admin.contains(&k).then(free_tcp_port).transpose()?.map(|p| format!("127.0.0.1:{p}"));
            let admin_table = admin.as_ref().map_or_else(String::new, |a| {
                format!(
                    "[admin]\nlisten = \"{a}\"\npassword_file = \"{}\"\ntokens_file = \"{}\"\n",
                    passwd.display(),
                    tokens.display()
                )
            });
            let text = format!(
                "[appliance]\nid = \"n{k}\"\nrole = \"{}\"\n[channel]\nid = \"ch\"\n{}[source]\nkind = \"test\"\nwidth = {}\n\
                 height = {h}\nfps = \"25\"\n[audio]\nenabled = false\n[[renditions]]\nname = \"{h}p\"\nheight = {h}\n\
                 bitrate_kbps = {}\n[output]\ndir = \"{}\"\nwindow_segments = 1000\n[origin]\n\
                 listen = \"127.0.0.1:{}\"\n[swarm]\nenabled = true\nbind = \"127.0.0.1:{}\"\nseeds = [{}]\n\
                 fleet_key_file = \"{}\"\nstatus_file = \"{}\"\n{}{admin_table}",
                if o.standby.contains(&k) { "standby" } else { "encoder" },
                o.channel,
                o.height * 16 / 9,
                o.bitrate_kbps,
                out.display(),
                free_tcp_port()?,
                swarm_ports[k],
                seeds.join(", "),
                key.display(),
                out.join("swarm.json").display(),
                o.swarm,
            );
            let config = out.join("lockstep.toml");
            std::fs::write(&config, text)?;
            let log = std::fs::File::create(out.join("stderr.log"))?;
            let mut command = Command::new(&exe);
            command
                .args(["run", "--duration", &format!("{:.0}", o.run_s), "--config"])
                .arg(&config)
                .stdout(std::process::Stdio::null())
                .stderr(log);
            // A node ends with the process that started it, also when that
            // is killed (a benchmark stopped by a signal leaves no nodes).
            // SAFETY: between fork and exec the child only calls prctl(2),
            // which is async-signal-safe and touches no memory of the parent.
            unsafe {
                command.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
                });
            }
            let child = command.spawn().context("starting a node")?;
            nodes.push(Node(child));
            admins.push(admin);
        }
        Ok(Self { dir: dir.to_path_buf(), n, admins, token, _nodes: nodes })
    }

    /// Node `k`'s output directory.
    pub fn out(&self, k: usize) -> PathBuf {
        self.dir.join(format!("n{k}"))
    }

    /// Node `k`'s swarm view, if written.
    pub fn view(&self, k: usize) -> Option<Value> {
        let text = std::fs::read_to_string(self.out(k).join("swarm.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Calls node `k`'s admin API: `method` on `path` with a JSON `body`;
    /// answers the status and the JSON answer. Errors when the node has
    /// no admin API or did not answer within 10 s.
    pub fn call(&self, k: usize, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, Value)> {
        let admin = self.admins.get(k).and_then(Option::as_ref).with_context(|| format!("n{k} has no admin API"))?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        let url = format!("http://{admin}{path}");
        let auth = format!("Bearer {}", self.token);
        let mut answer = match (method, body) {
            ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
            ("PUT", Some(b)) => agent.put(&url).header("Authorization", &auth).content_type("application/json").send(b),
            (_, Some(b)) => agent.post(&url).header("Authorization", &auth).content_type("application/json").send(b),
            (_, None) => agent.post(&url).header("Authorization", &auth).send_empty(),
        }
        .with_context(|| format!("{method} {path} on n{k}"))?;
        let text = answer.body_mut().read_to_string().unwrap_or_default();
        Ok((answer.status().as_u16(), serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// Like [`Self::call`], and the answer must be 2xx.
    pub fn ask(&self, k: usize, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<Value> {
        let (status, answer) = self.call(k, method, path, body)?;
        anyhow::ensure!((200..300).contains(&status), "{method} {path} on n{k}: {status} {answer}");
        Ok(answer)
    }
}
