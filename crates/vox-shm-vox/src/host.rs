//! The host's side: guests it spawns and guests that walk in, as vox links.
//!
//! [`spawn`] starts one guest and returns the host's link to it. A
//! [`GuestListener`] is a [`vox::VoxListener`]: it yields a link for every
//! guest spawned through its [`GuestSpawner`] and, once [`walk_in`] is set
//! up, for every guest that walks in over the bootstrap socket, so
//! `vox::serve_listener(listener, dispatcher)` serves them all as
//! `vox::serve` serves TCP clients. A walk-in that is refused (wrong uid or
//! session id, no free slot, a client that stays silent) ends that one
//! connection, never the listener; [`GuestListener::on_refused`] sees each.
//!
//! [`walk_in`]: GuestListener::walk_in

use std::fmt;
use std::io;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use tokio::sync::mpsc;
use vox_shm::bootstrap::{BootstrapServer, WalkInError, WalkInPolicy};
use vox_shm::host::{spawn_guest_async, GuestSlots, HostError, PreparedPeer};
use vox_shm::{LinkOptions, ShmLink};

use crate::VoxLink;

/// Spawns `cmd` as a guest of `hub` and returns the host's link to it and
/// the child. The guest gets its link with [`crate::guest::inherited`]. Must
/// be called inside a tokio runtime.
///
/// Cancel safety: not async.
pub fn spawn(
    hub: &impl GuestSlots,
    cmd: Command,
    options: LinkOptions,
) -> Result<(VoxLink, tokio::process::Child), HostError> {
    let (link, child) = spawn_guest_async(hub, cmd, options)?;
    Ok((VoxLink::from(link), child))
}

/// Any hub (shared segment or one per guest), shared by the listener, its
/// spawners and the bootstrap server's connection tasks.
#[derive(Clone)]
struct AnyHub(Arc<dyn GuestSlots + Send + Sync>);

impl GuestSlots for AnyHub {
    fn prepare_peer(&self) -> Result<PreparedPeer, HostError> {
        self.0.prepare_peer()
    }
}

type RefusalHook = Arc<dyn Fn(&WalkInError) + Send + Sync>;

/// Yields a vox link for each guest: spawned ones and walk-ins. See the
/// [module docs](self).
pub struct GuestListener {
    spawner: GuestSpawner,
    spawned: mpsc::UnboundedReceiver<ShmLink>,
    walk_ins: Option<BootstrapServer>,
    on_refused: RefusalHook,
}

impl fmt::Debug for GuestListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestListener").field("walk_ins", &self.walk_ins).finish_non_exhaustive()
    }
}

impl GuestListener {
    /// A listener over `hub`'s slots, with `options` for every link. It
    /// yields spawned guests only until [`walk_in`](Self::walk_in) is called.
    pub fn new(hub: impl GuestSlots + Send + Sync + 'static, options: LinkOptions) -> GuestListener {
        let (tx, spawned) = mpsc::unbounded_channel();
        let spawner = GuestSpawner { hub: AnyHub(Arc::new(hub)), options, links: tx };
        GuestListener { spawner, spawned, walk_ins: None, on_refused: Arc::new(|_| {}) }
    }

    /// Also accepts walk-in guests on a bootstrap socket at `path` (which
    /// must not exist; it is removed when the listener is dropped): those
    /// `policy` admits and whose session id `accept_sid` accepts. Must be
    /// called inside a tokio runtime.
    pub fn walk_in(
        mut self,
        path: &Path,
        accept_sid: impl Fn(&[u8]) -> bool + Send + Sync + 'static,
        policy: WalkInPolicy,
    ) -> io::Result<GuestListener> {
        let hub = self.spawner.hub.clone();
        self.walk_ins = Some(BootstrapServer::bind(path, hub, accept_sid, policy, self.spawner.options)?);
        Ok(self)
    }

    /// Calls `hook` for each refused walk-in (the listener goes on).
    pub fn on_refused(mut self, hook: impl Fn(&WalkInError) + Send + Sync + 'static) -> GuestListener {
        self.on_refused = Arc::new(hook);
        self
    }

    /// A handle that spawns guests whose links this listener yields.
    pub fn spawner(&self) -> GuestSpawner {
        self.spawner.clone()
    }

    /// The bootstrap socket's path, once [`walk_in`](Self::walk_in) set it up.
    pub fn path(&self) -> Option<&Path> {
        self.walk_ins.as_ref().map(BootstrapServer::path)
    }

    /// The next guest's link, spawned or walked in.
    ///
    /// Cancel safety: cancel-safe. Links of guests that arrive meanwhile are
    /// queued for the next call.
    pub async fn accept(&mut self) -> io::Result<VoxLink> {
        loop {
            let walked_in = async {
                match &mut self.walk_ins {
                    Some(server) => server.accept().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // The listener holds a sender itself, so this never ends.
                Some(link) = self.spawned.recv() => return Ok(VoxLink::from(link)),
                w = walked_in => match w {
                    Some(Ok(w)) => return Ok(VoxLink::from(w.link)),
                    Some(Err(refused)) => (self.on_refused)(&refused),
                    None => return Err(io::Error::other("the bootstrap server stopped")),
                },
            }
        }
    }
}

impl vox::VoxListener for GuestListener {
    type Link = VoxLink;

    async fn accept(&mut self) -> io::Result<VoxLink> {
        GuestListener::accept(self).await
    }
}

/// Spawns guests for a [`GuestListener`], which then yields their links.
/// Cheap to clone.
#[derive(Clone)]
pub struct GuestSpawner {
    hub: AnyHub,
    options: LinkOptions,
    links: mpsc::UnboundedSender<ShmLink>,
}

impl fmt::Debug for GuestSpawner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestSpawner").finish_non_exhaustive()
    }
}

impl GuestSpawner {
    /// Spawns `cmd` as a guest (it gets its link with
    /// [`crate::guest::inherited`]); the listener yields the host's link to
    /// it. Returns the child. Must be called inside a tokio runtime.
    ///
    /// Cancel safety: not async.
    pub fn spawn(&self, cmd: Command) -> Result<tokio::process::Child, HostError> {
        let (link, child) = spawn_guest_async(&self.hub, cmd, self.options)?;
        // The listener may be gone: then the link is dropped and the guest
        // sees the host close.
        let _ = self.links.send(link);
        Ok(child)
    }
}
