//! SVG plots drawn with plotters: line panels and bar charts, with titles, axis units and legends.
//!
//! The SVG backend writes text as `<text>` elements, so no system font is needed.

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;

use super::report::Series;

/// Colours that stay apart on white, in the order lines take them.
pub const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// How a line is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stroke {
    /// A solid line.
    Solid,
    /// A dashed line (used for baselines).
    Dashed,
}

/// One line of a panel: its data, colour, stroke, and whether its points get markers.
pub struct Line<'a> {
    /// The data and legend name.
    pub series: &'a Series,
    /// The colour.
    pub colour: RGBColor,
    /// Solid or dashed.
    pub stroke: Stroke,
    /// Draw a dot at each point (for sparse data such as scaling steps).
    pub markers: bool,
}

/// One chart: its title, axis labels (with units) and lines.
pub struct Panel<'a> {
    /// Shown above the chart.
    pub title: String,
    /// The x axis label, with its unit.
    pub x_label: String,
    /// The y axis label, with its unit.
    pub y_label: String,
    /// A logarithmic x axis.
    pub log_x: bool,
    /// A logarithmic y axis.
    pub log_y: bool,
    /// The lines.
    pub lines: Vec<Line<'a>>,
    /// Where the legend goes.
    pub legend: SeriesLabelPosition,
}

/// Draws `panels` stacked in `rows` × `columns` under `title`, into the SVG file `path`.
pub fn panels(
    path: &Path,
    size: (u32, u32),
    title: &str,
    grid: (usize, usize),
    panels: &[Panel<'_>],
) -> Result<(), String> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let body = root
        .titled(title, ("sans-serif", 26).into_font().style(FontStyle::Bold))
        .map_err(|e| e.to_string())?;
    let areas = body.split_evenly(grid);
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel)?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Draws one panel of lines into `area`.
fn draw_panel(area: &DrawingArea<SVGBackend<'_>, Shift>, panel: &Panel<'_>) -> Result<(), String> {
    let all = || panel.lines.iter().flat_map(|line| line.series.points.iter().copied());
    let x_max = all().map(|(x, _)| x).fold(f64::MIN, f64::max).max(1e-9);
    let x_min = all().map(|(x, _)| x).fold(f64::MAX, f64::min).min(x_max);
    let y_max = all().map(|(_, y)| y).fold(0.0, f64::max).max(1e-9);
    let y_min = all().map(|(_, y)| y).filter(|y| *y > 0.0).fold(f64::MAX, f64::min).min(y_max);
    let x_range = if panel.log_x {
        x_min.max(1e-9) * 0.8..x_max * 1.25
    } else if x_min >= 0.0 && x_min <= x_max * 0.5 {
        0.0..x_max * 1.02
    } else {
        x_min - (x_max - x_min) * 0.05..x_max + (x_max - x_min) * 0.05
    };
    let y_range = if panel.log_y { y_min.max(1e-9) * 0.7..y_max * 1.6 } else { 0.0..y_max * 1.12 };
    let mut builder = ChartBuilder::on(area);
    builder.caption(&panel.title, ("sans-serif", 18)).margin(12).x_label_area_size(45).y_label_area_size(80);
    let error = |e: DrawingAreaErrorKind<_>| e.to_string();
    match (panel.log_x, panel.log_y) {
        (false, false) => finish(builder.build_cartesian_2d(x_range, y_range).map_err(error)?, panel),
        (false, true) => {
            finish(builder.build_cartesian_2d(x_range, y_range.log_scale()).map_err(error)?, panel)
        }
        (true, false) => {
            finish(builder.build_cartesian_2d(x_range.log_scale(), y_range).map_err(error)?, panel)
        }
        (true, true) => finish(
            builder.build_cartesian_2d(x_range.log_scale(), y_range.log_scale()).map_err(error)?,
            panel,
        ),
    }
}

/// Draws the mesh, the lines and the legend of a built chart.
fn finish<'a, X, Y>(
    mut chart: ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    panel: &Panel<'_>,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .y_label_formatter(&|y| short_number(*y))
        .x_label_formatter(&|x| short_number(*x))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .max_light_lines(1)
        .draw()
        .map_err(|e| e.to_string())?;
    for line in &panel.lines {
        draw_line(&mut chart, line)?;
    }
    draw_legend(&mut chart, panel.legend.clone())
}

/// Draws one line (and its legend entry) on a chart of any y scale.
fn draw_line<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    line: &Line<'_>,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let style = line.colour.stroke_width(if line.stroke == Stroke::Dashed { 2 } else { 3 });
    let points = line.series.points.clone();
    let annotation = match line.stroke {
        Stroke::Solid => {
            chart.draw_series(LineSeries::new(points.clone(), style)).map_err(|e| e.to_string())?
        }
        Stroke::Dashed => chart
            .draw_series(DashedLineSeries::new(points.clone(), 10, 6, style))
            .map_err(|e| e.to_string())?,
    };
    let colour = line.colour;
    let dashed = line.stroke == Stroke::Dashed;
    annotation.label(line.series.name.clone()).legend(move |(x, y)| {
        let style = colour.stroke_width(3);
        if dashed {
            PathElement::new(vec![(x, y), (x + 8, y)], style)
        } else {
            PathElement::new(vec![(x, y), (x + 22, y)], style)
        }
    });
    if line.markers {
        let colour = line.colour;
        chart
            .draw_series(points.into_iter().map(|point| Circle::new(point, 4, colour.filled())))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Draws the legend box of a chart.
fn draw_legend<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())
}

/// A bar chart: one bar per `(label, value, colour)`, the value printed above it.
pub fn bars(
    path: &Path,
    size: (u32, u32),
    title: &str,
    y_label: &str,
    bars: &[(String, f64, RGBColor)],
) -> Result<(), String> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let y_max = bars.iter().map(|(_, value, _)| *value).fold(0.0, f64::max).max(1e-9) * 1.2;
    let count = bars.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24).into_font().style(FontStyle::Bold))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(90)
        .build_cartesian_2d(-0.5..count - 0.5, 0.0..y_max)
        .map_err(|e| e.to_string())?;
    let labels: Vec<String> = bars.iter().map(|(label, _, _)| label.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len())
        .x_label_formatter(&|x| {
            let index = x.round();
            if (x - index).abs() < 0.05 && index >= 0.0 {
                labels.get(index as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_label)
        .y_label_formatter(&|y| short_number(*y))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|e| e.to_string())?;
    for (index, (_, value, colour)) in bars.iter().enumerate() {
        let x = index as f64;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x - 0.3, 0.0), (x + 0.3, *value)],
                colour.filled(),
            )))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(std::iter::once(Text::new(
                short_number(*value),
                (x - 0.06, *value + y_max * 0.05),
                ("sans-serif", 18),
            )))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// A number short enough for an axis tick: 1.5M, 20k, 3.2, 0.05.
pub fn short_number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1e6 {
        trim(format!("{:.1}", value / 1e6)) + "M"
    } else if magnitude >= 1e4 {
        trim(format!("{:.0}", value / 1e3)) + "k"
    } else if magnitude >= 1e3 {
        trim(format!("{:.1}", value / 1e3)) + "k"
    } else if magnitude >= 10.0 || magnitude == 0.0 {
        format!("{value:.0}")
    } else if magnitude >= 1.0 {
        trim(format!("{value:.1}"))
    } else {
        trim(format!("{value:.2}"))
    }
}

/// Drops trailing zeros after a decimal point, and the point if nothing follows it.
fn trim(text: String) -> String {
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_string() } else { text }
}
