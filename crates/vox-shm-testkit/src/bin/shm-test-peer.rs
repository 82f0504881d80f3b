//! The other process in cross-process tests.
//!
//! ```text
//! shm-test-peer segment-peer PATH PEER_ID   claim the slot, echo a ring message, fill a slot
//! shm-test-peer attach-check PATH           attach and report ok / the error
//! ```
//! Exit codes: 0 success, 2 usage, 3 refused (expected error), 4 check failed.

use std::path::Path;
use std::process::ExitCode;

use vox_shm::{PeerId, Segment};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["segment-peer", path, id] => segment_peer(Path::new(path), id),
        ["attach-check", path] => {
            return match Segment::attach(Path::new(path)) {
                Ok(_) => {
                    println!("ok");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("refused: {e}");
                    ExitCode::from(3)
                }
            }
        }
        _ => {
            eprintln!("usage: shm-test-peer segment-peer PATH PEER_ID | attach-check PATH");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shm-test-peer: {e}");
            ExitCode::from(4)
        }
    }
}

type Res = Result<(), Box<dyn std::error::Error>>;

/// Claims `id`, reads the host's bytes from the H→G ring, answers on the G→H
/// ring, and leaves a pattern in a slot it allocates.
fn segment_peer(path: &Path, id: &str) -> Res {
    let seg = Segment::attach(path)?;
    let id = PeerId::new(id.parse()?).ok_or("peer id must be 1..=255")?;
    seg.claim_peer(id)?;
    let h2g = seg.h2g_bipbuf(id).ok_or("no such peer")?;
    let g2h = seg.g2h_bipbuf(id).ok_or("no such peer")?;
    // SAFETY: this process is the guest of `id`: the only consumer of H→G and
    // the only producer of G→H.
    let (mut rx, mut tx) = unsafe { (h2g.consumer(), g2h.producer()) };
    let got = {
        let r = rx.try_read()?.ok_or("H→G ring is empty")?;
        let mut v = vec![0; r.len() as usize];
        r.copy_to(0, &mut v).ok_or("copy")?;
        v
    };
    rx.release(got.len() as u32)?;
    let mut reply = b"guest got: ".to_vec();
    reply.extend_from_slice(&got);
    tx.try_grant(reply.len() as u32)?.ok_or("G→H ring full")?;
    tx.granted_mut().ok_or("grant")?.copy_from_slice(&reply);
    tx.commit(reply.len() as u32)?;
    let slot = seg.var_pool().allocate(100, u32::from(id.get()))?;
    let checked = seg.var_pool().check(slot)?;
    let pattern = b"written by the guest process";
    // SAFETY: the slot is ours (just allocated) and at least 100 bytes long.
    unsafe { std::ptr::copy_nonoverlapping(pattern.as_ptr(), checked.data().as_ptr(), pattern.len()) };
    println!("SLOT {} {} {}", slot.class_idx, slot.slot_idx, slot.generation);
    Ok(())
}
