//! The host's two ways in, across real processes: guests that walk in over
//! the bootstrap socket and call the host's service through
//! `vox::serve_listener` (one refused walk-in ends only itself), and a guest
//! spawned through the listener's spawner that the host calls.

use std::future::IntoFuture;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vox_shm::bootstrap::WalkInPolicy;
use vox_shm::{Features, HostHub, LinkOptions, Segment, SegmentConfig};
use vox_shm_vox::host::GuestListener;
use vox_shm_vox::service::{EchoClient, EchoDispatcher, EchoService};

const GUEST: &str = env!("CARGO_BIN_EXE_vox-shm-vox-echo");

fn hub(max_guests: u8) -> HostHub {
    let config = SegmentConfig { max_guests, ..SegmentConfig::default() };
    HostHub::new(Arc::new(Segment::create_anonymous(config, Features::ALL).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walk_ins_call_the_host_and_a_refusal_stops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bootstrap.sock");
    let refused = Arc::new(AtomicUsize::new(0));
    let r = refused.clone();
    // Two slots for five guests over time: slots are recovered as guests leave.
    let listener = GuestListener::new(hub(2), LinkOptions::default())
        .walk_in(&socket, |sid| sid == b"right", WalkInPolicy::default())
        .unwrap()
        .on_refused(move |_| {
            r.fetch_add(1, Ordering::Relaxed);
        });
    assert_eq!(listener.path(), Some(socket.as_path()));
    let server = tokio::spawn(vox::serve_listener(listener, EchoDispatcher::new(EchoService)).into_future());
    tokio::time::timeout(Duration::from_secs(60), async {
        let walk_in = |sid: &str, calls: &str| {
            tokio::process::Command::new(GUEST).arg("--walk-in").arg(&socket).args([sid, calls]).status()
        };
        assert!(!walk_in("wrong", "1").await.unwrap().success(), "a wrong session id is refused");
        // The guest may exit before the host's accept loop reports it.
        while refused.load(Ordering::Relaxed) != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (a, b) = tokio::join!(walk_in("right", "500"), walk_in("right", "500"));
        assert!(a.unwrap().success() && b.unwrap().success(), "two guests call the host at once");
        for _ in 0..2 {
            assert!(walk_in("right", "50").await.unwrap().success(), "later guests get the freed slots");
        }
    })
    .await
    .expect("within a minute");
    assert!(!server.is_finished(), "the server still runs");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_guest_comes_through_the_listener() {
    let mut listener = GuestListener::new(hub(1), LinkOptions::default());
    assert_eq!(listener.path(), None);
    let mut child = listener.spawner().spawn(Command::new(GUEST)).unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        let link = listener.accept().await.unwrap();
        let guest = vox::initiator_on(link, vox::TransportMode::Bare).establish::<EchoClient>().await.unwrap();
        assert_eq!(guest.echo(5).await.unwrap(), 5);
        drop(guest);
        assert!(child.wait().await.unwrap().success(), "the guest ends when the host closes");
    })
    .await
    .expect("within 30 s");
}
