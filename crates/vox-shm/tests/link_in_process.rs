//! A host link and a guest link in one process, over real descriptors.

use std::sync::Arc;
use std::time::Duration;

use vox_shm::host::create_test_link_pair;
use vox_shm::{FileCleanup, Link, LinkRx, LinkTx, LinkTxPermit, Segment, SegmentConfig, SizeClassConfig, WriteSlot};

async fn send(tx: &impl LinkTx, bytes: &[u8]) {
    let p = tx.reserve().await.unwrap();
    let mut s = p.alloc(bytes.len()).unwrap();
    s.as_mut_slice().copy_from_slice(bytes);
    s.commit();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_size_both_ways_then_close() {
    let dir = tempfile::tempdir().unwrap();
    let classes = [SizeClassConfig { slot_size: 4096, slot_count: 8 }];
    let cfg =
        SegmentConfig { max_guests: 2, bipbuf_capacity: 4096, size_classes: &classes, ..SegmentConfig::default() };
    let seg = Arc::new(Segment::create(&dir.path().join("s"), cfg, FileCleanup::UnlinkOnDrop).unwrap());
    let (host, guest) = create_test_link_pair(seg.clone()).await.unwrap();
    let (htx, mut hrx) = host.split();
    let (gtx, mut grx) = guest.split();
    for size in [0usize, 5, 256, 257, 4092, 4093, 100_000] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        send(&htx, &data).await;
        let got = tokio::time::timeout(Duration::from_secs(5), grx.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(got.as_bytes(), &data[..], "size {size}");
        send(&gtx, &data).await;
        let got = tokio::time::timeout(Duration::from_secs(5), hrx.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(got.as_bytes(), &data[..], "size {size} back");
    }
    htx.close().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), grx.recv()).await.unwrap().unwrap().is_none());
}
