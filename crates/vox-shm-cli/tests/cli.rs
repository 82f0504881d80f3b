//! The `vox-shm` command: argument handling, demo, a quick benchmark case,
//! `inspect` on live, foreign and corrupt segments, and `clean` after a
//! host is killed with SIGKILL.

use std::process::{Command, Output};
use std::sync::Arc;

use vox_shm::{FileCleanup, Segment, SegmentConfig, SizeClassConfig};

const BIN: &str = env!("CARGO_BIN_EXE_vox-shm");

fn run(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().expect("run vox-shm");
    assert_ne!(out.status.code(), Some(101), "vox-shm panicked: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn help_and_bad_arguments() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let t = text(&out);
    for cmd in ["demo", "bench", "inspect", "clean"] {
        assert!(t.contains(cmd), "help lists {cmd}: {t}");
    }
    assert!(!t.contains("bench-guest"), "internal subcommands stay hidden");
    let out = run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    let out = run(&["inspect"]);
    assert_eq!(out.status.code(), Some(2), "inspect needs a path");
    let out = run(&["bench", "--quick", "--filter", "no such case"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("no benchmark case matches"));
    let out = run(&["bench-host", "not json"]);
    assert_eq!(out.status.code(), Some(1), "a bad case description is an error, not a panic");
}

#[test]
fn demo_exchanges_every_tier_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.shm");
    let out = run(&["demo", "--rounds", "20", "--path", path.to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for tier in ["inline", "slot", "mapping"] {
        assert!(t.contains(tier), "demo reports the {tier} tier: {t}");
    }
    assert!(t.contains("echoed 60 messages"), "{t}");
    assert!(t.contains("removed"), "{t}");
    assert!(!path.exists(), "the segment file is cleaned up");
}

#[test]
fn a_quick_benchmark_case_reports_results_next_to_the_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("b.json");
    let svg = dir.path().join("b.svg");
    let out = run(&[
        "bench",
        "--quick",
        "--filter",
        "round trip 64 B /",
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = doc["results"].as_array().unwrap();
    // And iceoryx2's, in a build with it; the sleeping floor on Linux.
    let iceoryx2 = cfg!(feature = "iceoryx2");
    let futex = cfg!(target_os = "linux");
    assert_eq!(
        results.len(),
        5 + 2 * usize::from(iceoryx2) + usize::from(futex),
        "unix-stream, three wait strategies and the two floors"
    );
    assert_eq!(t.contains("iceoryx2 poll") && t.contains("iceoryx2 sleep"), iceoryx2, "{t}");
    assert_eq!(t.contains("futex sleep"), futex, "{t}");
    for r in results {
        assert!(r["error"].is_null(), "{r}");
        assert!(r["measured"]["p50_ns"].as_u64().unwrap() > 0);
    }
    assert!(t.contains("unix-stream") && t.contains("shm busy-poll") && t.contains("vs unix"), "{t}");
    for floor in ["cache line"].into_iter().chain(futex.then_some("futex sleep")) {
        assert!(
            t.lines().any(|l| l.contains(floor) && l.trim_end().ends_with('-')),
            "the {floor} floor sends no doorbell signals: {t}"
        );
    }
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.contains("shm spin"));
}

#[cfg(feature = "vox")]
#[test]
fn the_vox_rpc_benchmark_runs_every_transport_of_a_case() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("rpc.json");
    let out = run(&["bench", "--rpc", "--quick", "--filter", "u64 x1 ", "--json", json.to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let transports: Vec<&str> =
        doc["results"].as_array().unwrap().iter().map(|r| r["transport"].as_str().unwrap()).collect();
    assert_eq!(transports, ["unix-stream", "tcp", "shm park", "shm spin", "shm busy-poll", "in-process"]);
    for r in doc["results"].as_array().unwrap() {
        assert!(r["error"].is_null(), "{r}");
        assert!(r["measured"]["msgs_per_s"].as_f64().unwrap() > 0.0);
    }
    assert!(t.contains("vox echo u64 x1 callers"), "{t}");
}

fn live_segment(dir: &std::path::Path) -> (std::path::PathBuf, Arc<Segment>) {
    let path = dir.join("live.shm");
    let classes = [SizeClassConfig { slot_size: 1024, slot_count: 8 }];
    let cfg =
        SegmentConfig { max_guests: 3, bipbuf_capacity: 4096, size_classes: &classes, ..SegmentConfig::default() };
    let seg = Arc::new(Segment::create(&path, cfg, FileCleanup::Manual).unwrap());
    let id = seg.reserve_peer().unwrap();
    let e = seg.peer_entry(id).unwrap();
    e.set_guest_features(vox_shm::Features::ALL);
    e.set_guest_pid(4321);
    seg.claim_peer(id).unwrap();
    let _held = seg.var_pool().allocate(100, u32::from(id.get())).unwrap();
    // SAFETY: the test is the only producer of this ring.
    let mut tx = unsafe { seg.h2g_bipbuf(id).unwrap().producer() };
    tx.try_grant(100).unwrap().unwrap();
    tx.commit(100).unwrap();
    (path, seg)
}

#[test]
fn inspect_shows_a_live_segment_without_changing_it() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _seg) = live_segment(dir.path());
    let before = std::fs::read(&path).unwrap();
    let out = run(&["inspect", path.to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("Attached") && t.contains("4321"), "peer shown: {t}");
    assert!(t.contains("host→guest") && t.contains("100/4096"), "ring fill shown: {t}");
    assert!(t.contains("guest 1: 1"), "slot owner shown: {t}");
    assert!(t.contains("wake-on-demand"), "features shown: {t}");
    assert!(t.contains("in use: yes"), "this process holds it: {t}");
    let out = run(&["inspect", "--json", path.to_str().unwrap()]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["peers"][0]["pid"], 4321);
    assert_eq!(j["peers"][0]["h2g"]["used"], 100);
    assert_eq!(j["slot_classes"][0]["free"], 7);
    assert_eq!(j["in_use"], true);
    assert_eq!(std::fs::read(&path).unwrap(), before, "inspect must not write to the segment");
}

#[test]
fn inspect_refuses_foreign_and_corrupt_files_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("foreign");
    std::fs::write(&foreign, b"just some text, not a segment at all, long enough to have a header........................................................................").unwrap();
    let out = run(&["inspect", foreign.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("bad magic"), "{}", text(&out));

    let (path, seg) = live_segment(dir.path());
    drop(seg);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&path, &bytes).unwrap();
    let out = run(&["inspect", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("needs"), "truncation explained: {}", text(&out));

    let out = run(&["inspect", dir.path().join("missing").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("No such file"), "{}", text(&out));
}

/// A long-running `vox-shm demo` host, killed even if an assertion fails
/// first.
struct Host(std::process::Child);

impl Host {
    fn demo(path: &std::path::Path, stderr: std::process::Stdio) -> Host {
        let child = Command::new(BIN)
            .args(["demo", "--rounds", "100000000", "--path", path.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Host(child)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `ok` every 20 ms; fails the test after 30 s.
fn until(what: &str, ok: &dyn Fn() -> bool) {
    let start = std::time::Instant::now();
    while !ok() {
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "timed out waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A host killed with SIGKILL leaves its named segment file behind; once its
/// guest has noticed and exited too, `clean` removes that file, and only that
/// one: a live segment and a file that is not a segment stay.
#[test]
fn clean_removes_what_a_killed_host_left_and_nothing_else() {
    use vox_shm::stale::{check, FileState};
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.shm");
    let foreign = dir.path().join("notes.txt");
    std::fs::write(&foreign, b"not a segment").unwrap();
    let (live, _seg) = live_segment(dir.path());
    let mut host = Host::demo(&dead, std::process::Stdio::null());
    until("the host's segment is in use", &|| matches!(check(&dead), FileState::InUse));
    let out = run(&["clean", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(dead.exists() && live.exists(), "nothing is removed while in use: {}", text(&out));
    assert!(text(&out).contains("in use: 2"), "{}", text(&out));

    host.0.kill().unwrap(); // SIGKILL: no destructor runs, the file stays
    host.0.wait().unwrap();
    assert!(dead.exists());
    // Its guest holds the same open file until it sees the host die.
    until("the killed host's segment is stale", &|| matches!(check(&dead), FileState::Stale { .. }));
    let out = run(&["inspect", dead.to_str().unwrap()]);
    assert!(text(&out).contains("in use: no"), "{}", text(&out));
    let out = run(&["clean", "--dry-run", dir.path().to_str().unwrap()]);
    assert!(dead.exists(), "a dry run removes nothing");
    assert!(text(&out).contains("would remove") && text(&out).contains("dead.shm"), "{}", text(&out));

    let out = run(&["clean", dir.path().to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("removed") && t.contains("dead.shm") && t.contains("removed: 1 segment file(s)"), "{t}");
    assert!(!dead.exists(), "the stale segment is gone");
    assert!(live.exists(), "the live segment stays");
    assert!(foreign.exists(), "a file that is not a segment stays");
    let out = run(&["clean", foreign.to_str().unwrap()]);
    assert!(text(&out).contains("not a segment"), "a named foreign file is reported: {}", text(&out));
    assert!(foreign.exists());

    // A killed host's file with everything past the header scribbled over
    // (rings, peer entries, pool), as a hostile guest could leave it: still
    // ours, still cleaned. (Scribbled after the kill: a live demo host would
    // notice the corruption, stop, and remove the file itself.)
    let scribbled = dir.path().join("scribbled.shm");
    let mut host = Host::demo(&scribbled, std::process::Stdio::null());
    until("the host's segment is in use", &|| matches!(check(&scribbled), FileState::InUse));
    host.0.kill().unwrap();
    host.0.wait().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&scribbled).unwrap();
        let len = f.metadata().unwrap().len();
        let junk: Vec<u8> = (0..len - 128).map(|i| (i * 7919 % 251) as u8).collect();
        f.write_all_at(&junk, 128).unwrap();
    }
    until("the scribbled segment is stale", &|| matches!(check(&scribbled), FileState::Stale { .. }));
    let out = run(&["clean", dir.path().to_str().unwrap()]);
    assert!(text(&out).contains("removed: 1 segment file(s)"), "{}", text(&out));
    assert!(!scribbled.exists(), "a scribbled stale segment is removed");
}

/// Ctrl-C or SIGTERM ends the demo cleanly: its segment file is removed.
#[test]
fn a_terminated_demo_removes_its_segment_file() {
    use vox_shm::stale::{check, FileState};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.shm");
    let mut host = Host::demo(&path, std::process::Stdio::piped());
    until("the demo's segment is in use", &|| matches!(check(&path), FileState::InUse));
    let pid = libc::pid_t::try_from(host.0.id()).unwrap();
    // SAFETY: `kill` with a pid of our own child that has not been waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut host.0.stderr.take().unwrap(), &mut err).unwrap();
    let status = host.0.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted by SIGTERM"), "{err}");
    assert!(!path.exists(), "the segment file is removed on SIGTERM");
}

#[test]
fn demo_never_replaces_a_file_and_rejects_zero_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("notes.txt");
    std::fs::write(&precious, "keep me").unwrap();
    let out = run(&["demo", "--path", precious.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(precious.to_str().unwrap()), "the error names the path: {}", text(&out));
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me", "the file is untouched");
    let out = run(&["demo", "--rounds", "0"]);
    assert_eq!(out.status.code(), Some(2), "a usage error: {}", text(&out));
    let out = run(&["demo", "--path", "/nonexistent-dir/x.shm"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("/nonexistent-dir/x.shm"), "{}", text(&out));
}

#[test]
fn output_cut_short_by_a_closed_pipe_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _seg) = live_segment(dir.path());
    for cmd in [format!("{BIN} inspect {} | head -c 10", path.display()), format!("{BIN} demo --rounds 5 | head -1")] {
        let out = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{cmd}: {err}");
    }
}

#[test]
fn errors_name_what_failed_before_any_long_work() {
    let out = run(&["clean", "--dry-run", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("/nonexistent") && !text(&out).contains("not a segment"), "{}", text(&out));
    let started = std::time::Instant::now();
    let out = run(&["bench", "--json", "/bad/dir/x.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("/bad/dir/x.json"), "{}", text(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "checked before the benchmark runs");
}

#[test]
fn watching_into_a_pipe_writes_json_lines_and_notices_the_host_going() {
    let dir = tempfile::tempdir().unwrap();
    let (path, seg) = live_segment(dir.path());
    // Bounded: if it never noticed, `timeout` would end it (and the test fail).
    let watch = Command::new("timeout")
        .args(["20", BIN, "inspect", "--json", "--watch", "--interval-ms", "100", path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // The guest leaves, then the host goes (its file with it).
    seg.detach_peer(vox_shm::PeerId::new(1).unwrap()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    std::fs::remove_file(&path).unwrap();
    drop(seg);
    let out = watch.wait_with_output().unwrap();
    assert!(out.status.success(), "it stopped by itself: {:?}", out.status);
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON value per line"))
        .collect();
    assert!(lines.len() >= 3, "{lines:?}");
    assert!(lines.iter().any(|l| l["event"] == "guest_left" && l["peer"] == 1), "{lines:?}");
    assert_eq!(lines.last().unwrap()["event"], "host_gone", "{lines:?}");
}
