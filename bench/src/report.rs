//! Results: every sample, the markdown table, the JSON file and the chart.

use super::bed::Kind;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

/// One row of the table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Metric {
    pub id: String,
    pub label: String,
    pub unit: String,
    pub better: Better,
    /// Samples by dataplane name.
    pub samples: BTreeMap<String, Vec<f64>>,
    /// Free-form note shown under the table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Default, Serialize, Deserialize)]
pub struct Results {
    pub metrics: Vec<Metric>,
    /// Per-sample details (packets sent, failures, ...), by metric id.
    pub details: BTreeMap<String, Vec<serde_json::Value>>,
    pub errors: Vec<String>,
}

impl Results {
    /// Declares a metric (rows keep declaration order).
    pub fn def(&mut self, id: &str, label: &str, unit: &str, better: Better) {
        if self.metrics.iter().any(|m| m.id == id) {
            return;
        }
        self.metrics.push(Metric {
            id: id.into(),
            label: label.into(),
            unit: unit.into(),
            better,
            samples: BTreeMap::new(),
            note: None,
        });
    }

    pub fn note(&mut self, id: &str, note: &str) {
        if let Some(m) = self.metrics.iter_mut().find(|m| m.id == id) {
            m.note = Some(note.into());
        }
    }

    pub fn push(&mut self, id: &str, kind: Kind, v: f64) {
        let m = self
            .metrics
            .iter_mut()
            .find(|m| m.id == id)
            .unwrap_or_else(|| panic!("metric {id} not declared"));
        m.samples
            .entry(kind.name().to_string())
            .or_default()
            .push(v);
    }

    pub fn detail(&mut self, id: &str, kind: Kind, v: serde_json::Value) {
        let mut v = v;
        v["dataplane"] = kind.name().into();
        self.details.entry(id.into()).or_default().push(v);
    }

    pub fn error(&mut self, what: String) {
        eprintln!("bench: FAILED {what}");
        self.errors.push(what);
    }

    pub fn get(&self, id: &str, kind: Kind) -> Option<Stats> {
        let m = self.metrics.iter().find(|m| m.id == id)?;
        Stats::of(m.samples.get(kind.name())?)
    }
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub n: usize,
}

impl Stats {
    pub fn of(v: &[f64]) -> Option<Stats> {
        if v.is_empty() {
            return None;
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Stats {
            min: s[0],
            median,
            max: s[n - 1],
            n,
        })
    }
}

/// Three significant digits, no exponent.
pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else if a >= 0.1 {
        format!("{x:.3}")
    } else {
        format!("{x:.4}")
    }
}

fn cell(s: Option<Stats>) -> String {
    match s {
        None => "—".into(),
        Some(s) if s.n == 1 => fmt_num(s.median),
        Some(s) => format!(
            "{} ({}–{})",
            fmt_num(s.median),
            fmt_num(s.min),
            fmt_num(s.max)
        ),
    }
}

fn ratio(a: Option<Stats>, b: Option<Stats>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.median != 0.0 => format!("{:.2}×", a.median / b.median),
        _ => "—".into(),
    }
}

/// The markdown table: medians with (min–max), and the ratios of medians.
pub fn table(r: &Results) -> String {
    let mut s = String::new();
    s.push_str(
        "| Measure | better | libvirt (iptables) | nftables | netd | netd/libvirt | netd/nftables |\n|---|---|---|---|---|---|---|\n",
    );
    for m in &r.metrics {
        let g = |k: Kind| Stats::of(m.samples.get(k.name()).map(Vec::as_slice).unwrap_or(&[]));
        let (l, n, d) = (g(Kind::Libvirt), g(Kind::Nftables), g(Kind::Netd));
        let better = match m.better {
            Better::Higher => "↑",
            Better::Lower => "↓",
        };
        let _ = writeln!(
            s,
            "| {}, {} | {better} | {} | {} | {} | {} | {} |",
            m.label,
            m.unit,
            cell(l),
            cell(n),
            cell(d),
            ratio(d, l),
            ratio(d, n)
        );
    }
    let notes: Vec<String> = r
        .metrics
        .iter()
        .filter_map(|m| m.note.as_ref().map(|n| format!("- {}: {n}", m.label)))
        .collect();
    if !notes.is_empty() {
        s.push('\n');
        s.push_str(&notes.join("\n"));
        s.push('\n');
    }
    s
}

const COLORS: [plotters::style::RGBColor; 3] = [
    plotters::style::RGBColor(0xd6, 0x6a, 0x1f), // libvirt
    plotters::style::RGBColor(0x4c, 0x72, 0xb0), // nftables
    plotters::style::RGBColor(0x2c, 0xa0, 0x2c), // netd
];

/// The chart: the forward-path scaling curves, and bars for the throughput
/// and rate measures (medians; whiskers span min–max).
pub fn svg(r: &Results, levels: &[usize], title: &str) -> Result<String> {
    use plotters::prelude::*;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (1200, 860)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, body) = root.split_vertically(36);
        top.draw(&Text::new(
            title.to_string(),
            (12, 10),
            ("sans-serif", 17).into_font().color(&BLACK),
        ))?;
        let panels = body.split_evenly((2, 2));
        curve(
            r,
            &panels[0],
            levels,
            "fwd_udp",
            "UDP 64 B through the last forward (one-way flow)",
            "k packets/s received",
        )?;
        curve(
            r,
            &panels[1],
            levels,
            "fwd_conn",
            "New TCP connections through the last forward",
            "k connections/s",
        )?;
        let tcp: &[(&str, &str, f64)] = &[
            ("tcp_out", "NAT guest→upstream", 1.0),
            ("tcp_in", "forward upstream→guest", 1.0),
        ];
        bars(
            r,
            &panels[2],
            "TCP bulk, one iperf3 stream",
            "Gbit/s",
            tcp,
            false,
        )?;
        let rates: &[(&str, &str, f64)] = &[
            ("tcp_out", "TCP NAT", 1.0),
            ("tcp_in", "TCP fwd", 1.0),
            ("udp_out", "UDP 64 B", 1.0),
            ("conn_nat", "conn/s NAT", 1.0),
            ("conn_fwd", "conn/s fwd", 1.0),
        ];
        bars(
            r,
            &panels[3],
            "Throughput and rates relative to libvirt",
            "× libvirt (iptables)",
            rates,
            true,
        )?;
        root.present()?;
    }
    Ok(buf)
}

/// A scaling curve: metric `{prefix}_{n}` against n (log scale), in thousands.
fn curve<DB: plotters::prelude::DrawingBackend>(
    r: &Results,
    area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    levels: &[usize],
    prefix: &str,
    caption: &str,
    ydesc: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    use plotters::prelude::*;
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e}");
    let mut ymax: f64 = 0.1;
    for k in Kind::ALL {
        for &n in levels {
            if let Some(s) = r.get(&format!("{prefix}_{n}"), k) {
                ymax = ymax.max(s.max / 1e3);
            }
        }
    }
    let xmax = levels.iter().copied().max().unwrap_or(10_000) as f64 * 2.0;
    let mut c = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((0.5f64..xmax).log_scale(), 0f64..ymax * 1.15)
        .map_err(err)?;
    c.configure_mesh()
        .max_light_lines(1)
        .x_desc("forwards installed (log scale)")
        .y_desc(ydesc)
        .x_label_formatter(&|x| format!("{}", x.round() as u64))
        .draw()
        .map_err(err)?;
    for (i, k) in Kind::ALL.into_iter().enumerate() {
        let col = COLORS[i];
        let pts: Vec<(f64, Stats)> = levels
            .iter()
            .filter_map(|&n| r.get(&format!("{prefix}_{n}"), k).map(|s| (n as f64, s)))
            .collect();
        if pts.is_empty() {
            continue;
        }
        c.draw_series(LineSeries::new(
            pts.iter().map(|(x, s)| (*x, s.median / 1e3)),
            col.stroke_width(2),
        ))
        .map_err(err)?
        .label(k.name())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)));
        c.draw_series(
            pts.iter()
                .map(|(x, s)| Circle::new((*x, s.median / 1e3), 3, col.filled())),
        )
        .map_err(err)?;
        c.draw_series(pts.iter().map(|(x, s)| {
            PathElement::new(
                vec![(*x, s.min / 1e3), (*x, s.max / 1e3)],
                col.stroke_width(1),
            )
        }))
        .map_err(err)?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .border_style(BLACK.mix(0.3))
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Grouped bars, one group per metric `(id, name, scale)`. `relative`:
/// each dataplane's median over libvirt's (libvirt = 1).
fn bars<DB: plotters::prelude::DrawingBackend>(
    r: &Results,
    area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    ydesc: &str,
    groups: &[(&str, &str, f64)],
    relative: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e}");
    // (median, min, max) of a bar, in the chart's unit.
    let value = |id: &str, k: Kind, scale: f64| -> Option<(f64, f64, f64)> {
        let s = r.get(id, k)?;
        let div = if relative {
            r.get(id, Kind::Libvirt)?.median
        } else {
            1.0 / scale
        };
        (div > 0.0).then(|| (s.median / div, s.min / div, s.max / div))
    };
    let mut ymax: f64 = if relative { 1.0 } else { 0.1 };
    for (id, _, scale) in groups {
        for k in Kind::ALL {
            if let Some((_, _, hi)) = value(id, k, *scale) {
                ymax = ymax.max(hi);
            }
        }
    }
    let mut c = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..groups.len() as f64, 0f64..ymax * 1.4)
        .map_err(err)?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .max_light_lines(1)
        .y_desc(ydesc)
        .draw()
        .map_err(err)?;
    if relative {
        c.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 1.0), (groups.len() as f64, 1.0)],
            BLACK.mix(0.5).stroke_width(1),
        )))
        .map_err(err)?;
    }
    let w = 0.8 / 3.0;
    let small = |v: VPos| {
        ("sans-serif", 10)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, v))
    };
    for (i, k) in Kind::ALL.into_iter().enumerate() {
        let col = COLORS[i];
        let mut rects = Vec::new();
        let mut whiskers = Vec::new();
        let mut labels = Vec::new();
        for (g, (id, _, scale)) in groups.iter().enumerate() {
            let Some((med, lo, hi)) = value(id, k, *scale) else {
                continue;
            };
            let x0 = g as f64 + 0.1 + i as f64 * w;
            let x1 = x0 + w * 0.9;
            let xm = (x0 + x1) / 2.0;
            rects.push(Rectangle::new([(x0, 0.0), (x1, med)], col.filled()));
            whiskers.push(PathElement::new(
                vec![(xm, lo), (xm, hi)],
                BLACK.stroke_width(1),
            ));
            let text = if relative {
                format!("{med:.2}")
            } else {
                fmt_num(med)
            };
            labels.push(Text::new(text, (xm, hi + ymax * 0.02), small(VPos::Bottom)));
        }
        c.draw_series(rects)
            .map_err(err)?
            .label(k.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], col.filled()));
        c.draw_series(whiskers).map_err(err)?;
        c.draw_series(labels).map_err(err)?;
    }
    // Group names under the axis (the plotting area does not clip text).
    let names: Vec<_> = groups
        .iter()
        .enumerate()
        .map(|(g, (_, name, _))| {
            let font = ("sans-serif", 12)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top));
            Text::new(name.to_string(), (g as f64 + 0.5, -ymax * 0.03), font)
        })
        .collect();
    c.draw_series(names).map_err(err)?;
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK.mix(0.3))
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Today's date (UTC), from the system clock.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_table() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        assert_eq!(Stats::of(&[1.0, 2.0]).unwrap().median, 1.5);
        let mut r = Results::default();
        r.def("x", "Thing", "Gbit/s", Better::Higher);
        for v in [10.0, 11.0, 12.0] {
            r.push("x", Kind::Libvirt, v);
            r.push("x", Kind::Netd, v * 2.0);
        }
        let t = table(&r);
        assert!(
            t.contains(
                "| Thing, Gbit/s | ↑ | 11.0 (10.0–12.0) | — | 22.0 (20.0–24.0) | 2.00× | — |"
            ),
            "{t}"
        );
        let svg = svg(&r, &[1, 1000, 10000], "t").unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
    }

    #[test]
    fn dates() {
        assert_eq!(today().len(), 10);
    }
}
