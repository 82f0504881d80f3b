//! A self-contained SVG chart of the benchmark: per workload, one bar per
//! vox-shm wait strategy with its speed-up over the UnixStream baseline on a
//! fixed log scale (so two charts compare), the absolute figures beside it,
//! the spread over repeated runs, and the target where there is one.

use super::model::{fmt_ns, kernel, ratio, ratio_range, target, CaseResult, Kind, Measured, Transport};

/// Where and when the numbers were taken.
#[derive(Debug, Clone)]
pub struct Meta {
    /// UTC, to the minute.
    pub date: String,
    /// `git rev-parse --short HEAD` of the working directory, if any.
    pub commit: String,
    /// CPU model and count.
    pub machine: String,
}

impl Meta {
    /// This machine, now.
    pub fn now() -> Meta {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines().find_map(|l| l.strip_prefix("model name")?.split(':').nth(1).map(|m| m.trim().to_string()))
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        Meta { date: utc(secs), commit, machine: format!("{model}, {cpus} CPUs, Linux {}", kernel()) }
    }
}

/// `YYYY-MM-DD HH:MM UTC` from seconds since the epoch.
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The figure the ratio compares, as a person reads it.
fn figure(kind: Kind, m: &Measured) -> String {
    match kind {
        Kind::RoundTrip => fmt_ns(m.p50_ns),
        Kind::Rpc | Kind::Vox => format!("{:.0} k calls/s", m.msgs_per_s / 1e3),
        _ => match m.bytes_per_s {
            Some(b) if b >= (1u64 << 30) as f64 => format!("{:.1} GiB/s", b / (1u64 << 30) as f64),
            _ => format!("{:.2} M msg/s", m.msgs_per_s / 1e6),
        },
    }
}

fn color(t: Transport) -> &'static str {
    match t {
        Transport::ShmPark => "#6a9fd8",
        Transport::ShmSpin => "#2e6fb5",
        Transport::ShmBusyPoll => "#173d66",
        Transport::Uds => "#999",
        Transport::Tcp => "#c9a13b",
        Transport::Memory => "#ddd",
        Transport::CacheLine => "#bbb",
        Transport::Iceoryx2 => "#8c564b",
        Transport::Iceoryx2Sleep => "#c49c94",
        Transport::Futex => "#d0d0d0",
    }
}

/// The axis: the same for every chart.
const AXIS: (f64, f64) = (0.1, 200.0);

pub fn chart(results: &[CaseResult], meta: &Meta) -> String {
    let mut workloads: Vec<&str> = Vec::new();
    for r in results {
        if !workloads.contains(&r.workload.as_str()) {
            workloads.push(&r.workload);
        }
    }
    let (left, top, row, width) = (250.0, 96.0, 17.0, 480.0);
    let bars = results.iter().filter(|r| r.case.transport != Transport::Uds).count();
    let height = top + row * (bars + workloads.len()) as f64 + 50.0;
    let (lmin, lmax) = (AXIS.0.log10(), AXIS.1.log10());
    let x = |v: f64| left + (v.clamp(AXIS.0, AXIS.1).log10() - lmin) / (lmax - lmin) * width;
    let total_width = left + width + 230.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{total_width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"15\">vox-shm speed-up over a tokio UnixStream (same machine, same run)</text>\n\
         <text x=\"10\" y=\"37\" fill=\"#555\">{meta}</text>\n\
         <text x=\"10\" y=\"53\" fill=\"#555\">round trips: p50 latency; rpc: calls/s; streams: messages/s. Log scale, {lo}x to {hi}x; right of 1x is faster.</text>\n",
        meta = esc(&format!("{}, commit {}, {}", meta.date, meta.commit, meta.machine)),
        lo = AXIS.0,
        hi = AXIS.1,
    );
    // Legend.
    let mut lx = 10.0;
    for t in [Transport::ShmPark, Transport::ShmSpin, Transport::ShmBusyPoll] {
        s += &format!(
            "<rect x=\"{lx}\" y=\"62\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"71\">{}</text>\n",
            color(t),
            lx + 14.0,
            t.label()
        );
        lx += 105.0;
    }
    s += &format!(
        "<line x1=\"{lx}\" y1=\"67\" x2=\"{}\" y2=\"67\" stroke=\"#000\"/><text x=\"{}\" y=\"71\">spread over runs</text>\n\
         <line x1=\"{}\" y1=\"61\" x2=\"{}\" y2=\"73\" stroke=\"#d33\" stroke-width=\"2\"/><text x=\"{}\" y=\"71\">target</text>\n",
        lx + 20.0,
        lx + 24.0,
        lx + 130.0,
        lx + 130.0,
        lx + 136.0
    );
    for t in [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0] {
        let xx = x(t);
        s += &format!(
            "<line x1=\"{xx:.1}\" y1=\"{top}\" x2=\"{xx:.1}\" y2=\"{y2:.1}\" stroke=\"{c}\"/>\n<text x=\"{xx:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\">{t}x</text>\n",
            y2 = height - 40.0,
            c = if t == 1.0 { "#000" } else { "#e4e4e4" },
            ty = height - 25.0
        );
    }
    let mut y = top;
    for w in workloads {
        let base = results.iter().find(|r| r.workload == w && r.case.transport == Transport::Uds);
        let base_text = match base.and_then(|b| b.measured.as_ref().map(|m| figure(b.case.kind, m))) {
            Some(f) => format!("unix-stream: {f}"),
            None => "no socket baseline of its own".into(),
        };
        s += &format!(
            "<text x=\"10\" y=\"{:.1}\" font-weight=\"bold\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#555\">{}</text>\n",
            y + row * 0.75,
            esc(w),
            left + width + 8.0,
            y + row * 0.75,
            esc(&base_text)
        );
        y += row;
        for r in results.iter().filter(|r| r.workload == w && r.case.transport != Transport::Uds) {
            let ty = y + row * 0.7;
            s += &format!("<text x=\"{:.1}\" y=\"{ty:.1}\" text-anchor=\"end\">{}</text>\n", left - 6.0, r.transport);
            match (ratio(r, results), r.measured.as_ref()) {
                (Some(v), Some(m)) => {
                    let (x0, x1) = (x(1.0), x(v));
                    let (bx, bw) = if x1 >= x0 { (x0, x1 - x0) } else { (x1, x0 - x1) };
                    s += &format!(
                        "<rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{}\"/>\n",
                        y + 2.0,
                        row - 5.0,
                        color(r.case.transport)
                    );
                    if let Some((lo, hi)) = ratio_range(r, results) {
                        s += &format!(
                            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#000\"/>\n",
                            x(lo),
                            y + row / 2.0,
                            x(hi),
                            y + row / 2.0
                        );
                    }
                    if let Some(t) = target(&r.case) {
                        s += &format!(
                            "<line x1=\"{xt:.1}\" y1=\"{:.1}\" x2=\"{xt:.1}\" y2=\"{:.1}\" stroke=\"#d33\" stroke-width=\"2\"/>\n",
                            y + 1.0,
                            y + row - 2.0,
                            xt = x(t)
                        );
                    }
                    let spread =
                        ratio_range(r, results).map_or(String::new(), |(lo, hi)| format!(" ({lo:.1}-{hi:.1})"));
                    s += &format!(
                        "<text x=\"{:.1}\" y=\"{ty:.1}\">{v:.2}x{spread}  {}</text>\n",
                        left + width + 8.0,
                        esc(&figure(r.case.kind, m))
                    );
                }
                _ => {
                    s += &format!("<text x=\"{:.1}\" y=\"{ty:.1}\" fill=\"#d33\">failed</text>\n", left + 4.0);
                }
            }
            y += row;
        }
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::model::{Case, Pool};

    fn result(transport: Transport, runs: &[u64]) -> CaseResult {
        let case = Case {
            kind: Kind::RoundTrip,
            size: 64,
            count: 1,
            transport,
            pool: Pool::Slots,
            callers: 0,
            one_cpu: false,
            in_block_on: false,
        };
        let runs = runs.iter().map(|&p50_ns| Measured { p50_ns, ..Measured::default() }).collect();
        CaseResult::from_runs(case, runs, None)
    }

    #[test]
    fn the_chart_shows_figures_spread_targets_and_where_it_was_taken() {
        let results =
            [result(Transport::Uds, &[40_000, 44_000, 42_000]), result(Transport::ShmSpin, &[800, 1_000, 700])];
        let meta = Meta { date: "2026-12-01 19:00 UTC".into(), commit: "abc1234".into(), machine: "test CPU".into() };
        let svg = chart(&results, &meta);
        for want in [
            "2026-12-01 19:00 UTC, commit abc1234, test CPU",
            "unix-stream: 42.00 µs",
            "round trip 64 B",
            "shm park",
            "spread over runs",
            "target",
            "0.1x",
            "200x",
        ] {
            assert!(svg.contains(want), "{want} missing");
        }
        // Per-run ratios 50x, 44x, 60x: the median and the spread.
        assert!(svg.contains("50.00x (44.0-60.0)"), "{svg}");
        assert!(svg.contains("stroke=\"#d33\""), "the 20x target is drawn");
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_796_145_000), "2026-12-01 17:10 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
    }
}
