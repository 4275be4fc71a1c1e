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

#[derive(Clone, Copy)]
enum Marker {
    Circle,
    Triangle,
    Cross,
}

struct Line {
    label: String,
    color: RGBColor,
    marker: Marker,
    /// (log2 size, value)
    points: Vec<(f64, f64)>,
}

/// Colour families: blues for shmem-broker, reds for the Unix socket, greens for the pipe,
/// grey for the machine's limits; darker to lighter by variant.
const OURS: [RGBColor; 3] = [
    RGBColor(0x08, 0x45, 0x94),
    RGBColor(0x21, 0x71, 0xb5),
    RGBColor(0x6b, 0xae, 0xd6),
];
const UNIX: [RGBColor; 3] = [
    RGBColor(0xa5, 0x0f, 0x15),
    RGBColor(0xde, 0x2d, 0x26),
    RGBColor(0xfb, 0x6a, 0x4a),
];
const PIPE: [RGBColor; 3] = [
    RGBColor(0x00, 0x6d, 0x2c),
    RGBColor(0x31, 0xa3, 0x54),
    RGBColor(0x74, 0xc4, 0x76),
];
const ICEORYX: [RGBColor; 3] = [
    RGBColor(0x54, 0x27, 0x8f),
    RGBColor(0x80, 0x7d, 0xba),
    RGBColor(0xbc, 0xbd, 0xdc),
];
const RING: [RGBColor; 3] = [
    RGBColor(0xa6, 0x36, 0x03),
    RGBColor(0xe6, 0x55, 0x0d),
    RGBColor(0xfd, 0x8d, 0x3c),
];
const LIMIT: RGBColor = RGBColor(0x52, 0x52, 0x52);

fn transport_colors(t: Transport) -> [RGBColor; 3] {
    match t {
        Transport::Ours => OURS,
        Transport::Unix => UNIX,
        Transport::Pipe => PIPE,
        Transport::Iceoryx => ICEORYX,
        Transport::Ring => RING,
    }
}

/// The x axis: log2 of a message size, or of a count.
struct XAxis {
    desc: &'static str,
    label: fn(&f64) -> String,
}

const SIZES_AXIS: XAxis = XAxis {
    desc: "message size",
    label: size_label,
};

fn count_label(x: &f64) -> String {
    format!("{}", 2f64.powf(x.round()) as u64)
}

fn draw(path: &Path, caption: &str, x: XAxis, y_desc: &str, lines: &[Line]) -> Result<()> {
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
        .x_desc(x.desc)
        .y_desc(y_desc)
        .x_labels(((x_hi - x_lo) as usize).max(2))
        .x_label_formatter(&x.label)
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
        let style = color.filled();
        match line.marker {
            Marker::Circle => chart
                .draw_series(line.points.iter().map(|&p| Circle::new(p, 4, style)))
                .map(|_| ()),
            Marker::Triangle => chart
                .draw_series(
                    line.points
                        .iter()
                        .map(|&p| TriangleMarker::new(p, 5, style)),
                )
                .map(|_| ()),
            Marker::Cross => chart
                .draw_series(
                    line.points
                        .iter()
                        .map(|&p| Cross::new(p, 4, color.stroke_width(2))),
                )
                .map(|_| ()),
        }
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
        (Series::OursBlocking, OURS[0], Marker::Circle),
        (Series::OursSpin, OURS[1], Marker::Triangle),
        (Series::OursBatched, OURS[2], Marker::Cross),
        (Series::OursRecvRef, OURS[1], Marker::Circle),
        (Series::OursLoan, OURS[2], Marker::Circle),
        (Series::Unix, UNIX[0], Marker::Circle),
        (Series::UnixBuffered, UNIX[2], Marker::Cross),
        (Series::Pipe, PIPE[0], Marker::Circle),
        (Series::Memcpy, LIMIT, Marker::Circle),
        (Series::IceoryxZeroCopy, ICEORYX[0], Marker::Circle),
        (Series::IceoryxCopy, ICEORYX[1], Marker::Triangle),
        (Series::Ring, RING[0], Marker::Circle),
        (Series::RingSpin, RING[1], Marker::Triangle),
    ];
    let lines: Vec<Line> = series
        .iter()
        .map(|&(s, color, marker)| Line {
            label: s.label().to_string(),
            color,
            marker,
            points: r
                .sizes
                .iter()
                .filter_map(|&size| r.throughput(s, size).map(|t| (log2(size), t.gb_per_s)))
                .collect(),
        })
        .filter(|l| !l.points.is_empty())
        .collect();
    draw(
        path,
        "Throughput (GB/s, log scale)",
        SIZES_AXIS,
        "GB/s",
        &lines,
    )
    .with_context(|| format!("writing {}", path.display()))
}

pub fn latency(r: &Results, path: &Path) -> Result<()> {
    let mut lines = Vec::new();
    for transport in [
        Transport::Ours,
        Transport::Iceoryx,
        Transport::Ring,
        Transport::Unix,
        Transport::Pipe,
    ] {
        let colors = transport_colors(transport);
        let modes = [
            (LatencyMode::BusyPoll, Marker::Circle),
            (LatencyMode::Blocking, Marker::Triangle),
            (LatencyMode::Asleep, Marker::Cross),
        ];
        for (i, (mode, marker)) in modes.into_iter().enumerate() {
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
                    color: colors[i],
                    marker,
                    points,
                });
            }
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
            color: LIMIT,
            marker: Marker::Circle,
            points,
        });
    }
    draw(
        path,
        "One-way latency p50 (µs, log scale)",
        SIZES_AXIS,
        "µs",
        &lines,
    )
    .with_context(|| format!("writing {}", path.display()))
}

/// Aggregate throughput against the number of channels busy at once.
pub fn scale(r: &Results, path: &Path) -> Result<()> {
    let lines: Vec<Line> = [Transport::Ours, Transport::Iceoryx, Transport::Unix]
        .into_iter()
        .map(|t| Line {
            label: format!("{}, 64 KiB messages", t.label()),
            color: transport_colors(t)[0],
            marker: Marker::Circle,
            points: r
                .scale_pairs
                .iter()
                .filter(|p| p.transport == t)
                .map(|p| ((p.pairs as f64).log2(), p.aggregate.gb_per_s))
                .collect(),
        })
        .filter(|l| !l.points.is_empty())
        .collect();
    draw(
        path,
        "Throughput, all pairs together (GB/s, log scale)",
        XAxis {
            desc: "channels busy at once (producer/consumer pairs)",
            label: count_label,
        },
        "GB/s",
        &lines,
    )
    .with_context(|| format!("writing {}", path.display()))
}
