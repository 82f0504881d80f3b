//! The OS side of vox-shm, on tokio: doorbells (wake-ups and peer-death
//! detection), the mapping control channel (descriptor passing), and small
//! helpers for owned descriptors.
//!
//! Every descriptor here is an owned value, created close-on-exec; making one
//! inheritable is an explicit step ([`fd::clear_cloexec_raw`] in a child's
//! `pre_exec`).

pub mod control;
pub mod doorbell;
pub mod fd;

pub use control::{ControlError, MmapAttachMessage, MmapControlReceiver, MmapControlSender};
pub use doorbell::{Doorbell, DoorbellHandle, SignalResult};
