//! SVG plots of throughput and latency against message size (plotters, SVG backend only: no
//! fonts or system libraries needed; the viewer renders the text).

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use crate::results::{format_size, LatencyMode, Results, Series, Transport};

const WIDTH: u32 = 960;
const HEIGHT: u32 = 600;

fn plot_error<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow!("drawing the plot: {err:?}")
}

/// x is log2(message size), labelled with sizes.
fn size_label(x: &f64) -> String {
    format_size(2f64.powf(x.round()) as usize)
}

struct Line {
    label: String,
    color: RGBColor,
    /// (log2 size, value)
    points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

fn draw(path: &Path, caption: &str, y_desc: &str, lines: &[Line]) -> Result<()> {
    let values = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo <= hi {
        (lo / 2.0, hi * 2.0)
    } else {
        (0.1, 10.0)
    };
    let xs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let (x_lo, x_hi) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (x_lo, x_hi) = if x_lo <= x_hi {
        (x_lo - 0.5, x_hi + 0.5)
    } else {
        (5.5, 22.5)
    };

    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(x_lo..x_hi, (lo..hi).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("message size")
        .y_desc(y_desc)
        .x_labels(((x_hi - x_lo) as usize).max(2))
        .x_label_formatter(&size_label)
        .draw()
        .map_err(plot_error)?;
    for line in lines {
        let color = line.color;
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label(line.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                line.points
                    .iter()
                    .map(|&p| Circle::new(p, 3, color.filled())),
            )
            .map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn log2(size: usize) -> f64 {
    (size as f64).log2()
}

pub fn throughput(r: &Results, path: &Path) -> Result<()> {
    let series = [
        Series::OursBlocking,
        Series::OursSpin,
        Series::OursBatched,
        Series::Unix,
        Series::UnixBuffered,
        Series::Pipe,
        Series::Memcpy,
    ];
    let lines: Vec<Line> = series
        .iter()
        .enumerate()
        .map(|(i, &s)| Line {
            label: s.label().to_string(),
            color: COLORS[i % COLORS.len()],
            points: r
                .sizes
                .iter()
                .filter_map(|&size| r.throughput(s, size).map(|t| (log2(size), t.gb_per_s)))
                .collect(),
        })
        .filter(|l| !l.points.is_empty())
        .collect();
    draw(path, "Throughput (GB/s, log scale)", "GB/s", &lines)
        .with_context(|| format!("writing {}", path.display()))
}

pub fn latency(r: &Results, path: &Path) -> Result<()> {
    let mut lines = Vec::new();
    let mut i = 0;
    for transport in [Transport::Ours, Transport::Unix, Transport::Pipe] {
        for mode in [
            LatencyMode::BusyPoll,
            LatencyMode::Blocking,
            LatencyMode::Asleep,
        ] {
            let points: Vec<(f64, f64)> = r
                .sizes
                .iter()
                .filter_map(|&size| {
                    r.latency(transport, mode, size)
                        .map(|p| (log2(size), p.p50 / 1e3))
                })
                .collect();
            if !points.is_empty() {
                lines.push(Line {
                    label: format!("{}, {}", transport.label(), mode.label()),
                    color: COLORS[i % COLORS.len()],
                    points,
                });
            }
            i += 1;
        }
    }
    if let Some(c) = &r.core_to_core {
        let points = r
            .sizes
            .iter()
            .map(|&size| (log2(size), c.round_trip.p50 / 1e3))
            .collect();
        lines.push(Line {
            label: "core-to-core cache-line round trip".into(),
            color: COLORS[9],
            points,
        });
    }
    draw(path, "One-way latency p50 (µs, log scale)", "µs", &lines)
        .with_context(|| format!("writing {}", path.display()))
}
