//! Segment replication and the combined output: for every recent
//! (segment index, track) the swarm selected a replica for, this node puts
//! a verified copy under `<output.dir>/combined/<channel>/<track>/`: its
//! own file when its bytes are the selected ones, else the file fetched
//! from the selected node's origin. A fetched segment is checked twice
//! before it is written: the producer's manifest entry must carry the hash
//! the producer gossiped, and the bytes must hash to it. Nothing partial
//! or unverified is ever published; playlists list only what is on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::Swarm;
use crate::package::hls::{self, Entry, MediaPlaylist};
use crate::package::{ManifestEntry, parse_manifest, read_manifest};

/// What the replicator needs to know about this node.
#[derive(Debug, Clone)]
pub struct Target {
    /// The node's own channel output (`<output.dir>/<channel>`).
    pub own: PathBuf,
    /// The combined output (`<output.dir>/combined/<channel>`).
    pub combined: PathBuf,
    /// Channel id (path on the peers' origins).
    pub channel: String,
    /// Segments kept in each combined playlist.
    pub window: usize,
    /// EXT-X-TARGETDURATION.
    pub target_duration: u32,
}

impl Target {
    /// The combined output of the channel `config` runs.
    pub fn of(config: &crate::config::Config) -> Self {
        let id = &config.channel.id;
        Self {
            own: config.output.dir.join(id),
            combined: config.output.dir.join("combined").join(id),
            channel: id.clone(),
            window: config.output.window_segments as usize,
            target_duration: config.channel.segment_seconds.ceil() as u32,
        }
    }
}

/// Per-track state of the combined output.
#[derive(Debug, Default)]
struct Track {
    entries: BTreeMap<i64, ManifestEntry>,
    init: bool,
}

/// One channel's combined output.
#[derive(Debug)]
struct Output {
    target: Target,
    tracks: BTreeMap<String, Track>,
    master: bool,
}

impl Output {
    /// Places every selected replica not placed yet.
    fn pass(&mut self, agent: &ureq::Agent, view: &super::View, round: &mut Round) {
        let Some(selection) = view.channels.get(&self.target.channel).map(|c| &c.selection) else { return };
        let target = &self.target;
        for (index, per_track) in selection {
            for (track, node) in per_track {
                let t = self.tracks.entry(track.clone()).or_default();
                if t.entries.contains_key(index) {
                    continue;
                }
                let Some(hash) = gossiped_hash(view, node, &target.channel, *index, track) else { continue };
                match place(agent, view, target, track, *index, node, &hash, round) {
                    Ok(entry) => {
                        if !t.init {
                            t.init = copy_shared(agent, view, target, node, &format!("{track}/init.mp4"));
                        }
                        if !self.master {
                            self.master = copy_shared(agent, view, target, node, "master.m3u8");
                        }
                        t.entries.insert(*index, entry);
                        while t.entries.len() > target.window {
                            if let Some((old, e)) = t.entries.pop_first() {
                                let _ = std::fs::remove_file(target.combined.join(track).join(&e.file));
                                tracing::trace!(segment = old, "combined: segment left the window");
                            }
                        }
                        write_playlist(target, track, t, false);
                    }
                    Err(e) => tracing::warn!(
                        channel = %target.channel,
                        segment = index,
                        track = %track,
                        from = %node,
                        "combined output: {e}"
                    ),
                }
            }
        }
    }

    /// Ends its playlists (`#EXT-X-ENDLIST`).
    fn end(&self) {
        for (track, t) in self.tracks.iter().filter(|(_, t)| !t.entries.is_empty()) {
            write_playlist(&self.target, track, t, true);
        }
    }
}

/// Runs until the swarm is dropped or closes its output, keeping the
/// combined output of every channel the swarm node has a target for
/// (the feeding thread keeps them); a channel that goes away, and every channel at
/// the end, gets its playlists ended.
pub fn run(swarm: &Weak<Swarm>) {
    let agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(3))).build().new_agent();
    let mut outputs: BTreeMap<String, Output> = BTreeMap::new();
    while let Some(s) = swarm.upgrade() {
        if s.closing() {
            break;
        }
        let view = s.view();
        let targets = s.targets();
        drop(s);
        outputs.retain(|id, o| {
            let keep = targets.contains_key(id);
            if !keep {
                o.end();
            }
            keep
        });
        let mut round = Round::default();
        for (id, target) in targets {
            let o = outputs.entry(id).or_insert_with(|| Output {
                target: target.clone(),
                tracks: BTreeMap::new(),
                master: false,
            });
            o.target = target;
            o.pass(&agent, &view, &mut round);
        }
        if let Some(s) = swarm.upgrade() {
            for (node, bytes, seconds) in round.transfers {
                s.record_transfer(&node, bytes, seconds);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for o in outputs.values() {
        o.end();
    }
}

/// What one pass over the selection fetched.
#[derive(Debug, Default)]
struct Round {
    /// Manifests fetched, by (node, channel/track).
    manifests: BTreeMap<(String, String), Vec<ManifestEntry>>,
    /// Segment fetches: (node, bytes, seconds).
    transfers: Vec<(String, usize, f64)>,
}

/// The hash `node` gossiped for (index, track) of `channel`.
fn gossiped_hash(view: &super::View, node: &str, channel: &str, index: i64, track: &str) -> Option<[u8; 32]> {
    let state = if view.node == node { view.me.as_ref()? } else { &view.peers.get(node)?.state };
    let seg = state.channel(channel)?.segments.iter().find(|s| s.index == index)?;
    seg.tracks.iter().find(|(t, _)| t == track).map(|(_, h)| *h)
}

/// Why a selected replica is not in the combined output (yet: the next
/// pass tries again).
#[derive(Debug, thiserror::Error)]
enum PlaceError {
    /// The combined output cannot be written.
    #[error("{}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// This node was selected, but its own file is gone or changed.
    #[error("own segment missing or changed")]
    OwnMissing,
    /// The selected peer announces no origin URL.
    #[error("the selected node serves no origin")]
    NoOrigin,
    /// The peer's origin did not answer as asked.
    #[error("GET {url}: {source}")]
    Fetch {
        /// What was asked.
        url: String,
        /// Cause.
        source: ureq::Error,
    },
    /// The peer's manifest does not list the segment yet.
    #[error("{node}'s manifest has no entry for segment {index} yet")]
    NotListed {
        /// The peer.
        node: String,
        /// The segment.
        index: i64,
    },
    /// The peer's manifest names other bytes than it gossiped.
    #[error("{0}'s manifest hash differs from the one it gossiped; not used")]
    ManifestDiffers(String),
    /// The fetched bytes are not the ones the manifest names.
    #[error("fetched bytes hash to {got}, manifest says {want}; not used")]
    BytesDiffer {
        /// SHA-256 of what came.
        got: String,
        /// SHA-256 expected.
        want: String,
    },
}

/// Puts a verified copy of (index, track) into the combined output.
#[allow(clippy::too_many_arguments)]
fn place(
    agent: &ureq::Agent,
    view: &super::View,
    target: &Target,
    track: &str,
    index: i64,
    node: &str,
    hash: &[u8; 32],
    round: &mut Round,
) -> Result<ManifestEntry, PlaceError> {
    let manifests = &mut round.manifests;
    let want = hex::encode(hash);
    let file = format!("seg-{index}.m4s");
    let dest = target.combined.join(track).join(&file);
    // Our own bytes, when they are the selected ones.
    if let Ok(own) = read_manifest(&target.own.join(track).join("manifest.jsonl"))
        && let Some(e) = own.into_iter().find(|e| e.index == index && e.sha256 == want)
        && let Ok(bytes) = std::fs::read(target.own.join(track).join(&e.file))
        && hex::encode(Sha256::digest(&bytes)) == want
    {
        write_atomic(&dest, &bytes)?;
        return Ok(e);
    }
    let origin = if view.node == node {
        return Err(PlaceError::OwnMissing);
    } else {
        view.peers.get(node).and_then(|p| p.state.origin.clone()).ok_or(PlaceError::NoOrigin)?
    };
    let base = format!("{origin}/{}/{track}", target.channel);
    let key = (node.to_string(), format!("{}/{track}", target.channel));
    if !manifests.contains_key(&key) {
        let text = get(agent, &format!("{base}/manifest.jsonl"))?;
        let entries = parse_manifest(&String::from_utf8_lossy(&text));
        manifests.insert(key.clone(), entries);
    }
    let entry = manifests[&key]
        .iter()
        .find(|e| e.index == index)
        .cloned()
        .ok_or_else(|| PlaceError::NotListed { node: node.to_string(), index })?;
    if entry.sha256 != want {
        return Err(PlaceError::ManifestDiffers(node.to_string()));
    }
    let started = std::time::Instant::now();
    let bytes = get(agent, &format!("{base}/{}", entry.file))?;
    round.transfers.push((node.to_string(), bytes.len(), started.elapsed().as_secs_f64()));
    let got = hex::encode(Sha256::digest(&bytes));
    if got != want {
        return Err(PlaceError::BytesDiffer { got, want });
    }
    write_atomic(&dest, &bytes)?;
    tracing::debug!(segment = index, track, from = node, "combined output: segment replicated");
    Ok(entry)
}

fn get(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, PlaceError> {
    let fetch = |source| PlaceError::Fetch { url: url.to_string(), source };
    let mut response = agent.get(url).call().map_err(fetch)?;
    response.body_mut().with_config().limit(64 << 20).read_to_vec().map_err(fetch)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PlaceError> {
    crate::files::write_atomic(path, bytes, crate::files::Mode::Default, true)
        .map_err(|source| PlaceError::Write { path: path.to_path_buf(), source })
}

/// Copies a file that is the same on every node (an init segment, the
/// multivariant playlist) into the combined output: this node's own, else
/// `node`'s from its origin (a standby unit that does not encode the
/// channel serves its combined output too).
fn copy_shared(agent: &ureq::Agent, view: &super::View, target: &Target, node: &str, rel: &str) -> bool {
    let bytes = std::fs::read(target.own.join(rel)).ok().or_else(|| {
        let origin = view.peers.get(node)?.state.origin.clone()?;
        get(agent, &format!("{origin}/{}/{rel}", target.channel)).ok()
    });
    bytes.is_some_and(|b| write_atomic(&target.combined.join(rel), &b).is_ok())
}

fn write_playlist(target: &Target, track: &str, t: &Track, ended: bool) {
    let entries: Vec<Entry> = t
        .entries
        .values()
        .map(|e| Entry {
            index: e.index,
            uri: e.file.clone(),
            duration: e.duration,
            program_date_time: e.program_date_time.clone(),
        })
        .collect();
    let text = hls::media_playlist(
        &MediaPlaylist {
            target_duration: target.target_duration,
            archive: false,
            ended,
            discontinuity_sequence: 0,
            map_uri: "init.mp4",
        },
        &entries,
    );
    if let Err(e) = write_atomic(&target.combined.join(track).join("playlist.m3u8"), text.as_bytes()) {
        tracing::warn!("combined playlist: {e}");
    }
}
