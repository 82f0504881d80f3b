//! A guest that was not spawned by the host walks in over the host's
//! bootstrap socket: it inherits nothing and needs only the socket's path and
//! a session id. Run it with `cargo run -p vox-shm --example walk_in` (the
//! guest is this same program, started with `--guest PATH`).
use std::process::Command;
use std::sync::Arc;

use vox_shm::bootstrap::{self, BootstrapServer, WalkInPolicy};
use vox_shm::prelude::*;

const SESSION: &[u8] = b"example-session";

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--guest") {
        return guest(&args[i + 1]).await;
    }
    // Host: a segment with a file (walk-in guests attach by descriptor, or
    // by this path), and a socket only this user may connect to.
    let dir = tempfile::tempdir()?;
    let segment = Segment::create(&dir.path().join("segment"), SegmentConfig::default(), FileCleanup::UnlinkOnDrop)?;
    let hub = HostHub::new(Arc::new(segment));
    let socket = dir.path().join("bootstrap.sock");
    let accept_sid = |sid: &[u8]| sid == SESSION;
    let mut server = BootstrapServer::bind(&socket, hub, accept_sid, WalkInPolicy::default(), LinkOptions::default())?;
    // Any process that knows the path may come; here we start one ourselves.
    let mut child =
        tokio::process::Command::from(Command::new(std::env::current_exe()?)).arg("--guest").arg(&socket).spawn()?;
    let walk_in = server.accept().await.expect("the server runs")?;
    println!("host: guest {} walked in (pid {:?}, uid {})", walk_in.peer_id, walk_in.pid, walk_in.uid);
    let (tx, mut rx) = walk_in.link.split();
    let hello = rx.recv().await?.expect("the guest says hello");
    println!("host: {:?}", String::from_utf8_lossy(hello.as_bytes()));
    tx.send(b"welcome").await?;
    tx.close().await?;
    assert!(rx.recv().await?.is_none());
    assert!(child.wait().await?.success());
    Ok(())
}

/// Guest: connect with the path and the session id; nothing inherited.
async fn guest(socket: &str) -> std::io::Result<()> {
    let (_segment, link) = bootstrap::connect(socket.as_ref(), SESSION, LinkOptions::default()).await?;
    let (tx, mut rx) = link.split();
    tx.send(format!("hello from pid {}", std::process::id()).as_bytes()).await?;
    let reply = rx.recv().await?.expect("the host replies");
    println!("guest: {:?}", String::from_utf8_lossy(reply.as_bytes()));
    assert!(rx.recv().await?.is_none(), "then the host closes");
    tx.close().await?;
    Ok(())
}
