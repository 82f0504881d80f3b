//! vox over shared memory, whole: a host spawns a guest process that serves
//! a vox service, and calls it. Run it with `cargo run -p vox-shm-vox
//! --example hello` (the guest is this same program, started with `--guest`).
// The code `#[vox::service]` generates has no docs of its own.
#![allow(missing_docs)]
use std::process::Command;
use std::sync::Arc;

use vox_shm::{Features, HostHub, LinkOptions, Segment, SegmentConfig};
use vox_shm_vox::{guest, host};

#[vox::service]
trait Hello {
    async fn greet(&self, name: String) -> String;
}

#[derive(Clone)]
struct HelloService;

impl Hello for HelloService {
    async fn greet(&self, name: String) -> String {
        format!("hello {name}, from pid {}", std::process::id())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|a| a == "--guest") {
        // Guest: the link its host passed it, serving Hello until the host closes.
        let link = guest::inherited(LinkOptions::default())?;
        let dispatcher = HelloDispatcher::new(HelloService);
        let session = vox::acceptor_on(link).on_connection(dispatcher).establish::<vox::NoopClient>().await?;
        session.caller.closed().await;
        return Ok(());
    }
    // Host: a segment in memory, one guest process on it, a typed client.
    let hub = HostHub::new(Arc::new(Segment::create_anonymous(SegmentConfig::default(), Features::ALL)?));
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--guest");
    let (link, mut child) = host::spawn(&hub, cmd, LinkOptions::default())?;
    let client = vox::initiator_on(link, vox::TransportMode::Bare).establish::<HelloClient>().await?;
    println!("{}", client.greet("host".into()).await?);
    drop(client); // ends the session: the guest's `closed()` returns and it exits
    assert!(child.wait().await?.success());
    Ok(())
}
