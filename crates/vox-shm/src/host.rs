//! Host and guest orchestration: reserving a guest slot, creating its doorbell
//! and control channel, handing the guest its ends, and building both links.
//!
//! Every descriptor is an owned value and close-on-exec. [`spawn_guest`]
//! makes the guest's ends inheritable *only in the child it spawns* (in a
//! `pre_exec` hook), then closes the host's copies of them, so the host sees
//! the guest's death as end-of-file on the doorbell at once and no later child
//! can keep a dead guest's doorbell open.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use vox_shm::host::{spawn_guest, HostHub};
//! use vox_shm::{FileCleanup, Segment, SegmentConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let seg = Segment::create(&dir.path().join("hub.shm"), SegmentConfig::default(), FileCleanup::UnlinkOnDrop)?;
//! let hub = HostHub::new(Arc::new(seg));
//! // A real guest adopts its descriptors with `GuestArgs::connect_from_env`;
//! // `true` exits at once, and the host's link sees it hang up.
//! let (link, mut child) = spawn_guest(&hub, std::process::Command::new("true"))?;
//! assert!(child.wait()?.success());
//! # drop(link);
//! # Ok(()) }
//! ```

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use shm_primitives::peer::Side;
use shm_primitives::PeerId;
use shm_primitives_async::control::{self, MMAP_CONTROL_ARG_NAME};
use shm_primitives_async::doorbell::{self, DoorbellHandle};
use shm_primitives_async::fd;

use crate::segment::{AttachError, CreateError, PeerError, Segment};
use crate::shm_link::{LinkError, LinkOptions, ShmLink};

/// Argument naming the segment file (0.3.1 guests attach by path).
pub const HUB_PATH_ARG: &str = "--hub-path";
/// Argument naming an inherited segment descriptor (ours; lets guests attach to
/// segments that have no path).
pub const SEGMENT_FD_ARG: &str = "--segment-fd";
/// Argument naming the guest's peer id.
pub const PEER_ID_ARG: &str = "--peer-id";
/// Environment variable naming the guest's inherited mapping-send descriptor.
pub const MMAP_TX_FD_ENV: &str = "SHM_MMAP_TX_FD";

/// Hands out guest slots: all on one shared segment ([`HostHub`]), or each
/// on a segment of its own ([`IsolatedHub`](crate::isolation::IsolatedHub)).
/// Spawning ([`spawn_guest`]) and walk-in
/// ([`BootstrapServer`](crate::bootstrap::BootstrapServer)) serve either.
pub trait GuestSlots {
    /// Reserves a slot for one guest and creates its descriptors.
    fn prepare_peer(&self) -> Result<PreparedPeer, HostError>;
}

impl GuestSlots for HostHub {
    fn prepare_peer(&self) -> Result<PreparedPeer, HostError> {
        HostHub::prepare_peer(self)
    }
}

/// Creates guest slots on a segment.
#[derive(Debug, Clone)]
pub struct HostHub {
    segment: Arc<Segment>,
}

impl HostHub {
    /// A hub over a segment this process created.
    pub fn new(segment: Arc<Segment>) -> Self {
        HostHub { segment }
    }

    /// The segment.
    pub fn segment(&self) -> &Arc<Segment> {
        &self.segment
    }

    /// Reserves a guest slot and creates the descriptors for it. Slots of
    /// guests that left and are no longer served are recovered first.
    pub fn prepare_peer(&self) -> Result<PreparedPeer, HostError> {
        self.segment.reclaim_departed_peers();
        let peer_id =
            self.segment.reserve_peer().ok_or(HostError::NoFreePeerSlots { max_guests: self.segment.max_guests() })?;
        let made = (|| {
            let (host_bell, guest_bell) = doorbell::create_pair()?;
            let (host_ctl, guest_ctl) = control::create_pair()?;
            let host_ctl_rx = host_ctl.try_clone()?;
            let guest_ctl_tx = guest_ctl.try_clone()?;
            Ok::<_, io::Error>((host_bell, guest_bell, host_ctl, guest_ctl, host_ctl_rx, guest_ctl_tx))
        })();
        let (host_bell, guest_bell, host_ctl, guest_ctl, host_ctl_rx, guest_ctl_tx) = match made {
            Ok(v) => v,
            Err(e) => {
                let _ = self.segment.release_reserved_peer(peer_id);
                return Err(HostError::Sockets(e));
            }
        };
        Ok(PreparedPeer {
            host: HostPeer { segment: self.segment.clone(), peer_id, parts: Some((host_bell, host_ctl, host_ctl_rx)) },
            ticket: GuestSpawnTicket { peer_id, doorbell: guest_bell, mmap_rx: guest_ctl, mmap_tx_fd: guest_ctl_tx },
        })
    }
}

/// A reserved slot: the host's half and the guest's ticket.
#[derive(Debug)]
pub struct PreparedPeer {
    host: HostPeer,
    ticket: GuestSpawnTicket,
}

impl PreparedPeer {
    /// The guest's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.host.peer_id
    }

    /// The segment the slot is on (what the guest must attach).
    pub fn segment(&self) -> &Arc<Segment> {
        &self.host.segment
    }

    /// Splits into the host's half and the guest's ticket.
    pub fn into_parts(self) -> (HostPeer, GuestSpawnTicket) {
        (self.host, self.ticket)
    }
}

/// The host's half of a reserved slot. Dropping it unused gives the
/// reservation back.
#[derive(Debug)]
pub struct HostPeer {
    segment: Arc<Segment>,
    peer_id: PeerId,
    parts: Option<(DoorbellHandle, OwnedFd, OwnedFd)>,
}

impl HostPeer {
    /// The guest's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The segment the slot is on.
    pub fn segment(&self) -> &Arc<Segment> {
        &self.segment
    }

    /// Builds the host's link (inside a tokio runtime).
    pub fn into_link(self) -> Result<ShmLink, LinkError> {
        self.into_link_with(LinkOptions::default())
    }

    /// Builds the host's link with options.
    pub fn into_link_with(mut self, options: LinkOptions) -> Result<ShmLink, LinkError> {
        let (bell, ctl_tx, ctl_rx) = self.parts.take().expect("parts are taken once");
        ShmLink::new(Side::Host, self.segment.clone(), self.peer_id, bell, ctl_tx, ctl_rx, options)
    }

    /// Gives the reservation back (the guest will not come).
    pub fn release_reservation(self) {
        // Drop does it.
    }
}

impl Drop for HostPeer {
    fn drop(&mut self) {
        if self.parts.is_some() {
            let _ = self.segment.release_reserved_peer(self.peer_id);
        }
    }
}

/// What a guest needs: its peer id and its ends of the doorbell and control
/// channel. Owns its descriptors; dropping it closes them.
#[derive(Debug)]
pub struct GuestSpawnTicket {
    /// The reserved peer id.
    pub peer_id: PeerId,
    /// The guest's doorbell end.
    pub doorbell: DoorbellHandle,
    /// The guest's control-channel end (receives the host's announcements).
    pub mmap_rx: OwnedFd,
    /// A duplicate of `mmap_rx`, for sending (the channel is bidirectional).
    pub mmap_tx_fd: OwnedFd,
}

impl GuestSpawnTicket {
    /// Decimal descriptor number of the doorbell end.
    pub fn doorbell_arg(&self) -> String {
        self.doorbell.to_arg()
    }
    /// Decimal descriptor number of the control end.
    pub fn mmap_rx_arg(&self) -> String {
        self.mmap_rx.as_raw_fd().to_string()
    }
    /// Decimal descriptor number of the sending duplicate.
    pub fn mmap_tx_arg(&self) -> String {
        self.mmap_tx_fd.as_raw_fd().to_string()
    }
}

/// Reserves a slot, starts `cmd` as its guest and returns the host's link and
/// the child.
///
/// The child receives `--hub-path=PATH` (if the segment has one),
/// `--segment-fd=N`, `--peer-id=N`, `--doorbell-fd=N`, `--mmap-control-fd=N`
/// and `SHM_MMAP_TX_FD=N` — the arguments of vox-shm 0.3.1 guests plus the
/// segment descriptor. Only this child inherits those descriptors. The guest
/// side turns them into a link with [`GuestArgs`].
pub fn spawn_guest(hub: &impl GuestSlots, cmd: Command) -> Result<(ShmLink, Child), HostError> {
    spawn_guest_with(hub, cmd, LinkOptions::default())
}

/// [`spawn_guest`] with link options for the host's end.
pub fn spawn_guest_with(
    hub: &impl GuestSlots,
    mut cmd: Command,
    options: LinkOptions,
) -> Result<(ShmLink, Child), HostError> {
    let (link, theirs) = prepare_spawn(hub, &mut cmd, options)?;
    let child = cmd.spawn().map_err(HostError::Spawn)?;
    // The parent's copies of the guest's ends close here.
    drop(theirs);
    Ok((link, child))
}

/// [`spawn_guest`], with the child as a [`tokio::process::Child`], so a host
/// can `.wait().await` its guests (or `select!` on their exit) without
/// blocking its runtime. Must be called inside a tokio runtime.
///
/// Cancel safety: not async; the returned child is killed when dropped only
/// if `cmd` asked for it (`kill_on_drop`), as with tokio's own `Command`.
pub fn spawn_guest_async(
    hub: &impl GuestSlots,
    cmd: Command,
    options: LinkOptions,
) -> Result<(ShmLink, tokio::process::Child), HostError> {
    let mut cmd = tokio::process::Command::from(cmd);
    let (link, theirs) = prepare_spawn(hub, cmd.as_std_mut(), options)?;
    let child = cmd.spawn().map_err(HostError::Spawn)?;
    drop(theirs);
    Ok((link, child))
}

/// Reserves a slot, adds the guest's arguments to `cmd` and makes its
/// descriptors inheritable by the child `cmd` starts, and builds the host's
/// link. Returns the link and the guest's ends, which the caller keeps open
/// until it has spawned, then drops.
fn prepare_spawn(
    hub: &impl GuestSlots,
    cmd: &mut Command,
    options: LinkOptions,
) -> Result<(ShmLink, (GuestSpawnTicket, OwnedFd)), HostError> {
    let (host, ticket) = hub.prepare_peer()?.into_parts();
    let segment_fd = host.segment().try_clone_fd().map_err(HostError::Sockets)?;
    let inherit = pass_to_guest(cmd, host.segment(), &ticket, &segment_fd);
    // SAFETY: the hook runs in the forked child before exec and only calls
    // `fcntl` (async-signal-safe, no allocation) on descriptor numbers that are
    // open in the parent at fork time (the caller keeps the ticket and
    // `segment_fd` until after `spawn`). Clearing close-on-exec there affects
    // only this child.
    unsafe {
        cmd.pre_exec(move || {
            for fd in inherit {
                fd::clear_cloexec_raw(fd)?;
            }
            Ok(())
        });
    }
    Ok((host.into_link_with(options)?, (ticket, segment_fd)))
}

/// Adds the guest's arguments and environment to `cmd`; returns the
/// descriptors the child must inherit.
fn pass_to_guest(cmd: &mut Command, segment: &Segment, ticket: &GuestSpawnTicket, segment_fd: &OwnedFd) -> [RawFd; 4] {
    if let Some(path) = segment.path() {
        cmd.arg(format!("{HUB_PATH_ARG}={}", path.display()));
    }
    cmd.arg(format!("{SEGMENT_FD_ARG}={}", segment_fd.as_raw_fd()))
        .arg(format!("{PEER_ID_ARG}={}", ticket.peer_id.get()))
        .arg(format!("{}={}", DoorbellHandle::ARG_NAME, ticket.doorbell_arg()))
        .arg(format!("{MMAP_CONTROL_ARG_NAME}={}", ticket.mmap_rx_arg()))
        .env(MMAP_TX_FD_ENV, ticket.mmap_tx_arg());
    [segment_fd.as_raw_fd(), ticket.doorbell.as_raw_fd(), ticket.mmap_rx.as_raw_fd(), ticket.mmap_tx_fd.as_raw_fd()]
}

/// Builds a guest's link from its ticket. With `claim_reserved` the guest
/// first claims the slot the host reserved (features published before the
/// claim, as spec C0 asks).
pub fn guest_link_from_ticket(
    segment: Arc<Segment>,
    ticket: GuestSpawnTicket,
    claim_reserved: bool,
) -> Result<ShmLink, HostError> {
    guest_link_from_ticket_with(segment, ticket, claim_reserved, LinkOptions::default())
}

/// [`guest_link_from_ticket`] with link options.
pub fn guest_link_from_ticket_with(
    segment: Arc<Segment>,
    ticket: GuestSpawnTicket,
    claim_reserved: bool,
    options: LinkOptions,
) -> Result<ShmLink, HostError> {
    let GuestSpawnTicket { peer_id, doorbell, mmap_rx, mmap_tx_fd } = ticket;
    guest_link_from_parts(segment, peer_id, doorbell, mmap_tx_fd, mmap_rx, claim_reserved, options)
}

fn guest_link_from_parts(
    segment: Arc<Segment>,
    peer: PeerId,
    bell: DoorbellHandle,
    ctl_tx: OwnedFd,
    ctl_rx: OwnedFd,
    claim_reserved: bool,
    options: LinkOptions,
) -> Result<ShmLink, HostError> {
    if claim_reserved {
        let entry = segment
            .peer_entry(peer)
            .ok_or(PeerError::NoSuchPeer { peer: peer.get(), max_guests: segment.max_guests() })?;
        crate::shm_link::publish_guest_words(entry, options.features);
        segment.claim_peer(peer)?;
    }
    Ok(ShmLink::new(Side::Guest, segment, peer, bell, ctl_tx, ctl_rx, options)?)
}

/// Builds a guest's link from inherited descriptor numbers (vox-shm 0.3.1's
/// entry point).
///
/// # Safety
/// The three descriptors must be open, inherited for this link, and owned by
/// nothing else in the process; the link takes ownership.
pub unsafe fn guest_link_from_raw(
    segment: Arc<Segment>,
    peer_id: PeerId,
    doorbell_fd: RawFd,
    mmap_rx_fd: RawFd,
    mmap_tx_fd: RawFd,
    claim_reserved: bool,
) -> Result<ShmLink, HostError> {
    // SAFETY: forwarded to the caller's contract.
    let (bell, rx, tx) = unsafe {
        (
            DoorbellHandle::from_fd(fd::adopt_fd(doorbell_fd, Some(libc::SOCK_STREAM)).map_err(HostError::Adopt)?),
            control::adopt(mmap_rx_fd).map_err(HostError::Adopt)?,
            control::adopt(mmap_tx_fd).map_err(HostError::Adopt)?,
        )
    };
    guest_link_from_parts(segment, peer_id, bell, tx, rx, claim_reserved, LinkOptions::default())
}

/// A guest's command-line arguments, as [`spawn_guest`] passes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestArgs {
    /// `--hub-path`.
    pub hub_path: Option<PathBuf>,
    /// `--segment-fd`.
    pub segment_fd: Option<RawFd>,
    /// `--peer-id`.
    pub peer_id: PeerId,
    /// `--doorbell-fd`.
    pub doorbell_fd: RawFd,
    /// `--mmap-control-fd`.
    pub mmap_control_fd: RawFd,
    /// `SHM_MMAP_TX_FD` (otherwise the control descriptor is duplicated).
    pub mmap_tx_fd: Option<RawFd>,
}

static GUEST_ARGS_ADOPTED: AtomicBool = AtomicBool::new(false);

fn fd_value(name: &'static str, value: &str) -> Result<RawFd, GuestArgError> {
    fd::parse_fd_arg(value).map_err(|_| GuestArgError::BadValue {
        name,
        value: value.to_string(),
        problem: "not a descriptor number",
    })
}

impl GuestArgs {
    /// Picks the guest arguments out of `args` (`--name=value` or `--name
    /// value`); returns them and the arguments that are not ours.
    pub fn parse<I: IntoIterator<Item = String>>(
        args: I,
        mmap_tx_env: Option<String>,
    ) -> Result<(GuestArgs, Vec<String>), GuestArgError> {
        let mut rest = Vec::new();
        let (mut hub, mut seg, mut peer, mut bell, mut ctl) = (None, None, None, None, None);
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let (name, inline_value) = match a.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (a.clone(), None),
            };
            let known = [HUB_PATH_ARG, SEGMENT_FD_ARG, PEER_ID_ARG, DoorbellHandle::ARG_NAME, MMAP_CONTROL_ARG_NAME];
            let Some(&name) = known.iter().find(|k| **k == name) else {
                rest.push(a);
                continue;
            };
            let value = match inline_value {
                Some(v) => v,
                None => it.next().ok_or(GuestArgError::NoValue { name })?,
            };
            match name {
                HUB_PATH_ARG => hub = Some(PathBuf::from(value)),
                SEGMENT_FD_ARG => seg = Some(fd_value(name, &value)?),
                PEER_ID_ARG => {
                    let id = value.parse().ok().and_then(PeerId::new);
                    peer =
                        Some(id.ok_or(GuestArgError::BadValue { name, value, problem: "not a peer id in 1..=255" })?);
                }
                n if n == DoorbellHandle::ARG_NAME => bell = Some(fd_value(name, &value)?),
                _ => ctl = Some(fd_value(name, &value)?),
            }
        }
        if hub.is_none() && seg.is_none() {
            return Err(GuestArgError::Missing { name: "--hub-path or --segment-fd" });
        }
        let args = GuestArgs {
            hub_path: hub,
            segment_fd: seg,
            peer_id: peer.ok_or(GuestArgError::Missing { name: PEER_ID_ARG })?,
            doorbell_fd: bell.ok_or(GuestArgError::Missing { name: DoorbellHandle::ARG_NAME })?,
            mmap_control_fd: ctl.ok_or(GuestArgError::Missing { name: MMAP_CONTROL_ARG_NAME })?,
            mmap_tx_fd: mmap_tx_env.map(|v| fd_value(MMAP_TX_FD_ENV, &v)).transpose()?,
        };
        Ok((args, rest))
    }

    /// Parses this process's own arguments and environment.
    pub fn from_env() -> Result<(GuestArgs, Vec<String>), GuestArgError> {
        Self::parse(std::env::args().skip(1), std::env::var(MMAP_TX_FD_ENV).ok())
    }

    /// The guest's link from this process's own arguments and environment,
    /// exactly as [`spawn_guest`] passed them: the common guest path.
    ///
    /// It is safe where [`GuestArgs::connect`] is not, because it checks
    /// everything it can before it takes a descriptor: each named descriptor
    /// must be open, not a standard stream, and a socket of the right type,
    /// and the segment must validate (attached from a duplicate first); a
    /// descriptor that fails a check is left as it was. It takes them at most
    /// once per process ([`HostError::AlreadyAdopted`] after). What no check
    /// can see is another owner inside this process of one of those very
    /// descriptors: safe code cannot make one, since that needs an `unsafe`
    /// `from_raw_fd` on a number it did not open (the descriptors were open
    /// when the process started, so nothing it opened since has their
    /// numbers). Must run inside a tokio runtime.
    pub fn connect_from_env(options: LinkOptions) -> Result<(Arc<Segment>, ShmLink), HostError> {
        let (args, _) = GuestArgs::from_env()?;
        // SAFETY: see above; `connect` checks before it adopts.
        unsafe { args.connect(options) }
    }

    /// Every descriptor is open, not a standard stream, and of its type.
    fn check_inherited(&self) -> Result<(), HostError> {
        type Check = fn(RawFd) -> io::Result<()>;
        let named: [(&'static str, Option<RawFd>, Check); 4] = [
            (SEGMENT_FD_ARG, self.segment_fd, |fd| fd::check_inherited(fd, None)),
            (DoorbellHandle::ARG_NAME, Some(self.doorbell_fd), |fd| fd::check_inherited(fd, Some(libc::SOCK_STREAM))),
            (MMAP_CONTROL_ARG_NAME, Some(self.mmap_control_fd), control::check_inherited),
            (MMAP_TX_FD_ENV, self.mmap_tx_fd, control::check_inherited),
        ];
        for (name, fd, check) in named {
            let Some(fd) = fd else { continue };
            if (0..=2).contains(&fd) {
                let problem = "a standard stream, not an inherited descriptor";
                return Err(GuestArgError::BadValue { name, value: fd.to_string(), problem }.into());
            }
            check(fd).map_err(HostError::Adopt)?;
        }
        Ok(())
    }

    /// Attaches the segment, claims the slot and builds the guest's link.
    /// Succeeds at most once per process (the inherited descriptors can only
    /// be adopted once). Must run inside a tokio runtime. Every descriptor
    /// is checked before any is taken (see [`GuestArgs::connect_from_env`]).
    ///
    /// # Safety
    /// The descriptor numbers must name descriptors inherited for this guest
    /// that nothing else in the process owns (true for the arguments
    /// [`spawn_guest`] passes, read at start-up).
    pub unsafe fn connect(&self, options: LinkOptions) -> Result<(Arc<Segment>, ShmLink), HostError> {
        self.check_inherited()?;
        let segment = match (self.segment_fd, &self.hub_path) {
            // From a duplicate first: a descriptor that is not a segment is
            // left as it was.
            (Some(n), _) => {
                // SAFETY: open (checked); the borrow ends with the duplicate.
                let dup = unsafe { BorrowedFd::borrow_raw(n) }.try_clone_to_owned().map_err(HostError::Adopt)?;
                Segment::attach_fd(dup)?
            }
            (None, Some(p)) => Segment::attach(p)?,
            (None, None) => return Err(GuestArgError::Missing { name: "--hub-path or --segment-fd" }.into()),
        };
        if GUEST_ARGS_ADOPTED.swap(true, Ordering::AcqRel) {
            return Err(HostError::AlreadyAdopted);
        }
        if let Some(n) = self.segment_fd {
            // SAFETY: the caller's contract; ours now, and the duplicate maps
            // the segment, so this copy closes.
            drop(unsafe { fd::adopt_fd(n, None) }.map_err(HostError::Adopt)?);
        }
        let segment = Arc::new(segment);
        // SAFETY: as above.
        let bell = unsafe { fd::adopt_fd(self.doorbell_fd, Some(libc::SOCK_STREAM)) }.map_err(HostError::Adopt)?;
        let bell = DoorbellHandle::from_fd(bell);
        // SAFETY: as above.
        let rx = unsafe { control::adopt(self.mmap_control_fd) }.map_err(HostError::Adopt)?;
        let tx = match self.mmap_tx_fd {
            // SAFETY: as above.
            Some(n) => unsafe { control::adopt(n) }.map_err(HostError::Adopt)?,
            // The channel is bidirectional: a duplicate of the receiving end
            // sends (spec B10), no inherited descriptor needed.
            None => rx.as_fd().try_clone_to_owned().map_err(HostError::Adopt)?,
        };
        let link = guest_link_from_parts(segment.clone(), self.peer_id, bell, tx, rx, true, options)?;
        Ok((segment, link))
    }
}

/// Why a guest's command-line arguments could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestArgError {
    /// `--name` was last, with no value after it.
    #[error("{name} needs a value")]
    NoValue {
        /// The argument.
        name: &'static str,
    },
    /// A required argument is absent.
    #[error("missing {name}")]
    Missing {
        /// The argument (or the alternatives).
        name: &'static str,
    },
    /// An argument's value is malformed.
    #[error("bad {name} value {value:?}: {problem}")]
    BadValue {
        /// The argument.
        name: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Why setting up a guest failed, on either side: reserving its slot,
/// creating or adopting its descriptors, starting it, or building its link.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Every guest slot of the segment is taken (guests that left are
    /// recovered first).
    #[error("no free SHM peer slots (all {max_guests} are taken)")]
    NoFreePeerSlots {
        /// The segment's guest slots.
        max_guests: u8,
    },
    /// The guest's doorbell or control sockets could not be created.
    #[error("cannot create the guest's sockets: {0}")]
    Sockets(#[source] io::Error),
    /// The guest process could not be started.
    #[error("cannot start the guest: {0}")]
    Spawn(#[source] io::Error),
    /// An inherited descriptor is not what it should be (closed, or not a
    /// socket of the right type).
    #[error("cannot adopt an inherited descriptor: {0}")]
    Adopt(#[source] io::Error),
    /// The guest's arguments are malformed.
    #[error(transparent)]
    Args(#[from] GuestArgError),
    /// The inherited descriptors were already adopted by this process: a
    /// guest connects once.
    #[error("guest descriptors were already adopted by this process")]
    AlreadyAdopted,
    /// The segment could not be attached.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// A segment could not be created.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// The peer slot refused the operation (claimed already, say).
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The link could not be built.
    #[error(transparent)]
    Link(#[from] LinkError),
}

impl HostError {
    /// The `io::ErrorKind` it converts to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            HostError::NoFreePeerSlots { .. } => io::ErrorKind::ResourceBusy,
            HostError::Sockets(io) | HostError::Spawn(io) | HostError::Adopt(io) => io.kind(),
            HostError::Args(_) => io::ErrorKind::InvalidInput,
            HostError::AlreadyAdopted => io::ErrorKind::AlreadyExists,
            HostError::Attach(e) => e.kind(),
            HostError::Create(e) => e.kind(),
            HostError::Peer(e) => e.kind(),
            HostError::Link(e) => e.kind(),
        }
    }
}

crate::io_error::into_io_error!(HostError);

/// Options for [`ShmHost::add_peer`] (none yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddPeerOptions;

/// A host serving many guests on one segment.
#[derive(Debug, Clone)]
pub struct ShmHost {
    hub: HostHub,
}

/// vox-shm 0.3.1's name for [`ShmHost`].
pub type MultiPeerHostDriver = ShmHost;

impl ShmHost {
    /// A host over a segment this process created.
    pub fn new(segment: Arc<Segment>) -> Self {
        ShmHost { hub: HostHub::new(segment) }
    }

    /// The segment.
    pub fn segment(&self) -> &Arc<Segment> {
        self.hub.segment()
    }

    /// Reserves a slot for a new guest.
    pub fn add_peer(&self, _opts: AddPeerOptions) -> Result<PreparedPeer, HostError> {
        self.hub.prepare_peer()
    }

    /// Spawns `cmd` as a new guest (see [`spawn_guest`]).
    pub fn spawn_guest(&self, cmd: Command) -> Result<(ShmLink, Child), HostError> {
        spawn_guest(&self.hub, cmd)
    }
}

/// A host link and a guest link over real descriptors, in this process (for
/// tests and examples). Must run inside a tokio runtime.
///
/// Cancel safety: it never waits, so it completes on its first poll.
pub async fn create_test_link_pair(segment: Arc<Segment>) -> Result<(ShmLink, ShmLink), HostError> {
    create_test_link_pair_with(segment, LinkOptions::default(), LinkOptions::default()).await
}

/// [`create_test_link_pair`] with options for each end.
pub async fn create_test_link_pair_with(
    segment: Arc<Segment>,
    host: LinkOptions,
    guest: LinkOptions,
) -> Result<(ShmLink, ShmLink), HostError> {
    let (host_peer, ticket) = HostHub::new(segment.clone()).prepare_peer()?.into_parts();
    let host_link = host_peer.into_link_with(host)?;
    let guest_link = guest_link_from_parts(
        segment,
        ticket.peer_id,
        ticket.doorbell,
        ticket.mmap_tx_fd,
        ticket.mmap_rx,
        true,
        guest,
    )?;
    Ok((host_link, guest_link))
}
