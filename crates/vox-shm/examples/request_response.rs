//! A host that spawns a guest process and asks it questions; the guest
//! answers each one. Run it with `cargo run -p vox-shm --example
//! request_response` (the guest is this same program, started with `--guest`).
use std::process::Command;
use std::sync::Arc;

use vox_shm::prelude::*;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    if std::env::args().any(|a| a == "--guest") {
        return guest().await;
    }
    // Host: a segment in memory (no file to clean up), one guest on it.
    let segment = Segment::create_anonymous(SegmentConfig::default(), Features::ALL)?;
    let hub = HostHub::new(Arc::new(segment));
    let mut guest = Command::new(std::env::current_exe()?);
    guest.arg("--guest");
    let (link, mut child) = spawn_guest_async(&hub, guest, LinkOptions::default())?;
    let (tx, mut rx) = link.split();
    for question in ["what is 6 x 7?", "and 100 kB of zeros?"] {
        let request = if question.starts_with("and") { vec![0; 100_000] } else { question.as_bytes().to_vec() };
        tx.send(&request).await?; // copied once, into shared memory
        let answer = rx.recv().await?.expect("the guest answers");
        println!("host: asked {} bytes, got {:?}", request.len(), String::from_utf8_lossy(answer.as_bytes()));
    }
    tx.close().await?; // the guest sees end of stream, answers no more, and exits
    assert!(rx.recv().await?.is_none(), "the guest closed its side too");
    assert!(child.wait().await?.success());
    Ok(())
}

/// Guest: adopt what `spawn_guest_async` passed, answer until the host closes.
async fn guest() -> std::io::Result<()> {
    let (_segment, link) = GuestArgs::connect_from_env(LinkOptions::default())?;
    let (tx, mut rx) = link.split();
    while let Some(request) = rx.recv().await? {
        let bytes = request.as_bytes(); // the host's bytes in shared memory, no copy
        let answer = match bytes {
            b"what is 6 x 7?" => "42".to_string(),
            _ => format!("{} bytes, {} of them zero", bytes.len(), bytes.iter().filter(|&&b| b == 0).count()),
        };
        tx.send(answer.as_bytes()).await?;
    }
    tx.close().await?;
    Ok(())
}
