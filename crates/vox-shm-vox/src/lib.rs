//! A vox 0.8 [`vox::Link`] over a [`vox_shm::ShmLink`]: vox services between
//! processes on one machine, through shared memory.
//!
//! `send` copies vox's encoded `Vec<u8>` once, into its final place in shared
//! memory (the ring, a pool slot or a mapping region, by size); `recv` hands
//! slot and mapping payloads to vox as [`vox::Backing::Shared`], the sender's
//! bytes in place, and inline ones as the copy the ring receive already made.
//! A graceful close is vox's end of stream; a peer that died is an error.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use vox_shm::{Features, Segment, SegmentConfig};
//! use vox_shm_vox::VoxLink;
//!
//! #[vox::service]
//! trait Echo {
//!     async fn echo(&self, value: u64) -> u64;
//! }
//! #[derive(Clone)]
//! struct EchoService;
//! impl Echo for EchoService {
//!     async fn echo(&self, value: u64) -> u64 {
//!         value
//!     }
//! }
//!
//! let segment = Arc::new(Segment::create_anonymous(SegmentConfig::default(), Features::ALL)?);
//! let (host, guest) = vox_shm::create_test_link_pair(segment).await?;
//! let server = tokio::spawn(async move {
//!     vox::acceptor_on(VoxLink::from(guest))
//!         .on_connection(EchoDispatcher::new(EchoService))
//!         .establish::<vox::NoopClient>()
//!         .await
//! });
//! let client = vox::initiator_on(VoxLink::from(host), vox::TransportMode::Bare).establish::<EchoClient>().await?;
//! let _server = server.await??;
//! assert_eq!(client.echo(42).await?, 42);
//! # Ok(()) }
//! ```

use std::sync::Arc;

use vox_shm::{ShmLink, ShmLinkRx, ShmLinkRxError, ShmLinkTx};

pub mod guest;
pub mod host;
pub mod service;

/// A vox link over an [`ShmLink`] (either end: host or guest).
#[derive(Debug)]
pub struct VoxLink(ShmLink);

impl From<ShmLink> for VoxLink {
    fn from(link: ShmLink) -> Self {
        VoxLink(link)
    }
}

impl vox::Link for VoxLink {
    type Tx = VoxLinkTx;
    type Rx = VoxLinkRx;

    fn split(self) -> (VoxLinkTx, VoxLinkRx) {
        let (tx, rx) = vox_shm::Link::split(self.0);
        (VoxLinkTx(tx), VoxLinkRx(rx))
    }

    /// Bare only: a link is one connection between two live processes, with
    /// nothing to resume (a dead peer's slot is recovered, not reattached).
    fn supports_transport_mode(mode: vox::TransportMode) -> bool {
        matches!(mode, vox::TransportMode::Bare)
    }
}

/// The sending half of a [`VoxLink`].
#[derive(Debug)]
pub struct VoxLinkTx(ShmLinkTx);

impl vox::LinkTx for VoxLinkTx {
    /// Waits for room (backpressure), then copies `bytes` once into shared
    /// memory. Cancel-safe, as [`ShmLinkTx::send`].
    async fn send(&self, bytes: Vec<u8>) -> std::io::Result<()> {
        Ok(self.0.send(&bytes).await?)
    }

    async fn close(self) -> std::io::Result<()> {
        Ok(self.0.close().await?)
    }
}

/// The receiving half of a [`VoxLink`].
#[derive(Debug)]
pub struct VoxLinkRx(ShmLinkRx);

/// A payload in shared memory, handed to vox without a copy.
struct InPlace(Arc<dyn vox_shm::SharedBacking>);

impl vox_types::SharedBacking for InPlace {
    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl vox::LinkRx for VoxLinkRx {
    type Error = ShmLinkRxError;

    /// Cancel-safe, as [`ShmLinkRx::recv`].
    async fn recv(&mut self) -> Result<Option<vox::Backing>, ShmLinkRxError> {
        Ok(self.0.recv().await?.map(|b| match b {
            vox_shm::Backing::Boxed(bytes) => vox::Backing::Boxed(bytes),
            vox_shm::Backing::Shared(s) => vox::Backing::Shared(Arc::new(InPlace(s))),
        }))
    }
}
