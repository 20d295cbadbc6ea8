//! PTP access for the Lockstep daemon.
//!
//! [`mgmt`] encodes and decodes the PTP management messages ptp4l answers
//! on its UNIX socket (what `pmc` sends); [`Pmc`] is a client over that
//! socket. [`servo`] turns offset measurements into disciplined time with
//! a lock state and an error estimate. [`phc`] opens PTP hardware clocks
//! (`/dev/ptpN`), measures them against the system clock and finds the
//! clock behind a network interface.

pub mod mgmt;
pub mod phc;
pub mod servo;
#[cfg(feature = "testbed")]
pub mod testbed;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use mgmt::{ClockIdentity, DataSet, MgmtError, PortIdentity, Response};

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum PmcError {
    /// The client socket could not be made or ptp4l's socket not reached.
    #[error("ptp4l management socket {path}: {source}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// No answer in time (ptp4l not running, or another domain).
    #[error("ptp4l at {path} did not answer {set:?} within {timeout:?} ({malformed} malformed replies dropped)")]
    Timeout {
        /// ptp4l's socket.
        path: PathBuf,
        /// What was asked.
        set: DataSet,
        /// How long we waited.
        timeout: Duration,
        /// Undecodable datagrams received meanwhile.
        malformed: u64,
    },
    /// The answer could not be decoded or was a refusal.
    #[error("ptp4l at {path}: {source}")]
    Message {
        /// ptp4l's socket.
        path: PathBuf,
        /// Cause.
        source: MgmtError,
    },
}

/// A management client bound to its own socket and talking to one ptp4l.
#[derive(Debug)]
pub struct Pmc {
    socket: UnixDatagram,
    own_path: PathBuf,
    server: PathBuf,
    domain: u8,
    sequence: u16,
    timeout: Duration,
    /// Datagrams dropped because they could not be decoded.
    pub malformed: u64,
}

impl Pmc {
    /// Binds a client socket at `own_path` (removed again on drop) and
    /// targets ptp4l's `uds_address` `server` in `domain`.
    pub fn connect(server: &Path, own_path: &Path, domain: u8, timeout: Duration) -> Result<Self, PmcError> {
        let sock_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PmcError::Socket { path, source }
        };
        let _ = std::fs::remove_file(own_path);
        let socket = UnixDatagram::bind(own_path).map_err(sock_err(own_path))?;
        socket.connect(server).map_err(sock_err(server))?;
        Ok(Self {
            socket,
            own_path: own_path.to_path_buf(),
            server: server.to_path_buf(),
            domain,
            sequence: 0,
            timeout,
            malformed: 0,
        })
    }

    /// Asks for `set` and returns every port's answer that arrives within
    /// the timeout after the first (ptp4l sends one per port for port data
    /// sets, one for clock data sets). Stale or malformed datagrams are
    /// skipped and counted.
    pub fn get(&mut self, set: DataSet) -> Result<Vec<Response>, PmcError> {
        self.sequence = self.sequence.wrapping_add(1);
        let seq = self.sequence;
        let request = mgmt::get_request(set, seq, self.domain, self.identity());
        self.socket.send(&request).map_err(|source| PmcError::Socket { path: self.server.clone(), source })?;
        let deadline = Instant::now() + self.timeout;
        let mut answers = Vec::new();
        let mut buf = [0u8; 1500];
        let malformed_before = self.malformed;
        loop {
            // After the first answer, wait briefly for the other ports'.
            let until =
                if answers.is_empty() { deadline } else { deadline.min(Instant::now() + Duration::from_millis(20)) };
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let _ = self.socket.set_read_timeout(Some(left));
            let n = match self.socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // ptp4l went away after answering: keep what arrived.
                Err(_) if !answers.is_empty() => break,
                Err(source) => return Err(PmcError::Socket { path: self.server.clone(), source }),
            };
            match mgmt::decode(&buf[..n]) {
                Ok(m) if m.sequence == seq && m.domain == self.domain => answers.push(m.response),
                Ok(_) => {} // an answer to an earlier, timed-out request
                Err(e @ MgmtError::Refused { .. }) => {
                    return Err(PmcError::Message { path: self.server.clone(), source: e });
                }
                Err(_) => self.malformed += 1,
            }
        }
        if answers.is_empty() {
            let malformed = self.malformed - malformed_before;
            return Err(PmcError::Timeout { path: self.server.clone(), set, timeout: self.timeout, malformed });
        }
        Ok(answers)
    }

    /// This client's port identity: all zero clock id, port = pid (as pmc).
    fn identity(&self) -> PortIdentity {
        PortIdentity { clock: ClockIdentity([0; 8]), port: (std::process::id() & 0xFFFF) as u16 }
    }
}

impl Drop for Pmc {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.own_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mgmt::tests::{response, time_status_data};

    /// A stand-in server socket answering like ptp4l, for the client's
    /// socket handling (the real ptp4l test is in tests/ptp4l.rs).
    #[test]
    fn the_client_matches_answers_to_its_request() {
        let dir = tempfile::tempdir().expect("tmp");
        let server_path = dir.path().join("ptp4l");
        let server = UnixDatagram::bind(&server_path).expect("bind");
        let mut pmc =
            Pmc::connect(&server_path, &dir.path().join("pmc"), 0, Duration::from_millis(300)).expect("connect");
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            let (n, from) = server.recv_from(&mut buf).expect("request");
            let seq = u16::from_be_bytes([buf[30], buf[31]]);
            let from = from.as_pathname().expect("client path").to_path_buf();
            // garbage, a stale answer, then the real one
            server.send_to(b"not ptp", &from).expect("send");
            let mut stale = response(DataSet::TimeStatusNp, &time_status_data(99, [2; 8]));
            stale[30..32].copy_from_slice(&seq.wrapping_sub(1).to_be_bytes());
            server.send_to(&stale, &from).expect("send");
            let mut answer = response(DataSet::TimeStatusNp, &time_status_data(-42, [3; 8]));
            answer[30..32].copy_from_slice(&seq.to_be_bytes());
            server.send_to(&answer, &from).expect("send");
            (n, server) // kept open: a closed peer is a different case
        });
        let answers = pmc.get(DataSet::TimeStatusNp).expect("answer");
        let (n, _server) = handle.join().expect("server");
        assert_eq!(n, 54);
        assert_eq!(answers.len(), 1);
        let Response::TimeStatus(ts) = answers[0] else { panic!("{answers:?}") };
        assert_eq!(ts.master_offset_ns, -42);
        assert_eq!(pmc.malformed, 1, "the garbage datagram is counted");
        let e = pmc.get(DataSet::CurrentDataSet).expect_err("nobody answers now");
        assert!(matches!(e, PmcError::Timeout { .. }), "{e}");
    }

    #[test]
    fn a_missing_ptp4l_is_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = Pmc::connect(&dir.path().join("nope"), &dir.path().join("me"), 0, Duration::from_millis(10))
            .expect_err("no server");
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
