//! What goes wrong is a typed error that names it, and `?` turns every one
//! of them into an `io::Error` with a fitting kind and the typed error kept
//! as its source.

use std::io;
use std::sync::Arc;

use vox_shm::host::create_test_link_pair;
use vox_shm::{
    FileCleanup, GuestArgError, GuestArgs, HostError, HostHub, LinkError, LinkTx, PeerError, Segment, SegmentConfig,
    ShmLinkTxError, SizeClassConfig,
};

fn segment(dir: &std::path::Path, guests: u8) -> Arc<Segment> {
    let classes = [SizeClassConfig { slot_size: 4096, slot_count: 4 }];
    let config =
        SegmentConfig { max_guests: guests, bipbuf_capacity: 4096, size_classes: &classes, ..SegmentConfig::default() };
    Arc::new(Segment::create(&dir.join("seg"), config, FileCleanup::UnlinkOnDrop).unwrap())
}

fn args(list: &[&str]) -> Result<(GuestArgs, Vec<String>), GuestArgError> {
    GuestArgs::parse(list.iter().map(|s| s.to_string()), None)
}

#[test]
fn guest_arguments_say_which_is_wrong() {
    assert_eq!(args(&["--peer-id=1"]).unwrap_err(), GuestArgError::Missing { name: "--hub-path or --segment-fd" });
    assert_eq!(
        args(&["--segment-fd=3", "--peer-id=0"]).unwrap_err(),
        GuestArgError::BadValue { name: "--peer-id", value: "0".into(), problem: "not a peer id in 1..=255" }
    );
    assert!(matches!(
        args(&["--segment-fd=x", "--peer-id=1"]).unwrap_err(),
        GuestArgError::BadValue { name: "--segment-fd", .. }
    ));
    assert_eq!(args(&["--segment-fd=3", "--peer-id"]).unwrap_err(), GuestArgError::NoValue { name: "--peer-id" });
    let (parsed, rest) =
        args(&["--mine", "--segment-fd=3", "--peer-id", "2", "--doorbell-fd=4", "--mmap-control-fd=5"]).unwrap();
    assert_eq!((parsed.peer_id.get(), rest), (2, vec!["--mine".to_string()]));
    let e: io::Error = HostError::from(args(&["--peer-id=1"]).unwrap_err()).into();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn a_full_segment_and_a_reused_ring_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let seg = segment(dir.path(), 1);
    let hub = HostHub::new(seg.clone());
    let held = hub.prepare_peer().unwrap();
    let full = hub.prepare_peer().unwrap_err();
    assert!(matches!(full, HostError::NoFreePeerSlots { max_guests: 1 }), "{full}");
    assert_eq!(io::Error::from(full).kind(), io::ErrorKind::ResourceBusy);
    // The same guest's ring end twice in one process.
    let (host, ticket) = held.into_parts();
    let _link = host.into_link().unwrap();
    let claim = seg.claim_ring(ticket.peer_id, vox_shm::segment::RingEnd::HostTx).unwrap_err();
    assert_eq!(claim, PeerError::InUse { peer: ticket.peer_id.get() });
    let e: io::Error = LinkError::from(claim).into();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
}

#[tokio::test]
async fn sends_fail_typed() {
    let dir = tempfile::tempdir().unwrap();
    let seg = segment(dir.path(), 1);
    let max = seg.max_payload_size();
    let (host, guest) = create_test_link_pair(seg).await.unwrap();
    let (tx, _rx) = vox_shm::Link::split(host);
    let too_big = tx.reserve().await.unwrap().alloc(max as usize + 1).unwrap_err();
    assert!(matches!(too_big, ShmLinkTxError::TooLarge { max: m, .. } if m == max), "{too_big}");
    // Through the trait it is an io::Error with the typed error inside.
    let e = LinkTx::reserve(&tx).await.map(|p| vox_shm::LinkTxPermit::alloc(p, max as usize + 1));
    let e = e.unwrap().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(e.get_ref().unwrap().downcast_ref::<ShmLinkTxError>().is_some());
    drop(guest);
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match tx.reserve().await {
                Err(ShmLinkTxError::PeerGone { .. }) => break,
                Ok(p) => {
                    if let Ok(s) = p.alloc(8) {
                        vox_shm::WriteSlot::commit(s);
                    }
                }
                Err(e) => panic!("{e}"),
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a dead peer is PeerGone");
}

#[tokio::test]
async fn a_guest_given_the_wrong_descriptors_takes_none_of_them() {
    use std::io::{Seek, Write};
    use std::os::fd::AsRawFd;
    let mut file = tempfile::tempfile().unwrap();
    let (sock, _other) = std::os::unix::net::UnixStream::pair().unwrap();
    let (f, s) = (file.as_raw_fd().to_string(), sock.as_raw_fd().to_string());
    let parse = |seg: &str, bell: &str, ctl: &str| {
        let a = [
            format!("--segment-fd={seg}"),
            "--peer-id=1".into(),
            format!("--doorbell-fd={bell}"),
            format!("--mmap-control-fd={ctl}"),
        ];
        GuestArgs::parse(a, None).unwrap().0
    };
    // A file where a socket belongs, a stream socket where the control
    // channel belongs, a standard stream: each refused, none closed.
    for (args, what) in [
        (parse(&f, &f, &s), "a file as the doorbell"),
        (parse(&f, &s, &s), "a stream socket as the control channel"),
        (parse(&f, "1", &s), "stdout as the doorbell"),
    ] {
        // SAFETY: nothing is adopted unless every check passes, and these fail.
        let e = unsafe { args.connect(vox_shm::LinkOptions::default()) }.unwrap_err();
        assert!(matches!(e, HostError::Adopt(_) | HostError::Args(GuestArgError::BadValue { .. })), "{what}: {e}");
    }
    file.write_all(b"still open").unwrap();
    file.rewind().unwrap();
    assert!(sock.peer_addr().is_ok(), "the socket is still ours");
}
