//! One vox service, three transports: a host spawns two worker processes and
//! calls both at once while a third worker walks in, over shared memory
//! (`--transport shm`, the default) or over vox's own Unix socket or TCP
//! transports (`--transport unix|tcp`). The service and the calling code are
//! the same for all three; only where the link comes from differs.
//!
//! ```text
//! cargo run --release -p vox-shm-vox --example workers -- --transport shm
//! ```
//!
//! The workers are this same program, started with `--worker NAME`.
// The code `#[vox::service]` generates has no docs of its own.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use vox_shm::bootstrap::WalkInPolicy;
use vox_shm::{Features, HostHub, LinkOptions, Segment, SegmentConfig};
use vox_shm_vox::{guest, host::GuestListener};

type Res<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The service, defined once for every transport.
#[vox::service]
trait Worker {
    /// Who this worker is.
    async fn name(&self) -> String;
    /// A checksum of `data` (FNV-1a), computed by the worker.
    async fn checksum(&self, data: Vec<u8>) -> u64;
}

#[derive(Clone)]
struct WorkerImpl {
    name: String,
}

impl Worker for WorkerImpl {
    async fn name(&self) -> String {
        format!("{} (pid {})", self.name, std::process::id())
    }

    async fn checksum(&self, data: Vec<u8>) -> u64 {
        fnv1a(&data)
    }
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

const SESSION: &[u8] = b"workers-example";
/// Calls to each spawned worker: 16 B to 256 KiB arguments, so over shared
/// memory they travel inline, in pool slots and in mapping regions.
const CALLS: usize = 300;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Res {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let transport = arg("--transport").unwrap_or_else(|| "shm".into());
    if let Some(name) = arg("--worker") {
        return worker(&transport, name, arg("--connect"), arg("--walk-in")).await;
    }
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let worker_cmd = |name: &str, extra: &[&str]| {
        let mut cmd = Command::new(&exe);
        cmd.args(["--transport", &transport, "--worker", name]).args(extra);
        cmd
    };
    match transport.as_str() {
        "shm" => {
            let segment = Segment::create_anonymous(SegmentConfig::default(), Features::ALL)?;
            let socket = dir.path().join("bootstrap.sock");
            let listener = GuestListener::new(HostHub::new(Arc::new(segment)), LinkOptions::default())
                .walk_in(&socket, |sid| sid == SESSION, WalkInPolicy::default())?
                .on_refused(|e| eprintln!("host: refused a walk-in: {e}"));
            let spawner = listener.spawner();
            let socket = socket.to_str().ok_or("non-UTF-8 path")?.to_owned();
            run(listener, |name, walks_in| {
                if walks_in {
                    // Inherits nothing: it knows only the socket's path.
                    Ok(tokio::process::Command::from(worker_cmd(name, &["--walk-in", &socket])).spawn()?)
                } else {
                    Ok(spawner.spawn(worker_cmd(name, &[]))?)
                }
            })
            .await
        }
        "unix" => {
            let path = dir.path().join("workers.sock");
            let listener = vox::transport::local::LocalLinkAcceptor::bind(path_str(&path)?)?;
            run(listener, |name, _| {
                Ok(tokio::process::Command::from(worker_cmd(name, &["--connect", path_str(&path)?])).spawn()?)
            })
            .await
        }
        "tcp" => {
            let listener = NoDelay(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
            let addr = listener.0.local_addr()?.to_string();
            run(listener, |name, _| Ok(tokio::process::Command::from(worker_cmd(name, &["--connect", &addr])).spawn()?))
                .await
        }
        other => Err(format!("--transport {other}: expected shm, unix or tcp").into()),
    }
}

/// A TCP listener whose connections send at once (vox's own `TcpListener`
/// listener leaves Nagle's algorithm on, which holds small calls back).
struct NoDelay(tokio::net::TcpListener);

impl vox::VoxListener for NoDelay {
    type Link = vox::transport::tcp::StreamLink<tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf>;

    async fn accept(&mut self) -> std::io::Result<Self::Link> {
        let (stream, _) = self.0.accept().await?;
        stream.set_nodelay(true)?;
        Ok(vox::transport::tcp::StreamLink::tcp(stream))
    }
}

fn path_str(p: &Path) -> Res<&str> {
    p.to_str().ok_or_else(|| "non-UTF-8 path".into())
}

/// The host, the same for every transport: starts two workers and calls both
/// at once; meanwhile a third walks in and is called too; then all end.
async fn run<L: vox::VoxListener>(mut listener: L, start: impl Fn(&str, bool) -> Res<tokio::process::Child>) -> Res {
    let started = Instant::now();
    let mut children = vec![start("worker-1", false)?, start("worker-2", false)?];
    let mut workers = Vec::new();
    for _ in 0..2 {
        let link = listener.accept().await?;
        workers.push(vox::initiator_on(link, vox::TransportMode::Bare).establish::<WorkerClient>().await?);
    }
    let calls: Vec<_> = workers
        .iter()
        .cloned()
        .map(|w| {
            tokio::spawn(async move {
                let mut bytes = 0;
                for i in 0..CALLS {
                    let data: Vec<u8> = (0..16usize << (i % 15)).map(|j| (i + j) as u8).collect();
                    let want = fnv1a(&data);
                    bytes += data.len();
                    if w.checksum(data).await? != want {
                        return Err("a worker returned the wrong checksum".into());
                    }
                }
                Res::Ok((w.name().await?, bytes))
            })
        })
        .collect();
    // A third worker walks in while the calls run.
    children.push(start("walker", true)?);
    let walker =
        vox::initiator_on(listener.accept().await?, vox::TransportMode::Bare).establish::<WorkerClient>().await?;
    println!(
        "host: {} walked in; checksum of 1 KiB: {:x}",
        walker.name().await?,
        walker.checksum(vec![7; 1024]).await?
    );
    for c in calls {
        let (name, bytes) = c.await??;
        println!("host: {name} answered {CALLS} calls, {:.1} MiB of arguments", bytes as f64 / (1 << 20) as f64);
    }
    // Graceful end: dropping a client closes its connection; each worker
    // then returns from `closed()` and exits 0.
    drop((workers, walker));
    for mut child in children {
        let status = child.wait().await?;
        if !status.success() {
            return Err(format!("a worker failed: {status}").into());
        }
    }
    println!("host: all workers done in {:.0?}", started.elapsed());
    Ok(())
}

/// A worker: gets its link (inherited, walked in, or connected to an
/// address) and serves the service until the host closes.
async fn worker(transport: &str, name: String, connect: Option<String>, walk_in: Option<String>) -> Res {
    let service = WorkerDispatcher::new(WorkerImpl { name });
    match (transport, connect, walk_in) {
        ("shm", _, Some(path)) => {
            serve(guest::walk_in(&PathBuf::from(path), SESSION, LinkOptions::default()).await?, service).await
        }
        ("shm", _, None) => serve(guest::inherited(LinkOptions::default())?, service).await,
        ("unix", Some(addr), _) => serve(vox::transport::local::LocalLink::connect(&addr).await?, service).await,
        ("tcp", Some(addr), _) => {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            serve(vox::transport::tcp::StreamLink::tcp(stream), service).await
        }
        _ => Err("a worker needs --connect ADDR over unix and tcp".into()),
    }
}

async fn serve<L>(link: L, service: WorkerDispatcher<WorkerImpl>) -> Res
where
    L: vox::Link + Send + 'static,
    L::Tx: Send + Sync + 'static,
    L::Rx: Send + 'static,
{
    let session = vox::acceptor_on(link).on_connection(service).establish::<vox::NoopClient>().await?;
    session.caller.closed().await;
    Ok(())
}
