//! Who may use the admin API: the admin password (argon2 hash in a file),
//! login sessions with CSRF tokens, API tokens for automation, and the
//! limit on failed logins.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::lock;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::{Digest, Sha256};

/// Name of the session cookie.
pub const COOKIE: &str = "lockstep_session";

/// Why credentials could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A credentials file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// A credentials file holds something else.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// `n` random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    use std::io::Read;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

fn argon2() -> argon2::Argon2<'static> {
    // OWASP's argon2id baseline (19 MiB, 2 passes): ~30 ms a login here.
    argon2::Argon2::default()
}

/// The argon2id hash (PHC string) of a password.
pub fn hash_password(password: &str) -> std::io::Result<String> {
    let salt =
        SaltString::encode_b64(&random_bytes::<16>()?).map_err(|e| std::io::Error::other(format!("salt: {e}")))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| std::io::Error::other(format!("argon2: {e}")))
}

/// Writes a file readable by its owner only (keys, password hashes),
/// replacing it atomically.
pub fn write_private(path: &Path, text: &str) -> Result<(), AuthError> {
    crate::files::write_atomic(path, text.as_bytes(), crate::files::Mode::Exactly(0o600), false)
        .map_err(|source| AuthError::Io { path: path.to_path_buf(), source })
}

/// Stores the hash of `password` in `path` (`lockstep passwd`).
pub fn set_password(path: &Path, password: &str) -> Result<(), AuthError> {
    if password.chars().count() < 8 {
        return Err(AuthError::Format {
            path: path.to_path_buf(),
            reason: "the password needs 8 characters or more".into(),
        });
    }
    let hash = hash_password(password).map_err(|source| AuthError::Io { path: path.to_path_buf(), source })?;
    write_private(path, &format!("{hash}\n"))
}

/// Makes a new API token named `name`, appends its hash to `path` and
/// returns the token (shown once; only its hash is kept).
pub fn add_token(path: &Path, name: &str) -> Result<String, AuthError> {
    let format = |reason: &str| AuthError::Format { path: path.to_path_buf(), reason: reason.into() };
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(format("a token name is 1-64 of a-z, A-Z, 0-9, '-', '_', '.'"));
    }
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(AuthError::Io { path: path.to_path_buf(), source }),
    };
    if parse_tokens(&existing).iter().any(|(_, n)| n == name) {
        return Err(format(&format!("a token named `{name}` exists")));
    }
    let bytes = random_bytes::<32>().map_err(|source| AuthError::Io { path: path.to_path_buf(), source })?;
    let token = format!("lst_{}", hex::encode(bytes));
    let line = format!("{} {name}\n", hex::encode(Sha256::digest(token.as_bytes())));
    write_private(path, &(existing + &line))?;
    Ok(token)
}

fn parse_tokens(text: &str) -> Vec<([u8; 32], String)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (hash, name) = l.trim().split_once(' ').unwrap_or((l.trim(), "token"));
            let bytes: [u8; 32] = hex::decode(hash).ok()?.try_into().ok()?;
            Some((bytes, name.trim().to_string()))
        })
        .collect()
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A login session (the admin).
    Session {
        /// Its CSRF token.
        csrf: String,
    },
    /// An API token.
    Token {
        /// Its name.
        name: String,
    },
}

impl Actor {
    /// Name written to the audit log.
    pub fn name(&self) -> String {
        match self {
            Actor::Session { .. } => "admin".into(),
            Actor::Token { name } => format!("token:{name}"),
        }
    }
}

#[derive(Debug)]
struct Session {
    csrf: String,
    expires: Instant,
}

/// The password hash and tokens as last read, with the files' stamps.
#[derive(Debug, Default)]
struct Credentials {
    password_hash: Option<String>,
    tokens: Vec<([u8; 32], String)>,
    stamps: (Option<FileStamp>, Option<FileStamp>),
    checked: Option<Instant>,
}

/// What says a file changed: modification time and length.
type FileStamp = (std::time::SystemTime, u64);

fn stamp(path: Option<&Path>) -> Option<FileStamp> {
    let m = std::fs::metadata(path?).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// How often the credential files are looked at for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

fn read_password(path: &Path) -> Result<String, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io { path: path.to_path_buf(), source })?;
    let hash = text.trim().to_string();
    PasswordHash::new(&hash).map_err(|e| AuthError::Format {
        path: path.to_path_buf(),
        reason: format!(
            "not an argon2 password hash ({e}); write one with `lockstep passwd --file {}`",
            path.display()
        ),
    })?;
    warn_if_readable(path);
    Ok(hash)
}

fn read_tokens(path: &Path) -> Result<Vec<([u8; 32], String)>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io { path: path.to_path_buf(), source })?;
    warn_if_readable(path);
    Ok(parse_tokens(&text))
}

/// Credentials and live sessions. The password and token files are
/// watched: a changed file is read again within a second (a new password
/// also ends every session); a file that no longer reads keeps the
/// credentials it last gave, with an error in the log.
#[derive(Debug)]
pub struct Auth {
    password_file: Option<std::path::PathBuf>,
    tokens_file: Option<std::path::PathBuf>,
    credentials: Mutex<Credentials>,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    session_life: Duration,
    attempts_per_minute: usize,
}

/// Sessions kept at most (the oldest go first).
const MAX_SESSIONS: usize = 256;

/// Result of a login attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    /// Session token (cookie value) and CSRF token.
    Ok {
        /// Cookie value.
        session: String,
        /// CSRF token.
        csrf: String,
    },
    /// Wrong password.
    Refused,
    /// Too many failures from this address: retry after this many seconds.
    Limited(u64),
}

impl Auth {
    /// Loads the credentials the config names.
    pub fn load(config: &crate::config::AdminConfig) -> Result<Self, AuthError> {
        let (password_file, tokens_file) = (config.password_file.clone(), config.tokens_file.clone());
        let stamps = (stamp(password_file.as_deref()), stamp(tokens_file.as_deref()));
        let password_hash = password_file.as_deref().map(read_password).transpose()?;
        let tokens = tokens_file.as_deref().map(read_tokens).transpose()?.unwrap_or_default();
        Ok(Self {
            password_file,
            tokens_file,
            credentials: Mutex::new(Credentials { password_hash, tokens, stamps, checked: Some(Instant::now()) }),
            sessions: Mutex::default(),
            failures: Mutex::default(),
            session_life: Duration::from_secs(u64::from(config.session_minutes) * 60),
            attempts_per_minute: config.login_attempts_per_minute as usize,
        })
    }

    /// Reads the credential files again if they changed (at most one
    /// look per second), and returns the credentials in force.
    fn current(&self) -> std::sync::MutexGuard<'_, Credentials> {
        let mut c = lock(&self.credentials);
        if c.checked.is_some_and(|t| t.elapsed() < RELOAD_CHECK) {
            return c;
        }
        c.checked = Some(Instant::now());
        let stamps = (stamp(self.password_file.as_deref()), stamp(self.tokens_file.as_deref()));
        if stamps.0 != c.stamps.0
            && let Some(path) = &self.password_file
        {
            match read_password(path) {
                Ok(hash) => {
                    if c.password_hash.as_deref() != Some(hash.as_str()) {
                        tracing::info!(path = %path.display(), "admin password changed; every session ended");
                        lock(&self.sessions).clear();
                    }
                    c.password_hash = Some(hash);
                    c.stamps.0 = stamps.0;
                }
                Err(e) => tracing::error!("{e}; the previous password stays in force"),
            }
        }
        if stamps.1 != c.stamps.1
            && let Some(path) = &self.tokens_file
        {
            match read_tokens(path) {
                Ok(tokens) => {
                    tracing::info!(path = %path.display(), tokens = tokens.len(), "API tokens read again");
                    c.tokens = tokens;
                    c.stamps.1 = stamps.1;
                }
                Err(e) => tracing::error!("{e}; the previous tokens stay in force"),
            }
        }
        c
    }

    /// Session lifetime.
    pub fn session_life(&self) -> Duration {
        self.session_life
    }

    /// Checks a password from `ip` (slow: argon2; call off the event loop).
    pub fn login(&self, ip: IpAddr, password: &str) -> Login {
        let now = Instant::now();
        {
            let mut failures = lock(&self.failures);
            let recent = failures.entry(ip).or_default();
            while recent.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
                recent.pop_front();
            }
            if recent.len() >= self.attempts_per_minute {
                let oldest = recent.front().copied().unwrap_or(now);
                return Login::Limited(60u64.saturating_sub(now.duration_since(oldest).as_secs()).max(1));
            }
        }
        let hash = self.current().password_hash.clone();
        let ok = hash
            .as_deref()
            .and_then(|h| PasswordHash::new(h).ok())
            .is_some_and(|hash| argon2().verify_password(password.as_bytes(), &hash).is_ok());
        if !ok {
            lock(&self.failures).entry(ip).or_default().push_back(now);
            return Login::Refused;
        }
        lock(&self.failures).remove(&ip);
        let (Ok(session), Ok(csrf)) = (random_bytes::<32>(), random_bytes::<24>()) else {
            return Login::Refused;
        };
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        let csrf = hex::encode(csrf);
        sessions
            .insert(Sha256::digest(session).into(), Session { csrf: csrf.clone(), expires: now + self.session_life });
        Login::Ok { session: hex::encode(session), csrf }
    }

    /// Ends a session.
    pub fn logout(&self, session: &str) {
        if let Ok(raw) = hex::decode(session) {
            lock(&self.sessions).remove(&<[u8; 32]>::from(Sha256::digest(raw)));
        }
    }

    /// The actor behind a session cookie or a bearer token, if valid.
    pub fn check(&self, cookie: Option<&str>, bearer: Option<&str>) -> Option<Actor> {
        if let Some(token) = bearer {
            let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            // Compared by hash: equal-time in what matters (the token).
            let credentials = self.current();
            return credentials
                .tokens
                .iter()
                .find(|(h, _)| *h == hash)
                .map(|(_, name)| Actor::Token { name: name.clone() });
        }
        let raw = hex::decode(cookie?).ok()?;
        let key: [u8; 32] = Sha256::digest(raw).into();
        let now = Instant::now();
        let mut sessions = lock(&self.sessions);
        match sessions.get(&key) {
            Some(s) if s.expires > now => Some(Actor::Session { csrf: s.csrf.clone() }),
            Some(_) => {
                sessions.remove(&key);
                None
            }
            None => None,
        }
    }
}

fn warn_if_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "credentials file readable by others; chmod 600 it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_with(password: &str, dir: &Path) -> Auth {
        let path = dir.join("admin.passwd");
        set_password(&path, password).expect("test setup");
        let config = crate::config::AdminConfig {
            listen: Some("127.0.0.1:0".into()),
            password_file: Some(path),
            login_attempts_per_minute: 3,
            ..Default::default()
        };
        Auth::load(&config).expect("test setup")
    }

    #[test]
    fn a_password_logs_in_and_the_session_carries_a_csrf_token() {
        let dir = tempfile::tempdir().expect("test setup");
        let auth = auth_with("correct horse", dir.path());
        let ip = IpAddr::from([127, 0, 0, 1]);
        let Login::Ok { session, csrf } = auth.login(ip, "correct horse") else { panic!("login refused") };
        assert_eq!(auth.check(Some(&session), None), Some(Actor::Session { csrf }));
        assert_eq!(auth.check(Some("00"), None), None);
        auth.logout(&session);
        assert_eq!(auth.check(Some(&session), None), None, "logged out");
    }

    #[test]
    fn failed_logins_are_limited_per_address() {
        let dir = tempfile::tempdir().expect("test setup");
        let auth = auth_with("correct horse", dir.path());
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        for _ in 0..3 {
            assert_eq!(auth.login(a, "wrong"), Login::Refused);
        }
        assert!(matches!(auth.login(a, "correct horse"), Login::Limited(s) if (1..=60).contains(&s)));
        assert!(matches!(auth.login(b, "correct horse"), Login::Ok { .. }), "another address is not limited");
    }

    #[test]
    fn short_passwords_and_bad_hash_files_are_refused() {
        let dir = tempfile::tempdir().expect("test setup");
        let path = dir.path().join("p");
        assert!(set_password(&path, "short").expect_err("must fail").to_string().contains("8 characters"));
        std::fs::write(&path, "admin\n").expect("test setup");
        let config = crate::config::AdminConfig { password_file: Some(path), ..Default::default() };
        let e = Auth::load(&config).expect_err("must fail").to_string();
        assert!(e.contains("not an argon2 password hash") && e.contains("lockstep passwd"), "{e}");
    }

    #[test]
    fn changed_credential_files_are_read_again() {
        let dir = tempfile::tempdir().expect("test setup");
        let auth = auth_with("first password", dir.path());
        let ip: IpAddr = "127.0.0.1".parse().expect("test setup");
        let Login::Ok { session, .. } = auth.login(ip, "first password") else { panic!("login") };
        assert!(auth.check(Some(&session), None).is_some());
        set_password(&dir.path().join("admin.passwd"), "second password").expect("test setup");
        std::thread::sleep(RELOAD_CHECK + Duration::from_millis(50));
        assert_eq!(auth.login(ip, "first password"), Login::Refused);
        assert!(auth.check(Some(&session), None).is_none(), "a new password ends old sessions");
        assert!(matches!(auth.login(ip, "second password"), Login::Ok { .. }));
        // A broken file keeps what was in force.
        std::fs::write(dir.path().join("admin.passwd"), "not a hash at all, longer").expect("test setup");
        std::thread::sleep(RELOAD_CHECK + Duration::from_millis(50));
        assert!(matches!(auth.login(ip, "second password"), Login::Ok { .. }));
    }

    #[test]
    fn tokens_are_kept_as_hashes_and_checked() {
        let dir = tempfile::tempdir().expect("test setup");
        let path = dir.path().join("tokens");
        let token = add_token(&path, "prometheus").expect("test setup");
        assert!(!std::fs::read_to_string(&path).expect("test setup").contains(&token), "only the hash is stored");
        assert!(add_token(&path, "prometheus").is_err(), "names are unique");
        let config = crate::config::AdminConfig { tokens_file: Some(path), ..Default::default() };
        let auth = Auth::load(&config).expect("test setup");
        assert_eq!(auth.check(None, Some(&token)), Some(Actor::Token { name: "prometheus".into() }));
        assert_eq!(auth.check(None, Some("lst_00")), None);
    }
}
