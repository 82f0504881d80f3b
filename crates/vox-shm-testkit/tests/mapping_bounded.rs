//! Resource accounting across many links; a test binary of its own, so no
//! other test's descriptors or mappings share the process.

use vox_shm::mmap_registry::DEFAULT_MAPPING_BUDGET;
use vox_shm::{Link, WriteSlot};
use vox_shm_testkit::harness::{finish, hub, spawn, SMALL_POOL};
use vox_shm_testkit::{fd_count, fill_large, regions_in_default_budget, status_kb};

const PEER: &str = env!("CARGO_BIN_EXE_shm-test-peer");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_1mib_mapping_messages_stay_bounded() {
    const N: u64 = 10_000;
    const SIZE: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 64 * 1024, &SMALL_POOL, 1);
    let (link, child) = spawn(PEER, &hub, &["sink-large", &N.to_string(), &SIZE.to_string()]);
    let (tx, _rx) = link.split();
    let (fds_before, rss_before) = (fd_count(), status_kb("VmRSS"));
    for seq in 0..N {
        let p = tx.reserve().await.unwrap();
        let mut s = p.alloc(SIZE).unwrap();
        fill_large(seq, s.as_mut_slice());
        s.commit();
    }
    let (fds_end, rss_end) = (fd_count(), status_kb("VmRSS"));
    let stats = tx.stats();
    tx.close().await.unwrap();
    assert!(finish(child).await.contains(&format!("received {N}")));
    assert_eq!(stats.mmap_ref_sends, N);
    // A region's descriptor is closed once it has been sent (the mapping
    // alone keeps the region), so neither regions nor messages keep any.
    assert_eq!(fds_end, fds_before, "descriptor count grew: {stats:?}");
    // How many regions are resident at a time depends on how far the
    // receiver lags (one scheduler hiccup can fill the budget at any point),
    // so the bound is the budget itself plus slack for the runtime; a leak of
    // even 1% of the 10 GiB sent would be far beyond it.
    let budget_kb = DEFAULT_MAPPING_BUDGET / 1024;
    assert!(
        rss_end <= rss_before + budget_kb + 32 * 1024,
        "RSS grew from {rss_before} kB to {rss_end} kB (budget {budget_kb} kB)"
    );
    // Each region holds one 1 MiB payload (plus its header, rounded to a
    // page), so the default 64 MiB budget holds 63 of them; after that every
    // message reuses a drained region, whenever the receiver drains it.
    let most = regions_in_default_budget(SIZE);
    assert!(stats.mmap_regions_created <= most, "at most {most} regions: {stats:?}");
    assert_eq!(stats.mmap_regions_retired, 0, "no region needs a bigger file: {stats:?}");
    assert_eq!(stats.mmap_regions_created + stats.mmap_regions_reused, N, "every other message reuses one: {stats:?}");
    eprintln!("1 MiB x {N}: {stats:?}, RSS {rss_before} -> {rss_end} kB, fds {fds_before} -> {fds_end}");
}
