//! A guest process that serves [`vox_shm_vox::service::Echo`] over the link
//! its spawning host passed it, until the host closes.

use vox_shm_vox::service::{EchoDispatcher, EchoService};
use vox_shm_vox::VoxLink;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_segment, link) = vox_shm::GuestArgs::connect_from_env(vox_shm::LinkOptions::default())?;
    let session = vox::acceptor_on(VoxLink::from(link))
        .on_connection(EchoDispatcher::new(EchoService))
        .establish::<vox::NoopClient>()
        .await?;
    // Serve until the host goes away.
    session.caller.closed().await;
    Ok(())
}
