//! Fleet provisioning (docs/provisioning.md): one image for the whole
//! fleet, and per appliance a bundle made from a fleet manifest
//! (`lockstep fleet bundles`) that the provisioning unit applies at boot
//! (`lockstep provision apply`).
//!
//! A bundle is one TOML file: identity, role, fleet key, admin password
//! hash, PTP settings and the complete daemon configuration, with a
//! SHA-256 of its body on the first line so that a truncated or edited
//! bundle is refused. Applying checks everything first, then writes the
//! new configuration into a fresh directory under
//! `/var/lib/lockstep/config.d/` and switches the `config` symlink to it in
//! one rename: a bad bundle changes nothing, a crash mid-way leaves the
//! previous configuration in place, and applying the same bundle again
//! changes nothing.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{ClockSource, Config, Role};

/// Where the image build stamps the image version.
pub const IMAGE_VERSION_FILE: &str = "/usr/lib/lockstep/image-version";
/// The appliance's writable state (config, keys, segments, history).
pub const STATE_DIR: &str = "/var/lib/lockstep";
/// The live configuration: a symlink into `config.d/` (see the module doc).
pub const CONFIG_DIR: &str = "/var/lib/lockstep/config";
/// What the last provisioning attempt did (JSON), under the state dir.
const STATUS_FILE: &str = "provision/status.json";
/// Bundle format this daemon writes and reads.
const FORMAT: u32 = 1;
/// First-line prefix carrying the SHA-256 of the rest of the bundle.
const DIGEST_PREFIX: &str = "# lockstep-bundle sha256=";
/// Bundles are small; anything bigger is not one.
const MAX_BUNDLE_BYTES: u64 = 1 << 20;

/// A provisioning problem, naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The manifest or bundle is malformed or has a value not allowed.
    #[error("{origin}: {message}")]
    Invalid {
        /// The file (and appliance) at fault.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A value of the manifest or bundle is not allowed.
    #[error("{origin}: {source}")]
    Value {
        /// The file (and appliance) at fault.
        origin: String,
        /// What is wrong.
        source: ValueError,
    },
}

/// A value of a bundle (or of the fleet manifest it is made from) that
/// is not allowed.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// The bundle was made for another daemon version.
    #[error("format {0}: this daemon reads format {FORMAT}")]
    Format(u32),
    /// A host name too short or too long.
    #[error("hostname `{0}` must be 1 to 253 characters")]
    HostnameLength(String),
    /// A host name with a label that is not a DNS label.
    #[error("hostname `{0}`: each label must be 1 to 63 letters, digits or inner hyphens")]
    HostnameLabel(String),
    /// A fleet key that is not 64 hex digits.
    #[error("fleet_key: a fleet key is 64 hex digits (got {0} characters)")]
    FleetKey(usize),
    /// A password hash `lockstep passwd` did not make.
    #[error("admin_password_hash: not a password hash from `lockstep passwd` ({0})")]
    PasswordHash(String),
    /// A password hash of another algorithm.
    #[error("admin_password_hash: algorithm {0} (want argon2id)")]
    PasswordAlgorithm(String),
    /// A PTP interface that is not an interface name.
    #[error("ptp.interface `{0}` is not an interface name")]
    PtpInterface(String),
    /// The daemon configuration does not validate.
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// The bundle cannot be written as TOML.
    #[error("cannot write the bundle: {0}")]
    Serialise(#[from] toml::ser::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError + '_ {
    move |source| ProvisionError::Io { path: path.to_path_buf(), source }
}

fn invalid(origin: impl Into<String>, message: impl Into<String>) -> ProvisionError {
    ProvisionError::Invalid { origin: origin.into(), message: message.into() }
}

fn bad_value(origin: impl Into<String>) -> impl FnOnce(ValueError) -> ProvisionError {
    let origin = origin.into();
    move |source| ProvisionError::Value { origin, source }
}

/// PTP settings of an appliance (the ptp4l and phc2sys units use them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PtpSettings {
    /// Network interface ptp4l runs on.
    pub interface: String,
    /// PTP domain.
    #[serde(default)]
    pub domain: u8,
    /// Hardware timestamping (a NIC with a PHC; phc2sys then disciplines
    /// the system clock) or software (no PHC, e.g. a VM).
    #[serde(default)]
    pub timestamping: Timestamping,
}

/// How ptp4l timestamps packets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Timestamping {
    /// The NIC's PTP hardware clock.
    #[default]
    Hardware,
    /// The kernel's software timestamps.
    Software,
}

/// The fleet manifest: shared settings and one entry per appliance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Settings every appliance shares.
    pub fleet: FleetSettings,
    /// The appliances.
    #[serde(rename = "appliance")]
    pub appliances: Vec<ManifestAppliance>,
}

/// `[fleet]` of a manifest. Relative paths are relative to the manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    /// Fleet name (shown in status).
    pub name: String,
    /// The fleet key file (64 hex digits; `lockstep fleet key`).
    pub key_file: PathBuf,
    /// The admin password hash file (`lockstep passwd`).
    pub admin_password_file: PathBuf,
    /// Base daemon configuration (channel, source, ladder, output);
    /// default: the embedded defaults.
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// Swarm UDP port on every appliance.
    #[serde(default = "default_swarm_port")]
    pub swarm_port: u16,
    /// Admin page and API listen address.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// Origin listen address.
    #[serde(default = "default_origin_listen")]
    pub origin_listen: String,
    /// PTP settings for every appliance (an appliance may override them).
    #[serde(default)]
    pub ptp: Option<PtpSettings>,
}

fn default_swarm_port() -> u16 {
    7946
}

fn default_admin_listen() -> String {
    "0.0.0.0:9080".into()
}

fn default_origin_listen() -> String {
    "0.0.0.0:8080".into()
}

/// One `[[appliance]]` of a manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestAppliance {
    /// Host name (also the bundle's file name).
    pub hostname: String,
    /// Swarm node id; default: the host name.
    #[serde(default)]
    pub id: Option<String>,
    /// Encoder (default) or standby.
    #[serde(default = "default_role")]
    pub role: Role,
    /// The address the other appliances reach this one at.
    pub address: IpAddr,
    /// PTP settings, replacing the fleet's.
    #[serde(default)]
    pub ptp: Option<PtpSettings>,
}

fn default_role() -> Role {
    Role::Encoder
}

/// A provisioning bundle: everything one appliance needs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Bundle format (1).
    pub format: u32,
    /// Fleet name.
    pub fleet: String,
    /// Host name.
    pub hostname: String,
    /// The fleet key, 64 hex digits (a secret: the bundle is one).
    pub fleet_key: String,
    /// The admin password's argon2 hash.
    pub admin_password_hash: String,
    /// PTP settings, if the appliance runs ptp4l.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ptp: Option<PtpSettings>,
    /// The daemon configuration (`lockstep.toml`).
    pub config: Config,
}

/// Reads a manifest and makes every appliance's bundle: `(hostname, text)`.
pub fn bundles(manifest_path: &Path) -> Result<Vec<(String, String)>, ProvisionError> {
    let text = std::fs::read_to_string(manifest_path).map_err(io(manifest_path))?;
    let origin = manifest_path.display().to_string();
    let m: Manifest = toml::from_str(&text).map_err(|e| invalid(&origin, e.to_string()))?;
    let base_dir = manifest_path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base_dir.join(p) };
    let key_path = resolve(&m.fleet.key_file);
    let fleet_key = std::fs::read_to_string(&key_path).map_err(io(&key_path))?.trim().to_string();
    check_key(&fleet_key).map_err(bad_value(key_path.display().to_string()))?;
    let hash_path = resolve(&m.fleet.admin_password_file);
    let admin_password_hash = std::fs::read_to_string(&hash_path).map_err(io(&hash_path))?.trim().to_string();
    check_password_hash(&admin_password_hash).map_err(bad_value(hash_path.display().to_string()))?;
    let base = match &m.fleet.config {
        Some(p) => Config::load(&resolve(p)).map_err(|e| invalid(&origin, format!("fleet.config: {e}")))?,
        None => Config::embedded_default(),
    };
    if m.appliances.is_empty() {
        return Err(invalid(&origin, "no [[appliance]] entries"));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (i, a) in m.appliances.iter().enumerate() {
        let at = format!("{origin}: appliance[{i}] ({})", a.hostname);
        check_hostname(&a.hostname).map_err(bad_value(&at))?;
        let id = a.id.clone().unwrap_or_else(|| a.hostname.clone());
        if !seen.insert(a.hostname.clone()) || !seen.insert(format!("id:{id}")) {
            return Err(invalid(&at, "hostname or id used twice in the fleet"));
        }
        let seeds: Vec<SocketAddr> = m
            .appliances
            .iter()
            .filter(|o| o.hostname != a.hostname)
            .map(|o| SocketAddr::new(o.address, m.fleet.swarm_port))
            .collect();
        let ptp = a.ptp.clone().or_else(|| m.fleet.ptp.clone());
        let mut c = base.clone();
        c.appliance.id = id;
        c.appliance.role = a.role;
        c.swarm.enabled = !seeds.is_empty();
        c.swarm.bind = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), m.fleet.swarm_port);
        c.swarm.advertise = Some(SocketAddr::new(a.address, m.fleet.swarm_port));
        c.swarm.seeds = seeds;
        c.swarm.fleet_key_file = Some(Path::new(CONFIG_DIR).join("fleet.key"));
        c.admin.listen = Some(m.fleet.admin_listen.clone());
        c.admin.password_file = Some(Path::new(CONFIG_DIR).join("admin.passwd"));
        c.origin.listen = Some(m.fleet.origin_listen.clone());
        c.output.dir = Path::new(STATE_DIR).join("out");
        if let Some(p) = &ptp {
            c.clock.source = ClockSource::Ptp4l;
            c.clock.domain = p.domain;
            c.clock.interface = (p.timestamping == Timestamping::Hardware).then(|| p.interface.clone());
        }
        let bundle = Bundle {
            format: FORMAT,
            fleet: m.fleet.name.clone(),
            hostname: a.hostname.clone(),
            fleet_key: fleet_key.clone(),
            admin_password_hash: admin_password_hash.clone(),
            ptp,
            config: c,
        };
        bundle.check().map_err(bad_value(&at))?;
        out.push((a.hostname.clone(), seal(&bundle).map_err(bad_value(&at))?));
    }
    Ok(out)
}

/// The bundle's text: the digest line, then the TOML body.
pub fn seal(bundle: &Bundle) -> Result<String, ValueError> {
    let body = format!(
        "# Provisioning bundle for {} (fleet {}), made by `lockstep fleet bundles`.\n\
         # It holds the fleet key and the admin password hash: keep it private.\n\
         # Edited by hand, it is refused (the digest above no longer matches).\n{}",
        bundle.hostname,
        bundle.fleet,
        toml::to_string(bundle)?
    );
    Ok(format!("{DIGEST_PREFIX}{}\n{body}", hex::encode(Sha256::digest(body.as_bytes()))))
}

/// Parses and checks a bundle's text (`origin` names it in errors).
pub fn open(text: &str, origin: &str) -> Result<Bundle, ProvisionError> {
    let (first, body) = text.split_once('\n').unwrap_or((text, ""));
    let Some(digest) = first.strip_prefix(DIGEST_PREFIX) else {
        return Err(invalid(
            origin,
            format!("not a Lockstep provisioning bundle (the first line must start with `{DIGEST_PREFIX}`)"),
        ));
    };
    if hex::encode(Sha256::digest(body.as_bytes())) != digest.trim() {
        return Err(invalid(
            origin,
            "the bundle's digest does not match its contents: it was truncated or edited; make it again with `lockstep fleet bundles`",
        ));
    }
    let bundle: Bundle = toml::from_str(body).map_err(|e| invalid(origin, e.to_string()))?;
    bundle.check().map_err(bad_value(origin))?;
    Ok(bundle)
}

impl Bundle {
    /// Every value allowed (the daemon config validated as `lockstep run`
    /// would).
    pub fn check(&self) -> Result<(), ValueError> {
        if self.format != FORMAT {
            return Err(ValueError::Format(self.format));
        }
        check_hostname(&self.hostname)?;
        check_key(&self.fleet_key)?;
        check_password_hash(&self.admin_password_hash)?;
        if let Some(p) = &self.ptp {
            let ok = !p.interface.is_empty()
                && p.interface.len() <= 15
                && p.interface.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
            if !ok {
                return Err(ValueError::PtpInterface(p.interface.clone()));
            }
        }
        self.config.validate()?;
        Ok(())
    }
}

/// A host name of letters, digits and hyphens (RFC 1123 labels).
pub fn check_hostname(name: &str) -> Result<(), ValueError> {
    if name.is_empty() || name.len() > 253 {
        return Err(ValueError::HostnameLength(name.to_string()));
    }
    for label in name.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(ValueError::HostnameLabel(name.to_string()));
        }
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), ValueError> {
    if key.len() != 64 || !key.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ValueError::FleetKey(key.len()));
    }
    Ok(())
}

fn check_password_hash(hash: &str) -> Result<(), ValueError> {
    let parsed = argon2::password_hash::PasswordHash::new(hash).map_err(|e| ValueError::PasswordHash(e.to_string()))?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(ValueError::PasswordAlgorithm(parsed.algorithm.to_string()));
    }
    Ok(())
}

/// What applying a bundle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The configuration was replaced; `previous` is the old one's directory.
    Applied {
        /// Where the new configuration is.
        dir: PathBuf,
        /// The configuration it replaced, if any.
        previous: Option<PathBuf>,
    },
    /// The bundle was applied before; nothing changed.
    Unchanged,
}

/// What the last provisioning attempt did (`provision/status.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// `applied`, `unchanged` or `rejected`.
    pub state: String,
    /// The bundle's file.
    pub bundle: String,
    /// SHA-256 of the bundle file, when it could be read.
    pub bundle_sha256: Option<String>,
    /// Host name the bundle set (when accepted).
    pub hostname: Option<String>,
    /// Fleet name (when accepted).
    pub fleet: Option<String>,
    /// Why it was refused.
    pub error: Option<String>,
    /// When, Unix seconds.
    pub at_unix: u64,
}

/// The last provisioning status of this appliance, if it was provisioned.
pub fn last_status() -> Option<Status> {
    let text = std::fs::read_to_string(Path::new(STATE_DIR).join(STATUS_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// `root` + an absolute appliance path.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Applies the bundle at `path` to the appliance whose file system is at
/// `root` (`/` on the appliance); `live` also sets the running host name.
/// A refused bundle leaves the configuration untouched; either way the
/// status file records what happened.
pub fn apply(path: &Path, root: &Path, live: bool) -> Result<Outcome, ProvisionError> {
    let state = under(root, STATE_DIR);
    let mut status = Status {
        state: "rejected".into(),
        bundle: path.display().to_string(),
        bundle_sha256: None,
        hostname: None,
        fleet: None,
        error: None,
        at_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    };
    let result = apply_checked(path, &state, live, &mut status);
    match &result {
        Ok(Outcome::Applied { .. }) => status.state = "applied".into(),
        Ok(Outcome::Unchanged) => status.state = "unchanged".into(),
        Err(e) => status.error = Some(e.to_string()),
    }
    let status_path = state.join(STATUS_FILE);
    let written = serde_json::to_string_pretty(&status)
        .map_err(|e| invalid("status", e.to_string()))
        .and_then(|text| write_file(&status_path, text.as_bytes(), 0o644));
    if let Err(e) = written {
        tracing::warn!("provisioning status not recorded in {}: {e}", status_path.display());
    }
    result
}

fn apply_checked(path: &Path, state: &Path, live: bool, status: &mut Status) -> Result<Outcome, ProvisionError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.len() > MAX_BUNDLE_BYTES {
        return Err(invalid(path.display().to_string(), format!("{} bytes: not a bundle", meta.len())));
    }
    let bytes = std::fs::read(path).map_err(io(path))?;
    let digest = hex::encode(Sha256::digest(&bytes));
    status.bundle_sha256 = Some(digest.clone());
    let text = String::from_utf8(bytes).map_err(|_| invalid(path.display().to_string(), "not UTF-8 text"))?;
    let bundle = open(&text, &path.display().to_string())?;
    status.hostname = Some(bundle.hostname.clone());
    status.fleet = Some(bundle.fleet.clone());

    let versions = state.join("config.d");
    let name = format!("bundle-{}", &digest[..16]);
    let link = state.join("config");
    let current = std::fs::read_link(&link).ok();
    let target = Path::new("config.d").join(&name);
    if live {
        set_hostname(&bundle.hostname);
    }
    if current.as_deref() == Some(target.as_path()) && versions.join(&name).join("lockstep.toml").is_file() {
        return Ok(Outcome::Unchanged);
    }
    // The new configuration, complete, before anything points at it.
    std::fs::create_dir_all(&versions).map_err(io(&versions))?;
    let staging = versions.join(format!(".{name}.partial"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir(&staging).map_err(io(&staging))?;
    let daemon_toml = toml::to_string(&bundle.config).map_err(|e| invalid("config", e.to_string()))?;
    let mut files: Vec<(&str, String, u32)> = vec![
        ("lockstep.toml", format!("# Applied from provisioning bundle {digest}.\n{daemon_toml}"), 0o644),
        ("fleet.key", format!("{}\n", bundle.fleet_key), 0o600),
        ("admin.passwd", format!("{}\n", bundle.admin_password_hash), 0o600),
        ("hostname", format!("{}\n", bundle.hostname), 0o644),
        ("bundle.sha256", format!("{digest}\n"), 0o644),
    ];
    if let Some(p) = &bundle.ptp {
        files.push(("ptp4l.conf", ptp4l_conf(p), 0o644));
        let hw = u8::from(p.timestamping == Timestamping::Hardware);
        files.push(("ptp.env", format!("PTP_INTERFACE={}\nPTP_HARDWARE={hw}\n", p.interface), 0o644));
    }
    for (file, text, mode) in &files {
        write_file(&staging.join(file), text.as_bytes(), *mode)?;
    }
    give_to_daemon(&staging, files.iter().map(|(f, _, _)| staging.join(f)))?;
    let final_dir = versions.join(&name);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
    }
    std::fs::rename(&staging, &final_dir).map_err(io(&final_dir))?;
    sync_dir(&versions)?;

    // A plain directory (an install without the image's layout) is kept.
    let mut previous = current.map(|c| state.join(c));
    if link.exists() && std::fs::symlink_metadata(&link).map_err(io(&link))?.is_dir() {
        let kept = versions.join(format!("previous-{}", status.at_unix));
        std::fs::rename(&link, &kept).map_err(io(&link))?;
        previous = Some(kept);
    }
    let new_link = state.join(".config.new");
    let _ = std::fs::remove_file(&new_link);
    std::os::unix::fs::symlink(&target, &new_link).map_err(io(&new_link))?;
    std::fs::rename(&new_link, &link).map_err(io(&link))?;
    sync_dir(state)?;
    prune(&versions, &name, previous.as_deref());
    Ok(Outcome::Applied { dir: final_dir, previous })
}

/// Keeps the current configuration, the one before it and the factory
/// one; removes older bundles' directories.
fn prune(versions: &Path, current: &str, previous: Option<&Path>) {
    let Ok(entries) = std::fs::read_dir(versions) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let keep = name == current
            || name == "factory"
            || previous.is_some_and(|p| p.file_name() == Some(e.file_name().as_os_str()));
        if !keep
            && name.starts_with("bundle-")
            && let Err(err) = std::fs::remove_dir_all(e.path())
        {
            tracing::warn!("old configuration {} not removed: {err}", e.path().display());
        }
    }
}

/// The user `lockstep.service` runs as (the image creates it).
const DAEMON_USER: &str = "lockstep";

/// Makes `dir` and `files` the daemon user's, when that user exists and
/// this runs as root (on the appliance); elsewhere leaves them alone.
fn give_to_daemon(dir: &Path, files: impl Iterator<Item = PathBuf>) -> Result<(), ProvisionError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let Ok(Some(user)) = nix::unistd::User::from_name(DAEMON_USER) else { return Ok(()) };
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    for path in std::iter::once(dir.to_path_buf()).chain(files) {
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(io(&path))?;
    }
    Ok(())
}

/// ptp4l's configuration for `p` (the management socket the daemon reads).
fn ptp4l_conf(p: &PtpSettings) -> String {
    let ts = match p.timestamping {
        Timestamping::Hardware => "hardware",
        Timestamping::Software => "software",
    };
    format!(
        "# Written by `lockstep provision apply`.\n[global]\ndomainNumber {}\ntime_stamping {ts}\n\
         uds_address /var/run/ptp4l\nslaveOnly 1\nlogging_level 6\n\n[{}]\n",
        p.domain, p.interface
    )
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ProvisionError> {
    crate::files::write_atomic(path, bytes, crate::files::Mode::Exactly(mode), true).map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), ProvisionError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Sets the running host name (the boot's; `/etc/hostname` points at the
/// configuration's `hostname` file for the next boots).
fn set_hostname(name: &str) {
    if let Err(e) = nix::unistd::sethostname(name) {
        tracing::warn!("host name not set to {name}: {e}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$3jpR3BS1ZzqBNZg3W6k4bVb4/0x2Qh9uVb2W0yWm2vQ";

    fn fleet(dir: &Path, extra: &str) -> PathBuf {
        std::fs::write(dir.join("fleet.key"), "ab".repeat(32)).unwrap();
        std::fs::write(dir.join("admin.passwd"), format!("{HASH}\n")).unwrap();
        let manifest = dir.join("fleet.toml");
        std::fs::write(
            &manifest,
            format!(
                "[fleet]\nname = \"rack-a\"\nkey_file = \"fleet.key\"\nadmin_password_file = \"admin.passwd\"\n{extra}\n\
                 [[appliance]]\nhostname = \"enc-a1\"\naddress = \"10.0.0.11\"\n\
                 [[appliance]]\nhostname = \"enc-a2\"\naddress = \"10.0.0.12\"\nrole = \"standby\"\n\
                 [appliance.ptp]\ninterface = \"eth1\"\ndomain = 24\ntimestamping = \"software\"\n"
            ),
        )
        .unwrap();
        manifest
    }

    #[test]
    fn a_manifest_gives_one_checked_bundle_per_appliance() {
        let dir = tempfile::tempdir().unwrap();
        let made = bundles(&fleet(dir.path(), "")).unwrap();
        assert_eq!(made.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(), ["enc-a1", "enc-a2"]);
        let a1 = open(&made[0].1, "a1").unwrap();
        let a2 = open(&made[1].1, "a2").unwrap();
        assert_eq!(a1.config.appliance.id, "enc-a1");
        assert_eq!(a1.config.appliance.role, Role::Encoder);
        assert_eq!(a2.config.appliance.role, Role::Standby);
        assert_eq!(a1.config.swarm.seeds, vec!["10.0.0.12:7946".parse::<SocketAddr>().unwrap()]);
        assert_eq!(a2.config.swarm.advertise, Some("10.0.0.12:7946".parse().unwrap()));
        assert!(a1.config.swarm.enabled);
        assert_eq!(a1.config.clock.source, ClockSource::System);
        assert_eq!(a2.config.clock.source, ClockSource::Ptp4l);
        assert_eq!(a2.config.clock.domain, 24);
        assert_eq!(a2.config.clock.interface, None, "software timestamping has no PHC");
        assert_eq!(a1.fleet_key, "ab".repeat(32));
        assert!(!made[0].1.contains(&"ab".repeat(33)), "the key appears once, as itself");
    }

    #[test]
    fn edited_truncated_or_invalid_bundles_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (_, text) = bundles(&fleet(dir.path(), "")).unwrap().remove(0);
        let edited = text.replace("enc-a1", "enc-a9");
        assert!(open(&edited, "b").unwrap_err().to_string().contains("truncated or edited"));
        let cut = &text[..text.len() - 40];
        assert!(open(cut, "b").unwrap_err().to_string().contains("truncated or edited"));
        assert!(open("hello\n", "b").unwrap_err().to_string().contains("not a Lockstep provisioning bundle"));
        // Sealed but wrong: a bad value is named.
        let mut bundle = open(&text, "b").unwrap();
        bundle.hostname = "-bad-".into();
        let err = open(&seal(&bundle).unwrap(), "b").unwrap_err().to_string();
        assert!(err.contains("hostname"), "{err}");
        let mut bundle = open(&text, "b").unwrap();
        bundle.config.renditions.clear();
        let err = open(&seal(&bundle).unwrap(), "b").unwrap_err().to_string();
        assert!(err.contains("config:") && err.contains("renditions"), "{err}");
    }

    #[test]
    fn manifest_errors_name_the_appliance_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let m = fleet(dir.path(), "");
        let text = std::fs::read_to_string(&m).unwrap().replace("enc-a2", "enc_a2");
        std::fs::write(&m, text).unwrap();
        let err = bundles(&m).unwrap_err().to_string();
        assert!(err.contains("appliance[1]") && err.contains("hostname"), "{err}");
        let text = std::fs::read_to_string(&m).unwrap().replace("enc_a2", "enc-a1");
        std::fs::write(&m, text).unwrap();
        assert!(bundles(&m).unwrap_err().to_string().contains("used twice"));
        std::fs::write(dir.path().join("fleet.key"), "xyz").unwrap();
        assert!(bundles(&m).unwrap_err().to_string().contains("64 hex digits"));
    }

    #[test]
    fn applying_is_atomic_idempotent_and_refusals_keep_the_previous_config() {
        let dir = tempfile::tempdir().unwrap();
        let made = bundles(&fleet(dir.path(), "")).unwrap();
        let root = dir.path().join("root");
        let first = dir.path().join("first.toml");
        std::fs::write(&first, &made[1].1).unwrap();
        let Outcome::Applied { dir: applied, previous } = apply(&first, &root, false).unwrap() else {
            panic!("first apply must apply")
        };
        assert_eq!(previous, None);
        let config_dir = under(&root, CONFIG_DIR);
        let daemon = Config::load(&config_dir.join("lockstep.toml")).unwrap();
        assert_eq!(daemon.appliance.id, "enc-a2");
        assert_eq!(std::fs::read_to_string(config_dir.join("hostname")).unwrap(), "enc-a2\n");
        assert!(std::fs::read_to_string(config_dir.join("ptp4l.conf")).unwrap().contains("domainNumber 24"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(config_dir.join("fleet.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(applied.ends_with(std::fs::read_link(&config_dir).unwrap()));

        // Again: nothing changes.
        assert_eq!(apply(&first, &root, false).unwrap(), Outcome::Unchanged);
        let status: Status =
            serde_json::from_str(&std::fs::read_to_string(under(&root, STATE_DIR).join(STATUS_FILE)).unwrap()).unwrap();
        assert_eq!(status.state, "unchanged");

        // A bad bundle: refused, config and link as they were, status says why.
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, made[0].1.replace("rack-a", "rack-b")).unwrap();
        let before = std::fs::read_link(&config_dir).unwrap();
        let err = apply(&bad, &root, false).unwrap_err().to_string();
        assert!(err.contains("truncated or edited"), "{err}");
        assert_eq!(std::fs::read_link(&config_dir).unwrap(), before);
        assert_eq!(Config::load(&config_dir.join("lockstep.toml")).unwrap().appliance.id, "enc-a2");
        let status: Status =
            serde_json::from_str(&std::fs::read_to_string(under(&root, STATE_DIR).join(STATUS_FILE)).unwrap()).unwrap();
        assert_eq!(status.state, "rejected");
        assert!(status.error.unwrap().contains("truncated or edited"));

        // Another good bundle replaces it; the previous one is kept.
        let second = dir.path().join("second.toml");
        std::fs::write(&second, &made[0].1).unwrap();
        let Outcome::Applied { previous, .. } = apply(&second, &root, false).unwrap() else { panic!("must apply") };
        assert_eq!(previous.as_deref(), Some(applied.as_path()));
        assert!(applied.join("lockstep.toml").is_file());
        assert!(!config_dir.join("ptp4l.conf").exists(), "no PTP for enc-a1");
        assert_eq!(Config::load(&config_dir.join("lockstep.toml")).unwrap().appliance.id, "enc-a1");
    }

    #[test]
    fn a_plain_config_directory_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let made = bundles(&fleet(dir.path(), "")).unwrap();
        let root = dir.path().join("root");
        let config_dir = under(&root, CONFIG_DIR);
        std::fs::create_dir_all(&config_dir).unwrap();
        std::fs::write(config_dir.join("lockstep.toml"), "old").unwrap();
        let b = dir.path().join("b.toml");
        std::fs::write(&b, &made[0].1).unwrap();
        let Outcome::Applied { previous: Some(prev), .. } = apply(&b, &root, false).unwrap() else { panic!() };
        assert_eq!(std::fs::read_to_string(prev.join("lockstep.toml")).unwrap(), "old");
        assert!(std::fs::symlink_metadata(&config_dir).unwrap().file_type().is_symlink());
    }
}
