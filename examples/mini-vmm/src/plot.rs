//! The sweep's figure: side-by-side panels of log-scale values against
//! depth (log scale), one line per mode and timeout, drawn as SVG with
//! `plotters`.
//!
//! Text is emitted as SVG `<text>` elements and laid out with plotters'
//! built-in size estimate, so no font files or font libraries are needed.

use plotters::prelude::*;

use crate::error::Error;
use crate::mode::Mode;

/// Figure size in pixels.
const SIZE: (u32, u32) = (1200, 520);
/// Height of the shared legend strip at the bottom.
const LEGEND_HEIGHT: u32 = 56;

/// One line of a panel: the values of one mode at one timeout.
#[derive(Clone, Debug)]
pub struct Line {
    /// Mode (the line's colour).
    pub mode: Mode,
    /// Timeout in microseconds (the line's dash pattern).
    pub timeout_us: u64,
    /// `(depth, value)` pairs in depth order; non-positive values are
    /// left out (log scale).
    pub points: Vec<(f64, f64)>,
}

/// One chart of the figure.
#[derive(Clone, Debug)]
pub struct Panel {
    /// Caption above the chart.
    pub title: String,
    /// Description of the y axis.
    pub y_desc: String,
    /// The lines.
    pub lines: Vec<Line>,
}

/// The colour of a mode, the same in every panel.
fn colour(mode: Mode) -> RGBColor {
    let (r, g, b) = mode.spec().colour;
    RGBColor(r, g, b)
}

/// Dash and gap length in pixels of the `i`th timeout; `None` is solid.
fn dashes(i: usize) -> Option<(u32, u32)> {
    match i {
        0 => None,
        1 => Some((9, 5)),
        _ => Some((3, 4)),
    }
}

fn err(e: impl std::fmt::Debug) -> Error {
    Error::Output(format!("drawing the plot: {e:?}"))
}

/// A short axis label: 1, 20, 300, 4k, 50k, 600k, 7M.
fn compact(v: f64) -> String {
    let v = v.abs();
    let (scaled, suffix) = if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    if scaled >= 10.0 || scaled.fract().abs() < 1e-9 {
        format!("{scaled:.0}{suffix}")
    } else {
        format!("{scaled:.1}{suffix}")
    }
}

/// The y range of a log-scale panel: a factor of two of room around the
/// positive values.
fn y_range(lines: &[Line]) -> (f64, f64) {
    let values = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .filter(|v| *v > 0.0 && v.is_finite());
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo.is_finite() {
        (lo / 2.0, hi * 2.0)
    } else {
        (1.0, 10.0)
    }
}

/// Tick values for a log axis from `lo` to `hi`: 1-2-5 steps when the
/// range spans at most three decades, powers of ten otherwise.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let steps: &[f64] = if hi / lo <= 1e3 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let mut ticks = Vec::new();
    let mut decade = 10f64.powi(lo.log10().floor() as i32);
    while decade <= hi {
        for s in steps {
            let v = decade * s;
            if (lo..=hi).contains(&v) {
                ticks.push(v);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// Draws one panel into `area`, with depths (the x key points) on a log
/// scale.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
    depths: &[f64],
    timeouts: &[u64],
) -> Result<(), Error> {
    let x_lo = depths.first().copied().unwrap_or(1.0);
    let x_hi = depths.last().copied().unwrap_or(1.0).max(x_lo * 2.0);
    let (y_lo, y_hi) = y_range(&panel.lines);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (x_lo / 1.3..x_hi * 1.3)
                .log_scale()
                .with_key_points(depths.to_vec()),
            (y_lo..y_hi)
                .log_scale()
                .with_key_points(log_ticks(y_lo, y_hi)),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("reprogramming depth (pushes per request, log)")
        .y_desc(panel.y_desc.as_str())
        .x_label_formatter(&|v| compact(*v))
        .y_label_formatter(&|v| compact(*v))
        .axis_desc_style(("sans-serif", 14))
        .label_style(("sans-serif", 13))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()
        .map_err(err)?;
    for line in &panel.lines {
        let pts: Vec<(f64, f64)> = line
            .points
            .iter()
            .copied()
            .filter(|p| p.1 > 0.0 && p.1.is_finite())
            .collect();
        let c = colour(line.mode);
        let style = c.stroke_width(2);
        let i = timeouts
            .iter()
            .position(|&t| t == line.timeout_us)
            .unwrap_or(0);
        match dashes(i) {
            None => {
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), style))
                    .map_err(err)?;
            }
            Some((dash, gap)) => {
                chart
                    .draw_series(DashedLineSeries::new(pts.iter().copied(), dash, gap, style))
                    .map_err(err)?;
            }
        }
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(err)?;
    }
    Ok(())
}

/// Draws the shared legend: a colour per mode, a dash pattern per timeout.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    modes: &[Mode],
    timeouts: &[u64],
) -> Result<(), Error> {
    let text = ("sans-serif", 15).into_font();
    let y = 24;
    let mut x = 70;
    let sample = |x: i32, colour: RGBColor, pattern: Option<(u32, u32)>| -> Result<(), Error> {
        let style = colour.stroke_width(2);
        match pattern {
            None => area
                .draw(&PathElement::new(vec![(x, y), (x + 36, y)], style))
                .map_err(err),
            Some((dash, gap)) => {
                let mut from = x;
                while from < x + 36 {
                    let to = (from + dash as i32).min(x + 36);
                    area.draw(&PathElement::new(vec![(from, y), (to, y)], style))
                        .map_err(err)?;
                    from = to + gap as i32;
                }
                Ok(())
            }
        }
    };
    for &m in modes {
        sample(x, colour(m), None)?;
        area.draw(&Text::new(m.to_string(), (x + 42, y - 8), text.clone()))
            .map_err(err)?;
        x += 130;
    }
    x += 40;
    for (i, t) in timeouts.iter().enumerate() {
        sample(x, BLACK, dashes(i))?;
        area.draw(&Text::new(
            format!("timeout {t} us"),
            (x + 42, y - 8),
            text.clone(),
        ))
        .map_err(err)?;
        x += 190;
    }
    Ok(())
}

/// Renders `panels` side by side under `caption`, with one legend for all
/// of them, and returns the SVG document.
pub fn render_svg(caption: &str, panels: &[Panel], timeouts: &[u64]) -> Result<String, Error> {
    let mut depths: Vec<f64> = panels
        .iter()
        .flat_map(|p| p.lines.iter())
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .filter(|d| *d > 0.0)
        .collect();
    depths.sort_by(f64::total_cmp);
    depths.dedup();
    let mut modes: Vec<Mode> = Vec::new();
    for m in Mode::SWEEP {
        if panels.iter().any(|p| p.lines.iter().any(|l| l.mode == m)) {
            modes.push(m);
        }
    }

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(caption, ("sans-serif", 20)).map_err(err)?;
        let (charts, legend) = root.split_vertically(root.dim_in_pixel().1 - LEGEND_HEIGHT);
        let cols = panels.len().max(1);
        let areas = charts.split_evenly((1, cols));
        for (area, panel) in areas.iter().zip(panels) {
            draw_panel(area, panel, &depths, timeouts)?;
        }
        draw_legend(&legend, &modes, timeouts)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_labels() {
        assert_eq!(compact(1.0), "1");
        assert_eq!(compact(64.0), "64");
        assert_eq!(compact(2500.0), "2.5k");
        assert_eq!(compact(130_000.0), "130k");
        assert_eq!(compact(2_000_000.0), "2M");
    }

    #[test]
    fn log_ticks_cover_the_range() {
        assert_eq!(
            log_ticks(15.0, 600.0),
            vec![20.0, 50.0, 100.0, 200.0, 500.0]
        );
        assert_eq!(log_ticks(2.0, 3e5), vec![10.0, 100.0, 1e3, 1e4, 1e5]);
    }

    #[test]
    fn renders_lines_and_text_without_fonts() {
        let line = |mode, timeout_us, k: f64| Line {
            mode,
            timeout_us,
            points: vec![(1.0, 10.0 * k), (16.0, 100.0 * k), (256.0, 0.0)],
        };
        let panels = [Panel {
            title: "exits".into(),
            y_desc: "n".into(),
            lines: vec![line(Mode::Eager, 200, 10.0), line(Mode::Lazy, 5000, 1.0)],
        }];
        let svg = render_svg("test", &panels, &[200, 5000]).unwrap();
        assert!(svg.trim_start().starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("<polyline"));
        for label in ["lazy", "eager", "timeout 5000 us"] {
            assert!(svg.contains(&format!(">\n{label}\n</text>")), "{label}");
        }
    }
}
