//! The guest's side: its link to the host in one call, whether the host
//! spawned it ([`inherited`]) or it walks in over the host's bootstrap
//! socket ([`walk_in`]). Either way the link keeps the segment mapped; hand
//! it to `vox::initiator_on` to call the host, or to `vox::acceptor_on` to
//! serve it.

use std::path::Path;

use vox_shm::host::{GuestArgs, HostError};
use vox_shm::{BootstrapError, LinkOptions};

use crate::VoxLink;

/// The link a spawning host passed this process ([`crate::host::spawn`] or
/// a [`GuestSpawner`](crate::host::GuestSpawner)), from its own arguments
/// and environment. Checks every descriptor before it takes any (see
/// [`GuestArgs::connect_from_env`]). Must be called inside a tokio runtime.
///
/// Cancel safety: not async.
pub fn inherited(options: LinkOptions) -> Result<VoxLink, HostError> {
    let (_segment, link) = GuestArgs::connect_from_env(options)?;
    Ok(VoxLink::from(link))
}

/// Walks in: connects to the host's bootstrap socket at `path` with session
/// id `sid` and returns the link it is given. Needs nothing inherited.
///
/// Cancel safety: dropping it abandons the attempt; the host recovers the
/// slot it had reserved.
pub async fn walk_in(path: &Path, sid: &[u8], options: LinkOptions) -> Result<VoxLink, BootstrapError> {
    let (_segment, link) = vox_shm::bootstrap::connect(path, sid, options).await?;
    Ok(VoxLink::from(link))
}
