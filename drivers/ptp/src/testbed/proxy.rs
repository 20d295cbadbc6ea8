//! A PTP proxy of the project's own for the test bed: the kernel here has
//! no netem, and a master and slave on one host clock measure an offset of
//! about zero, so a test could not tell a daemon that follows the offset
//! from one that ignores it. The proxy sits in a namespace of its own
//! between master and slave (PTP over UDP/IPv4, multicast 224.0.1.129,
//! event port 319, general port 320), forwards every message both ways and
//! adds a known shift to the master's timestamps: the Sync and Follow_Up
//! origin timestamps and the Delay_Resp receive timestamp. The slave then
//! measures the master that much ahead (its `master_offset` is the shift,
//! negated): a real offset, with a known value, that pmc reports. The
//! shift may change at run time (a step of the reference) and may grow at
//! a given rate (a master whose frequency is off).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// PTP's primary multicast group.
const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 1, 129);
/// Event (Sync, Delay_Req) and general (Follow_Up, Delay_Resp, Announce) ports.
const PORTS: [u16; 2] = [319, 320];
/// Length of the common header; a timestamp follows it.
const HEADER: usize = 34;

/// Adds `by_ns` to the timestamp a master puts after the header of a Sync
/// (0), Follow_Up (8) or Delay_Resp (9): 48-bit seconds and 32-bit
/// nanoseconds. Other messages, and ones too short to hold a timestamp,
/// are left as they are; whether it changed anything is returned.
pub fn shift_timestamp(packet: &mut [u8], by_ns: i64) -> bool {
    let Some(&first) = packet.first() else { return false };
    if !matches!(first & 0x0f, 0x0 | 0x8 | 0x9) || packet.len() < HEADER + 10 {
        return false;
    }
    let field = &mut packet[HEADER..HEADER + 10];
    let seconds = field[..6].iter().fold(0_i128, |s, b| (s << 8) | i128::from(*b));
    let nanos = i128::from(u32::from_be_bytes([field[6], field[7], field[8], field[9]]));
    let total = (seconds * 1_000_000_000 + nanos + i128::from(by_ns)).max(0);
    let (seconds, nanos) = (total / 1_000_000_000, total % 1_000_000_000);
    for (i, byte) in field[..6].iter_mut().enumerate() {
        *byte = (seconds >> (8 * (5 - i))) as u8;
    }
    field[6..].copy_from_slice(&(nanos as u32).to_be_bytes());
    true
}

/// The shift the proxy adds: `offset_ns`, plus `drift_ppb` × the time
/// since it was set.
#[derive(Debug)]
struct Shift {
    offset_ns: AtomicI64,
    drift_ppb: AtomicI64,
    since: Mutex<Instant>,
}

impl Shift {
    fn now_ns(&self) -> i64 {
        let since = *self.since.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = i64::try_from(since.elapsed().as_nanos()).unwrap_or(i64::MAX);
        self.offset_ns.load(Ordering::Relaxed)
            + (i128::from(self.drift_ppb.load(Ordering::Relaxed)) * i128::from(elapsed) / 1_000_000_000) as i64
    }
}

/// One side of the proxy: an interface by name and address.
#[derive(Debug, Clone)]
pub(super) struct Side {
    pub device: String,
    pub address: Ipv4Addr,
}

/// The running proxy; stopped on drop.
#[derive(Debug)]
pub struct Proxy {
    shift: Arc<Shift>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Messages forwarded, and of them shifted.
    counts: Arc<[AtomicI64; 2]>,
}

impl Proxy {
    /// Starts the forwarding threads in network namespace `namespace`
    /// (`/run/netns/NAME`) between `master` and `slave`.
    pub(super) fn start(namespace: &str, master: Side, slave: Side) -> Self {
        let shift = Arc::new(Shift {
            offset_ns: AtomicI64::new(0),
            drift_ppb: AtomicI64::new(0),
            since: Mutex::new(Instant::now()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new([AtomicI64::new(0), AtomicI64::new(0)]);
        // Sockets belong to the namespace they are made in: one thread
        // enters the proxy's and makes them, one per side and port.
        let ns = namespace.to_owned();
        let sockets = std::thread::spawn(move || {
            let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            PORTS.map(|port| [socket(&master, port), socket(&slave, port)])
        })
        .join()
        .expect("the PTP proxy could not open its sockets");
        let mut threads = Vec::new();
        for (port, [m, s]) in PORTS.into_iter().zip(sockets) {
            for (rx, tx, shifted) in [(m.try_clone().unwrap(), s.try_clone().unwrap(), true), (s, m, false)] {
                let (shift, stop, counts) = (Arc::clone(&shift), Arc::clone(&stop), Arc::clone(&counts));
                threads.push(std::thread::spawn(move || {
                    let mut buf = [0_u8; 1500];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((n, _)) = rx.recv_from(&mut buf) else { continue };
                        let packet = &mut buf[..n];
                        if shifted && shift_timestamp(packet, shift.now_ns()) {
                            counts[1].fetch_add(1, Ordering::Relaxed);
                        }
                        counts[0].fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send_to(packet, SocketAddrV4::new(GROUP, port));
                    }
                }));
            }
        }
        Self { shift, stop, threads, counts }
    }

    /// From now on the master's timestamps are `offset_ns` later, growing
    /// by `drift_ppb` (ns per second) from now.
    pub fn set(&self, offset_ns: i64, drift_ppb: i64) {
        *self.shift.since.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        self.shift.drift_ppb.store(drift_ppb, Ordering::Relaxed);
        self.shift.offset_ns.store(offset_ns, Ordering::Relaxed);
    }

    /// Messages forwarded both ways, and the master's that were shifted.
    pub fn forwarded(&self) -> (i64, i64) {
        (self.counts[0].load(Ordering::Relaxed), self.counts[1].load(Ordering::Relaxed))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A UDP socket on `side`'s device and PTP `port`, in the multicast group,
/// sending out of that device only, without hearing itself.
fn socket(side: &Side, port: u16) -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind_device(Some(side.device.as_bytes())).unwrap();
    s.bind(&SockAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))).unwrap();
    s.join_multicast_v4(&GROUP, &side.address).unwrap();
    s.set_multicast_if_v4(&side.address).unwrap();
    s.set_multicast_loop_v4(false).unwrap();
    s.set_multicast_ttl_v4(1).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    s.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follow_up(seconds: u64, nanos: u32) -> Vec<u8> {
        let mut p = vec![0_u8; 44];
        p[0] = 0x08;
        p[HEADER..HEADER + 6].copy_from_slice(&seconds.to_be_bytes()[2..]);
        p[HEADER + 6..].copy_from_slice(&nanos.to_be_bytes());
        p
    }

    #[test]
    fn a_shift_carries_into_the_seconds_and_back() {
        let mut p = follow_up(1_700_000_000, 999_000_000);
        assert!(shift_timestamp(&mut p, 3_000_000));
        assert_eq!(p, follow_up(1_700_000_001, 2_000_000));
        assert!(shift_timestamp(&mut p, -3_000_000));
        assert_eq!(p, follow_up(1_700_000_000, 999_000_000));
        // Seconds beyond 32 bits (the field has 48).
        let mut p = follow_up(0x1_0000_0000, 0);
        assert!(shift_timestamp(&mut p, -1));
        assert_eq!(p, follow_up(0xffff_ffff, 999_999_999));
    }

    #[test]
    fn only_the_masters_timestamps_move() {
        for kind in [0x1_u8, 0xb, 0xc, 0xd] {
            let mut p = follow_up(5, 5);
            p[0] = kind;
            let before = p.clone();
            assert!(!shift_timestamp(&mut p, 1000), "message type {kind:#x}");
            assert_eq!(p, before);
        }
        for kind in [0x0_u8, 0x9, 0x10 | 0x8] {
            let mut p = follow_up(5, 5);
            p[0] = kind;
            assert!(shift_timestamp(&mut p, 1000), "message type {kind:#x}");
        }
        let mut short = follow_up(5, 5)[..40].to_vec();
        assert!(!shift_timestamp(&mut short, 1000));
        assert!(!shift_timestamp(&mut [], 1000));
    }
}
