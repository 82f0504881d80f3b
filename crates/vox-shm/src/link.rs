//! The link traits of the vox RPC framework (vox-types 0.3.1 shapes) that a
//! transport implements, and the received-bytes type [`Backing`].
//!
//! A sender calls [`LinkTx::reserve`] (the backpressure point: it waits until
//! the message is guaranteed to fit), then [`LinkTxPermit::alloc`] for the
//! payload's length, writes into [`WriteSlot::as_mut_slice`] and calls
//! [`WriteSlot::commit`]. Dropping a permit or slot instead gives everything
//! back. A receiver calls [`LinkRx::recv`] until it yields `Ok(None)`.

use std::future::Future;
use std::io;
use std::sync::Arc;

/// How the vox session layer runs on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportMode {
    /// Messages as they are.
    Bare,
    /// With the stable (resumable) session layer.
    Stable,
}

/// A bidirectional link that splits into a sending and a receiving half.
pub trait Link {
    /// The sending half.
    type Tx: LinkTx;
    /// The receiving half.
    type Rx: LinkRx;
    /// Splits the link.
    fn split(self) -> (Self::Tx, Self::Rx);
    /// Whether the link supports a transport mode.
    fn supports_transport_mode(mode: TransportMode) -> bool
    where
        Self: Sized,
    {
        let _ = mode;
        true
    }
}

/// The sending half of a link.
pub trait LinkTx: Send + Sync + 'static {
    /// A reservation for one message.
    type Permit: LinkTxPermit + Send;
    /// Waits until one more message can be sent, and reserves room for it.
    fn reserve(&self) -> impl Future<Output = io::Result<Self::Permit>> + Send + '_;
    /// Closes the sending direction gracefully: the peer receives everything
    /// sent before, then end-of-stream.
    fn close(self) -> impl Future<Output = io::Result<()>> + Send;
}

/// A reservation for one message.
pub trait LinkTxPermit {
    /// The writable payload area.
    type Slot: WriteSlot;
    /// Allocates `len` bytes for the payload.
    fn alloc(self, len: usize) -> io::Result<Self::Slot>;
}

/// A payload being written. Dropping it without `commit` discards it.
pub trait WriteSlot {
    /// The payload bytes, exactly the allocated length.
    fn as_mut_slice(&mut self) -> &mut [u8];
    /// Publishes the message.
    fn commit(self);
}

/// The receiving half of a link.
pub trait LinkRx: Send + 'static {
    /// Why a receive failed.
    type Error: std::error::Error + Send + Sync + 'static;
    /// The next message, or `Ok(None)` once the peer closed its sending half.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Backing>, Self::Error>> + Send + '_;
}

/// Received bytes that live in memory shared with the sender.
pub trait SharedBacking: Send + Sync + 'static {
    /// The payload.
    fn as_bytes(&self) -> &[u8];
}

/// A received payload: an owned copy, or a zero-copy view of shared memory
/// that is released when the last clone is dropped.
#[derive(Clone)]
pub enum Backing {
    /// An owned copy.
    Boxed(Box<[u8]>),
    /// A zero-copy view.
    Shared(Arc<dyn SharedBacking>),
}

impl Backing {
    /// Wraps a shared backing.
    pub fn shared(b: Arc<dyn SharedBacking>) -> Self {
        Backing::Shared(b)
    }

    /// The payload.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Backing::Boxed(b) => b,
            Backing::Shared(s) => s.as_bytes(),
        }
    }

    /// True for a zero-copy view.
    pub fn is_shared(&self) -> bool {
        matches!(self, Backing::Shared(_))
    }
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_shared() { "Shared" } else { "Boxed" };
        write!(f, "Backing::{kind}({} bytes)", self.as_bytes().len())
    }
}

/// A link given as its two halves.
#[derive(Debug)]
pub struct SplitLink<Tx, Rx> {
    /// Sending half.
    pub tx: Tx,
    /// Receiving half.
    pub rx: Rx,
}

impl<Tx: LinkTx, Rx: LinkRx> Link for SplitLink<Tx, Rx> {
    type Tx = Tx;
    type Rx = Rx;
    fn split(self) -> (Tx, Rx) {
        (self.tx, self.rx)
    }
}
