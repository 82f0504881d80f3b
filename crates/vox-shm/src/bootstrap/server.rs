//! The host's side of walk-in bootstrap: who may walk in, and serving many
//! guests at once.
//!
//! [`BootstrapServer`] listens on a Unix socket and serves every connection
//! in a task of its own, each bounded by a deadline, so a client that
//! connects and stays silent delays nobody. A request is read by its framing
//! (header, then exactly the session id it announces), however the client
//! splits its writes. Before anything of the segment is sent, the connecting
//! process's credentials (`SO_PEERCRED`, read by the kernel at `connect`)
//! are checked against a [`WalkInPolicy`]; a refused process gets an error
//! response and no descriptor. The host learns each guest's pid and uid
//! ([`WalkIn`]).

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shm_primitives::PeerId;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::{
    decode_request, encode_response, send_response_unix, BootstrapError, BootstrapStatus, PreparedBootstrapPeer,
    BOOTSTRAP_REQUEST_HEADER_LEN, MAX_REQUEST_LEN,
};
use crate::host::GuestSlots;
use crate::shm_link::{LinkOptions, ShmLink};

/// The host application's session-id check, shared by the connection tasks.
type SidCheck = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// Who may walk in, and how long one connection may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkInPolicy {
    /// User ids allowed to walk in; `None` allows any. Default: the host's
    /// own effective uid only.
    pub allowed_uids: Option<Vec<u32>>,
    /// Most time from `accept` to the response (a silent or slow client is
    /// dropped after it). Default 2 s.
    pub deadline: Duration,
}

impl Default for WalkInPolicy {
    fn default() -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        WalkInPolicy { allowed_uids: Some(vec![me]), deadline: Duration::from_secs(2) }
    }
}

impl WalkInPolicy {
    /// Allows any process that can connect (the socket file is then made
    /// connectable by every user).
    pub fn anyone() -> Self {
        WalkInPolicy { allowed_uids: None, ..WalkInPolicy::default() }
    }

    /// Allows the host's own uid and these.
    pub fn also_uids(uids: &[u32]) -> Self {
        let mut p = WalkInPolicy::default();
        p.allowed_uids.get_or_insert_with(Vec::new).extend_from_slice(uids);
        p
    }

    fn allows(&self, uid: u32) -> bool {
        self.allowed_uids.as_ref().is_none_or(|u| u.contains(&uid))
    }

    /// Only the host's own uid: the socket file can be owner-only.
    fn owner_only(&self) -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        self.allowed_uids.as_ref().is_some_and(|u| u.iter().all(|&x| x == me))
    }
}

/// A guest that walked in: the host's link to it, and who it is.
#[derive(Debug)]
pub struct WalkIn {
    /// The host's link to the guest.
    pub link: ShmLink,
    /// The slot it was given.
    pub peer_id: PeerId,
    /// The connecting process's id, as the kernel saw it at `connect`.
    pub pid: Option<i32>,
    /// Its user id.
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
}

/// Why one walk-in did not happen. Other connections are not affected.
#[derive(Debug, thiserror::Error)]
pub enum WalkInError {
    /// The connecting process's uid is not allowed by the policy.
    #[error("process {pid:?} of uid {uid} may not walk in")]
    NotAllowed {
        /// Its uid.
        uid: u32,
        /// Its pid.
        pid: Option<i32>,
    },
    /// The connection took longer than the policy's deadline.
    #[error("walk-in did not complete within {0:?}")]
    Deadline(Duration),
    /// The exchange failed or was refused (bad request, wrong session id, no
    /// free slot, I/O).
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
}

impl WalkInError {
    /// The `io::ErrorKind` it converts to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            WalkInError::NotAllowed { .. } => io::ErrorKind::PermissionDenied,
            WalkInError::Deadline(_) => io::ErrorKind::TimedOut,
            WalkInError::Bootstrap(e) => e.kind(),
        }
    }
}

crate::io_error::into_io_error!(WalkInError);

/// Serves walk-in guests on a Unix socket, many at a time.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use vox_shm::bootstrap::{self, BootstrapServer, WalkInPolicy};
/// use vox_shm::{Features, HostHub, LinkOptions, Segment, SegmentConfig};
///
/// let hub = HostHub::new(Arc::new(Segment::create_anonymous(SegmentConfig::default(), Features::ALL)?));
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("bootstrap.sock");
/// let accept = |sid: &[u8]| sid == b"my-session";
/// let mut server = BootstrapServer::bind(&path, hub, accept, WalkInPolicy::default(), LinkOptions::default())?;
/// // A guest (another process, normally) walks in with the path and session id.
/// let guest = tokio::spawn(async move { bootstrap::connect(&path, b"my-session", LinkOptions::default()).await });
/// match server.accept().await.expect("serving") {
///     Ok(w) => println!("guest {} (pid {:?}, uid {}) walked in", w.peer_id, w.pid, w.uid),
///     Err(e) => eprintln!("refused: {e}"),
/// }
/// guest.await??;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BootstrapServer {
    results: mpsc::Receiver<Result<WalkIn, WalkInError>>,
    acceptor: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl BootstrapServer {
    /// Binds `path` (replacing nothing: it must not exist) and starts serving
    /// on the current runtime. The socket file is mode 0600 unless the policy
    /// allows other uids (then 0666: the credential check is the gate).
    pub fn bind(
        path: &Path,
        hub: impl GuestSlots + Clone + Send + Sync + 'static,
        accept_sid: impl Fn(&[u8]) -> bool + Send + Sync + 'static,
        policy: WalkInPolicy,
        options: LinkOptions,
    ) -> io::Result<BootstrapServer> {
        let listener = bind_with_mode(path, if policy.owner_only() { 0o600 } else { 0o666 })?;
        let (tx, results) = mpsc::channel(64);
        let accept_sid: SidCheck = Arc::new(accept_sid);
        let acceptor = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (hub, accept_sid, policy, tx) = (hub.clone(), accept_sid.clone(), policy.clone(), tx.clone());
                tokio::spawn(async move {
                    let deadline = policy.deadline;
                    let served =
                        tokio::time::timeout(deadline, serve_connection(stream, &hub, &*accept_sid, &policy, options))
                            .await
                            .unwrap_or(Err(WalkInError::Deadline(deadline)));
                    let _ = tx.send(served).await;
                });
            }
        });
        Ok(BootstrapServer { results, acceptor, path: path.to_owned() })
    }

    /// The next walk-in, or the reason one was refused. `None` only if the
    /// server stopped.
    ///
    /// Cancel safety: cancel-safe. Walk-ins are completed in the background
    /// and queued; dropping this future leaves the next one queued.
    pub async fn accept(&mut self) -> Option<Result<WalkIn, WalkInError>> {
        self.results.recv().await
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BootstrapServer {
    fn drop(&mut self) {
        self.acceptor.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds a listener whose socket file has `mode` from the moment it has its
/// name: bound under a temporary name in a private directory beside `path`,
/// given its mode, then renamed into place (so no other user can connect in
/// between, whatever the umask).
fn bind_with_mode(path: &Path, mode: u32) -> io::Result<UnixListener> {
    if path.symlink_metadata().is_ok() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} already exists", path.display())));
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let private = parent.join(format!(".vox-shm-bind-{}-{:x}", std::process::id(), nanos()));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("s");
    let result = (|| {
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    result
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// One walk-in: credentials, the framed request, the session id, then a slot.
pub(super) async fn serve_connection(
    mut stream: UnixStream,
    hub: &(impl GuestSlots + ?Sized),
    accept_sid: &(dyn Fn(&[u8]) -> bool + Send + Sync),
    policy: &WalkInPolicy,
    options: LinkOptions,
) -> Result<WalkIn, WalkInError> {
    let cred = stream.peer_cred().map_err(BootstrapError::Io)?;
    let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
    // The request is read first, so a refused client that is still writing
    // it reads the refusal instead of a broken pipe.
    let request = read_request(&mut stream).await;
    if !policy.allows(uid) {
        refuse(&stream, &format!("uid {uid} may not walk in")).await?;
        return Err(WalkInError::NotAllowed { uid, pid });
    }
    let sid_ok = request.as_ref().is_ok_and(|sid| accept_sid(sid));
    if !sid_ok {
        let why = match request {
            Ok(_) => "session id not accepted".to_string(),
            Err(e) => format!("bad request: {e}"),
        };
        refuse(&stream, &why).await?;
        return Err(BootstrapError::Rejected(why).into());
    }
    let prepared =
        match hub.prepare_peer().map_err(BootstrapError::from).and_then(PreparedBootstrapPeer::with_segment_path) {
            Ok(p) => p,
            Err(e) => {
                refuse(&stream, &format!("no slot: {e}")).await?;
                return Err(e.into());
            }
        };
    stream.writable().await.map_err(BootstrapError::Io)?;
    prepared.send_success_unix(stream.as_fd(), prepared.host_peer.segment())?;
    let PreparedBootstrapPeer { host_peer, guest_ticket, .. } = prepared;
    let peer_id = guest_ticket.peer_id;
    // The guest has its own copies now; ours close here.
    drop(guest_ticket);
    let link = host_peer.into_link_with(options).map_err(|e| BootstrapError::Host(e.into()))?;
    Ok(WalkIn { link, peer_id, pid, uid, gid })
}

async fn refuse(stream: &UnixStream, why: &str) -> Result<(), BootstrapError> {
    let frame = encode_response(BootstrapStatus::Error, 0, why.as_bytes())?;
    stream.writable().await?;
    send_response_unix(stream.as_fd(), &frame, None)
}

/// Reads one request by its framing: the 6-byte header, then exactly the
/// session id it announces (at most [`MAX_REQUEST_LEN`] bytes in all).
/// Returns the session id.
pub(super) async fn read_request(stream: &mut UnixStream) -> Result<Vec<u8>, BootstrapError> {
    let mut frame = vec![0u8; BOOTSTRAP_REQUEST_HEADER_LEN];
    read_full(stream, &mut frame).await?;
    let magic: [u8; 4] = frame[..4].try_into().expect("4 bytes");
    if magic != super::BOOTSTRAP_REQUEST_MAGIC {
        return Err(BootstrapError::InvalidMagic { found: magic });
    }
    let sid_len = u16::from_le_bytes([frame[4], frame[5]]) as usize;
    let total = BOOTSTRAP_REQUEST_HEADER_LEN + sid_len;
    if total > MAX_REQUEST_LEN {
        return Err(BootstrapError::TooLong(sid_len));
    }
    frame.resize(total, 0);
    read_full(stream, &mut frame[BOOTSTRAP_REQUEST_HEADER_LEN..]).await?;
    Ok(decode_request(&frame)?.sid.to_vec())
}

async fn read_full(stream: &mut UnixStream, buf: &mut [u8]) -> Result<(), BootstrapError> {
    let mut got = 0;
    while got < buf.len() {
        let n = stream.read(&mut buf[got..]).await?;
        if n == 0 {
            return Err(BootstrapError::Truncated { len: got });
        }
        got += n;
    }
    Ok(())
}
