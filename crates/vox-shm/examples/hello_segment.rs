//! A host process creates a segment, spawns this same program as its guest,
//! and the two exchange a message through the guest's ring pair.
//!
//! `cargo run --release -p vox-shm --example hello_segment`

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vox_shm::{FileCleanup, PeerId, Segment, SegmentConfig};

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--guest" {
        return guest(Path::new(&args[2]), args[3].parse()?);
    }
    host()
}

fn host() -> Res {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hello.shm");
    let seg = Segment::create(&path, SegmentConfig::default(), FileCleanup::UnlinkOnDrop)?;
    println!(
        "host: created {} ({} bytes, {} guest slots, {} KiB rings)",
        path.display(),
        seg.layout().total_size,
        seg.max_guests(),
        seg.bipbuf_capacity() / 1024
    );
    let id = seg.reserve_peer().ok_or("no free peer slot")?;
    // SAFETY: the host is the only producer of H→G and consumer of G→H of `id`.
    let (mut tx, mut rx) = unsafe { (seg.h2g_bipbuf(id).unwrap().producer(), seg.g2h_bipbuf(id).unwrap().consumer()) };
    let msg = b"hello from the host";
    tx.try_grant(msg.len() as u32)?.ok_or("ring full")?;
    tx.granted_mut().unwrap().copy_from_slice(msg);
    tx.commit(msg.len() as u32)?;
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--guest", path.to_str().unwrap(), &id.get().to_string()])
        .spawn()?;
    println!("host: spawned guest pid {} as peer {id}", child.id());
    let reply = loop {
        if let Some(r) = rx.try_read()? {
            let mut v = vec![0; r.len() as usize];
            r.copy_to(0, &mut v).unwrap();
            rx.release(v.len() as u32)?;
            break v;
        }
        if started.elapsed() > Duration::from_secs(10) {
            child.kill()?;
            return Err("guest did not answer within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    println!("host: got {:?} after {:?}", String::from_utf8_lossy(&reply), started.elapsed());
    let status = child.wait()?;
    println!("host: guest exited with {status}; peer state {:?}", seg.peer_entry(id).unwrap().state());
    Ok(())
}

fn guest(path: &Path, id: u8) -> Res {
    let seg = Segment::attach(path)?;
    let id = PeerId::new(id).ok_or("bad peer id")?;
    seg.claim_peer(id)?;
    // SAFETY: this guest is the only consumer of H→G and producer of G→H of `id`.
    let (mut rx, mut tx) = unsafe { (seg.h2g_bipbuf(id).unwrap().consumer(), seg.g2h_bipbuf(id).unwrap().producer()) };
    let r = rx.try_read()?.ok_or("nothing from the host")?;
    let mut got = vec![0; r.len() as usize];
    r.copy_to(0, &mut got).unwrap();
    rx.release(got.len() as u32)?;
    println!("guest {id}: read {:?} from the H→G ring", String::from_utf8_lossy(&got));
    let reply = format!("hello back from guest {id} (pid {})", std::process::id());
    tx.try_grant(reply.len() as u32)?.ok_or("ring full")?;
    tx.granted_mut().unwrap().copy_from_slice(reply.as_bytes());
    tx.commit(reply.len() as u32)?;
    seg.detach_peer(id)?;
    Ok(())
}
