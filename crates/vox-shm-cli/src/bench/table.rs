//! The results table `vox-shm bench` prints: one line per case with its
//! percentiles, rate and ratio to the socket, then the latencies that have
//! two modes.

use super::model::{fmt_ns, ratio, ratio_range, Case, CaseResult, Kind, Measured, Transport};

fn fmt_rate(m: &Measured, case: &Case) -> String {
    match (case.kind, m.bytes_per_s) {
        (Kind::Rpc | Kind::Vox, _) => format!("{:.1} k calls/s", m.msgs_per_s / 1e3),
        (Kind::RoundTrip, _) => format!("{:.1} k RT/s", m.msgs_per_s / 1e3),
        (_, Some(b)) if case.size >= 16 * 1024 => format!("{:.2} GiB/s", b / (1u64 << 30) as f64),
        _ => format!("{:.2} M msg/s", m.msgs_per_s / 1e6),
    }
}

pub fn render_table(results: &[CaseResult]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<32} {:<14} {:>11} {:>11} {:>11} {:>14} {:>9} {:>8}",
        "workload", "transport", "p50", "p99", "p99.9", "throughput", "vs unix", "signals"
    );
    let mut last = String::new();
    for r in results {
        if r.workload != last && !last.is_empty() {
            s.push('\n');
        }
        last = r.workload.clone();
        match (&r.measured, &r.error) {
            (Some(m), _) => {
                let lat = matches!(r.case.kind, Kind::RoundTrip | Kind::Rpc | Kind::Vox);
                let (p50, p99, p999) = if lat {
                    (fmt_ns(m.p50_ns), fmt_ns(m.p99_ns), fmt_ns(m.p999_ns))
                } else {
                    ("-".into(), "-".into(), "-".into())
                };
                let ratio = if r.case.transport == Transport::Uds {
                    "1.00x".to_string()
                } else {
                    match (ratio(r, results), ratio_range(r, results)) {
                        (Some(x), Some((lo, hi))) => format!("{x:.2}x ({lo:.1}-{hi:.1})"),
                        (Some(x), None) => format!("{x:.2}x"),
                        _ => "-".into(),
                    }
                };
                // Counted only where the host drives a vox-shm link itself
                // (in a vox case, vox owns the link's halves).
                let counted = r.case.transport.is_shm() && r.case.kind != Kind::Vox;
                let signals = if counted { m.host_signals.to_string() } else { "-".into() };
                let _ = writeln!(
                    s,
                    "{:<32} {:<14} {:>11} {:>11} {:>11} {:>14} {:>9} {:>8}",
                    r.workload,
                    r.transport,
                    p50,
                    p99,
                    p999,
                    fmt_rate(m, &r.case),
                    ratio,
                    signals
                );
            }
            (None, e) => {
                let _ = writeln!(s, "{:<32} {:<14} FAILED: {}", r.workload, r.transport, e.as_deref().unwrap_or("?"));
            }
        }
    }
    let bimodal: Vec<&CaseResult> = results.iter().filter(|r| r.runs.iter().any(|m| !m.modes.is_empty())).collect();
    if !bimodal.is_empty() {
        let _ = writeln!(s, "\nlatencies with two modes (fast | slow, share of the samples), per run:");
    }
    for r in bimodal {
        let per_run: Vec<String> = r
            .runs
            .iter()
            .map(|m| match m.modes.as_slice() {
                [a, b] => {
                    format!("{} {:.0}% | {} {:.0}%", fmt_ns(a.ns), a.share * 100.0, fmt_ns(b.ns), b.share * 100.0)
                }
                _ => format!("one mode, p50 {}", fmt_ns(m.p50_ns)),
            })
            .collect();
        let _ = writeln!(s, "  {:<47} {}", r.case.name(), per_run.join("; "));
    }
    s
}
