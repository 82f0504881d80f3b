//! A self-contained SVG chart of the benchmark: one bar per vox-shm case,
//! its speed-up over the UnixStream baseline on a log scale.

use super::model::{ratio, CaseResult, Transport};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

pub fn chart(results: &[CaseResult]) -> String {
    let bars: Vec<(String, Transport, f64)> = results
        .iter()
        .filter(|r| r.case.transport != Transport::Uds)
        .filter_map(|r| Some((r.workload.clone(), r.case.transport, ratio(r, results)?)))
        .collect();
    let (left, top, row, width) = (300.0, 60.0, 18.0, 520.0);
    let height = top + row * bars.len() as f64 + 60.0;
    let max = bars.iter().map(|b| b.2).fold(1.0f64, f64::max).max(2.0);
    let min = bars.iter().map(|b| b.2).fold(1.0f64, f64::min).min(0.5);
    let (lmin, lmax) = (min.log10(), max.log10());
    let x = |v: f64| left + (v.log10() - lmin) / (lmax - lmin) * width;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\">vox-shm speed-up over a tokio UnixStream (same machine, same run; log scale)</text>\n\
         <text x=\"10\" y=\"40\" fill=\"#555\">round trips: p50 latency ratio; streams: messages/s ratio. Right of the line is faster.</text>\n",
        w = left + width + 80.0
    );
    for t in [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0] {
        if t < min || t > max * 1.01 {
            continue;
        }
        let xx = x(t);
        s += &format!(
            "<line x1=\"{xx:.1}\" y1=\"{top}\" x2=\"{xx:.1}\" y2=\"{y2:.1}\" stroke=\"{c}\"/>\n<text x=\"{xx:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\">{t}x</text>\n",
            y2 = height - 40.0,
            c = if t == 1.0 { "#000" } else { "#ddd" },
            ty = height - 25.0
        );
    }
    for (i, (workload, t, v)) in bars.iter().enumerate() {
        let y = top + row * i as f64;
        let color = match t {
            Transport::ShmPark => "#6a9fd8",
            Transport::ShmSpin => "#2e6fb5",
            Transport::ShmBusyPoll => "#173d66",
            Transport::Uds => "#999",
        };
        let (x0, x1) = (x(1.0), x(*v));
        let (bx, bw) = if x1 >= x0 { (x0, x1 - x0) } else { (x1, x0 - x1) };
        s += &format!(
            "<text x=\"{lx:.1}\" y=\"{ty:.1}\" text-anchor=\"end\">{label}</text>\n\
             <rect x=\"{bx:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{h:.1}\" fill=\"{color}\"/>\n\
             <text x=\"{vx:.1}\" y=\"{ty:.1}\">{v:.1}x</text>\n",
            lx = left - 6.0,
            ty = y + row * 0.7,
            label = esc(&format!("{workload} / {}", t.label())),
            h = row - 4.0,
            vx = bx + bw + 4.0
        );
    }
    s += "</svg>\n";
    s
}
