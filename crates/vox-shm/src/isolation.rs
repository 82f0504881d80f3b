//! Isolation mode: every guest gets a segment of its own.
//!
//! On a shared segment ([`HostHub`]) every guest maps the whole segment
//! read-write, so a hostile guest can corrupt the slot pool (and other guests'
//! rings) for everyone; the host still neither panics nor hangs, but honest
//! guests' payloads can be damaged. An [`IsolatedHub`] creates a fresh
//! anonymous segment (a sealed memfd, so nobody can truncate it) with one guest
//! slot, its own rings and its own pool, for each guest. A hostile guest can
//! then damage only its own link.
//!
//! What it costs: one pool per guest (memory = the pool size times the
//! guests, instead of one pool shared by all), a mapping per guest in the
//! host, and no sharing of slots between guests. Guests must attach by
//! descriptor (ours always do, spawned or walking in); a vox-shm 0.3.1 guest
//! attaches by path and cannot use it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use vox_shm::host::spawn_guest;
//! use vox_shm::isolation::{IsolatedConfig, IsolatedHub};
//!
//! let hub = IsolatedHub::new(IsolatedConfig::default());
//! // Each guest gets a segment of its own (`true` stands in for a plugin).
//! let (link, mut child) = spawn_guest(&hub, std::process::Command::new("true"))?;
//! assert!(child.wait()?.success());
//! # drop(link);
//! # Ok(()) }
//! ```

use std::sync::Arc;

use shm_primitives::varslot::SizeClassConfig;
use shm_primitives::Features;

use crate::host::{GuestSlots, HostError, HostHub, PreparedPeer};
use crate::segment::{Segment, SegmentConfig};

/// The geometry every guest's own segment gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolatedConfig {
    /// Data bytes per ring, per direction.
    pub bipbuf_capacity: u32,
    /// Largest payload a sender may allocate.
    pub max_payload_size: u32,
    /// Payloads up to this many bytes travel inline (0 = 256).
    pub inline_threshold: u32,
    /// Heartbeat interval in ns; 0 disables heartbeats.
    pub heartbeat_interval: u64,
    /// The guest's own slot pool.
    pub size_classes: Vec<SizeClassConfig>,
    /// Extensions the host offers.
    pub host_features: Features,
}

impl Default for IsolatedConfig {
    /// [`SegmentConfig::default`]'s rings, payload limits and pool, every
    /// extension offered.
    fn default() -> Self {
        let d = SegmentConfig::default();
        IsolatedConfig {
            bipbuf_capacity: d.bipbuf_capacity,
            max_payload_size: d.max_payload_size,
            inline_threshold: d.inline_threshold,
            heartbeat_interval: d.heartbeat_interval,
            size_classes: d.size_classes.to_vec(),
            host_features: Features::ALL,
        }
    }
}

/// Hands every guest a segment of its own (see the module docs). Cheap to
/// clone; each clone makes segments from the same configuration.
#[derive(Debug, Clone)]
pub struct IsolatedHub {
    config: Arc<IsolatedConfig>,
}

impl IsolatedHub {
    /// A hub that creates one segment per guest with `config`. The
    /// configuration is checked by the first guest's segment creation.
    pub fn new(config: IsolatedConfig) -> Self {
        IsolatedHub { config: Arc::new(config) }
    }

    /// The configuration.
    pub fn config(&self) -> &IsolatedConfig {
        &self.config
    }
}

impl GuestSlots for IsolatedHub {
    /// Creates the guest's segment (one slot, its own rings and pool) and
    /// reserves its slot. The segment lives as long as the links to it.
    fn prepare_peer(&self) -> Result<PreparedPeer, HostError> {
        let c = &*self.config;
        let config = SegmentConfig {
            max_guests: 1,
            bipbuf_capacity: c.bipbuf_capacity,
            max_payload_size: c.max_payload_size,
            inline_threshold: c.inline_threshold,
            heartbeat_interval: c.heartbeat_interval,
            size_classes: &c.size_classes,
        };
        let segment = Segment::create_anonymous(config, c.host_features)?;
        HostHub::new(Arc::new(segment)).prepare_peer()
    }
}
