//! Bootstrap over a real Unix control socket, host and guest in one process.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::task::JoinHandle;
use vox_shm::bootstrap::{connect, serve_one, BootstrapError};
use vox_shm::host::HostHub;
use vox_shm::{FileCleanup, Link, LinkOptions, Segment, SegmentConfig, ShmLink, WriteSlot};

/// A hub in `dir` and a task serving one walk-in guest (session id
/// `secret`) on `dir/bootstrap.sock`.
fn serve(dir: &std::path::Path) -> (HostHub, std::path::PathBuf, JoinHandle<Result<ShmLink, BootstrapError>>) {
    let cfg = SegmentConfig { max_guests: 2, bipbuf_capacity: 8192, ..SegmentConfig::default() };
    let hub = HostHub::new(Arc::new(Segment::create(&dir.join("seg"), cfg, FileCleanup::UnlinkOnDrop).unwrap()));
    let sock = dir.join("bootstrap.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let host = tokio::spawn({
        let hub = hub.clone();
        async move { serve_one(&listener, &hub, |sid| sid == b"secret", LinkOptions::default()).await }
    });
    (hub, sock, host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_in_guest_gets_a_working_link() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, sock, host) = serve(dir.path());
    let (seg, guest) = connect(&sock, b"secret", LinkOptions::default()).await.unwrap();
    let host = tokio::time::timeout(Duration::from_secs(10), host).await.unwrap().unwrap().unwrap();
    assert_eq!(host.peer_id(), guest.peer_id());
    assert_eq!(seg.layout(), hub.segment().layout());
    let (gtx, _grx) = guest.split();
    let (_htx, mut hrx) = host.split();
    for len in [10usize, 5000, 300_000] {
        let mut s = gtx.reserve().await.unwrap().alloc(len).unwrap();
        s.as_mut_slice().fill(len as u8);
        s.commit();
        let m = hrx.recv().await.unwrap().unwrap();
        assert_eq!(m.as_bytes().len(), len);
        assert!(m.as_bytes().iter().all(|&b| b == len as u8));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_session_id_is_refused_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, sock, host) = serve(dir.path());
    match connect(&sock, b"guess", LinkOptions::default()).await {
        Err(BootstrapError::Rejected(why)) => assert!(why.contains("session id"), "{why}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(host.await.unwrap(), Err(BootstrapError::Rejected(_))));
    assert!(hub.segment().peer_table().iter().all(|(_, e)| e.state() == shm_primitives::PeerState::Empty));
}
