//! Swarm wire format, version 2: every datagram between appliances is
//! sealed with the fleet key (XChaCha20-Poly1305) and carries, in its
//! authenticated header, the sender's boot id, a per-boot counter and the
//! time it was sent, which give replay protection.
//!
//! ```text
//!  0  4  magic "LKSW"
//!  4  1  protocol version (2)
//!  5  1  kind: 1 membership (SWIM, foca), 2 encoding state of one
//!           channel (older members: read, never sent), 3 encoding state
//!           with a list of channels
//!  6  2  reserved, 0
//!  8  8  sender boot id (random at process start), big-endian
//! 16  8  counter, per boot, starts at 1, big-endian
//! 24  8  sent at, ms since 1970 (UTC), big-endian
//! 32 24  nonce (random)
//! 56  …  ciphertext of the payload, then the 16-byte tag
//! ```
//!
//! The first 56 bytes are the associated data. A receiver checks length,
//! magic and version, then the tag, and only then the time (within
//! [`MAX_SKEW_MS`] of its own clock) and the counter (not seen before
//! within a 64-packet window per boot id): forged packets cannot poison
//! the replay state. Everything dropped is counted by reason.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::{Rng, SeedableRng};

/// Protocol version this build speaks.
pub const VERSION: u8 = 2;
/// Header bytes (also the associated data).
pub const HEADER_LEN: usize = 56;
/// Authentication tag bytes.
pub const TAG_LEN: usize = 16;
/// Largest accepted difference between a packet's send time and ours, ms.
pub const MAX_SKEW_MS: i64 = 30_000;
const MAGIC: &[u8; 4] = b"LKSW";
/// Replay window per boot id, packets.
const WINDOW: u64 = 64;
/// Boot ids remembered at most (oldest forgotten first).
const MAX_SENDERS: usize = 4096;

/// What a datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A SWIM message for the membership library.
    Membership,
    /// An Encoding State Packet of a member from before channel lists:
    /// one channel (`state::decode_single_channel`). Read, never sent, so
    /// a swarm keeps its older members during a rolling upgrade.
    SingleChannelState,
    /// An Encoding State Packet with the list of channels the node
    /// encodes (`state::decode`).
    State,
    /// A timing packet: each channel's media time and the one-way
    /// readings of the neighbours heard (`timing::decode`).
    Timing,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Self::Membership => 1,
            Self::SingleChannelState => 2,
            Self::State => 3,
            Self::Timing => 4,
        }
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Drop {
    /// Too short, wrong magic, unknown kind, non-zero reserved bits.
    #[error("malformed swarm packet")]
    Malformed,
    /// Another protocol version.
    #[error("swarm protocol version {0} (this node speaks {VERSION})")]
    Version(u8),
    /// The tag did not verify: another fleet key, or altered bytes.
    #[error("swarm packet failed authentication (wrong fleet key or altered)")]
    Auth,
    /// Sent too long ago or in the future.
    #[error("swarm packet sent {0} ms away from this node's time")]
    Stale(i64),
    /// Seen before.
    #[error("swarm packet replayed")]
    Replay,
}

/// Dropped and accepted datagrams, by reason.
#[derive(Debug, Default)]
pub struct WireStats {
    /// Accepted.
    pub accepted: AtomicU64,
    /// [`Drop::Malformed`].
    pub malformed: AtomicU64,
    /// [`Drop::Version`].
    pub version: AtomicU64,
    /// [`Drop::Auth`].
    pub auth: AtomicU64,
    /// [`Drop::Stale`].
    pub stale: AtomicU64,
    /// [`Drop::Replay`].
    pub replay: AtomicU64,
}

impl WireStats {
    /// Counts an outcome.
    pub fn count(&self, outcome: Result<(), Drop>) {
        let c = match outcome {
            Ok(()) => &self.accepted,
            Err(Drop::Malformed) => &self.malformed,
            Err(Drop::Version(_)) => &self.version,
            Err(Drop::Auth) => &self.auth,
            Err(Drop::Stale(_)) => &self.stale,
            Err(Drop::Replay) => &self.replay,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// (name, value) pairs for reports.
    pub fn snapshot(&self) -> [(&'static str, u64); 6] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("accepted", l(&self.accepted)),
            ("malformed", l(&self.malformed)),
            ("version", l(&self.version)),
            ("auth", l(&self.auth)),
            ("stale", l(&self.stale)),
            ("replay", l(&self.replay)),
        ]
    }
}

/// Why the fleet key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("fleet key {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file does not hold 64 hex digits.
    #[error("fleet key {path}: {reason} (want 64 hex digits, e.g. from `openssl rand -hex 32`)")]
    Format {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The fleet's shared 256-bit key.
#[derive(Clone)]
pub struct FleetKey([u8; 32]);

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKey(..)") // never the key itself, not even in logs
    }
}

impl FleetKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// A fresh random key (the demo makes one per run).
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rng().fill_bytes(&mut b);
        Self(b)
    }

    /// The key as 64 hex digits (to write a key file).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads a key file: 64 hex digits, surrounding whitespace allowed.
    /// Warns when others than the owner may read it.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.to_path_buf(), source })?;
        let format = |reason: String| KeyError::Format { path: path.to_path_buf(), reason };
        let digits = text.trim();
        if digits.len() != 64 {
            return Err(format(format!("{} characters", digits.len())));
        }
        let bytes = hex::decode(digits).map_err(|e| format(e.to_string()))?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "fleet key file is readable by others than its owner; chmod 600 it");
            }
        }
        Ok(Self(key))
    }
}

fn rng() -> rand::rngs::StdRng {
    // The OS generator failing is not recoverable in any useful way; fall
    // back to a time-and-pid seed only for the nonce generator's seed,
    // which is then still unpredictable enough for nonces (they need to be
    // unique, not secret).
    rand::rngs::StdRng::try_from_rng(&mut rand::rngs::SysRng).unwrap_or_else(|_| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        rand::rngs::StdRng::seed_from_u64(t.as_nanos() as u64 ^ u64::from(std::process::id()) << 32)
    })
}

/// Seals outgoing datagrams for one node (one boot).
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    boot: u64,
    counter: AtomicU64,
    rng: Mutex<rand::rngs::StdRng>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(boot {:016x})", self.boot)
    }
}

impl Sealer {
    /// A sealer with a fresh random boot id.
    pub fn new(key: &FleetKey) -> Self {
        let mut rng = rng();
        Self {
            cipher: XChaCha20Poly1305::new(&key.0.into()),
            boot: rng.next_u64(),
            counter: AtomicU64::new(0),
            rng: Mutex::new(rng),
        }
    }

    /// This node's boot id.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// Seals `payload` as `kind`, stamped `now_ms`.
    pub fn seal(&self, kind: Kind, payload: &[u8], now_ms: i64) -> Vec<u8> {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        self.seal_with(VERSION, kind, counter, payload, now_ms)
    }

    /// Seals with an explicit version and counter (tests build odd packets).
    pub fn seal_with(&self, version: u8, kind: Kind, counter: u64, payload: &[u8], now_ms: i64) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        crate::sync::lock(&self.rng).fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.push(version);
        out.push(kind.byte());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.boot.to_be_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(&nonce);
        // Encryption fails only for payloads beyond 256 GiB.
        let sealed = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: payload, aad: &out[..HEADER_LEN] })
            .unwrap_or_default();
        out.extend_from_slice(&sealed);
        out
    }
}

/// A datagram that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// What it carries.
    pub kind: Kind,
    /// Sender's boot id.
    pub boot: u64,
    /// Plaintext.
    pub payload: Vec<u8>,
}

/// Per-sender replay state.
#[derive(Debug, Clone, Copy)]
struct Window {
    highest: u64,
    seen: u64,
    last_ms: i64,
}

/// Opens incoming datagrams: authentication, then time and replay checks.
pub struct Opener {
    cipher: XChaCha20Poly1305,
    windows: HashMap<u64, Window>,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opener({} senders)", self.windows.len())
    }
}

impl Opener {
    /// An opener for the fleet key.
    pub fn new(key: &FleetKey) -> Self {
        Self { cipher: XChaCha20Poly1305::new(&key.0.into()), windows: HashMap::new() }
    }

    /// Checks and decrypts one datagram received at `now_ms`.
    pub fn open(&mut self, packet: &[u8], now_ms: i64) -> Result<Opened, Drop> {
        let header = parse_header(packet)?;
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(&packet[32..HEADER_LEN]),
                Payload { msg: &packet[HEADER_LEN..], aad: &packet[..HEADER_LEN] },
            )
            .map_err(|_| Drop::Auth)?;
        let skew = header.sent_ms.saturating_sub(now_ms);
        if skew.abs() > MAX_SKEW_MS {
            return Err(Drop::Stale(skew));
        }
        self.check_replay(header.boot, header.counter, now_ms)?;
        Ok(Opened { kind: header.kind, boot: header.boot, payload: plain })
    }

    fn check_replay(&mut self, boot: u64, counter: u64, now_ms: i64) -> Result<(), Drop> {
        if counter == 0 {
            return Err(Drop::Replay);
        }
        if !self.windows.contains_key(&boot) && self.windows.len() >= MAX_SENDERS {
            // Forget senders silent for longer than a packet can be valid,
            // else the one heard from least recently.
            self.windows.retain(|_, w| now_ms - w.last_ms <= 4 * MAX_SKEW_MS);
            if self.windows.len() >= MAX_SENDERS
                && let Some((&oldest, _)) = self.windows.iter().min_by_key(|(_, w)| w.last_ms)
            {
                self.windows.remove(&oldest);
            }
        }
        let w = self.windows.entry(boot).or_insert(Window { highest: 0, seen: 0, last_ms: now_ms });
        if counter > w.highest {
            let shift = counter - w.highest;
            w.seen = if shift >= WINDOW { 1 } else { (w.seen << shift) | 1 };
            w.highest = counter;
        } else {
            let age = w.highest - counter;
            if age >= WINDOW || w.seen & (1 << age) != 0 {
                return Err(Drop::Replay);
            }
            w.seen |= 1 << age;
        }
        w.last_ms = now_ms;
        Ok(())
    }
}

/// The authenticated header fields.
#[derive(Debug, Clone, Copy)]
struct Header {
    kind: Kind,
    boot: u64,
    counter: u64,
    sent_ms: i64,
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn parse_header(p: &[u8]) -> Result<Header, Drop> {
    if p.len() < HEADER_LEN + TAG_LEN || &p[..4] != MAGIC {
        return Err(Drop::Malformed);
    }
    if p[4] != VERSION {
        return Err(Drop::Version(p[4]));
    }
    let kind = match p[5] {
        1 => Kind::Membership,
        2 => Kind::SingleChannelState,
        3 => Kind::State,
        4 => Kind::Timing,
        _ => return Err(Drop::Malformed),
    };
    if p[6] != 0 || p[7] != 0 {
        return Err(Drop::Malformed);
    }
    Ok(Header { kind, boot: be_u64(&p[8..]), counter: be_u64(&p[16..]), sent_ms: be_u64(&p[24..]) as i64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000_000;

    #[test]
    fn a_sealed_packet_opens_once() {
        let key = FleetKey::generate();
        let s = Sealer::new(&key);
        let mut o = Opener::new(&key);
        let p = s.seal(Kind::State, b"hello", NOW);
        let opened = o.open(&p, NOW + 5).expect("opens");
        assert_eq!((opened.kind, opened.boot, opened.payload.as_slice()), (Kind::State, s.boot(), &b"hello"[..]));
        assert_eq!(o.open(&p, NOW + 6), Err(Drop::Replay));
    }

    #[test]
    fn forged_altered_stale_and_odd_packets_are_dropped() {
        let key = FleetKey::generate();
        let s = Sealer::new(&key);
        let mut o = Opener::new(&key);
        let other = Sealer::new(&FleetKey::generate());
        assert_eq!(o.open(&other.seal(Kind::State, b"x", NOW), NOW), Err(Drop::Auth), "wrong key");
        let mut altered = s.seal(Kind::State, b"payload", NOW);
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert_eq!(o.open(&altered, NOW), Err(Drop::Auth));
        let mut header_altered = s.seal(Kind::State, b"payload", NOW);
        header_altered[23] ^= 1; // the counter
        assert_eq!(o.open(&header_altered, NOW), Err(Drop::Auth), "the header is authenticated");
        assert_eq!(o.open(&s.seal(Kind::State, b"x", NOW - 31_000), NOW), Err(Drop::Stale(-31_000)));
        assert_eq!(o.open(&s.seal_with(VERSION + 1, Kind::State, 99, b"x", NOW), NOW), Err(Drop::Version(VERSION + 1)));
        let good = s.seal(Kind::Membership, b"x", NOW);
        for cut in 0..HEADER_LEN + TAG_LEN {
            assert_eq!(o.open(&good[..cut], NOW), Err(Drop::Malformed), "cut at {cut}");
        }
        assert_eq!(o.open(&good[..good.len() - 1], NOW), Err(Drop::Auth), "truncated ciphertext");
        assert!(o.open(&good, NOW).is_ok(), "none of that poisoned the replay state");
    }

    #[test]
    fn the_replay_window_accepts_reordering_and_refuses_repeats() {
        let key = FleetKey::generate();
        let s = Sealer::new(&key);
        let mut o = Opener::new(&key);
        let packets: Vec<Vec<u8>> = (1..=100).map(|c| s.seal_with(VERSION, Kind::State, c, b"x", NOW)).collect();
        assert!(o.open(&packets[50], NOW).is_ok());
        assert!(o.open(&packets[40], NOW).is_ok(), "reordered within the window");
        assert_eq!(o.open(&packets[40], NOW), Err(Drop::Replay));
        assert!(o.open(&packets[99], NOW).is_ok());
        assert_eq!(o.open(&packets[20], NOW), Err(Drop::Replay), "older than the window");
        assert_eq!(o.open(&s.seal_with(VERSION, Kind::State, 0, b"x", NOW), NOW), Err(Drop::Replay));
    }

    #[test]
    fn key_files_are_checked() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("fleet.key");
        let key = FleetKey::generate();
        std::fs::write(&p, format!("{}\n", key.to_hex())).expect("write");
        assert_eq!(FleetKey::from_file(&p).expect("loads").0, key.0);
        std::fs::write(&p, "abc").expect("write");
        let e = FleetKey::from_file(&p).expect_err("short").to_string();
        assert!(e.contains("fleet.key") && e.contains("3 characters"), "{e}");
        std::fs::write(&p, "z".repeat(64)).expect("write");
        assert!(FleetKey::from_file(&p).is_err());
        let e = FleetKey::from_file(&dir.path().join("none")).expect_err("missing").to_string();
        assert!(e.contains("none"), "{e}");
        assert_eq!(format!("{key:?}"), "FleetKey(..)", "never printed");
    }
}
