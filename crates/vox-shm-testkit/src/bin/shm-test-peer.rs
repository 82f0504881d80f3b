//! The other process in cross-process tests.
//!
//! Segment-level modes (no link):
//! ```text
//! shm-test-peer segment-peer PATH PEER_ID   claim the slot, echo a ring message, fill a slot
//! shm-test-peer attach-check PATH           attach and report ok / the error
//! shm-test-peer pool-churn PATH PEER_ID     claim the slot, print "ready", allocate and free slots until killed
//! ```
//! Link modes, started by `vox_shm::spawn_guest` (which appends the guest
//! arguments):
//! ```text
//! shm-test-peer echo                 echo every message until end of stream, then close
//! shm-test-peer duplex N             send N mixed-size messages while receiving N, all checked
//! shm-test-peer sink N DELAY_US      receive N messages (checked), sleeping between them
//! shm-test-peer sink-large N SIZE    receive N messages of SIZE bytes (checked)
//! shm-test-peer send N               send N mixed-size messages, then close; wait for end of stream
//! shm-test-peer send-forever SIZE    send numbered messages until killed
//! shm-test-peer send-then-die N      send N mixed-size messages, then SIGKILL itself (no close)
//! shm-test-peer crash-duplex FILE    send mixed-tier messages while receiving the host's (checked),
//!                                    storing how many it committed in FILE's first 8 bytes, until killed
//! shm-test-peer idle                 claim the slot and never receive
//! shm-test-peer hostile KIND         commit a bad entry (garbage|bad-slot|bad-mmap|huge-len) and wait
//! shm-test-peer bootstrap SOCK SID   walk in over a control socket (no inherited fds), then echo
//! ```
//! Exit codes: 0 success, 2 usage, 3 refused (expected error), 4 check failed.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use vox_shm::host::GuestArgs;
use vox_shm::{Link, LinkOptions, LinkRx, LinkTx, LinkTxPermit, PeerId, Segment, WaitStrategy, WriteSlot};
use vox_shm_testkit::{check_large, check_payload, fill_payload, MIXED_SIZES};

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["segment-peer", path, id, ..] => segment_peer(Path::new(path), id),
        ["attach-check", path, ..] => {
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
        ["bootstrap", sock, sid, ..] => bootstrap_echo(Path::new(sock), sid),
        ["pool-churn", path, id, ..] => pool_churn(Path::new(path), id),
        [mode, ..] => link_mode(mode, &args),
        [] => {
            eprintln!("usage: see the source");
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

fn num(args: &[String], i: usize) -> Res<u64> {
    Ok(args.get(i).ok_or("missing number")?.parse()?)
}

fn wait_from_env() -> WaitStrategy {
    match std::env::var("SHM_TEST_WAIT").as_deref() {
        Ok("park") => WaitStrategy::Park,
        Ok("busy") => WaitStrategy::BusyPoll,
        _ => WaitStrategy::default(),
    }
}

fn link_mode(mode: &str, args: &[String]) -> Res {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (guest, _rest) = GuestArgs::from_env()?;
        // A guest that is slow to start: the host builds and uses its link
        // before the guest has attached (its features are still unknown).
        if let Ok(ms) = std::env::var("SHM_TEST_ATTACH_DELAY_MS") {
            std::thread::sleep(Duration::from_millis(ms.parse()?));
        }
        let options = LinkOptions { wait: wait_from_env(), ..LinkOptions::default() };
        if mode == "hostile" {
            return hostile(&guest, args.get(1).map(String::as_str).unwrap_or("garbage")).await;
        }
        // SAFETY: the descriptors were inherited for us by spawn_guest and are
        // adopted once, here at start-up.
        let (_segment, link) = unsafe { guest.connect(options) }?;
        let (tx, mut rx) = link.split();
        match mode {
            "echo" => {
                while let Some(m) = rx.recv().await? {
                    let p = tx.reserve().await?;
                    let mut s = p.alloc(m.as_bytes().len())?;
                    s.as_mut_slice().copy_from_slice(m.as_bytes());
                    s.commit();
                }
                tx.close().await?;
            }
            "duplex" => {
                let n = num(args, 1)?;
                let sender = tokio::spawn(async move {
                    send_mixed(&tx, n).await?;
                    Ok::<_, std::io::Error>(tx)
                });
                recv_mixed(&mut rx, n, Duration::ZERO).await?;
                let tx = sender.await??;
                tx.close().await?;
                expect_end(&mut rx).await?;
            }
            "sink" => {
                let n = num(args, 1)?;
                recv_mixed(&mut rx, n, Duration::from_micros(num(args, 2)?)).await?;
                expect_end(&mut rx).await?;
            }
            "sink-large" => {
                let (n, size) = (num(args, 1)?, num(args, 2)? as usize);
                for seq in 0..n {
                    let m = rx.recv().await?.ok_or_else(|| format!("end of stream after {seq} of {n}"))?;
                    check_large(seq, size, m.as_bytes())?;
                }
                println!("received {n}");
                expect_end(&mut rx).await?;
            }
            "send" => {
                send_mixed(&tx, num(args, 1)?).await?;
                tx.close().await?;
                expect_end(&mut rx).await?;
            }
            "send-forever" => {
                let size = num(args, 1)? as usize;
                for seq in 0.. {
                    let p = tx.reserve().await?;
                    let mut s = p.alloc(size)?;
                    fill_payload(seq, s.as_mut_slice());
                    s.commit();
                }
            }
            "send-then-die" => {
                send_mixed(&tx, num(args, 1)?).await?;
                // SAFETY: raising a signal has no memory-safety preconditions.
                unsafe { libc::raise(libc::SIGKILL) };
            }
            "crash-duplex" => {
                let file = Path::new(args.get(1).ok_or("missing counter file")?);
                let counter = vox_shm_testkit::CommitCounter::open(file)?;
                let receiver = tokio::spawn(async move {
                    let mut seq = 0u64;
                    while let Some(m) = rx.recv().await? {
                        let len = MIXED_SIZES[(seq % MIXED_SIZES.len() as u64) as usize];
                        check_payload(seq, len, m.as_bytes())?;
                        seq += 1;
                    }
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                });
                for seq in 0.. {
                    let len = MIXED_SIZES[(seq % MIXED_SIZES.len() as u64) as usize];
                    let mut s = tx.reserve().await?.alloc(len)?;
                    fill_payload(seq, s.as_mut_slice());
                    s.commit();
                    counter.set(seq + 1);
                }
                receiver.await?.map_err(|e| e.to_string())?;
            }
            "idle" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            other => return Err(format!("unknown mode {other}").into()),
        }
        Ok(())
    })
}

async fn send_mixed(tx: &impl LinkTx, n: u64) -> std::io::Result<()> {
    for seq in 0..n {
        let len = MIXED_SIZES[(seq % MIXED_SIZES.len() as u64) as usize];
        let p = tx.reserve().await?;
        let mut s = p.alloc(len)?;
        fill_payload(seq, s.as_mut_slice());
        s.commit();
    }
    Ok(())
}

async fn recv_mixed(rx: &mut impl LinkRx, n: u64, delay: Duration) -> Res {
    for seq in 0..n {
        let m = rx.recv().await?.ok_or_else(|| format!("end of stream after {seq} of {n} messages"))?;
        let len = MIXED_SIZES[(seq % MIXED_SIZES.len() as u64) as usize];
        check_payload(seq, len, m.as_bytes())?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    println!("received {n}");
    Ok(())
}

async fn expect_end(rx: &mut impl LinkRx) -> Res {
    match rx.recv().await? {
        None => Ok(()),
        Some(m) => Err(format!("expected end of stream, got {} bytes", m.as_bytes().len()).into()),
    }
}

/// Walks in over the host's control socket with nothing inherited, then
/// echoes until end of stream.
fn bootstrap_echo(sock: &Path, sid: &str) -> Res {
    // List what we inherited beyond stdio (a test harness may pass its own
    // pipes down; sockets, segments or memfds would be ours).
    let mut inherited = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd")? {
        let p = e?.path();
        let n: i32 = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()).unwrap_or(-1);
        if n > 2 {
            if let Ok(target) = std::fs::read_link(&p) {
                inherited.push(target.display().to_string());
            }
        }
    }
    println!("inherited: {inherited:?}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (_seg, link) = vox_shm::bootstrap::connect(sock, sid.as_bytes(), LinkOptions::default()).await?;
        let (tx, mut rx) = link.split();
        while let Some(m) = rx.recv().await? {
            let mut s = tx.reserve().await?.alloc(m.as_bytes().len())?;
            s.as_mut_slice().copy_from_slice(m.as_bytes());
            s.commit();
        }
        tx.close().await?;
        Ok(())
    })
}

/// A guest that breaks the protocol on purpose: it claims its slot and then,
/// instead of using a link, commits one bad entry into its guest-to-host ring
/// with a raw producer and rings the doorbell.
async fn hostile(args: &GuestArgs, kind: &str) -> Res {
    use shm_primitives_async::doorbell::{Doorbell, DoorbellHandle};
    use vox_shm::framing;
    let segment = Arc::new(match (args.segment_fd, &args.hub_path) {
        // SAFETY: inherited for us by spawn_guest; adopted once here.
        (Some(fd), _) => Segment::attach_fd(unsafe { shm_primitives_async::fd::adopt_fd(fd, None) }?)?,
        (None, Some(p)) => Segment::attach(p)?,
        (None, None) => return Err("hostile mode needs --segment-fd or --hub-path".into()),
    });
    let id: PeerId = args.peer_id;
    // A guest that advertises nothing is treated as vox-shm 0.3.1.
    let features = if kind == "truncate-mmap" { vox_shm::Features::NONE } else { vox_shm::Features::ALL };
    segment.peer_entry(id).ok_or("no entry")?.set_guest_features(features);
    segment.claim_peer(id)?;
    // SAFETY: inherited for us by spawn_guest; adopted once here.
    let bell = Doorbell::new(DoorbellHandle::from_fd(unsafe {
        shm_primitives_async::fd::adopt_fd(args.doorbell_fd, Some(libc::SOCK_STREAM))
    }?))?;
    let claim = segment.claim_ring(id, vox_shm::segment::RingEnd::GuestTx)?;
    let mut tx = claim.producer().ok_or("producer")?;
    let mut entry = [0u8; 32];
    let n = match kind {
        "garbage" => {
            entry[..8].copy_from_slice(&[3, 0, 0, 0, 0xFF, 0, 0, 0]);
            8
        }
        "bad-slot" => framing::write_slot_ref(
            &mut entry,
            &vox_shm::SlotRef { class_idx: 200, extent_idx: 0, slot_idx: 7, generation: 1 },
        ),
        // A slot that exists but that this guest does not hold (free, or
        // another generation).
        "unheld-slot" => framing::write_slot_ref(
            &mut entry,
            &vox_shm::SlotRef { class_idx: 0, extent_idx: 0, slot_idx: 0, generation: 12345 },
        ),
        "bad-mmap" => framing::write_mmap_ref(
            &mut entry,
            &framing::MmapRef { map_id: 77, map_generation: 0, map_offset: 0, payload_len: 10 },
        ),
        "huge-len" => {
            entry[..8].copy_from_slice(&[0, 0, 0, 0x40, 0, 0, 0, 0]);
            8
        }
        "pool-scribble" => return pool_scribble(&segment, id).await,
        "watermark-behind" | "wrap-stall" | "scribble-header" => {
            let path = args.hub_path.as_deref().ok_or("needs --hub-path")?;
            return scribble_ring(kind, path, &segment, id, &mut tx, &bell).await;
        }
        "truncate-mmap" | "unsealed-mmap" => {
            // SAFETY: the descriptor was inherited for us; adopted once here.
            let ctl = unsafe { shm_primitives_async::control::adopt(args.mmap_control_fd) }?;
            return unsealed_region(kind, &ctl, &mut tx, &bell).await;
        }
        "bad-control" => {
            // SAFETY: the descriptor was inherited for us; adopted once here.
            let ctl = unsafe { shm_primitives_async::control::adopt(args.mmap_control_fd) }?;
            // An announcement with two descriptors instead of one, then a
            // reference that needs it.
            let f = std::fs::File::open("/dev/null")?;
            let msg =
                shm_primitives_async::control::MmapAttachMessage { map_id: 0, map_generation: 0, mapping_length: 4096 };
            use std::os::fd::{AsFd, AsRawFd};
            shm_primitives_async::control::send_with_fds(
                ctl.as_fd(),
                &msg.to_le_bytes(),
                &[f.as_raw_fd(), f.as_raw_fd()],
            )?;
            framing::write_mmap_ref(
                &mut entry,
                &framing::MmapRef { map_id: 0, map_generation: 0, map_offset: 64, payload_len: 10 },
            )
        }
        "doorbell-flood" => {
            // Rings the doorbell as fast as it can and sends nothing else.
            println!("flooding");
            loop {
                for _ in 0..1000 {
                    bell.signal();
                }
                tokio::task::yield_now().await;
            }
        }
        other => return Err(format!("unknown hostile kind {other}").into()),
    };
    tx.try_grant(n)?.ok_or("ring full")?;
    tx.granted_mut().ok_or("grant")?.copy_from_slice(&entry[..n as usize]);
    tx.commit(n)?;
    bell.signal();
    println!("committed {kind}");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

/// Writes junk over the whole slot pool and its own rings, again and again
/// (what isolation mode must confine to this guest's own link).
async fn pool_scribble(segment: &Segment, id: PeerId) -> Res {
    let map = shm_primitives::mmap::MmapRegion::attach_fd(segment.try_clone_fd()?)?;
    let l = segment.layout();
    let spans = [
        (l.var_pool_offset, l.total_size - l.var_pool_offset),
        (l.g2h_offset(id), 2 * (l.h2g_offset(id) - l.g2h_offset(id))),
    ];
    println!("scribbling");
    for round in 0u64.. {
        for (off, len) in spans {
            let p = map.region().range(off, len)?;
            // SAFETY: in bounds of our live mapping; the bytes are shared
            // memory we are allowed to write (that is the point of the test).
            unsafe { std::ptr::write_bytes(p.as_ptr(), (round as u8).wrapping_mul(37) | 1, len as usize) };
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Commits three honest 100-byte entries, lets the host read them, then
/// rewrites its own ring's `write` and `watermark` into a state no honest
/// producer makes: a watermark behind the host's read position, or a wrap
/// left half-published exactly at it.
async fn scribble_ring(
    kind: &str,
    path: &Path,
    segment: &Segment,
    id: PeerId,
    tx: &mut shm_primitives::bipbuf::BipBufProducer<'_>,
    bell: &shm_primitives_async::doorbell::Doorbell,
) -> Res {
    use shm_primitives::bipbuf::offsets;
    let map = shm_primitives::mmap::MmapRegion::attach(path)?;
    let ring = segment.layout().g2h_offset(id);
    let word = |off: u64| -> Res<&std::sync::atomic::AtomicU32> {
        let p = map.region().typed::<std::sync::atomic::AtomicU32>(off)?;
        // SAFETY: in bounds and aligned (checked by `typed`); the mapping
        // outlives the reference; any bits are a valid atomic.
        Ok(unsafe { p.as_ref() })
    };
    if kind == "scribble-header" {
        // Both rings' stored capacities, and this entry's ring offset.
        for r in [ring, segment.layout().h2g_offset(id)] {
            word(r + offsets::CAPACITY as u64)?
                .store(segment.bipbuf_capacity() + 64, std::sync::atomic::Ordering::Release);
        }
        let entry_off = segment.layout().peer_table_offset + (id.index() * 64 + 16) as u64;
        word(entry_off)?.store(12345, std::sync::atomic::Ordering::Release);
        println!("scribbled {kind}");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return Ok(());
    }
    let mut entry = [0u8; 108];
    entry[..8].copy_from_slice(&[108, 0, 0, 0, 0, 0, 100, 0]);
    for _ in 0..3 {
        tx.try_grant(108)?.ok_or("ring full")?;
        tx.granted_mut().ok_or("grant")?.copy_from_slice(&entry);
        tx.commit(108)?;
    }
    bell.signal();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at = if kind == "watermark-behind" { 8 } else { 3 * 108 };
    word(ring + offsets::WATERMARK as u64)?.store(at, std::sync::atomic::Ordering::Release);
    word(ring + offsets::WRITE as u64)?.store(at, std::sync::atomic::Ordering::Release);
    bell.signal();
    println!("scribbled {kind}");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

/// Announces a plain file that nobody can seal, commits a reference to it,
/// and for `truncate-mmap` truncates the file once the host has read the
/// first payload and references it again (a mapped copy would then fault).
async fn unsealed_region(
    kind: &str,
    ctl: &std::os::fd::OwnedFd,
    tx: &mut shm_primitives::bipbuf::BipBufProducer<'_>,
    bell: &shm_primitives_async::doorbell::Doorbell,
) -> Res {
    use std::os::fd::{AsFd, AsRawFd};
    use vox_shm::framing;
    // An unlinked temporary file: like a memfd made without sealing, nobody
    // can seal it, and we can truncate it under the host.
    let file = tempfile::tempfile()?;
    file.set_len(1 << 20)?;
    std::os::unix::fs::FileExt::write_all_at(&file, &[7u8; 100], 0)?;
    let msg =
        shm_primitives_async::control::MmapAttachMessage { map_id: 0, map_generation: 0, mapping_length: 1 << 20 };
    shm_primitives_async::control::send_with_fds(ctl.as_fd(), &msg.to_le_bytes(), &[file.as_raw_fd()])?;
    let commit_ref = |tx: &mut shm_primitives::bipbuf::BipBufProducer<'_>| -> Res {
        let mut entry = [0u8; 32];
        let r = framing::MmapRef { map_id: 0, map_generation: 0, map_offset: 0, payload_len: 100 };
        let n = framing::write_mmap_ref(&mut entry, &r);
        tx.try_grant(n)?.ok_or("ring full")?;
        tx.granted_mut().ok_or("grant")?.copy_from_slice(&entry[..n as usize]);
        tx.commit(n)?;
        bell.signal();
        Ok(())
    };
    commit_ref(tx)?;
    println!("committed {kind}");
    if kind == "truncate-mmap" {
        tokio::time::sleep(Duration::from_millis(300)).await;
        file.set_len(0)?;
        commit_ref(tx)?;
        println!("truncated");
    }
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

/// Allocates and frees pool slots in a tight loop, holding up to three at a
/// time, so a kill lands inside an allocate or a free most of the time.
fn pool_churn(path: &Path, id: &str) -> Res {
    let seg = Segment::attach(path)?;
    let id = PeerId::new(id.parse()?).ok_or("peer id must be 1..=255")?;
    seg.peer_entry(id).ok_or("no such peer")?.set_guest_features(vox_shm::Features::ALL);
    seg.claim_peer(id)?;
    seg.track_pool_ops_as(id);
    println!("ready");
    let pool = seg.var_pool();
    let mut held = std::collections::VecDeque::new();
    for i in 0u32.. {
        let size = [10, 900, 5000][(i % 3) as usize];
        if let Ok(s) = pool.allocate(size, u32::from(id.get())) {
            held.push_back(s);
        }
        if held.len() > 3 || i % 5 == 0 {
            if let Some(s) = held.pop_front() {
                pool.free(s)?;
            }
        }
    }
    Ok(())
}

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
