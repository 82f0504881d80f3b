//! A guest process for the tests and benchmarks.
//!
//! Spawned (no arguments of its own): serves [`vox_shm_vox::service::Echo`]
//! over the link its host passed it, until the host closes.
//!
//! `--walk-in PATH SID N`: walks in over the bootstrap socket at `PATH` and
//! calls the host's `Echo` instead: `echo` N times and one `reverse` of
//! 64 KiB, checking every answer, then ends its session and exits.

use vox_shm::LinkOptions;
use vox_shm_vox::guest;
use vox_shm_vox::service::{EchoClient, EchoDispatcher, EchoService};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--walk-in") {
        let (path, sid, n) = match &args[i + 1..] {
            [path, sid, n, ..] => (path, sid, n.parse::<u64>()?),
            _ => return Err("--walk-in PATH SID N".into()),
        };
        let link = guest::walk_in(path.as_ref(), sid.as_bytes(), LinkOptions::default()).await?;
        let host = vox::initiator_on(link, vox::TransportMode::Bare).establish::<EchoClient>().await?;
        for v in 0..n {
            if host.echo(v).await? != v {
                return Err("the host echoed a wrong value".into());
            }
        }
        let blob: Vec<u8> = (0..64u32 << 10).map(|i| i as u8).collect();
        let mut want = blob.clone();
        want.reverse();
        if host.reverse(blob).await? != want {
            return Err("the host reversed wrongly".into());
        }
        return Ok(());
    }
    let session = vox::acceptor_on(guest::inherited(LinkOptions::default())?)
        .on_connection(EchoDispatcher::new(EchoService))
        .establish::<vox::NoopClient>()
        .await?;
    // Serve until the host goes away.
    session.caller.closed().await;
    Ok(())
}
