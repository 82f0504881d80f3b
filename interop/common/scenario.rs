// The interop scenario, `include!`d by both peers. The including crate must
// have `Link`, `LinkTx`, `LinkRx`, `LinkTxPermit` and `WriteSlot` in scope
// (vox-types 0.3.1's or ours: the shapes are the same).
//
// host                                   guest
// tiers: every size, echoed back         echo
// wrap: 3000 round trips, 4 KiB ring     echo
// burst to guest (> ring), no replies    count, reply with a summary
// "go"                                   burst to host (> ring)
// "bye", wait for the guest to exit      exit

/// Sizes that hit every tier of the interop segment (inline <= 256 B, slots
/// up to 128 KiB - 4, mapping above).
pub const TIER_SIZES: [usize; 9] = [0, 5, 256, 257, 3000, 60_000, 131_068, 300_000, 2 << 20];
pub const WRAP_ROUNDS: u32 = 3000;
pub const BURST: u32 = 200;
pub const BURST_SIZE: usize = 200;
const MAGIC_GO: u32 = 0x474f_474f;
const MAGIC_BYE: u32 = 0x4259_4521;

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Message = tag (u32) | seq (u32) | pattern. Shorter messages carry a prefix
/// of that.
pub fn fill(tag: u32, seq: u32, buf: &mut [u8]) {
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&tag.to_le_bytes());
    head[4..].copy_from_slice(&seq.to_le_bytes());
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&head[..n]);
    for (i, b) in buf.iter_mut().enumerate().skip(8) {
        *b = (i as u32).wrapping_mul(0x9E37_79B1).wrapping_add(seq ^ tag) as u8;
    }
}

pub fn check(tag: u32, seq: u32, len: usize, got: &[u8]) -> Res {
    if got.len() != len {
        return Err(format!("message {tag:#x}/{seq}: {} bytes, expected {len}", got.len()).into());
    }
    let mut want = vec![0u8; len];
    fill(tag, seq, &mut want);
    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
        return Err(format!("message {tag:#x}/{seq} ({len} bytes) differs at byte {i}").into());
    }
    Ok(())
}

async fn send<T: LinkTx>(tx: &T, tag: u32, seq: u32, len: usize) -> Res {
    let permit = tx.reserve().await?;
    let mut slot = permit.alloc(len)?;
    fill(tag, seq, slot.as_mut_slice());
    slot.commit();
    Ok(())
}

async fn send_bytes<T: LinkTx>(tx: &T, bytes: &[u8]) -> Res {
    let permit = tx.reserve().await?;
    let mut slot = permit.alloc(bytes.len())?;
    slot.as_mut_slice().copy_from_slice(bytes);
    slot.commit();
    Ok(())
}

async fn recv_vec<R: LinkRx>(rx: &mut R) -> Res<Vec<u8>> {
    let got = tokio::time::timeout(std::time::Duration::from_secs(60), rx.recv())
        .await
        .map_err(|_| "receive timed out")?
        .map_err(|e| format!("receive failed: {e}"))?
        .ok_or("end of stream")?;
    Ok(got.as_bytes().to_vec())
}

fn word(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn wrap_size(i: u32) -> usize {
    40 + (i as usize * 37) % 360
}

/// The host's side; returns the number of messages it sent and received.
pub async fn host<T: LinkTx, R: LinkRx>(tx: &T, rx: &mut R) -> Res<u64> {
    let mut n = 0u64;
    for (i, &len) in TIER_SIZES.iter().enumerate() {
        send(tx, 1, i as u32, len).await?;
        check(1, i as u32, len, &recv_vec(rx).await?)?;
        n += 2;
    }
    println!("tiers ok: {} sizes echoed", TIER_SIZES.len());
    for i in 0..WRAP_ROUNDS {
        send(tx, 2, i, wrap_size(i)).await?;
        check(2, i, wrap_size(i), &recv_vec(rx).await?)?;
        n += 2;
    }
    println!("wrap ok: {WRAP_ROUNDS} round trips through the ring");
    for i in 0..BURST {
        send(tx, 3, i, BURST_SIZE).await?;
    }
    let summary = recv_vec(rx).await?;
    if summary.len() != 4 || word(&summary, 0) != BURST {
        return Err(format!("guest summary {summary:?}").into());
    }
    n += u64::from(BURST) + 1;
    println!("burst to guest ok: {BURST} x {BURST_SIZE} B");
    send_bytes(tx, &MAGIC_GO.to_le_bytes()).await?;
    for i in 0..BURST {
        check(4, i, BURST_SIZE, &recv_vec(rx).await?)?;
    }
    n += u64::from(BURST) + 1;
    println!("burst to host ok: {BURST} x {BURST_SIZE} B");
    send_bytes(tx, &MAGIC_BYE.to_le_bytes()).await?;
    Ok(n + 1)
}

/// The guest's side.
pub async fn guest<T: LinkTx, R: LinkRx>(tx: &T, rx: &mut R) -> Res<u64> {
    let mut n = 0u64;
    for _ in 0..TIER_SIZES.len() as u32 + WRAP_ROUNDS {
        let m = recv_vec(rx).await?;
        send_bytes(tx, &m).await?;
        n += 2;
    }
    for i in 0..BURST {
        check(3, i, BURST_SIZE, &recv_vec(rx).await?)?;
    }
    send_bytes(tx, &BURST.to_le_bytes()).await?;
    let go = recv_vec(rx).await?;
    if go.len() != 4 || word(&go, 0) != MAGIC_GO {
        return Err(format!("expected go, got {go:?}").into());
    }
    for i in 0..BURST {
        send(tx, 4, i, BURST_SIZE).await?;
    }
    let bye = recv_vec(rx).await?;
    if bye.len() != 4 || word(&bye, 0) != MAGIC_BYE {
        return Err(format!("expected bye, got {bye:?}").into());
    }
    n += 2 * u64::from(BURST) + 3;
    Ok(n)
}

/// Arguments a guest gets from its host (the 0.3.1 names).
pub struct GuestArgv {
    pub hub_path: std::path::PathBuf,
    pub peer_id: u8,
    pub doorbell_fd: i32,
    pub mmap_control_fd: i32,
    pub mmap_tx_fd: Option<i32>,
}

pub fn parse_guest_args(args: &[String]) -> Res<GuestArgv> {
    let get = |name: &str| {
        args.iter().find_map(|a| a.strip_prefix(name).and_then(|r| r.strip_prefix('='))).map(str::to_string)
    };
    Ok(GuestArgv {
        hub_path: get("--hub-path").ok_or("missing --hub-path")?.into(),
        peer_id: get("--peer-id").ok_or("missing --peer-id")?.parse()?,
        doorbell_fd: get("--doorbell-fd").ok_or("missing --doorbell-fd")?.parse()?,
        mmap_control_fd: get("--mmap-control-fd").ok_or("missing --mmap-control-fd")?.parse()?,
        mmap_tx_fd: std::env::var("SHM_MMAP_TX_FD").ok().map(|v| v.parse()).transpose()?,
    })
}

/// Segment geometry both host peers use: a 4 KiB ring (so the wrap phase
/// wraps hundreds of times and bursts exceed it), slots up to 128 KiB.
pub const RING: u32 = 4096;
pub const MAX_PAYLOAD: u32 = 4 << 20;
pub const CLASSES: [(u32, u32); 3] = [(1024, 64), (16 * 1024, 32), (128 * 1024, 8)];

/// The end of every host run: waits for the guest, removes the run's
/// directory, and passes only if the guest exited successfully.
pub async fn reap_guest(mut child: std::process::Child, dir: &std::path::Path) -> Res {
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    let _ = std::fs::remove_dir_all(dir);
    if !status.success() {
        return Err(format!("guest failed: {status}").into());
    }
    println!("PASS");
    Ok(())
}
