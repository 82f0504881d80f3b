//! The interop peer built on vox-shm 0.3.1 from the registry.
//!
//! `legacy-peer host GUEST-BINARY` or `legacy-peer guest <0.3.1 guest args>`.

use std::os::fd::RawFd;
use std::process::{Command, ExitCode};
use std::sync::Arc;

use shm_primitives::FileCleanup;
use vox_shm::host::HostHub;
use vox_shm::{guest_link_from_raw, Segment, SegmentConfig, SizeClassConfig};
use vox_types::{Link, LinkRx, LinkTx, LinkTxPermit, WriteSlot};

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
        Some("guest") => rt.block_on(guest(&args[1..])),
        Some("bootstrap-host") => rt.block_on(bootstrap_host(args.get(1).cloned().unwrap_or_default())),
        Some("bootstrap-guest") => rt.block_on(bootstrap_guest(args.get(1).cloned().unwrap_or_default())),
        _ => Err("usage: legacy-peer host GUEST | legacy-peer guest ARGS".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("legacy-peer: {e}");
            ExitCode::from(1)
        }
    }
}

fn create_segment(dir: &std::path::Path) -> Res<(std::path::PathBuf, Arc<Segment>)> {
    std::fs::create_dir_all(dir)?;
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
    let seg = Arc::new(Segment::create(&path, cfg, FileCleanup::Manual)?);
    Ok((path, seg))
}

async fn host(guest_bin: String) -> Res {
    let dir = std::env::temp_dir().join(format!("interop-legacy-{}", std::process::id()));
    let (path, seg) = create_segment(&dir)?;
    let (host_peer, ticket) = HostHub::new(seg.clone()).prepare_peer()?.into_parts();
    let child = Command::new(&guest_bin)
        .arg("guest")
        .arg(format!("--hub-path={}", path.display()))
        .arg(format!("--peer-id={}", ticket.peer_id.get()))
        .arg(format!("--doorbell-fd={}", ticket.doorbell_arg()))
        .arg(format!("--mmap-control-fd={}", ticket.mmap_rx_arg()))
        .env("SHM_MMAP_TX_FD", ticket.mmap_tx_arg())
        .spawn()?;
    drop(ticket);
    let (tx, mut rx) = host_peer.into_link()?.split();
    let n = scenario::host(&tx, &mut rx).await?;
    println!("STATS impl=0.3.1 role=host messages={n}");
    scenario::reap_guest(child, &dir).await
}

async fn guest(args: &[String]) -> Res {
    let a = scenario::parse_guest_args(args)?;
    let seg = Arc::new(Segment::attach(&a.hub_path).map_err(|e| format!("attach: {e:?}"))?);
    let peer = shm_primitives::PeerId::new(a.peer_id).ok_or("bad peer id")?;
    // 0.3.1 guests need a sending descriptor; the channel is bidirectional, so a
    // duplicate of the control descriptor serves when none was inherited.
    let tx_fd: RawFd = match a.mmap_tx_fd {
        Some(fd) => fd,
        // SAFETY: dup of an inherited descriptor we own.
        None => unsafe { libc_dup(a.mmap_control_fd) },
    };
    // SAFETY: the descriptors were inherited for this guest and are adopted once.
    let link = unsafe { guest_link_from_raw(seg, peer, a.doorbell_fd, a.mmap_control_fd, tx_fd, true) }?;
    let (tx, mut rx) = link.split();
    let n = scenario::guest(&tx, &mut rx).await?;
    println!("STATS impl=0.3.1 role=guest messages={n}");
    Ok(())
}

/// Serves one walk-in guest over a Unix control socket (0.3.1's bootstrap).
async fn bootstrap_host(guest_bin: String) -> Res {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let dir = std::env::temp_dir().join(format!("interop-legacy-bs-{}", std::process::id()));
    let (path, seg) = create_segment(&dir)?;
    let sock = dir.join("control.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock)?;
    // Spawned with nothing inherited: it walks in over the socket.
    let child = Command::new(&guest_bin).arg("bootstrap-guest").arg(&sock).spawn()?;
    let (mut stream, _) = listener.accept()?;
    let mut buf = vec![0u8; 2048];
    let n = stream.read(&mut buf)?;
    let req = vox_shm::bootstrap::decode_request(&buf[..n]).map_err(|e| format!("{e:?}"))?;
    if req.sid != b"interop" {
        return Err("unexpected session id".into());
    }
    let hub = HostHub::new(seg.clone());
    let prepared = hub.prepare_bootstrap_success(path.to_string_lossy().as_bytes())?;
    prepared.send_success_unix(stream.as_raw_fd(), &seg).map_err(|e| format!("{e:?}"))?;
    let vox_shm::bootstrap::PreparedBootstrapPeer { host_peer, guest_ticket, .. } = prepared;
    drop(guest_ticket);
    let (tx, mut rx) = host_peer.into_link()?.split();
    let n = scenario::host(&tx, &mut rx).await?;
    println!("STATS impl=0.3.1 role=host messages={n}");
    scenario::reap_guest(child, &dir).await
}

/// Walks in over a host's control socket (0.3.1's bootstrap).
async fn bootstrap_guest(sock: String) -> Res {
    use std::io::Write;
    use std::os::fd::{AsRawFd, IntoRawFd};
    let mut stream = std::os::unix::net::UnixStream::connect(&sock)?;
    stream.write_all(&vox_shm::bootstrap::encode_request(b"interop").map_err(|e| format!("{e:?}"))?)?;
    let r = shm_primitives::bootstrap::recv_response_unix(stream.as_raw_fd()).map_err(|e| format!("{e:?}"))?;
    let fds = r.fds.ok_or("no descriptors")?;
    let path = String::from_utf8(r.response.payload.clone())?;
    let seg = Arc::new(Segment::attach(std::path::Path::new(&path)).map_err(|e| format!("attach: {e:?}"))?);
    let peer = shm_primitives::PeerId::new(u8::try_from(r.response.peer_id)?).ok_or("bad peer id")?;
    let control = fds.mmap_control_fd.into_raw_fd();
    // SAFETY: `control` is open (just received).
    let tx_fd = unsafe { libc_dup(control) };
    // SAFETY: received for this guest; each descriptor is adopted once.
    let link = unsafe { guest_link_from_raw(seg, peer, fds.doorbell_fd.into_raw_fd(), control, tx_fd, true) }?;
    drop(fds.segment_fd);
    let (tx, mut rx) = link.split();
    let n = scenario::guest(&tx, &mut rx).await?;
    println!("STATS impl=0.3.1 role=guest messages={n}");
    Ok(())
}

extern "C" {
    fn dup(fd: i32) -> i32;
}

/// # Safety
/// `fd` must be open.
unsafe fn libc_dup(fd: i32) -> i32 {
    // SAFETY: forwarded.
    unsafe { dup(fd) }
}
