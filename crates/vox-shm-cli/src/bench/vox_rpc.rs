//! `vox-shm bench --rpc`: vox 0.8 calls between two processes, over vox-shm
//! (the default wait strategy), over vox's own Unix-socket transport and
//! over TCP loopback, each case in fresh host and guest processes. The guest
//! serves `vox_shm_vox::service::Echo`; the host runs `callers` concurrent
//! callers on its one `current_thread` runtime and times every call.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use vox_shm::host::{spawn_guest_with, HostHub};
use vox_shm::LinkOptions;
use vox_shm_vox::service::{EchoClient, EchoDispatcher, EchoService};
use vox_shm_vox::VoxLink;

use super::model::{warmup_count, Case, Kind, Measured, Pool, Transport};
use super::{bench_segment, shm_guest_link};
use crate::Res;

/// Argument sizes: a `u64` (`echo`), and a 64 KiB blob (`echo_bytes`).
const SIZES: [usize; 2] = [8, 64 << 10];

/// The `--rpc` cases: for each size and 1 or 16 callers, vox over its Unix
/// socket (the baseline), over TCP, over vox-shm with each wait strategy,
/// and over no transport at all (vox's memory link between two threads: the
/// most any transport could give).
pub fn cases(quick: bool) -> Vec<Case> {
    let mut out = Vec::new();
    for size in SIZES {
        for callers in [1, 16] {
            let full: u64 = if size == 8 { 20_000 * (1 + u64::from(callers) / 8) } else { 5_000 };
            let count = if quick { (full / 10).max(200) } else { full };
            for transport in [
                Transport::Uds,
                Transport::Tcp,
                Transport::ShmPark,
                Transport::ShmSpin,
                Transport::ShmBusyPoll,
                Transport::Memory,
            ] {
                out.push(Case {
                    kind: Kind::Vox,
                    size,
                    count,
                    transport,
                    pool: Pool::Slots,
                    callers,
                    one_cpu: false,
                    in_block_on: false,
                });
            }
        }
    }
    out
}

/// The host process of a `--rpc` case: starts the guest with `cmd`, connects
/// over the case's transport, and measures.
pub async fn host(case: &Case, mut cmd: Command) -> Res<Measured> {
    let dir = tempfile::tempdir()?;
    match case.transport {
        Transport::Memory => {
            let (host, guest) = vox::memory_link_pair(256);
            // The serving side on a thread and runtime of its own, as it
            // would be in its own process.
            let server = std::thread::spawn(move || crate::runtime()?.block_on(serve(guest)));
            let m = measure(case, host, None).await?;
            // Joined off the runtime, which must go on to close the session.
            tokio::task::spawn_blocking(move || server.join()).await?.map_err(|_| "the serving thread panicked")??;
            Ok(m)
        }
        Transport::Uds => {
            let path = dir.path().join("vox.sock");
            let path = path.to_str().ok_or("non-UTF-8 temporary path")?;
            let mut listener = vox::transport::local::LocalLinkAcceptor::bind(path)?;
            let child = cmd.arg(format!("--vox-local={path}")).spawn()?;
            measure(case, vox::VoxListener::accept(&mut listener).await?, Some(child)).await
        }
        Transport::Tcp => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let child = cmd.arg(format!("--vox-tcp={}", listener.local_addr()?)).spawn()?;
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            measure(case, vox::transport::tcp::StreamLink::tcp(stream), Some(child)).await
        }
        _ => {
            let opts = LinkOptions { wait: case.transport.wait(), ..LinkOptions::default() };
            // The slot tier carries everything up to 128 KiB, so a 64 KiB
            // blob (and vox's frame around it) goes through the pool.
            let (link, child) = spawn_guest_with(&HostHub::new(bench_segment(Pool::MappingTier)?), cmd, opts)?;
            measure(case, VoxLink::from(link), Some(child)).await
        }
    }
}

/// One call of the case's kind, checked.
async fn call(client: &EchoClient, size: usize, i: u64, blob: &[u8]) -> Res {
    let ok = if size == 8 { client.echo(i).await? == i } else { client.echo_bytes(blob.to_vec()).await?.len() == size };
    if ok {
        Ok(())
    } else {
        Err("the guest answered wrongly".into())
    }
}

/// Calls through `link` and times them; then ends the session and waits
/// for the guest process (if there is one) to exit.
async fn measure<L>(case: &Case, link: L, child: Option<std::process::Child>) -> Res<Measured>
where
    L: vox::Link + Send + 'static,
    L::Tx: Send + Sync + 'static,
    L::Rx: Send + 'static,
{
    let client = vox::initiator_on(link, vox::TransportMode::Bare).establish::<EchoClient>().await?;
    let size = case.size;
    let blob: Arc<[u8]> = (0..size).map(|i| i as u8).collect();
    // Warm up (the guest running, pages touched) before the clock starts.
    for i in 0..warmup_count(case.count) {
        call(&client, size, i, &blob).await?;
    }
    let callers = u64::from(case.callers.max(1));
    let per_caller = (case.count / callers).max(1);
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (client, blob) = (client.clone(), blob.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_caller as usize);
                for i in 0..per_caller {
                    let t = Instant::now();
                    call(&client, size, i, &blob).await?;
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                Res::Ok(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    // Graceful end: the guest sees its session close and exits.
    drop(client);
    if let Some(mut child) = child {
        let status = tokio::task::spawn_blocking(move || child.wait()).await??;
        if !status.success() {
            return Err(format!("guest failed: {status}").into());
        }
    }
    Ok(Measured::from_sorted_latencies(&lat, secs))
}

/// The guest process of a `--rpc` case: serves `Echo` until the host ends
/// the session.
pub async fn guest(case: &Case, rest: Vec<String>) -> Res {
    let arg = |name: &str| rest.iter().find_map(|a| a.strip_prefix(name)).map(str::to_owned);
    if let Some(path) = arg("--vox-local=") {
        serve(vox::transport::local::LocalLink::connect(&path).await?).await
    } else if let Some(addr) = arg("--vox-tcp=") {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        serve(vox::transport::tcp::StreamLink::tcp(stream)).await
    } else {
        let (_seg, link) = shm_guest_link(case, rest)?;
        serve(VoxLink::from(link)).await
    }
}

async fn serve<L>(link: L) -> Res
where
    L: vox::Link + Send + 'static,
    L::Tx: Send + Sync + 'static,
    L::Rx: Send + 'static,
{
    let session =
        vox::acceptor_on(link).on_connection(EchoDispatcher::new(EchoService)).establish::<vox::NoopClient>().await?;
    session.caller.closed().await;
    Ok(())
}
