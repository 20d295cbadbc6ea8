//! Live configuration changes written back to the configuration file, so
//! the channel comes back after a restart as the operator left it.
//!
//! What is written is the *effective* configuration: the supervisor's
//! (changes made through `PATCH /api/v1/channels/{id}/config`, after any
//! rollback) with the bitrates in force or announced (a live change made
//! here or agreed with the swarm wins over the configured value). Only the
//! sections that changed are replaced in the file (`[source]`, `[audio]`,
//! `[encoder]`, `[[renditions]]`, the live keys of `[output]`, and
//! `[[channels]]`, the appliance's other channels); every other
//! line, comments included, stays as it was. The new text must load back
//! to the same configuration, and is written next to the file and renamed
//! over it, so a crash leaves the old file or the new one, never half.
//!
//! The file is the operator's (or the fleet's): when it changed on disk
//! since the daemon read or wrote it (an edit, a new provisioning bundle),
//! it is not overwritten, and the status says so.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{ChannelSpec, Config, ConfigError, RenditionConfig};
use crate::control::{LiveControl, unix_ms};

/// The outcome of the last save, for the API and the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SaveStatus {
    /// The configuration file.
    pub file: PathBuf,
    /// `saved` (the file holds the effective configuration), `error`
    /// (it does not; see `error`), or `pending` (not checked yet).
    pub state: &'static str,
    /// Why the file does not hold the effective configuration.
    pub error: Option<String>,
    /// When the file was last written or found up to date (Unix ms).
    pub at_unix_ms: Option<u64>,
}

/// Why the file does not hold the effective configuration.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The file cannot be read or written.
    #[error("{file}: {source}")]
    Io {
        /// The configuration file.
        file: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Someone else changed the file since the daemon read or wrote it.
    #[error(
        "{0} changed on disk since the daemon read it; not overwritten (restart the daemon to run it, or undo the \
         edit)"
    )]
    ChangedOnDisk(String),
    /// The file on disk does not load (it is left as it is).
    #[error("the file does not load: {0}")]
    DoesNotLoad(ConfigError),
    /// The file is not TOML `toml_edit` can edit.
    #[error("the file cannot be edited: {0}")]
    Edit(#[from] toml_edit::TomlError),
    /// A section cannot be written as TOML.
    #[error("a section cannot be written as TOML: {0}")]
    Serialise(#[from] toml::ser::Error),
    /// The edited text would not load.
    #[error("the new text would not load: {0}")]
    WouldNotLoad(ConfigError),
    /// The edited text loads as another configuration.
    #[error("the new text would not load back as the running configuration")]
    NotRoundTrip,
}

/// Writes the effective configuration back to its file.
#[derive(Debug)]
pub struct Saver {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// SHA-256 of the file as last read or written by the daemon.
    seen: [u8; 32],
    status: SaveStatus,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// `config` with every rendition's bitrate as `control` has it in force
/// or announced.
pub fn effective(config: &Config, control: &LiveControl) -> Config {
    let mut c = config.clone();
    for r in &mut c.renditions {
        r.bitrate_kbps = control.bitrate_kbps(&r.name, i64::MAX).unwrap_or(r.bitrate_kbps);
    }
    c
}

/// A section serialised as a TOML table item.
fn table<T: Serialize>(value: &T) -> Result<toml_edit::Item, SaveError> {
    let doc: toml_edit::DocumentMut = toml::to_string(value)?.parse()?;
    Ok(toml_edit::Item::Table(doc.as_table().clone()))
}

#[derive(Serialize)]
struct Renditions<'a> {
    renditions: &'a [RenditionConfig],
}

#[derive(Serialize)]
struct Channels<'a> {
    channels: &'a [ChannelSpec],
}

/// An array of tables (`[[key]]`) serialised from `value`, whose only
/// field is `key` (a non-empty list).
fn tables<T: Serialize>(value: &T, key: &str) -> Result<toml_edit::Item, SaveError> {
    let doc: toml_edit::DocumentMut = toml::to_string(value)?.parse()?;
    Ok(doc.get(key).cloned().unwrap_or(toml_edit::Item::None))
}

/// The sections `render` replaces, as JSON for comparison.
fn sections(c: &Config) -> [serde_json::Value; 6] {
    let j = |v: serde_json::Result<serde_json::Value>| v.unwrap_or_default();
    [
        j(serde_json::to_value(&c.source)),
        j(serde_json::to_value(&c.audio)),
        j(serde_json::to_value(&c.encoder)),
        j(serde_json::to_value(&c.renditions)),
        j(serde_json::to_value((c.output.mode, c.output.window_segments))),
        j(serde_json::to_value(&c.channels)),
    ]
}

/// `text` (a configuration file) with the live-editable sections of
/// `effective` put in where they differ; `Err` says why it cannot be.
pub fn render(text: &str, origin: &str, effective: &Config) -> Result<String, SaveError> {
    let current = Config::from_toml(text, origin).map_err(SaveError::DoesNotLoad)?;
    let mut doc: toml_edit::DocumentMut = text.parse()?;
    let [source, audio, encoder, renditions, output, channels] = sections(&current);
    let want = sections(effective);
    if source != want[0] {
        doc["source"] = table(&effective.source)?;
    }
    if audio != want[1] {
        doc["audio"] = table(&effective.audio)?;
    }
    if encoder != want[2] {
        doc["encoder"] = table(&effective.encoder)?;
    }
    if renditions != want[3] {
        doc["renditions"] = tables(&Renditions { renditions: &effective.renditions }, "renditions")?;
    }
    if output != want[4] {
        let mode = toml::Value::try_from(effective.output.mode)?;
        let mode = mode.as_str().unwrap_or("sliding").to_string();
        doc["output"]["mode"] = toml_edit::value(mode);
        doc["output"]["window_segments"] = toml_edit::value(i64::from(effective.output.window_segments));
    }
    if channels != want[5] {
        if effective.channels.is_empty() {
            doc.remove("channels");
        } else {
            doc["channels"] = tables(&Channels { channels: &effective.channels }, "channels")?;
        }
    }
    let out = doc.to_string();
    let back = Config::from_toml(&out, origin).map_err(SaveError::WouldNotLoad)?;
    if sections(&back) != want {
        return Err(SaveError::NotRoundTrip);
    }
    Ok(out)
}

impl Saver {
    /// A saver for the file the daemon was started from; `text` is what
    /// the daemon read from it.
    pub fn new(path: &Path, text: &str) -> Self {
        let status = SaveStatus { file: path.to_path_buf(), state: "pending", error: None, at_unix_ms: None };
        Self { path: path.to_path_buf(), inner: Mutex::new(Inner { seen: digest(text.as_bytes()), status }) }
    }

    /// The outcome of the last save.
    pub fn status(&self) -> SaveStatus {
        crate::sync::lock(&self.inner).status.clone()
    }

    /// Makes the file hold `effective`, if it does not already.
    pub fn save(&self, effective: &Config) -> SaveStatus {
        let mut inner = crate::sync::lock(&self.inner);
        let outcome = self.save_locked(&mut inner, effective);
        let before = inner.status.clone();
        inner.status = match outcome {
            Ok(written) => {
                if written {
                    tracing::info!(file = %self.path.display(), "live configuration saved");
                }
                SaveStatus { state: "saved", error: None, at_unix_ms: Some(unix_ms()), ..before.clone() }
            }
            Err(why) => {
                let why = why.to_string();
                if before.error.as_deref() != Some(why.as_str()) {
                    tracing::warn!(file = %self.path.display(), "live configuration not saved: {why}");
                }
                SaveStatus { state: "error", error: Some(why), ..before.clone() }
            }
        };
        inner.status.clone()
    }

    /// `Ok(true)` when the file was written, `Ok(false)` when it already
    /// held `effective`.
    fn save_locked(&self, inner: &mut Inner, effective: &Config) -> Result<bool, SaveError> {
        let name = self.path.display().to_string();
        let io = |source| SaveError::Io { file: name.clone(), source };
        let text = std::fs::read_to_string(&self.path).map_err(io)?;
        if digest(text.as_bytes()) != inner.seen {
            return Err(SaveError::ChangedOnDisk(name.clone()));
        }
        let next = render(&text, &name, effective)?;
        if next == text {
            return Ok(false);
        }
        crate::files::write_atomic(&self.path, next.as_bytes(), crate::files::Mode::KeepExisting, false).map_err(io)?;
        inner.seen = digest(next.as_bytes());
        Ok(true)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FILE: &str = "# The encoder of studio 4.\n[appliance]\nid = \"enc-4\" # rack B\n\n[channel]\nid = \"main\"\n\
        segment_seconds = 2.0\n\n[source]\nkind = \"test\"\nwidth = 640\nheight = 360\nfps = \"25\"\n\n\
        # Ladder agreed with distribution.\n[[renditions]]\nname = \"360p\"\nheight = 360\nbitrate_kbps = 800\n\n\
        [output]\ndir = \"/tmp/out\" # fast disk\n";

    fn config() -> Config {
        Config::from_toml(FILE, "test").unwrap()
    }

    #[test]
    fn an_unchanged_configuration_leaves_the_text_as_it_is() {
        assert_eq!(render(FILE, "test", &config()).unwrap(), FILE);
    }

    #[test]
    fn a_changed_section_is_replaced_and_everything_else_kept() {
        let mut c = config();
        c.renditions[0].bitrate_kbps = 650;
        c.output.window_segments = 9;
        let out = render(FILE, "test", &c).unwrap();
        let back = Config::from_toml(&out, "out").unwrap();
        assert_eq!(back.renditions[0].bitrate_kbps, 650);
        assert_eq!(back.output.window_segments, 9);
        assert_eq!(back.output.dir, PathBuf::from("/tmp/out"));
        for kept in
            ["# The encoder of studio 4.", "id = \"enc-4\" # rack B", "dir = \"/tmp/out\" # fast disk", "width = 640"]
        {
            assert!(out.contains(kept), "{kept} lost:\n{out}");
        }
    }

    #[test]
    fn other_channels_are_written_as_channels_tables_and_removed_again() {
        let mut c = config();
        let mut news = c.clone();
        news.channel.id = "news".into();
        news.renditions[0].bitrate_kbps = 600;
        c.channels.push(news.spec(false));
        let out = render(FILE, "test", &c).unwrap();
        assert!(out.contains("[[channels]]"), "{out}");
        assert!(out.contains("# Ladder agreed with distribution."), "comments kept:\n{out}");
        let back = Config::from_toml(&out, "out").unwrap();
        assert_eq!(back.channels.len(), 1);
        let spec = &back.channels[0];
        assert_eq!((spec.channel.id.as_str(), spec.renditions[0].bitrate_kbps, spec.start), ("news", 600, false));
        assert_eq!(back.renditions[0].bitrate_kbps, 800, "the first channel is untouched");
        // Deleted again: the tables go, the rest stays.
        c.channels.clear();
        let out = render(&out, "test", &c).unwrap();
        assert!(!out.contains("channels"), "{out}");
        assert!(Config::from_toml(&out, "out").unwrap().channels.is_empty());
    }

    #[test]
    fn the_saver_writes_once_and_never_over_an_edit_made_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lockstep.toml");
        std::fs::write(&path, FILE).unwrap();
        let saver = Saver::new(&path, FILE);
        assert_eq!(saver.status().state, "pending");
        let mut c = config();
        c.renditions[0].bitrate_kbps = 500;
        assert_eq!(saver.save(&c).state, "saved");
        assert_eq!(Config::load(&path).unwrap().renditions[0].bitrate_kbps, 500);
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(saver.save(&c).state, "saved", "nothing to do is not an error");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), written);
        // Someone edits the file: the daemon leaves it alone and says why.
        std::fs::write(&path, written.replace("enc-4", "enc-5")).unwrap();
        c.renditions[0].bitrate_kbps = 400;
        let s = saver.save(&c);
        assert_eq!(s.state, "error");
        assert!(s.error.unwrap_or_default().contains("changed on disk"));
        assert_eq!(Config::load(&path).unwrap().appliance.id, "enc-5");
        assert_eq!(Config::load(&path).unwrap().renditions[0].bitrate_kbps, 500);
        assert!(!crate::files::temp_path(&dir.path().join("lockstep.toml")).exists());
    }

    #[test]
    fn a_file_that_cannot_be_written_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone").join("lockstep.toml");
        let saver = Saver::new(&path, FILE);
        let mut c = config();
        c.renditions[0].bitrate_kbps = 500;
        let s = saver.save(&c);
        assert_eq!(s.state, "error");
        assert!(s.error.unwrap_or_default().contains("gone/lockstep.toml"));
    }
}
