//! The interop peer built on this repository's crates.
//!
//! `our-peer host GUEST-BINARY` or `our-peer guest <guest args>`.
//! Prints the link's statistics, so the run shows whether our extensions
//! were negotiated (wake on demand: few doorbell signals per message) or
//! stayed off (a 0.3.1 peer: one signal per commit and per release).

use std::process::{Command, ExitCode};
use std::sync::Arc;

use vox_shm::host::{spawn_guest, GuestArgs, HostHub};
use vox_shm::{
    FileCleanup, Link, LinkOptions, LinkRx, LinkTx, LinkTxPermit, Segment, SegmentConfig, ShmLink, SizeClassConfig,
    WriteSlot,
};

mod scenario {
    #![allow(dead_code)]
    use super::{LinkRx, LinkTx, LinkTxPermit, WriteSlot};
    include!("../../common/scenario.rs");
}

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let r = match args.first().map(String::as_str) {
        Some("host") => rt.block_on(host(args.get(1).cloned().unwrap_or_default())),
        Some("guest") => rt.block_on(guest(args[1..].to_vec())),
        Some("bootstrap-host") => rt.block_on(bootstrap_host(args.get(1).cloned().unwrap_or_default())),
        Some("bootstrap-guest") => rt.block_on(bootstrap_guest(args.get(1).cloned().unwrap_or_default())),
        _ => Err("usage: our-peer host GUEST | our-peer guest ARGS".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("our-peer: {e}");
            ExitCode::from(1)
        }
    }
}

fn stats_line(role: &str, link_features: Option<vox_shm::Features>, s: vox_shm::ShmTransportStatsSnapshot, n: u64) {
    let features = link_features.map(|f| f.to_string()).unwrap_or_else(|| "unknown".into());
    let signals_per_msg = s.doorbell_signals as f64 / n.max(1) as f64;
    println!(
        "STATS impl=ours role={role} messages={n} negotiated={features} doorbell_signals={} signals_per_message={signals_per_msg:.3} wait_announcements={}",
        s.doorbell_signals, s.wait_announcements
    );
}

async fn run(link: ShmLink, host: bool) -> Res<u64> {
    let (tx, mut rx) = link.split();
    let n = if host { scenario::host(&tx, &mut rx).await? } else { scenario::guest(&tx, &mut rx).await? };
    // By now the guest has long claimed its slot, so its features are known.
    stats_line(if host { "host" } else { "guest" }, tx.negotiated_features(), tx.stats(), n);
    Ok(n)
}

fn create_segment(dir: &std::path::Path) -> Res<Arc<Segment>> {
    let path = dir.join("seg.shm");
    let classes: Vec<SizeClassConfig> =
        scenario::CLASSES.iter().map(|&(slot_size, slot_count)| SizeClassConfig { slot_size, slot_count }).collect();
    let cfg = SegmentConfig {
        max_guests: 2,
        bipbuf_capacity: scenario::RING,
        max_payload_size: scenario::MAX_PAYLOAD,
        inline_threshold: 256,
        heartbeat_interval: 0,
        size_classes: &classes,
    };
    Ok(Arc::new(Segment::create(&path, cfg, FileCleanup::UnlinkOnDrop)?))
}

async fn host(guest_bin: String) -> Res {
    let dir = tempdir()?;
    let seg = create_segment(&dir)?;
    let mut cmd = Command::new(&guest_bin);
    cmd.arg("guest");
    let (link, child) = spawn_guest(&HostHub::new(seg), cmd)?;
    run(link, true).await?;
    scenario::reap_guest(child, &dir).await
}

async fn guest(args: Vec<String>) -> Res {
    let (a, _) = GuestArgs::parse(args, std::env::var(vox_shm::host::MMAP_TX_FD_ENV).ok())?;
    // SAFETY: the descriptors were inherited for this guest and are adopted once.
    let (_seg, link) = unsafe { a.connect(LinkOptions::default()) }?;
    run(link, false).await?;
    Ok(())
}

/// Serves one walk-in guest over a Unix control socket.
async fn bootstrap_host(guest_bin: String) -> Res {
    let dir = tempdir()?;
    let seg = create_segment(&dir)?;
    let sock = dir.join("control.sock");
    let listener = tokio::net::UnixListener::bind(&sock)?;
    // Spawned with nothing inherited: it walks in over the socket.
    let child = Command::new(&guest_bin).arg("bootstrap-guest").arg(&sock).spawn()?;
    let hub = HostHub::new(seg);
    let link = vox_shm::bootstrap::serve_one(&listener, &hub, |sid| sid == b"interop", LinkOptions::default()).await?;
    run(link, true).await?;
    scenario::reap_guest(child, &dir).await
}

/// Walks in over a host's control socket.
async fn bootstrap_guest(sock: String) -> Res {
    let (_seg, link) =
        vox_shm::bootstrap::connect(std::path::Path::new(&sock), b"interop", LinkOptions::default()).await?;
    run(link, false).await?;
    Ok(())
}

fn tempdir() -> std::io::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("interop-ours-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
