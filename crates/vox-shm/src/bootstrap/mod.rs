//! Bootstrap over a Unix control socket (spec A9, B10): a guest that was not
//! spawned by the host asks for a slot and receives its three descriptors.
//!
//! ```text
//! request  (guest → host): "RSH0" | sid_len u16 LE | sid
//! response (host → guest): "RSP0" | status u8 | peer_id u32 LE | len u16 LE | payload
//!                          + SCM_RIGHTS [doorbell, segment, mmap control] on success
//! ```
//!
//! The success payload is the segment's path (what vox-shm 0.3.1 guests attach
//! by); our guests attach from the segment descriptor and fall back to the
//! path. The control channel is bidirectional, so a guest sends on a duplicate
//! of the received control descriptor: nothing needs to be inherited.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use shm_primitives::PeerId;
use shm_primitives_async::control::{recv_with_fds, send_with_fds, ControlError};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};

mod server;
pub use server::{BootstrapServer, WalkIn, WalkInError, WalkInPolicy};

use crate::host::{GuestSpawnTicket, HostError, HostHub, HostPeer};
use crate::segment::{AttachError, Segment};
use crate::shm_link::{LinkOptions, ShmLink};

/// Request magic.
pub const BOOTSTRAP_REQUEST_MAGIC: [u8; 4] = *b"RSH0";
/// Response magic.
pub const BOOTSTRAP_RESPONSE_MAGIC: [u8; 4] = *b"RSP0";
/// Bytes before the session id.
pub const BOOTSTRAP_REQUEST_HEADER_LEN: usize = 6;
/// Bytes before the response payload.
pub const BOOTSTRAP_RESPONSE_HEADER_LEN: usize = 11;
/// Most request bytes a host reads.
pub const MAX_REQUEST_LEN: usize = 2048;

/// Response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapStatus {
    /// A slot was assigned; three descriptors travel with the response.
    Success = 0,
    /// Refused; the payload says why; no descriptors.
    Error = 1,
}

/// A malformed or refused bootstrap exchange.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// Fewer bytes than a header.
    #[error("bootstrap message truncated: {len} bytes")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// Wrong magic.
    #[error("bootstrap message has magic {found:?}")]
    InvalidMagic {
        /// Bytes found.
        found: [u8; 4],
    },
    /// Length fields disagree with the message size.
    #[error("bootstrap message is {found} bytes, its header says {expected}")]
    LengthMismatch {
        /// Size the header implies.
        expected: usize,
        /// Size received.
        found: usize,
    },
    /// Status byte is neither 0 nor 1.
    #[error("bootstrap status {0} is unknown")]
    UnknownStatus(u8),
    /// An error response must carry peer id 0.
    #[error("bootstrap error response carries peer id {0}")]
    ErrorWithPeerId(u32),
    /// A session id or payload longer than 65535 bytes.
    #[error("bootstrap field of {0} bytes does not fit its 16-bit length")]
    TooLong(usize),
    /// Success needs exactly 3 descriptors, an error none.
    #[error("bootstrap {status:?} response carries {count} descriptors")]
    InvalidFdCount {
        /// Status of the response.
        status: BootstrapStatus,
        /// Descriptors received (all closed).
        count: usize,
    },
    /// The host refused.
    #[error("host refused the bootstrap: {0}")]
    Rejected(String),
    /// The peer id in a success response is not 1..=255.
    #[error("bootstrap assigned peer id {0}, not 1..=255")]
    BadPeerId(u32),
    /// The socket or descriptor passing failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// I/O on the control socket failed.
    #[error("bootstrap: {0}")]
    Io(#[from] io::Error),
    /// The segment could not be attached, neither by descriptor nor by the
    /// path in the response.
    #[error("cannot attach the segment by descriptor ({by_fd}){}", by_path.as_ref().map_or(" and the response names no path".to_string(), |e| format!(" or by path ({e})")))]
    Attach {
        /// Why the descriptor was refused.
        by_fd: AttachError,
        /// Why the path was refused (`None`: the response names none).
        by_path: Option<AttachError>,
    },
    /// Reserving the slot or building the link failed.
    #[error(transparent)]
    Host(#[from] HostError),
}

impl BootstrapError {
    /// The `io::ErrorKind` it converts to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            BootstrapError::Io(e) => e.kind(),
            BootstrapError::Host(e) => e.kind(),
            BootstrapError::Attach { by_fd, .. } => by_fd.kind(),
            BootstrapError::Rejected(_) => io::ErrorKind::PermissionDenied,
            BootstrapError::Control(ControlError::Io(e)) => e.kind(),
            _ => io::ErrorKind::InvalidData,
        }
    }
}

crate::io_error::into_io_error!(BootstrapError);

/// A decoded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootstrapRequestRef<'a> {
    /// Opaque session id.
    pub sid: &'a [u8],
}

/// A decoded response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootstrapResponseRef<'a> {
    /// Status.
    pub status: BootstrapStatus,
    /// Assigned peer id (0 for errors).
    pub peer_id: u32,
    /// Segment path (success) or diagnostic (error).
    pub payload: &'a [u8],
}

fn u16_len(n: usize) -> Result<u16, BootstrapError> {
    u16::try_from(n).map_err(|_| BootstrapError::TooLong(n))
}

/// Encodes a request.
pub fn encode_request(sid: &[u8]) -> Result<Vec<u8>, BootstrapError> {
    let mut v = Vec::with_capacity(BOOTSTRAP_REQUEST_HEADER_LEN + sid.len());
    v.extend_from_slice(&BOOTSTRAP_REQUEST_MAGIC);
    v.extend_from_slice(&u16_len(sid.len())?.to_le_bytes());
    v.extend_from_slice(sid);
    Ok(v)
}

/// Decodes a request; the frame must be exactly `6 + sid_len` bytes.
pub fn decode_request(frame: &[u8]) -> Result<BootstrapRequestRef<'_>, BootstrapError> {
    if frame.len() < BOOTSTRAP_REQUEST_HEADER_LEN {
        return Err(BootstrapError::Truncated { len: frame.len() });
    }
    let magic: [u8; 4] = frame[..4].try_into().expect("4 bytes");
    if magic != BOOTSTRAP_REQUEST_MAGIC {
        return Err(BootstrapError::InvalidMagic { found: magic });
    }
    let n = u16::from_le_bytes([frame[4], frame[5]]) as usize;
    let expected = BOOTSTRAP_REQUEST_HEADER_LEN + n;
    if frame.len() != expected {
        return Err(BootstrapError::LengthMismatch { expected, found: frame.len() });
    }
    Ok(BootstrapRequestRef { sid: &frame[BOOTSTRAP_REQUEST_HEADER_LEN..] })
}

/// Encodes a response. Error responses must use peer id 0.
pub fn encode_response(status: BootstrapStatus, peer_id: u32, payload: &[u8]) -> Result<Vec<u8>, BootstrapError> {
    if status == BootstrapStatus::Error && peer_id != 0 {
        return Err(BootstrapError::ErrorWithPeerId(peer_id));
    }
    let mut v = Vec::with_capacity(BOOTSTRAP_RESPONSE_HEADER_LEN + payload.len());
    v.extend_from_slice(&BOOTSTRAP_RESPONSE_MAGIC);
    v.push(status as u8);
    v.extend_from_slice(&peer_id.to_le_bytes());
    v.extend_from_slice(&u16_len(payload.len())?.to_le_bytes());
    v.extend_from_slice(payload);
    Ok(v)
}

/// Decodes a response; the frame must be exactly `11 + payload_len` bytes.
pub fn decode_response(frame: &[u8]) -> Result<BootstrapResponseRef<'_>, BootstrapError> {
    if frame.len() < BOOTSTRAP_RESPONSE_HEADER_LEN {
        return Err(BootstrapError::Truncated { len: frame.len() });
    }
    let magic: [u8; 4] = frame[..4].try_into().expect("4 bytes");
    if magic != BOOTSTRAP_RESPONSE_MAGIC {
        return Err(BootstrapError::InvalidMagic { found: magic });
    }
    let status = match frame[4] {
        0 => BootstrapStatus::Success,
        1 => BootstrapStatus::Error,
        s => return Err(BootstrapError::UnknownStatus(s)),
    };
    let peer_id = u32::from_le_bytes(frame[5..9].try_into().expect("4 bytes"));
    if status == BootstrapStatus::Error && peer_id != 0 {
        return Err(BootstrapError::ErrorWithPeerId(peer_id));
    }
    let n = u16::from_le_bytes([frame[9], frame[10]]) as usize;
    let expected = BOOTSTRAP_RESPONSE_HEADER_LEN + n;
    if frame.len() != expected {
        return Err(BootstrapError::LengthMismatch { expected, found: frame.len() });
    }
    Ok(BootstrapResponseRef { status, peer_id, payload: &frame[BOOTSTRAP_RESPONSE_HEADER_LEN..] })
}

/// The descriptors of a success response, in wire order.
#[derive(Debug)]
pub struct BootstrapSuccessFds {
    /// The guest's doorbell end.
    pub doorbell: OwnedFd,
    /// The segment file.
    pub segment: OwnedFd,
    /// The guest's control-channel end.
    pub mmap_control: OwnedFd,
}

/// A received response.
#[derive(Debug)]
pub struct ReceivedBootstrapResponse {
    /// Status.
    pub status: BootstrapStatus,
    /// Assigned peer id.
    pub peer_id: u32,
    /// Payload.
    pub payload: Vec<u8>,
    /// Descriptors (success only).
    pub fds: Option<BootstrapSuccessFds>,
}

/// Sends a response frame (`MSG_NOSIGNAL`), with the three descriptors for a
/// success and none for an error; anything else is refused before sending.
pub fn send_response_unix(
    sock: BorrowedFd<'_>,
    frame: &[u8],
    fds: Option<[BorrowedFd<'_>; 3]>,
) -> Result<(), BootstrapError> {
    let status = decode_response(frame)?.status;
    match (status, &fds) {
        (BootstrapStatus::Success, None) => {
            return Err(BootstrapError::InvalidFdCount { status, count: 0 });
        }
        (BootstrapStatus::Error, Some(_)) => return Err(BootstrapError::InvalidFdCount { status, count: 3 }),
        _ => {}
    }
    let raw: Vec<_> = fds.iter().flatten().map(|f| f.as_raw_fd()).collect();
    send_with_fds(sock, frame, &raw)?;
    Ok(())
}

/// Receives one response from a readable socket: the first read carries the
/// descriptors; a response split across reads is completed without them.
/// `Ok(None)` if nothing is readable yet.
fn try_recv_response(sock: BorrowedFd<'_>, buf: &mut Vec<u8>) -> Result<Option<(usize, Vec<OwnedFd>)>, BootstrapError> {
    buf.resize(BOOTSTRAP_RESPONSE_HEADER_LEN + u16::MAX as usize, 0);
    match recv_with_fds(sock, buf)? {
        None => Ok(None),
        Some((0, _)) => {
            Err(io::Error::new(io::ErrorKind::UnexpectedEof, "control socket closed before the response").into())
        }
        Some(r) => Ok(Some(r)),
    }
}

fn into_response(frame: &[u8], mut fds: Vec<OwnedFd>) -> Result<ReceivedBootstrapResponse, BootstrapError> {
    let r = decode_response(frame)?;
    let want = if r.status == BootstrapStatus::Success { 3 } else { 0 };
    if fds.len() != want {
        return Err(BootstrapError::InvalidFdCount { status: r.status, count: fds.len() });
    }
    let fds = if want == 3 {
        let mmap_control = fds.pop().expect("3");
        let segment = fds.pop().expect("3");
        let doorbell = fds.pop().expect("3");
        Some(BootstrapSuccessFds { doorbell, segment, mmap_control })
    } else {
        None
    };
    Ok(ReceivedBootstrapResponse { status: r.status, peer_id: r.peer_id, payload: r.payload.to_vec(), fds })
}

/// Reads a whole response from a tokio Unix stream (descriptors included).
///
/// Cancel safety: not cancel-safe: bytes already read are lost with the
/// future, so a cancelled read leaves the stream mid-message.
pub async fn recv_response(stream: &mut UnixStream) -> Result<ReceivedBootstrapResponse, BootstrapError> {
    let mut buf = Vec::new();
    let (n, fds) = loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || {
            try_recv_response(stream.as_fd(), &mut buf)
                .map_err(io::Error::other)?
                .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))
        }) {
            Ok(r) => break r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                return Err(match e.into_inner().map(|b| b.downcast::<BootstrapError>()) {
                    Some(Ok(b)) => *b,
                    Some(Err(other)) => io::Error::other(other).into(),
                    None => io::Error::other("bootstrap receive failed").into(),
                })
            }
        }
    };
    buf.truncate(n);
    // A stream may deliver the frame in pieces: complete it (descriptors only
    // travel with the first piece).
    while buf.len() < BOOTSTRAP_RESPONSE_HEADER_LEN
        || buf.len() < BOOTSTRAP_RESPONSE_HEADER_LEN + u16::from_le_bytes([buf[9], buf[10]]) as usize
    {
        let mut more = [0u8; 4096];
        let k = stream.read(&mut more).await?;
        if k == 0 {
            return Err(BootstrapError::Truncated { len: buf.len() });
        }
        buf.extend_from_slice(&more[..k]);
    }
    into_response(&buf, fds)
}

/// A reserved slot with its success response ready to send.
#[derive(Debug)]
pub struct PreparedBootstrapPeer {
    /// The host's half.
    pub host_peer: HostPeer,
    /// The guest's descriptors (sent with the response, then closed here).
    pub guest_ticket: GuestSpawnTicket,
    /// The encoded success response.
    pub response_frame: Vec<u8>,
}

impl PreparedBootstrapPeer {
    /// A success response for `prepared` whose payload is its segment's path
    /// (empty for a segment without one: guests then attach by descriptor).
    pub fn with_segment_path(prepared: crate::host::PreparedPeer) -> Result<PreparedBootstrapPeer, BootstrapError> {
        let payload = prepared.segment().path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        Self::with_payload(prepared, payload.as_bytes())
    }

    /// A success response for `prepared` carrying `payload`.
    fn with_payload(
        prepared: crate::host::PreparedPeer,
        payload: &[u8],
    ) -> Result<PreparedBootstrapPeer, BootstrapError> {
        let (host_peer, guest_ticket) = prepared.into_parts();
        let response_frame = encode_response(BootstrapStatus::Success, u32::from(guest_ticket.peer_id.get()), payload)?;
        Ok(PreparedBootstrapPeer { host_peer, guest_ticket, response_frame })
    }

    /// The assigned peer id.
    pub fn peer_id(&self) -> PeerId {
        self.guest_ticket.peer_id
    }

    /// Sends the response with `[doorbell, segment, mmap control]`.
    pub fn send_success_unix(&self, control: BorrowedFd<'_>, segment: &Segment) -> Result<(), BootstrapError> {
        let fds = [self.guest_ticket.doorbell.as_fd(), segment.as_fd(), self.guest_ticket.mmap_rx.as_fd()];
        send_response_unix(control, &self.response_frame, Some(fds))
    }
}

impl HostHub {
    /// Reserves a slot and encodes a success response carrying `payload`
    /// (normally the segment path).
    pub fn prepare_bootstrap_success(&self, payload: &[u8]) -> Result<PreparedBootstrapPeer, BootstrapError> {
        PreparedBootstrapPeer::with_payload(self.prepare_peer()?, payload)
    }

    /// Encodes an error response.
    pub fn bootstrap_error_response(&self, message: &[u8]) -> Result<Vec<u8>, BootstrapError> {
        encode_response(BootstrapStatus::Error, 0, message)
    }
}

/// Host: accepts one guest on `listener`, checks its credentials against the
/// default [`WalkInPolicy`] (the host's own uid) and its session id with
/// `accept_sid`, and answers with a slot (or an error response). Returns the
/// host's link to that guest. Serves one connection, bounded by the policy's
/// deadline; [`BootstrapServer`] serves many at once.
///
/// Cancel safety: dropping it abandons this connection; a slot it had
/// reserved is released (the reservation is given back when dropped).
pub async fn serve_one(
    listener: &UnixListener,
    hub: &(impl crate::host::GuestSlots + Sync),
    accept_sid: impl Fn(&[u8]) -> bool + Send + Sync,
    options: LinkOptions,
) -> Result<ShmLink, BootstrapError> {
    let (stream, _) = listener.accept().await?;
    let policy = WalkInPolicy::default();
    let served =
        tokio::time::timeout(policy.deadline, server::serve_connection(stream, hub, &accept_sid, &policy, options))
            .await
            .unwrap_or(Err(WalkInError::Deadline(policy.deadline)));
    match served {
        Ok(w) => Ok(w.link),
        Err(WalkInError::Bootstrap(e)) => Err(e),
        Err(e) => Err(BootstrapError::Rejected(e.to_string())),
    }
}

/// Guest: connects to a host's control socket, asks for a slot with session
/// id `sid`, attaches the segment (from the descriptor, else the path in the
/// response), claims the slot and builds its link. Needs no inherited
/// descriptor and no environment variable.
///
/// Cancel safety: dropping it abandons the attempt; the host sees this guest
/// hang up and recovers the slot, as for a guest that died.
pub async fn connect(path: &Path, sid: &[u8], options: LinkOptions) -> Result<(Arc<Segment>, ShmLink), BootstrapError> {
    let mut stream = UnixStream::connect(path).await?;
    // A host that refuses us may answer and close before it reads all of the
    // request: a failed write still leaves its answer to read.
    let written = stream.write_all(&encode_request(sid)?).await;
    let r = match recv_response(&mut stream).await {
        Ok(r) => r,
        Err(e) => return Err(written.err().map_or(e, BootstrapError::Io)),
    };
    if r.status == BootstrapStatus::Error {
        return Err(BootstrapError::Rejected(String::from_utf8_lossy(&r.payload).into_owned()));
    }
    let fds = r.fds.expect("success carries descriptors (checked)");
    let peer = u8::try_from(r.peer_id).ok().and_then(PeerId::new).ok_or(BootstrapError::BadPeerId(r.peer_id))?;
    let segment = match Segment::attach_fd(fds.segment) {
        Ok(s) => s,
        Err(by_fd) => match std::str::from_utf8(&r.payload) {
            Ok(p) if !p.is_empty() => {
                Segment::attach(Path::new(p)).map_err(|e| BootstrapError::Attach { by_fd, by_path: Some(e) })?
            }
            _ => return Err(BootstrapError::Attach { by_fd, by_path: None }),
        },
    };
    let segment = Arc::new(segment);
    let tx = fds.mmap_control.as_fd().try_clone_to_owned()?;
    let ticket = GuestSpawnTicket {
        peer_id: peer,
        doorbell: shm_primitives_async::DoorbellHandle::from_fd(fds.doorbell),
        mmap_rx: fds.mmap_control,
        mmap_tx_fd: tx,
    };
    let link = crate::host::guest_link_from_ticket_with(segment.clone(), ticket, true, options)?;
    Ok((segment, link))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_round_trips_and_every_error() {
        let req = encode_request(b"abc").unwrap();
        assert_eq!(req, b"RSH0\x03\x00abc");
        assert_eq!(decode_request(&req).unwrap().sid, b"abc");
        assert!(matches!(decode_request(b"RSH0\x03"), Err(BootstrapError::Truncated { len: 5 })));
        assert!(matches!(decode_request(b"XSH0\x00\x00"), Err(BootstrapError::InvalidMagic { .. })));
        assert!(matches!(
            decode_request(b"RSH0\x03\x00ab"),
            Err(BootstrapError::LengthMismatch { expected: 9, found: 8 })
        ));
        assert!(matches!(encode_request(&vec![0; 70_000]), Err(BootstrapError::TooLong(70_000))));

        let ok = encode_response(BootstrapStatus::Success, 3, b"/p").unwrap();
        assert_eq!(ok, b"RSP0\x00\x03\x00\x00\x00\x02\x00/p");
        let r = decode_response(&ok).unwrap();
        assert_eq!((r.status, r.peer_id, r.payload), (BootstrapStatus::Success, 3, &b"/p"[..]));
        assert!(matches!(encode_response(BootstrapStatus::Error, 2, b""), Err(BootstrapError::ErrorWithPeerId(2))));
        let mut bad = encode_response(BootstrapStatus::Error, 0, b"no").unwrap();
        assert_eq!(decode_response(&bad).unwrap().status, BootstrapStatus::Error);
        bad[5] = 9;
        assert!(matches!(decode_response(&bad), Err(BootstrapError::ErrorWithPeerId(9))));
        bad[4] = 7;
        assert!(matches!(decode_response(&bad), Err(BootstrapError::UnknownStatus(7))));
        assert!(matches!(decode_response(&ok[..10]), Err(BootstrapError::Truncated { len: 10 })));
        assert!(matches!(decode_response(&ok[..12]), Err(BootstrapError::LengthMismatch { .. })));
    }

    #[tokio::test]
    async fn wrong_descriptor_counts_are_refused_and_closed() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let f = tempfile::tempfile().unwrap();
        let frame = encode_response(BootstrapStatus::Success, 1, b"").unwrap();
        // Refused before sending: success without descriptors, error with them.
        assert!(matches!(send_response_unix(a.as_fd(), &frame, None), Err(BootstrapError::InvalidFdCount { .. })));
        let err = encode_response(BootstrapStatus::Error, 0, b"x").unwrap();
        let three = [f.as_fd(), f.as_fd(), f.as_fd()];
        assert!(matches!(send_response_unix(a.as_fd(), &err, Some(three)), Err(BootstrapError::InvalidFdCount { .. })));
        // A peer that sends two descriptors anyway gets a typed error.
        send_with_fds(a.as_fd(), &frame, &[f.as_raw_fd(), f.as_raw_fd()]).unwrap();
        match recv_response(&mut b).await {
            Err(BootstrapError::InvalidFdCount { status: BootstrapStatus::Success, count: 2 }) => {}
            other => panic!("{other:?}"),
        }
    }
}
