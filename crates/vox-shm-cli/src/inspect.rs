//! `vox-shm inspect`: a live segment's state, read through a read-only
//! mapping so that looking cannot disturb it.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use vox_shm::inspect::{monotonic_ns, RingSnapshot, SegmentSnapshot, SegmentView};
use vox_shm::peer_table::PeerState;

use crate::Res;

#[derive(Serialize)]
struct JsonRing {
    capacity: u32,
    write: u32,
    watermark: u32,
    read: u32,
    used: u32,
    wrapped: bool,
    producer_waiting: bool,
    consumer_waiting: bool,
}

#[derive(Serialize)]
struct JsonPeer {
    id: u8,
    state: String,
    raw_state: u32,
    epoch: u32,
    heartbeat_age_ms: Option<f64>,
    features: String,
    pid: u32,
    host_tx_closed: bool,
    guest_tx_closed: bool,
    g2h: JsonRing,
    h2g: JsonRing,
}

#[derive(Serialize)]
struct JsonClass {
    slot_size: u32,
    slot_count: u32,
    free: u32,
    allocated_by_owner: Vec<(String, u32)>,
    invalid_state: u32,
}

#[derive(Serialize)]
struct JsonSegment {
    version: u32,
    total_size: u64,
    file_len: u64,
    current_size: u64,
    max_guests: u32,
    ring_capacity: u32,
    max_payload_size: u32,
    inline_threshold: u32,
    heartbeat_interval_ns: u64,
    host_goodbye: bool,
    host_features: String,
    /// Whether a live process holds the file (`null`: cannot tell).
    in_use: Option<bool>,
    peers: Vec<JsonPeer>,
    slot_classes: Vec<JsonClass>,
}

fn ring(r: &RingSnapshot) -> JsonRing {
    JsonRing {
        capacity: r.capacity,
        write: r.write,
        watermark: r.watermark,
        read: r.read,
        used: r.used,
        wrapped: r.wrapped,
        producer_waiting: r.producer_waiting,
        consumer_waiting: r.consumer_waiting,
    }
}

/// Owner values as a person reads them.
pub fn owner_name(owner: u32) -> String {
    match owner {
        0 => "host".into(),
        1..=255 => format!("guest {owner}"),
        o if o & !0xff == 0x100 => format!("host→guest {}", o & 0xff),
        o => format!("unknown {o}"),
    }
}

fn to_json(s: &SegmentSnapshot, in_use: Option<bool>) -> JsonSegment {
    let h = &s.header;
    JsonSegment {
        version: h.version,
        total_size: h.total_size,
        file_len: s.file_len,
        current_size: h.current_size,
        max_guests: h.max_guests,
        ring_capacity: h.bipbuf_capacity,
        max_payload_size: h.max_payload_size,
        inline_threshold: h.effective_inline_threshold(),
        heartbeat_interval_ns: h.heartbeat_interval,
        host_goodbye: h.host_goodbye != 0,
        in_use,
        host_features: h.host_features.to_string(),
        peers: s
            .peers
            .iter()
            .map(|p| JsonPeer {
                id: p.id.get(),
                state: format!("{:?}", p.state),
                raw_state: p.raw_state,
                epoch: p.epoch,
                heartbeat_age_ms: p.heartbeat_age_ns.map(|n| n as f64 / 1e6),
                features: p.guest_features.to_string(),
                pid: p.guest_pid,
                host_tx_closed: p.host_tx_closed,
                guest_tx_closed: p.guest_tx_closed,
                g2h: ring(&p.g2h),
                h2g: ring(&p.h2g),
            })
            .collect(),
        slot_classes: s
            .classes
            .iter()
            .map(|c| JsonClass {
                slot_size: c.slot_size,
                slot_count: c.slot_count,
                free: c.free,
                allocated_by_owner: c.allocated_by_owner.iter().map(|(o, n)| (owner_name(*o), *n)).collect(),
                invalid_state: c.invalid_state,
            })
            .collect(),
    }
}

fn ring_text(r: &RingSnapshot) -> String {
    let pct = r.used as f64 * 100.0 / r.capacity.max(1) as f64;
    let mut s = format!("{:>7}/{:<7} {:>5.1}%  w={} r={}", r.used, r.capacity, pct, r.write, r.read);
    if r.wrapped {
        s.push_str(&format!(" wrapped@{}", r.watermark));
    }
    if r.consumer_waiting {
        s.push_str(" [consumer asleep]");
    }
    if r.producer_waiting {
        s.push_str(" [producer asleep]");
    }
    s
}

/// Renders a snapshot for a terminal.
pub fn render(path: &Path, s: &SegmentSnapshot, in_use: Option<bool>) -> String {
    use std::fmt::Write;
    let h = &s.header;
    let mut o = String::new();
    let _ = writeln!(o, "segment {}", path.display());
    let _ = writeln!(
        o,
        "  format v{}  {} ({} bytes; file {} bytes)  {} guest slots  rings {} B  inline <= {} B  max payload {} B",
        h.version,
        crate::demo::human_bytes(h.total_size),
        h.total_size,
        s.file_len,
        h.max_guests,
        h.bipbuf_capacity,
        h.effective_inline_threshold(),
        h.max_payload_size
    );
    let _ = writeln!(
        o,
        "  host features: {}  heartbeat: {}  host goodbye: {}",
        h.host_features,
        if h.heartbeat_interval == 0 { "off".to_string() } else { format!("{} ms", h.heartbeat_interval / 1_000_000) },
        if h.host_goodbye != 0 { "yes" } else { "no" }
    );
    let _ = writeln!(
        o,
        "  in use: {}",
        match in_use {
            Some(true) => "yes (a live host or guest holds the file)",
            Some(false) => "no: every process that held it is gone; `vox-shm clean` removes it",
            None => "cannot tell (no file lock here)",
        }
    );
    let _ = writeln!(o, "\npeers:");
    for p in &s.peers {
        if p.state == vox_shm::peer_table::PeerState::Empty && p.epoch == 0 {
            continue;
        }
        let hb = p.heartbeat_age_ns.map(|n| format!("{:.1} ms ago", n as f64 / 1e6)).unwrap_or_else(|| "never".into());
        let _ = writeln!(
            o,
            "  {:>3}  {:<8} epoch {:<4} pid {:<7} features {:<40} heartbeat {}",
            p.id.get(),
            format!("{:?}", p.state),
            p.epoch,
            p.guest_pid,
            p.guest_features.to_string(),
            hb
        );
        let closed = |b| if b { " (closed)" } else { "" };
        let _ = writeln!(o, "       guest→host {}{}", ring_text(&p.g2h), closed(p.guest_tx_closed));
        let _ = writeln!(o, "       host→guest {}{}", ring_text(&p.h2g), closed(p.host_tx_closed));
    }
    let unused = s.peers.iter().filter(|p| p.state == vox_shm::peer_table::PeerState::Empty && p.epoch == 0).count();
    let _ = writeln!(o, "  ({unused} slots never used)");
    let _ = writeln!(o, "\nslot classes:");
    for c in &s.classes {
        let used: Vec<String> =
            c.allocated_by_owner.iter().map(|(ow, n)| format!("{}: {n}", owner_name(*ow))).collect();
        let _ = writeln!(
            o,
            "  {:>9} B x {:<6} free {:<6} in use {}{}",
            c.slot_size,
            c.slot_count,
            c.free,
            if used.is_empty() { "-".to_string() } else { used.join(", ") },
            if c.invalid_state > 0 {
                format!("  ({} slots in an invalid state)", c.invalid_state)
            } else {
                String::new()
            }
        );
    }
    o
}

pub fn run(path: &Path, json: bool, watch: bool, interval_ms: u64) -> Res {
    use std::io::{IsTerminal, Write};
    let view = SegmentView::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let identity = file_identity(path);
    // On a terminal, --watch redraws in place; into a pipe or a file it
    // appends (JSON Lines with --json), and never writes escape sequences.
    let tty = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let mut last: Option<Vec<(u8, PeerState, u32)>> = None;
    loop {
        let snap = view.snapshot(monotonic_ns());
        // Already validated above: only the lock is left to look at.
        let in_use = vox_shm::stale::lock_if_unheld(path).ok().map(|unheld| unheld.is_none());
        if !watch {
            let text =
                if json { serde_json::to_string_pretty(&to_json(&snap, in_use))? } else { render(path, &snap, in_use) };
            writeln!(out, "{text}")?;
            return Ok(());
        }
        let text = match (json, tty) {
            (true, true) => serde_json::to_string_pretty(&to_json(&snap, in_use))?,
            (true, false) => serde_json::to_string(&to_json(&snap, in_use))?,
            (false, _) => render(path, &snap, in_use),
        };
        if tty {
            // Clear the screen and home the cursor.
            write!(out, "\x1b[2J\x1b[H")?;
        }
        writeln!(out, "{text}")?;
        let peers: Vec<(u8, PeerState, u32)> = snap.peers.iter().map(|p| (p.id.get(), p.state, p.guest_pid)).collect();
        let mut events = Vec::new();
        if let Some(before) = &last {
            for (&(id, was, pid), &(_, now, new_pid)) in before.iter().zip(&peers) {
                match (was == PeerState::Attached, now == PeerState::Attached) {
                    (false, true) => events.push(Event::GuestArrived { peer: id, pid: new_pid }),
                    (true, false) => events.push(Event::GuestLeft { peer: id, pid }),
                    _ => {}
                }
            }
        }
        last = Some(peers);
        let host_gone = if snap.header.host_goodbye != 0 {
            Some("the host said goodbye")
        } else if file_identity(path) != identity {
            Some("the segment file was removed or replaced")
        } else if in_use == Some(false) {
            Some("no process holds the segment any more")
        } else {
            None
        };
        if let Some(why) = host_gone {
            events.push(Event::HostGone { why });
        }
        for e in &events {
            if json {
                writeln!(out, "{}", serde_json::to_string(e)?)?;
            } else {
                writeln!(out, "{}", e.text())?;
            }
        }
        out.flush()?;
        if host_gone.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(interval_ms.max(50)));
    }
}

/// What `--watch` reports between snapshots.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    GuestArrived { peer: u8, pid: u32 },
    GuestLeft { peer: u8, pid: u32 },
    HostGone { why: &'static str },
}

impl Event {
    fn text(&self) -> String {
        match self {
            Event::GuestArrived { peer, pid } => format!("event: guest {peer} (pid {pid}) attached"),
            Event::GuestLeft { peer, pid } => format!("event: guest {peer} (pid {pid}) left"),
            Event::HostGone { why } => format!("event: the host is gone ({why}); stopping"),
        }
    }
}

/// The file at `path` as (device, inode), if there is one.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}
