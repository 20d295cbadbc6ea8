//! PTP management messages (IEEE 1588-2008 §15) as ptp4l speaks them over
//! its UNIX socket: GET requests for a data set, and the decoding of the
//! RESPONSE (or MANAGEMENT_ERROR_STATUS) that comes back.
//!
//! Everything is big-endian on the wire. Decoding never trusts a length
//! field: every read is bounds-checked, and a short or inconsistent
//! message is an error naming what is wrong.

/// Bytes of the common PTP header.
pub const HEADER_LEN: usize = 34;
/// Bytes of the management body before its TLV.
const BODY_LEN: usize = 14;
/// messageType of management messages.
const MESSAGE_MANAGEMENT: u8 = 0x0D;
/// TLV types.
const TLV_MANAGEMENT: u16 = 0x0001;
const TLV_MANAGEMENT_ERROR_STATUS: u16 = 0x0002;
/// actionField values.
const ACTION_GET: u8 = 0;
const ACTION_RESPONSE: u8 = 2;

/// Management ids this client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataSet {
    /// currentDS: steps removed, offset from master, mean path delay.
    CurrentDataSet,
    /// parentDS: parent port, grandmaster identity, priorities and quality.
    ParentDataSet,
    /// portDS of the port(s): identity, state, intervals.
    PortDataSet,
    /// timePropertiesDS: the grandmaster's TAI − UTC offset and timescale.
    TimePropertiesDataSet,
    /// linuxptp's TIME_STATUS_NP: the servo's view of the master offset.
    TimeStatusNp,
}

impl DataSet {
    /// Management id on the wire.
    pub fn id(self) -> u16 {
        match self {
            Self::CurrentDataSet => 0x2001,
            Self::ParentDataSet => 0x2002,
            Self::TimePropertiesDataSet => 0x2003,
            Self::PortDataSet => 0x2004,
            Self::TimeStatusNp => 0xC000,
        }
    }

    fn from_id(id: u16) -> Option<Self> {
        [Self::CurrentDataSet, Self::ParentDataSet, Self::TimePropertiesDataSet, Self::PortDataSet, Self::TimeStatusNp]
            .into_iter()
            .find(|d| d.id() == id)
    }
}

/// Why a message could not be decoded or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MgmtError {
    /// Fewer bytes than a field needs.
    #[error("PTP management message too short: {what} needs {need} bytes at offset {at}, message has {len}")]
    Short {
        /// Field being read.
        what: &'static str,
        /// Bytes it needs.
        need: usize,
        /// Where it starts.
        at: usize,
        /// Message length.
        len: usize,
    },
    /// Not a management message.
    #[error("not a PTP management message (messageType {0:#x})")]
    NotManagement(u8),
    /// Not PTP version 2.
    #[error("PTP version {0} (expected 2)")]
    Version(u8),
    /// messageLength disagrees with the datagram.
    #[error("messageLength {header} but {actual} bytes received")]
    Length {
        /// Length in the header.
        header: usize,
        /// Length of the datagram.
        actual: usize,
    },
    /// Not a RESPONSE.
    #[error("management action {0} (expected RESPONSE)")]
    Action(u8),
    /// A TLV type other than management / error status.
    #[error("unexpected TLV type {0:#06x}")]
    TlvType(u16),
    /// The TLV's length field runs past the message or is too small.
    #[error("TLV length {length} does not fit the {available} bytes left")]
    TlvLength {
        /// TLV lengthField.
        length: usize,
        /// Bytes after the TLV header.
        available: usize,
    },
    /// ptp4l answered with MANAGEMENT_ERROR_STATUS.
    #[error("ptp4l refused management id {id:#06x}: {}", error_name(*.code))]
    Refused {
        /// managementErrorId.
        code: u16,
        /// managementId it refers to.
        id: u16,
    },
    /// A management id this client does not decode.
    #[error("unknown management id {0:#06x}")]
    UnknownId(u16),
    /// A field holds an impossible value.
    #[error("bad value in {0}")]
    Value(&'static str),
}

fn error_name(code: u16) -> &'static str {
    match code {
        0x0001 => "RESPONSE_TOO_BIG",
        0x0002 => "NO_SUCH_ID",
        0x0003 => "WRONG_LENGTH",
        0x0004 => "WRONG_VALUE",
        0x0005 => "NOT_SETABLE",
        0x0006 => "NOT_SUPPORTED",
        0xFFFE => "GENERAL_ERROR",
        _ => "unknown error",
    }
}

/// An 8-byte clock identity, shown as ptp4l shows it (`xxxxxx.xxxx.xxxxxx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ClockIdentity(pub [u8; 8]);

impl std::fmt::Display for ClockIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(f, "{:02x}{:02x}{:02x}.{:02x}{:02x}.{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7])
    }
}

/// Clock identity and port number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortIdentity {
    /// Clock.
    pub clock: ClockIdentity,
    /// Port number (1-based; 0xFFFF = all).
    pub port: u16,
}

impl std::fmt::Display for PortIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.clock, self.port)
    }
}

/// TIME_STATUS_NP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeStatus {
    /// Offset from the master, ns.
    pub master_offset_ns: i64,
    /// Ingress time of the last Sync, ns.
    pub ingress_time_ns: i64,
    /// cumulativeScaledRateOffset (rate ratio − 1, × 2⁴¹).
    pub cumulative_scaled_rate_offset: i32,
    /// scaledLastGmPhaseChange.
    pub scaled_last_gm_phase_change: i32,
    /// gmTimeBaseIndicator.
    pub gm_time_base_indicator: u16,
    /// Whether a grandmaster is present.
    pub gm_present: bool,
    /// The grandmaster.
    pub gm_identity: ClockIdentity,
}

/// currentDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentDataSet {
    /// Steps to the grandmaster.
    pub steps_removed: u16,
    /// offsetFromMaster, ns × 2¹⁶.
    pub offset_from_master_scaled: i64,
    /// meanPathDelay, ns × 2¹⁶.
    pub mean_path_delay_scaled: i64,
}

impl CurrentDataSet {
    /// Offset from the master in ns.
    pub fn offset_ns(&self) -> f64 {
        self.offset_from_master_scaled as f64 / 65_536.0
    }

    /// Mean path delay in ns.
    pub fn path_delay_ns(&self) -> f64 {
        self.mean_path_delay_scaled as f64 / 65_536.0
    }
}

/// Clock quality of a grandmaster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockQuality {
    /// clockClass.
    pub class: u8,
    /// clockAccuracy.
    pub accuracy: u8,
    /// offsetScaledLogVariance.
    pub variance: u16,
}

/// parentDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentDataSet {
    /// The port this clock listens to.
    pub parent_port: PortIdentity,
    /// parentStats.
    pub parent_stats: bool,
    /// observedParentOffsetScaledLogVariance.
    pub observed_offset_variance: u16,
    /// observedParentClockPhaseChangeRate.
    pub observed_phase_change_rate: i32,
    /// grandmasterPriority1.
    pub gm_priority1: u8,
    /// grandmasterClockQuality.
    pub gm_quality: ClockQuality,
    /// grandmasterPriority2.
    pub gm_priority2: u8,
    /// grandmasterIdentity.
    pub gm_identity: ClockIdentity,
}

/// Port states (IEEE 1588 portState).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    /// INITIALIZING.
    Initializing,
    /// FAULTY.
    Faulty,
    /// DISABLED.
    Disabled,
    /// LISTENING.
    Listening,
    /// PRE_MASTER.
    PreMaster,
    /// MASTER.
    Master,
    /// PASSIVE.
    Passive,
    /// UNCALIBRATED.
    Uncalibrated,
    /// SLAVE (time receiver).
    Slave,
}

impl PortState {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Initializing,
            2 => Self::Faulty,
            3 => Self::Disabled,
            4 => Self::Listening,
            5 => Self::PreMaster,
            6 => Self::Master,
            7 => Self::Passive,
            8 => Self::Uncalibrated,
            9 => Self::Slave,
            _ => return None,
        })
    }
}

/// portDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortDataSet {
    /// The port.
    pub port: PortIdentity,
    /// Its state.
    pub state: PortState,
    /// logMinDelayReqInterval.
    pub log_min_delay_req_interval: i8,
    /// peerMeanPathDelay, ns × 2¹⁶.
    pub peer_mean_path_delay_scaled: i64,
    /// logAnnounceInterval.
    pub log_announce_interval: i8,
    /// announceReceiptTimeout.
    pub announce_receipt_timeout: u8,
    /// logSyncInterval.
    pub log_sync_interval: i8,
    /// delayMechanism (1 = E2E, 2 = P2P).
    pub delay_mechanism: u8,
    /// logMinPdelayReqInterval.
    pub log_min_pdelay_req_interval: i8,
    /// PTP version of the port.
    pub version: u8,
}

/// TIME_PROPERTIES_DATA_SET: what the grandmaster announces about its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeProperties {
    /// TAI − UTC in seconds, as announced.
    pub current_utc_offset_s: i16,
    /// Whether `current_utc_offset_s` is known to be right.
    pub utc_offset_valid: bool,
    /// The grandmaster's time is TAI (PTP timescale), not arbitrary.
    pub ptp_timescale: bool,
    /// A leap second is announced at the end of this UTC day (+1 / −1 / 0).
    pub leap: i8,
    /// Time traceable to a primary reference.
    pub time_traceable: bool,
    /// Frequency traceable to a primary reference.
    pub frequency_traceable: bool,
    /// IEEE 1588 timeSource (0x20 GNSS, 0xA0 internal oscillator, …).
    pub time_source: u8,
}

/// A decoded RESPONSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// TIME_STATUS_NP.
    TimeStatus(TimeStatus),
    /// CURRENT_DATA_SET.
    Current(CurrentDataSet),
    /// PARENT_DATA_SET.
    Parent(ParentDataSet),
    /// PORT_DATA_SET.
    Port(PortDataSet),
    /// TIME_PROPERTIES_DATA_SET.
    TimeProperties(TimeProperties),
}

/// A RESPONSE with who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    /// sequenceId, as in the request.
    pub sequence: u16,
    /// domainNumber.
    pub domain: u8,
    /// The responding port.
    pub source: PortIdentity,
    /// Its content.
    pub response: Response,
}

/// Encodes a GET for `set` to every port (`targetPortIdentity` all ones),
/// as `pmc -b 0` does: boundary hops 0, so only the local ptp4l answers.
pub fn get_request(set: DataSet, sequence: u16, domain: u8, source: PortIdentity) -> Vec<u8> {
    let len = HEADER_LEN + BODY_LEN + 6;
    let mut m = Vec::with_capacity(len);
    m.push(MESSAGE_MANAGEMENT); // transportSpecific 0, messageType
    m.push(2); // versionPTP
    m.extend_from_slice(&(len as u16).to_be_bytes());
    m.push(domain);
    m.push(0); // minorSdoId / reserved
    m.extend_from_slice(&[0, 0]); // flags
    m.extend_from_slice(&[0; 8]); // correction
    m.extend_from_slice(&[0; 4]); // reserved
    m.extend_from_slice(&source.clock.0);
    m.extend_from_slice(&source.port.to_be_bytes());
    m.extend_from_slice(&sequence.to_be_bytes());
    m.push(0x04); // controlField: management
    m.push(0x7F); // logMessageInterval
    m.extend_from_slice(&[0xFF; 10]); // targetPortIdentity: all clocks, all ports
    m.push(0); // startingBoundaryHops
    m.push(0); // boundaryHops
    m.push(ACTION_GET);
    m.push(0); // reserved
    m.extend_from_slice(&TLV_MANAGEMENT.to_be_bytes());
    m.extend_from_slice(&2u16.to_be_bytes()); // length: the id only
    m.extend_from_slice(&set.id().to_be_bytes());
    m
}

/// Bounds-checked big-endian reader.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], MgmtError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(MgmtError::Short { what, need: n, at: self.at, len: self.buf.len() });
        };
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], MgmtError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(what, N)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, MgmtError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn i8(&mut self, what: &'static str) -> Result<i8, MgmtError> {
        Ok(i8::from_be_bytes(self.array(what)?))
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, MgmtError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, MgmtError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, MgmtError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    fn clock(&mut self, what: &'static str) -> Result<ClockIdentity, MgmtError> {
        Ok(ClockIdentity(self.array(what)?))
    }

    fn port(&mut self, what: &'static str) -> Result<PortIdentity, MgmtError> {
        Ok(PortIdentity { clock: self.clock(what)?, port: self.u16(what)? })
    }
}

/// Decodes one datagram from ptp4l.
pub fn decode(buf: &[u8]) -> Result<Message, MgmtError> {
    let mut r = Reader { buf, at: 0 };
    let kind = r.u8("messageType")? & 0x0F;
    if kind != MESSAGE_MANAGEMENT {
        return Err(MgmtError::NotManagement(kind));
    }
    let version = r.u8("versionPTP")? & 0x0F;
    if version != 2 {
        return Err(MgmtError::Version(version));
    }
    let header_len = usize::from(r.u16("messageLength")?);
    if header_len != buf.len() {
        return Err(MgmtError::Length { header: header_len, actual: buf.len() });
    }
    let domain = r.u8("domainNumber")?;
    r.take("header", 1 + 2 + 8 + 4)?;
    let source = r.port("sourcePortIdentity")?;
    let sequence = r.u16("sequenceId")?;
    r.take("header", 2)?;
    r.port("targetPortIdentity")?;
    r.take("boundaryHops", 2)?;
    let action = r.u8("actionField")? & 0x0F;
    r.take("reserved", 1)?;
    let tlv_type = r.u16("tlvType")?;
    let length = usize::from(r.u16("lengthField")?);
    let available = buf.len() - r.at;
    if length > available || length < 2 {
        return Err(MgmtError::TlvLength { length, available });
    }
    let mut t = Reader { buf: &buf[..r.at + length], at: r.at };
    match tlv_type {
        TLV_MANAGEMENT_ERROR_STATUS => {
            let code = t.u16("managementErrorId")?;
            let id = t.u16("managementId")?;
            return Err(MgmtError::Refused { code, id });
        }
        TLV_MANAGEMENT => {}
        other => return Err(MgmtError::TlvType(other)),
    }
    if action != ACTION_RESPONSE {
        return Err(MgmtError::Action(action));
    }
    let id = t.u16("managementId")?;
    let set = DataSet::from_id(id).ok_or(MgmtError::UnknownId(id))?;
    let response = match set {
        DataSet::TimeStatusNp => {
            let master_offset_ns = t.i64("master_offset")?;
            let ingress_time_ns = t.i64("ingress_time")?;
            let cumulative_scaled_rate_offset = t.i32("cumulativeScaledRateOffset")?;
            let scaled_last_gm_phase_change = t.i32("scaledLastGmPhaseChange")?;
            let gm_time_base_indicator = t.u16("gmTimeBaseIndicator")?;
            t.take("lastGmPhaseChange", 12)?;
            let gm_present = t.i32("gmPresent")? != 0;
            let gm_identity = t.clock("gmIdentity")?;
            Response::TimeStatus(TimeStatus {
                master_offset_ns,
                ingress_time_ns,
                cumulative_scaled_rate_offset,
                scaled_last_gm_phase_change,
                gm_time_base_indicator,
                gm_present,
                gm_identity,
            })
        }
        DataSet::CurrentDataSet => Response::Current(CurrentDataSet {
            steps_removed: t.u16("stepsRemoved")?,
            offset_from_master_scaled: t.i64("offsetFromMaster")?,
            mean_path_delay_scaled: t.i64("meanPathDelay")?,
        }),
        DataSet::ParentDataSet => {
            let parent_port = t.port("parentPortIdentity")?;
            let parent_stats = t.u8("parentStats")? != 0;
            t.take("reserved", 1)?;
            Response::Parent(ParentDataSet {
                parent_port,
                parent_stats,
                observed_offset_variance: t.u16("observedParentOffsetScaledLogVariance")?,
                observed_phase_change_rate: t.i32("observedParentClockPhaseChangeRate")?,
                gm_priority1: t.u8("grandmasterPriority1")?,
                gm_quality: ClockQuality {
                    class: t.u8("clockClass")?,
                    accuracy: t.u8("clockAccuracy")?,
                    variance: t.u16("offsetScaledLogVariance")?,
                },
                gm_priority2: t.u8("grandmasterPriority2")?,
                gm_identity: t.clock("grandmasterIdentity")?,
            })
        }
        DataSet::TimePropertiesDataSet => {
            let current_utc_offset_s = t.u16("currentUtcOffset")? as i16;
            let flags = t.u8("flags")?;
            let leap = match (flags & 1 != 0, flags & 2 != 0) {
                (true, false) => 1,
                (false, true) => -1,
                (false, false) => 0,
                (true, true) => return Err(MgmtError::Value("flags (leap61 and leap59 both set)")),
            };
            Response::TimeProperties(TimeProperties {
                current_utc_offset_s,
                utc_offset_valid: flags & 4 != 0,
                ptp_timescale: flags & 8 != 0,
                leap,
                time_traceable: flags & 16 != 0,
                frequency_traceable: flags & 32 != 0,
                time_source: t.u8("timeSource")?,
            })
        }
        DataSet::PortDataSet => {
            let port = t.port("portIdentity")?;
            let state = PortState::from_u8(t.u8("portState")?).ok_or(MgmtError::Value("portState"))?;
            Response::Port(PortDataSet {
                port,
                state,
                log_min_delay_req_interval: t.i8("logMinDelayReqInterval")?,
                peer_mean_path_delay_scaled: t.i64("peerMeanPathDelay")?,
                log_announce_interval: t.i8("logAnnounceInterval")?,
                announce_receipt_timeout: t.u8("announceReceiptTimeout")?,
                log_sync_interval: t.i8("logSyncInterval")?,
                delay_mechanism: t.u8("delayMechanism")?,
                log_min_pdelay_req_interval: t.i8("logMinPdelayReqInterval")?,
                version: t.u8("versionNumber")? & 0x0F,
            })
        }
    };
    Ok(Message { sequence, domain, source, response })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A RESPONSE as ptp4l builds it: the request's header with action
    /// RESPONSE and the data appended.
    pub(crate) fn response(set: DataSet, data: &[u8]) -> Vec<u8> {
        let source = PortIdentity { clock: ClockIdentity([0x52, 0x54, 0, 0xff, 0xfe, 0x12, 0x34, 0x56]), port: 1 };
        let mut m = get_request(set, 7, 0, source);
        m[HEADER_LEN + 12] = ACTION_RESPONSE;
        let tlv_len = (2 + data.len()) as u16;
        m[HEADER_LEN + BODY_LEN + 2..HEADER_LEN + BODY_LEN + 4].copy_from_slice(&tlv_len.to_be_bytes());
        m.extend_from_slice(data);
        let len = m.len() as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        m
    }

    pub(crate) fn time_status_data(offset: i64, gm: [u8; 8]) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&offset.to_be_bytes());
        d.extend_from_slice(&1_700_000_000_123_456_789i64.to_be_bytes());
        d.extend_from_slice(&(-5i32).to_be_bytes());
        d.extend_from_slice(&0i32.to_be_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        d.extend_from_slice(&[0; 12]);
        d.extend_from_slice(&1i32.to_be_bytes());
        d.extend_from_slice(&gm);
        d
    }

    #[test]
    fn a_get_request_has_the_layout_pmc_sends() {
        let m = get_request(DataSet::TimeStatusNp, 0x1234, 3, PortIdentity::default());
        assert_eq!(m.len(), 54);
        assert_eq!((m[0], m[1]), (0x0D, 2));
        assert_eq!(u16::from_be_bytes([m[2], m[3]]), 54);
        assert_eq!(m[4], 3, "domain");
        assert_eq!(&m[30..32], &[0x12, 0x34], "sequence");
        assert_eq!(&m[34..44], &[0xFF; 10], "to every port");
        assert_eq!(m[46], 0, "GET");
        assert_eq!(&m[48..54], &[0, 1, 0, 2, 0xC0, 0]);
    }

    #[test]
    fn responses_decode() {
        let gm = [0xaa, 0xbb, 0xcc, 0xff, 0xfe, 0, 0, 1];
        let msg = decode(&response(DataSet::TimeStatusNp, &time_status_data(-1234, gm))).expect("time status");
        assert_eq!(msg.sequence, 7);
        let Response::TimeStatus(ts) = msg.response else { panic!("{msg:?}") };
        assert_eq!((ts.master_offset_ns, ts.gm_present, ts.gm_identity.0), (-1234, true, gm));
        assert_eq!(ts.gm_identity.to_string(), "aabbcc.fffe.000001");
        assert_eq!(msg.source.to_string(), "525400.fffe.123456-1");

        let mut d = 1u16.to_be_bytes().to_vec();
        d.extend_from_slice(&(-65_536i64 * 250).to_be_bytes());
        d.extend_from_slice(&(65_536i64 * 1_500).to_be_bytes());
        let Response::Current(c) = decode(&response(DataSet::CurrentDataSet, &d)).expect("current").response else {
            panic!()
        };
        assert_eq!((c.steps_removed, c.offset_ns(), c.path_delay_ns()), (1, -250.0, 1500.0));

        let mut d = Vec::new();
        d.extend_from_slice(&gm);
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&[0, 0, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 128, 248, 0xfe, 0xff, 0xff, 128]);
        d.extend_from_slice(&gm);
        let Response::Parent(p) = decode(&response(DataSet::ParentDataSet, &d)).expect("parent").response else {
            panic!()
        };
        assert_eq!((p.gm_identity.0, p.gm_priority1, p.gm_quality.class, p.gm_priority2), (gm, 128, 248, 128));

        let mut d = Vec::new();
        d.extend_from_slice(&gm);
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&[8, 0]);
        d.extend_from_slice(&0i64.to_be_bytes());
        d.extend_from_slice(&[1, 3, 0, 1, 0, 2]);
        let Response::Port(p) = decode(&response(DataSet::PortDataSet, &d)).expect("port").response else { panic!() };
        let d = [0, 37, 0b0000_1100, 0xA0];
        let Response::TimeProperties(tp) =
            decode(&response(DataSet::TimePropertiesDataSet, &d)).expect("time properties").response
        else {
            panic!()
        };
        assert_eq!((tp.current_utc_offset_s, tp.utc_offset_valid, tp.ptp_timescale, tp.leap), (37, true, true, 0));
        assert_eq!(tp.time_source, 0xA0);
        let both_leaps = [0, 37, 3, 0xA0];
        assert!(decode(&response(DataSet::TimePropertiesDataSet, &both_leaps)).is_err());
        assert_eq!(
            (p.state, p.announce_receipt_timeout, p.delay_mechanism, p.version),
            (PortState::Uncalibrated, 3, 1, 2)
        );
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        let good = response(DataSet::TimeStatusNp, &time_status_data(5, [1; 8]));
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong_len = good.clone();
        wrong_len[2] = 0xff;
        assert!(matches!(decode(&wrong_len), Err(MgmtError::Length { .. })));
        let mut long_tlv = good.clone();
        long_tlv[HEADER_LEN + BODY_LEN + 2] = 0x7f;
        assert!(matches!(decode(&long_tlv), Err(MgmtError::TlvLength { .. })));
        // A TLV that claims only the id: the data set fields are missing.
        let short = response(DataSet::TimeStatusNp, &[]);
        assert!(matches!(decode(&short), Err(MgmtError::Short { what: "master_offset", .. })));
        let mut bad_state = response(DataSet::PortDataSet, &[0; 26]);
        bad_state[HEADER_LEN + BODY_LEN + 6 + 10] = 42;
        assert_eq!(decode(&bad_state), Err(MgmtError::Value("portState")));
        // An error status from ptp4l.
        let mut refused = response(DataSet::TimeStatusNp, &[0; 8]);
        let t = HEADER_LEN + BODY_LEN;
        refused[t..t + 2].copy_from_slice(&TLV_MANAGEMENT_ERROR_STATUS.to_be_bytes());
        refused[t + 4..t + 8].copy_from_slice(&[0x00, 0x02, 0xC0, 0x00]);
        let e = decode(&refused).expect_err("refused");
        assert_eq!(e, MgmtError::Refused { code: 2, id: 0xC000 });
        assert!(e.to_string().contains("NO_SUCH_ID"));
        assert!(matches!(decode(&[0x00; 60]), Err(MgmtError::NotManagement(0))));
    }
}
