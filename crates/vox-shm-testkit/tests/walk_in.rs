//! Walk-in bootstrap under pressure and with a credential policy: real guest
//! processes, a silent client, a request written in pieces, and a process of
//! another uid (the tests run as root, so a child can drop to `nobody`).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use vox_shm::bootstrap::{BootstrapServer, BootstrapStatus, WalkInError, WalkInPolicy};
use vox_shm::{Link, LinkOptions};
use vox_shm_testkit::check_payload;
use vox_shm_testkit::harness::{finish, hub, recv, send, SMALL_POOL};

const PEER: &str = env!("CARGO_BIN_EXE_shm-test-peer");

fn guest(sock: &Path) -> Command {
    guest_from(Path::new(PEER), sock)
}

fn guest_from(bin: &Path, sock: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args(["bootstrap", sock.to_str().unwrap(), "sid"]).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn server(dir: &Path, hub: vox_shm::HostHub, policy: WalkInPolicy) -> BootstrapServer {
    BootstrapServer::bind(&dir.join("boot.sock"), hub, |sid| sid == b"sid", policy, LinkOptions::default()).unwrap()
}

async fn next(server: &mut BootstrapServer) -> Result<vox_shm::bootstrap::WalkIn, WalkInError> {
    tokio::time::timeout(Duration::from_secs(20), server.accept()).await.expect("server answered").expect("running")
}

async fn echo_once(link: vox_shm::ShmLink) {
    let (tx, mut rx) = link.split();
    send(&tx, 5, 9000).await.unwrap();
    check_payload(5, 9000, recv(&mut rx).await.unwrap().unwrap().as_bytes()).unwrap();
    tx.close().await.unwrap();
    assert!(recv(&mut rx).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_delays_no_walk_in_and_the_host_learns_who_came() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 2);
    let policy = WalkInPolicy { deadline: Duration::from_secs(3), ..WalkInPolicy::default() };
    let mut server = server(dir.path(), hub, policy);
    assert_eq!(std::fs::metadata(server.path()).unwrap().permissions().mode() & 0o777, 0o600, "owner-only socket");
    let _silent = tokio::net::UnixStream::connect(server.path()).await.unwrap();
    let started = Instant::now();
    let child = guest(server.path()).spawn().unwrap();
    let w = next(&mut server).await.expect("the honest guest walks in");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(2), "the honest guest waited {waited:?} behind a silent client");
    assert_eq!(w.pid, Some(child.id() as i32), "the host learns the guest's pid");
    // SAFETY: geteuid has no preconditions.
    assert_eq!(w.uid, unsafe { libc::geteuid() });
    echo_once(w.link).await;
    finish(child).await;
    // The silent client is dropped at its deadline, with a typed error.
    assert!(matches!(next(&mut server).await, Err(WalkInError::Deadline(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_written_in_two_parts_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 2);
    let mut server = server(dir.path(), hub, WalkInPolicy::default());
    let mut stream = tokio::net::UnixStream::connect(server.path()).await.unwrap();
    let request = vox_shm::bootstrap::encode_request(b"sid").unwrap();
    stream.write_all(&request[..3]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(&request[3..]).await.unwrap();
    let r = vox_shm::bootstrap::recv_response(&mut stream).await.unwrap();
    assert_eq!(r.status, BootstrapStatus::Success);
    assert!(r.fds.is_some());
    let w = next(&mut server).await.unwrap();
    assert_eq!(u32::from(w.peer_id.get()), r.peer_id);
}

/// Hostile bytes on the bootstrap socket: a bad magic, a session id longer
/// than any request may be, and a request cut short by a hang-up each get a
/// typed error; the next honest guest is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_requests_are_typed_errors_and_serve_on() {
    use vox_shm::bootstrap::BootstrapError;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 2);
    let mut server = server(dir.path(), hub, WalkInPolicy::default());
    // (bytes, what the refusal names)
    let cases: [(&[u8], &str); 3] =
        [(b"XXXX\x00\x00", "magic"), (b"RSH0\xff\xff", "does not fit"), (b"RSH0\x10\x00abc", "truncated")];
    for (bytes, names) in cases {
        let mut stream = tokio::net::UnixStream::connect(server.path()).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        stream.shutdown().await.unwrap();
        match next(&mut server).await {
            Err(WalkInError::Bootstrap(BootstrapError::Rejected(why))) => {
                assert!(why.starts_with("bad request") && why.contains(names), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // The client got the refusal in the protocol, with no descriptor.
        let r = vox_shm::bootstrap::recv_response(&mut stream).await.unwrap();
        assert_eq!(r.status, BootstrapStatus::Error);
        assert!(r.fds.is_none());
    }
    let child = guest(server.path()).spawn().unwrap();
    echo_once(next(&mut server).await.unwrap().link).await;
    finish(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_the_policy_does_not_allow_gets_a_refusal_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 2);
    // Only uid 12345 may walk in; the guest runs as us.
    let policy = WalkInPolicy { allowed_uids: Some(vec![12345]), ..WalkInPolicy::default() };
    let mut server = server(dir.path(), hub.clone(), policy);
    let child = guest(server.path()).spawn().unwrap();
    let pid = child.id() as i32;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    match next(&mut server).await {
        Err(WalkInError::NotAllowed { uid, pid: Some(p) }) => assert_eq!((uid, p), (me, pid)),
        other => panic!("{other:?}"),
    }
    let out = tokio::task::spawn_blocking(move || vox_shm_testkit::wait_bounded(child, Duration::from_secs(20)))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("may not walk in"), "{}: {stderr}", out.status);
    for (_, e) in hub.segment().peer_table().iter() {
        assert_eq!(e.state(), shm_primitives::PeerState::Empty, "a refused process got no slot");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_uid_walks_in_only_when_the_policy_allows_it() {
    const NOBODY: u32 = 65534;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // `nobody` may not be able to reach the build directory (a checkout under
    // a private directory): run a copy of the peer from here.
    let bin = dir.path().join("shm-test-peer");
    std::fs::copy(PEER, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |sock: &Path| {
        let mut c = guest_from(&bin, sock);
        c.uid(NOBODY).gid(NOBODY);
        c
    };
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 2);
    {
        // Default policy: the socket is owner-only, so `nobody` cannot connect.
        let _server = server(dir.path(), hub.clone(), WalkInPolicy::default());
        let out = as_nobody(&dir.path().join("boot.sock")).output().unwrap();
        assert!(!out.status.success(), "nobody walked in under the default policy");
        assert!(String::from_utf8_lossy(&out.stderr).contains("ermission denied"), "{out:?}");
    }
    let mut server = server(dir.path(), hub, WalkInPolicy::also_uids(&[NOBODY]));
    let child = as_nobody(server.path()).spawn().unwrap();
    let w = next(&mut server).await.expect("nobody is allowed now");
    assert_eq!((w.uid, w.gid), (NOBODY, NOBODY));
    echo_once(w.link).await;
    finish(child).await;
}
