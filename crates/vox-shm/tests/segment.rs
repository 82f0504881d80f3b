//! Segment creation and attach: golden vectors, validation, file handling.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use shm_primitives::header::offsets as hdr;
use shm_primitives::layout::LayoutError;
use shm_primitives::peer::PeerState;
use shm_primitives::validate::HeaderError;
use vox_shm::segment::{AttachError, CreateError, CreateOptions, PeerError, Segment, SegmentConfig};
use vox_shm::{Features, FileCleanup, PeerId, SizeClassConfig};

const GOLDEN_LAYOUT: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/golden/shm/segment_layout.bin"));
const GOLDEN_HEADER: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/golden/shm/segment_header.bin"));

const EXAMPLE_CLASSES: [SizeClassConfig; 2] =
    [SizeClassConfig { slot_size: 1024, slot_count: 4 }, SizeClassConfig { slot_size: 16384, slot_count: 2 }];

/// Spec A1.2's first worked example.
fn example_config() -> SegmentConfig<'static> {
    SegmentConfig {
        max_guests: 2,
        bipbuf_capacity: 128,
        max_payload_size: 1024,
        inline_threshold: 256,
        heartbeat_interval: 1_000_000,
        size_classes: &EXAMPLE_CLASSES,
    }
}

fn create_example(dir: &Path, features: Features) -> (PathBuf, Segment) {
    let path = dir.join("seg.shm");
    let opts = CreateOptions { cleanup: FileCleanup::Manual, host_features: features, ..CreateOptions::default() };
    let seg = Segment::create_with(&path, example_config(), opts).unwrap();
    (path, seg)
}

/// The change the golden file carries after creation: guest 1 Attached, epoch
/// 7, heartbeat 12,345,678 — made through the public peer API.
fn apply_golden_peer_change(seg: &Segment) {
    let id = PeerId::new(1).unwrap();
    for _ in 0..6 {
        assert_eq!(seg.reserve_peer(), Some(id));
        seg.release_reserved_peer(id).unwrap();
    }
    assert_eq!(seg.reserve_peer(), Some(id));
    seg.claim_peer(id).unwrap();
    let e = seg.peer_entry(id).unwrap();
    e.update_heartbeat(12_345_678);
    assert_eq!((e.state(), e.epoch()), (PeerState::Attached, 7));
}

#[test]
fn golden_segment_layout_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (path, seg) = create_example(dir.path(), Features::NONE);
    apply_golden_peer_change(&seg);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), GOLDEN_LAYOUT.len());
    let first_diff = bytes.iter().zip(GOLDEN_LAYOUT).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "segment differs from segment_layout.bin");
    assert_eq!(&bytes[..128], GOLDEN_HEADER);
}

#[test]
fn golden_layout_with_extensions_differs_only_in_host_features() {
    let dir = tempfile::tempdir().unwrap();
    let (path, seg) = create_example(dir.path(), Features::ALL);
    apply_golden_peer_change(&seg);
    let bytes = std::fs::read(&path).unwrap();
    let diffs: Vec<usize> =
        bytes.iter().zip(GOLDEN_LAYOUT).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i).collect();
    assert_eq!(diffs, vec![hdr::HOST_FEATURES], "only byte 80 (host_features = 0x0f) may differ");
    assert_eq!(bytes[hdr::HOST_FEATURES], 0x0f);
    assert_eq!(Segment::attach(&path).unwrap().host_features(), Features::ALL);
}

#[test]
fn attach_reads_back_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let (path, host) = create_example(dir.path(), Features::ALL);
    let guest = Segment::attach(&path).unwrap();
    assert!(host.is_creator() && !guest.is_creator());
    assert_eq!(guest.layout(), host.layout());
    assert_eq!(guest.max_guests(), 2);
    assert_eq!(guest.bipbuf_capacity(), 128);
    assert_eq!(guest.max_payload_size(), 1024);
    assert_eq!(guest.inline_threshold(), 256);
    assert_eq!(guest.heartbeat_interval(), 1_000_000);
    assert_eq!(guest.size_classes(), EXAMPLE_CLASSES.to_vec());
    let by_fd = Segment::attach_fd(host.try_clone_fd().unwrap()).unwrap();
    assert_eq!(by_fd.layout(), host.layout());
}

#[test]
fn both_processes_views_share_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (path, host) = create_example(dir.path(), Features::ALL);
    let guest = Segment::attach(&path).unwrap();
    let id = host.reserve_peer().unwrap();
    guest.claim_peer(id).unwrap();
    assert_eq!(host.peer_entry(id).unwrap().state(), PeerState::Attached);
    let s = guest.var_pool().allocate(100, u32::from(id.get())).unwrap();
    assert_eq!(host.var_pool().slot_meta(s.class_idx as usize, s.slot_idx), Some((1, 1, 1)));
    host.var_pool().free(s).unwrap();
    assert!(guest.var_pool().free(s).is_err());
}

#[test]
fn file_modes_and_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.shm");
    let seg = Segment::create(&path, example_config(), FileCleanup::Manual).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600, "default mode is owner-only");
    drop(seg);
    assert!(path.exists(), "Manual keeps the file");
    let seg = Segment::create(&path, example_config(), FileCleanup::UnlinkOnDrop).unwrap();
    drop(seg);
    assert!(!path.exists(), "UnlinkOnDrop removes it");
    let seg = Segment::create(&path, example_config(), FileCleanup::Auto).unwrap();
    assert!(!path.exists(), "Auto unlinks at once");
    assert!(seg.path().is_none());
    assert!(Segment::attach_fd(seg.try_clone_fd().unwrap()).is_ok(), "Auto segments attach by fd");
    let opts = CreateOptions { mode: 0o660, cleanup: FileCleanup::Manual, ..CreateOptions::default() };
    let _seg = Segment::create_with(&path, example_config(), opts).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o660);
}

#[test]
fn anonymous_segments_attach_by_fd_only() {
    let seg = Segment::create_anonymous(example_config(), Features::ALL).unwrap();
    assert!(seg.path().is_none());
    let guest = Segment::attach_fd(seg.try_clone_fd().unwrap()).unwrap();
    assert_eq!(guest.layout().total_size, 38400);
}

#[test]
fn creation_rejects_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.shm");
    let cases: Vec<(SegmentConfig<'static>, LayoutError)> = vec![
        (
            SegmentConfig { inline_threshold: 65536, ..example_config() },
            LayoutError::InlineThresholdTooLarge { threshold: 65536 },
        ),
        (SegmentConfig { bipbuf_capacity: 0, ..example_config() }, LayoutError::ZeroRingCapacity),
        (SegmentConfig { size_classes: &[], ..example_config() }, LayoutError::NoSizeClasses),
        (
            SegmentConfig {
                size_classes: &[
                    SizeClassConfig { slot_size: 512, slot_count: 1 },
                    SizeClassConfig { slot_size: 256, slot_count: 1 },
                ],
                ..example_config()
            },
            LayoutError::ClassesUnsorted { class: 1, slot_size: 256, previous: 512 },
        ),
    ];
    for (config, expected) in cases {
        match Segment::create(&path, config, FileCleanup::Manual) {
            Err(CreateError::Config(e)) => assert_eq!(e, expected),
            other => panic!("expected {expected:?}, got {other:?}"),
        }
        assert!(!path.exists(), "no file is left behind by a refused config");
    }
}

#[test]
fn peer_operations_report_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_path, seg) = create_example(dir.path(), Features::ALL);
    let three = PeerId::new(3).unwrap();
    assert_eq!(seg.claim_peer(three), Err(PeerError::NoSuchPeer { peer: 3, max_guests: 2 }));
    let one = PeerId::new(1).unwrap();
    assert_eq!(
        seg.claim_peer(one),
        Err(PeerError::WrongState { peer: 1, expected: PeerState::Reserved, actual: PeerState::Empty })
    );
    assert!(seg.release_reserved_peer(one).is_err());
    assert_eq!(seg.attach_peer(), Some(one));
    assert_eq!(seg.reserve_peer(), Some(PeerId::new(2).unwrap()));
    assert_eq!(seg.reserve_peer(), None);
    seg.detach_peer(one).unwrap();
    assert_eq!(seg.peer_entry(one).unwrap().state(), PeerState::Goodbye);
    assert!(seg.g2h_bipbuf(three).is_none());
    assert_eq!(seg.h2g_bipbuf(one).unwrap().capacity(), 128);
    seg.set_host_goodbye();
    assert!(seg.header().host_goodbye());
}

#[test]
fn grow_and_remap() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut host) = create_example(dir.path(), Features::ALL);
    let mut guest = Segment::attach(&path).unwrap();
    host.grow_segment(65536).unwrap();
    assert_eq!(host.header().current_size(), 65536);
    assert!(guest.check_and_remap().unwrap());
    assert_eq!(guest.mapped_len(), 65536);
    assert!(!guest.check_and_remap().unwrap());
    assert!(host.grow_segment(1000).is_err(), "shrinking is refused");
    // The views still work after the remap.
    let s = guest.var_pool().allocate(1, 1).unwrap();
    host.var_pool().free(s).unwrap();
}

// --- refusing bad files ---------------------------------------------------

fn write_variant(dir: &Path, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = GOLDEN_LAYOUT.to_vec();
    f(&mut bytes);
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn header_error(path: &Path) -> HeaderError {
    match Segment::attach(path) {
        Err(AttachError::BadHeader(e)) => e,
        Err(e) => panic!("expected a header error, got {e}"),
        Ok(_) => panic!("a bad segment was accepted"),
    }
}

#[test]
fn the_golden_file_itself_attaches() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_variant(dir.path(), "ok", |_| {});
    let seg = Segment::attach(&p).unwrap();
    assert_eq!(seg.peer_entry(PeerId::new(1).unwrap()).unwrap().epoch(), 7);
    assert_eq!(seg.host_features(), Features::NONE);
}

#[test]
fn every_header_corruption_gets_its_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = write_variant(d, "magic", |b| b[7] = 0x06);
    assert!(matches!(header_error(&p), HeaderError::BadMagic { .. }));
    let p = write_variant(d, "version", |b| put_u32(b, hdr::VERSION, 6));
    assert_eq!(header_error(&p), HeaderError::UnsupportedVersion { found: 6 });
    let p = write_variant(d, "hsize", |b| put_u32(b, hdr::HEADER_SIZE, 256));
    assert_eq!(header_error(&p), HeaderError::BadHeaderSize { found: 256 });
    let p = write_variant(d, "classes0", |b| put_u32(b, hdr::NUM_VAR_SLOT_CLASSES, 0));
    assert_eq!(header_error(&p), HeaderError::NoSizeClasses);
    let p = write_variant(d, "guests", |b| put_u32(b, hdr::MAX_GUESTS, 256));
    assert_eq!(header_error(&p), HeaderError::TooManyGuests { found: 256 });
    let p = write_variant(d, "cap0", |b| put_u32(b, hdr::BIPBUF_CAPACITY, 0));
    assert_eq!(header_error(&p), HeaderError::Layout(LayoutError::ZeroRingCapacity));
    let p = write_variant(d, "ptable", |b| put_u64(b, hdr::PEER_TABLE_OFFSET, 192));
    assert!(matches!(header_error(&p), HeaderError::LayoutMismatch { field: "peer_table_offset", .. }));
    let p = write_variant(d, "pool", |b| put_u64(b, hdr::VAR_POOL_OFFSET, 1344));
    assert!(matches!(
        header_error(&p),
        HeaderError::LayoutMismatch { field: "var_pool_offset", expected: 1280, found: 1344 }
    ));
    let p = write_variant(d, "pool_far", |b| put_u64(b, hdr::VAR_POOL_OFFSET, 1 << 40));
    assert!(matches!(header_error(&p), HeaderError::LayoutMismatch { field: "var_pool_offset", .. }));
    // Capacity and guest count move the pool: caught before the class table is read.
    let p = write_variant(d, "cap", |b| put_u32(b, hdr::BIPBUF_CAPACITY, 4096));
    assert!(matches!(header_error(&p), HeaderError::LayoutMismatch { field: "var_pool_offset", expected: 17152, .. }));
    let p = write_variant(d, "total", |b| put_u64(b, hdr::TOTAL_SIZE, 38464));
    assert_eq!(header_error(&p), HeaderError::LayoutMismatch { field: "total_size", expected: 38400, found: 38464 });
    let p = write_variant(d, "three_classes", |b| put_u32(b, hdr::NUM_VAR_SLOT_CLASSES, 3));
    assert_eq!(header_error(&p), HeaderError::Layout(LayoutError::ZeroSlotSize { class: 2 }));
    let many = write_variant(d, "many_classes", |b| put_u32(b, hdr::NUM_VAR_SLOT_CLASSES, 300));
    assert_eq!(header_error(&many), HeaderError::Layout(LayoutError::TooManySizeClasses { count: 300 }));
    // Class table: unsorted, zero count.
    let p = write_variant(d, "unsorted", |b| put_u32(b, 1280 + 64, 512));
    assert_eq!(
        header_error(&p),
        HeaderError::Layout(LayoutError::ClassesUnsorted { class: 1, slot_size: 512, previous: 1024 })
    );
    let p = write_variant(d, "count0", |b| put_u32(b, 1280 + 4, 0));
    assert_eq!(header_error(&p), HeaderError::Layout(LayoutError::ZeroSlotCount { class: 0 }));
    // A slot count that makes the pool bigger than the file.
    let p = write_variant(d, "count_big", |b| put_u32(b, 1280 + 4, 1000));
    assert!(matches!(header_error(&p), HeaderError::LayoutMismatch { field: "total_size", .. }));
    // Peer table and rings.
    // A guest can scribble over its own entry's ring offset and its rings'
    // stored capacities: that must not lock every later guest out. They are
    // never read (the layout decides), and recovery rewrites them.
    let p = write_variant(d, "ring_off", |b| put_u64(b, 128 + 16, 4096));
    let seg = Segment::attach(&p).expect("a scribbled ring offset does not refuse the segment");
    assert_eq!(seg.layout().ring_offset(PeerId::new(1).unwrap()), 256);
    let p = write_variant(d, "ring_cap", |b| put_u32(b, 512 + 8, 64));
    assert_eq!(Segment::attach(&p).expect("a scribbled ring capacity does not refuse it").bipbuf_capacity(), 128);
}

#[test]
fn truncated_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = write_variant(d, "empty", |b| b.clear());
    assert!(matches!(Segment::attach(&p), Err(AttachError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData));
    let p = write_variant(d, "short", |b| b.truncate(100));
    assert_eq!(header_error(&p), HeaderError::TooShort { file_len: 100 });
    let p = write_variant(d, "no_pool", |b| b.truncate(1300));
    assert!(matches!(header_error(&p), HeaderError::OutOfBounds(_)));
    for len in [1280 + 128, 38399] {
        let p = write_variant(d, &format!("cut{len}"), |b| b.truncate(len));
        assert_eq!(header_error(&p), HeaderError::FileTooSmall { needed: 38400, file_len: len as u64 });
    }
    let p = write_variant(d, "longer", |b| b.extend_from_slice(&[0; 4096]));
    assert!(Segment::attach(&p).is_ok(), "trailing space (a grown segment) is fine");
    assert!(matches!(Segment::attach(&d.join("missing")), Err(AttachError::Io(_))));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random byte corruption anywhere in the structured part of the file:
    /// attach either refuses with an error or gives a segment on which every
    /// operation still works without panicking.
    #[test]
    fn random_corruption_never_panics(
        edits in prop::collection::vec((0usize..1280 + 256, any::<u8>()), 1..12),
        cut in prop::option::of(0usize..38400),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let p = write_variant(dir.path(), "fuzz", |b| {
            for (off, v) in &edits {
                b[*off] = *v;
            }
            if let Some(c) = cut {
                b.truncate(c);
            }
        });
        if let Ok(seg) = Segment::attach(&p) {
            let _ = seg.reserve_peer();
            let _ = seg.attach_peer();
            for (id, e) in seg.peer_table().iter() {
                let _ = (e.state(), e.epoch(), seg.g2h_bipbuf(id), seg.h2g_bipbuf(id));
            }
            for size in [1, 1000, 20000] {
                if let Ok(s) = seg.var_pool().allocate(size, 1) {
                    prop_assert!(seg.var_pool().free(s).is_ok());
                }
            }
            for c in 0..seg.var_pool().class_count() {
                let _ = seg.var_pool().class_usage(c);
                let _ = seg.var_pool().check_free_list(c);
            }
        }
    }
}

/// A named segment is in use while its creator, or anyone holding a duplicate
/// of its descriptor (a spawned guest), has it open; then it is stale, and
/// only then does `remove_if_stale` remove it.
#[test]
fn a_segment_is_in_use_while_any_holder_of_its_descriptor_lives() {
    use vox_shm::stale::{check, remove_if_stale, FileState};
    let dir = tempfile::tempdir().unwrap();
    let (path, seg) = create_example(dir.path(), Features::ALL);
    assert!(matches!(check(&path), FileState::InUse));
    assert!(matches!(remove_if_stale(&path), FileState::InUse));
    let passed_to_guest = seg.try_clone_fd().unwrap();
    drop(seg); // `Manual`: the file stays
    assert!(matches!(remove_if_stale(&path), FileState::InUse), "the guest's descriptor still holds it");
    assert!(path.exists());
    drop(passed_to_guest);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(matches!(check(&path), FileState::Stale { bytes } if bytes == size));
    assert!(path.exists(), "check only looks");
    assert!(matches!(remove_if_stale(&path), FileState::Stale { .. }));
    assert!(!path.exists());
    // A file that is not a segment is never touched.
    let other = dir.path().join("other");
    std::fs::write(&other, [0u8; 4096]).unwrap();
    assert!(matches!(remove_if_stale(&other), FileState::NotASegment(AttachError::BadHeader(_))));
    assert!(other.exists());
}

/// A host never takes the name of a segment another live process holds; a
/// file left behind by a host that is gone is replaced.
#[test]
fn create_refuses_a_live_segment_and_replaces_a_stale_one() {
    let dir = tempfile::tempdir().unwrap();
    let (path, first) = create_example(dir.path(), Features::ALL);
    let err = Segment::create(&path, example_config(), FileCleanup::Manual).unwrap_err();
    assert!(matches!(&err, CreateError::InUse(p) if p == &path), "{err}");
    assert!(first.peer_table().iter().count() > 0, "the live segment is untouched");
    apply_golden_peer_change(&first); // guest 1 Attached: a mark to look for
    drop(first); // `Manual`: the file stays behind, held by nobody
    let second = Segment::create(&path, example_config(), FileCleanup::UnlinkOnDrop).unwrap();
    let seen = Segment::attach(&path).unwrap();
    let id = PeerId::new(1).unwrap();
    assert_eq!(seen.peer_entry(id).unwrap().state(), PeerState::Empty, "a fresh file took the name");
    drop((seen, second));
    assert!(!path.exists());
}
