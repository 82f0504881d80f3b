//! `vox-shm demo`: a host process creates a segment, spawns a guest process
//! (this same binary), and the two exchange messages of every tier.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vox_shm::host::{spawn_guest, GuestArgs, HostHub};
use vox_shm::{FileCleanup, Link, LinkOptions, Segment, SegmentConfig, SizeClassConfig, WriteSlot};

use crate::{runtime, Res};

const CLASSES: [SizeClassConfig; 2] =
    [SizeClassConfig { slot_size: 4096, slot_count: 64 }, SizeClassConfig { slot_size: 64 * 1024, slot_count: 32 }];

/// (tier name, payload size)
const TIERS: [(&str, usize); 3] = [("inline", 64), ("slot", 32 * 1024), ("mapping", 4 << 20)];

fn pattern(seq: u32, len: usize) -> impl Iterator<Item = u8> {
    (0..len).map(move |i| (i as u32).wrapping_mul(2654435761).wrapping_add(seq) as u8)
}

pub fn run(path: Option<PathBuf>, rounds: u32) -> Res {
    let dir = tempfile::tempdir()?;
    if let Some(p) = &path {
        // Never replace (and then delete) a file the demo did not create.
        if std::fs::symlink_metadata(p).is_ok() {
            return Err(format!(
                "{}: already exists; the demo creates a new file and will not replace it",
                p.display()
            )
            .into());
        }
    }
    let path = path.unwrap_or_else(|| dir.path().join("demo.shm"));
    let config = SegmentConfig {
        max_guests: 4,
        bipbuf_capacity: 64 * 1024,
        max_payload_size: 16 << 20,
        size_classes: &CLASSES,
        ..SegmentConfig::default()
    };
    let rt = runtime()?;
    // Catch Ctrl-C and SIGTERM before the file exists, so no signal can end
    // the process between its creation and its removal.
    let signals = {
        let _in_runtime = rt.enter();
        use tokio::signal::unix::{signal, SignalKind};
        (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?)
    };
    let segment = Segment::create(&path, config, FileCleanup::UnlinkOnDrop)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let segment = Arc::new(segment);
    println!(
        "host  pid {}: created {} ({}: {} guest slots, {} KiB rings, slots {}x4 KiB + {}x64 KiB)",
        std::process::id(),
        path.display(),
        human_bytes(segment.layout().total_size),
        segment.max_guests(),
        segment.bipbuf_capacity() / 1024,
        CLASSES[0].slot_count,
        CLASSES[1].slot_count,
    );
    let hub = HostHub::new(segment.clone());
    let work = async {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("demo-guest");
        let (link, mut child) = spawn_guest(&hub, cmd)?;
        println!("host: spawned guest pid {} as peer {}", child.id(), link.peer_id());
        let (tx, mut rx) = link.split();
        println!("\n{:<9} {:>10} {:>7} {:>12} {:>12}", "tier", "size", "rounds", "rtt p50", "rtt max");
        for (tier, size) in TIERS {
            let mut rtts = Vec::with_capacity(rounds as usize);
            for seq in 0..rounds {
                let started = Instant::now();
                let permit = tx.reserve().await?;
                let mut slot = permit.alloc(size)?;
                for (d, s) in slot.as_mut_slice().iter_mut().zip(pattern(seq, size)) {
                    *d = s;
                }
                slot.commit();
                let reply = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .map_err(|_| "the guest did not answer within 10 s")??
                    .ok_or("the guest closed early")?;
                rtts.push(started.elapsed());
                if !reply.as_bytes().iter().copied().eq(pattern(seq, size).map(|b| !b)) {
                    return Err(format!("{tier} reply {seq} is corrupt").into());
                }
            }
            rtts.sort();
            println!(
                "{tier:<9} {:>10} {rounds:>7} {:>12?} {:>12?}",
                human_size(size),
                rtts[rtts.len() / 2],
                rtts[rtts.len() - 1]
            );
        }
        let stats = tx.stats();
        tx.close().await?;
        let end = rx.recv().await?;
        if end.is_some() {
            return Err("expected the guest to close after us".into());
        }
        let status = tokio::task::spawn_blocking(move || child.wait()).await??;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((stats, status))
    };
    // Ctrl-C or SIGTERM ends the demo through the normal error path, so the
    // segment file is removed (and the guest sees its host go) instead of
    // being left behind.
    let (stats, status) = rt.block_on(async {
        tokio::select! {
            r = work => r,
            s = interrupted(signals) => Err(format!("interrupted by {s}; removing {}", path.display()).into()),
        }
    })?;
    println!(
        "\nhost sent {} inline / {} slot / {} mapping messages, rang the doorbell {} times, slept {} times",
        stats.inline_sends, stats.slot_ref_sends, stats.mmap_ref_sends, stats.doorbell_signals, stats.recv_waits
    );
    println!("host: guest exited with {status}");
    drop(hub);
    drop(segment);
    println!("host: segment dropped; {} {}", path.display(), if path.exists() { "still exists" } else { "removed" });
    if !status.success() {
        return Err("the guest failed".into());
    }
    Ok(())
}

/// Echoes every message back with its bytes inverted, until end of stream.
pub fn guest(rest: Vec<String>) -> Res {
    let (args, _) = GuestArgs::parse(rest, std::env::var(vox_shm::host::MMAP_TX_FD_ENV).ok())?;
    runtime()?.block_on(async {
        // SAFETY: these descriptors were inherited for us by the demo host and
        // are adopted once, here at start-up (checked before they are taken).
        let (_segment, link) = unsafe { args.connect(LinkOptions::default()) }?;
        let (tx, mut rx) = link.split();
        let mut n = 0u64;
        while let Some(m) = rx.recv().await? {
            let permit = tx.reserve().await?;
            let mut slot = permit.alloc(m.as_bytes().len())?;
            for (d, s) in slot.as_mut_slice().iter_mut().zip(m.as_bytes()) {
                *d = !s;
            }
            slot.commit();
            n += 1;
        }
        println!("guest pid {}: echoed {n} messages, host closed; closing", std::process::id());
        tx.close().await?;
        Ok(())
    })
}

/// A payload size as the demo and the benchmark name it: exact (`64 B`,
/// `32 KiB`, `4 MiB`), which sizes chosen as powers of two always are.
pub fn human_size(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => human_bytes(n as u64),
    }
}

/// Any byte count, for a person: the one formatter for amounts (files,
/// totals), with one decimal above a KiB.
pub fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn interrupted((mut int, mut term): (tokio::signal::unix::Signal, tokio::signal::unix::Signal)) -> &'static str {
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
