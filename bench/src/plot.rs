//! The scale plot: placements per second and submit→running latency against
//! cluster size, from control-plane runs at several sizes.
//!
//! [`sweep`] runs the control-plane scenario at each size (100 tasks per
//! worker by default) and returns one [`Point`] per run; [`to_csv`] and
//! [`from_csv`] keep the figures, so the picture can be drawn again without
//! the runs; [`svg`] draws them: two panels side by side, cluster size on a
//! logarithmic axis, every run a dot and the median of each size joined by a
//! line. The SVG is written by hand: a few dozen elements do not need a
//! plotting library.

use std::fmt::Write as _;
use std::time::Duration;

use crate::Error;
use crate::cluster::ManagerKind;
use crate::control_plane::{self, Params};

/// One control-plane run's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Simulated workers.
    pub workers: usize,
    /// Tasks submitted.
    pub tasks: usize,
    /// Tasks placed per second, from the first submit until the last
    /// `SubmitTasks` reply (every task was placed by its call).
    pub placed_per_sec: f64,
    /// Tasks per second from the first submit until all ran.
    pub running_per_sec: f64,
    /// Median submit→running latency, in seconds.
    pub p50: f64,
    /// 99th percentile submit→running latency, in seconds.
    pub p99: f64,
}

impl From<&control_plane::Report> for Point {
    fn from(r: &control_plane::Report) -> Self {
        Self {
            workers: r.workers,
            tasks: r.tasks,
            placed_per_sec: r.placed_acked_per_sec().round(),
            running_per_sec: r.running_per_sec().round(),
            p50: tenth_ms(r.latency.0),
            p99: tenth_ms(r.latency.1),
        }
    }
}

/// A duration in seconds, rounded to a tenth of a millisecond.
fn tenth_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10_000.0
}

/// Runs the control-plane scenario `runs` times at each worker count, with
/// `tasks_per_worker` tasks per worker. Prints each report as it comes, since
/// the largest sizes take minutes.
///
/// # Errors
/// The first run that fails.
pub async fn sweep(
    workers: &[usize],
    tasks_per_worker: usize,
    runs: usize,
    manager: ManagerKind,
) -> Result<Vec<Point>, Error> {
    let mut points = Vec::new();
    for &w in workers {
        for _ in 0..runs {
            let params = Params {
                tasks: w * tasks_per_worker,
                workers: w,
                // Long heartbeats for large clusters, as `orch-bench
                // control-plane` chooses them.
                heartbeat_period: Duration::from_secs(if w > 1000 { 5 } else { 1 }),
                manager: manager.clone(),
                timeout: Duration::from_secs(600),
                ..Params::default()
            };
            let report = control_plane::run(&params).await?;
            println!("{report}");
            points.push(Point::from(&report));
        }
    }
    Ok(points)
}

const CSV_HEADER: &str = "workers,tasks,placed_per_sec,running_per_sec,p50_s,p99_s";

/// The points as CSV, one line per run, with a header. Numbers are written
/// in full, so [`from_csv`] reads back the same points.
pub fn to_csv(points: &[Point]) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for p in points {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{}",
            p.workers, p.tasks, p.placed_per_sec, p.running_per_sec, p.p50, p.p99
        );
    }
    out
}

/// Reads what [`to_csv`] wrote.
///
/// # Errors
/// [`Error::Check`] naming the first line that does not parse.
pub fn from_csv(text: &str) -> Result<Vec<Point>, Error> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    if lines.next().map(str::trim) != Some(CSV_HEADER) {
        return Err(Error::Check(format!(
            "the CSV must start with {CSV_HEADER}"
        )));
    }
    lines
        .enumerate()
        .map(|(i, line)| {
            let bad = || Error::Check(format!("CSV line {}: {line:?}", i + 2));
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let [workers, tasks, placed, running, p50, p99] = f[..] else {
                return Err(bad());
            };
            Ok(Point {
                workers: workers.parse().map_err(|_| bad())?,
                tasks: tasks.parse().map_err(|_| bad())?,
                placed_per_sec: placed.parse().map_err(|_| bad())?,
                running_per_sec: running.parse().map_err(|_| bad())?,
                p50: p50.parse().map_err(|_| bad())?,
                p99: p99.parse().map_err(|_| bad())?,
            })
        })
        .collect()
}

/// One line of a panel: a name for the legend, a colour, and (x, y) points.
struct Series {
    name: &'static str,
    color: &'static str,
    points: Vec<(f64, f64)>,
}

/// One chart: a title, the y axis's unit, and its lines.
struct Panel {
    title: &'static str,
    unit: &'static str,
    series: Vec<Series>,
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 420.0;
const PANEL_WIDTH: f64 = WIDTH / 2.0;
/// Room around a panel's plot area: left (y labels), right, top (title), bottom (x labels, legend).
const MARGIN: (f64, f64, f64, f64) = (78.0, 24.0, 48.0, 92.0);

/// The whole picture for `points`.
pub fn svg(points: &[Point]) -> String {
    let series = |name, color, y: fn(&Point) -> f64| Series {
        name,
        color,
        points: points.iter().map(|p| (p.workers as f64, y(p))).collect(),
    };
    let panels = [
        Panel {
            title: "Throughput (100 tasks per worker)",
            unit: "tasks/s",
            series: vec![
                series("placements/s (placed by SubmitTasks)", "#1f77b4", |p| {
                    p.placed_per_sec
                }),
                series("running/s (submit until all run)", "#ff7f0e", |p| {
                    p.running_per_sec
                }),
            ],
        },
        Panel {
            title: "Submit→running latency",
            unit: "seconds",
            series: vec![
                series("p99", "#d62728", |p| p.p99),
                series("p50", "#2ca02c", |p| p.p50),
            ],
        },
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut out, panel, i as f64 * PANEL_WIDTH);
    }
    out.push_str("</svg>\n");
    out
}

fn draw_panel(out: &mut String, panel: &Panel, left: f64) {
    let (ml, mr, mt, mb) = MARGIN;
    let (x0, x1) = (left + ml, left + PANEL_WIDTH - mr);
    let (y0, y1) = (HEIGHT - mb, mt);
    let all: Vec<(f64, f64)> = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    let (lo, hi) = log_range(all.iter().map(|p| p.0));
    let ymax = all.iter().map(|p| p.1).fold(0.0, f64::max);
    let step = nice_step(ymax, 5);
    // Headroom, so the highest dot does not sit on the frame.
    let ytop = (ymax * 1.05 / step).ceil().max(1.0) * step;
    let sx = |x: f64| x0 + (x.log10() - lo) / (hi - lo) * (x1 - x0);
    let sy = |y: f64| y0 - y / ytop * (y0 - y1);

    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        (x0 + x1) / 2.0,
        escape(panel.title)
    );
    // Grid and y labels.
    let mut y = 0.0;
    while y <= ytop + step / 2.0 {
        let py = sy(y);
        let _ = writeln!(
            out,
            r##"<line x1="{x0:.1}" y1="{py:.1}" x2="{x1:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            py + 4.0,
            number(y, step)
        );
        y += step;
    }
    // Decades on the x axis.
    for decade in lo.ceil() as i32..=hi.floor() as i32 {
        let x = 10f64.powi(decade);
        let px = sx(x);
        let _ = writeln!(
            out,
            r##"<line x1="{px:.1}" y1="{y0:.1}" x2="{px:.1}" y2="{y1:.1}" stroke="#ddd"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            y0 + 18.0,
            number(x, 1.0)
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{x0:.1}" y="{y1:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#333"/>"##,
        x1 - x0,
        y0 - y1
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">workers (log scale)</text>"#,
        (x0 + x1) / 2.0,
        y0 + 36.0
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate({:.1} {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        left + 16.0,
        (y0 + y1) / 2.0,
        escape(panel.unit)
    );
    for (i, s) in panel.series.iter().enumerate() {
        let line: Vec<String> = medians(&s.points)
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            line.join(" "),
            s.color
        );
        for (x, y) in &s.points {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}"/>"#,
                sx(*x),
                sy(*y),
                s.color
            );
        }
        let ly = y0 + 56.0 + i as f64 * 16.0;
        let _ = writeln!(
            out,
            r#"<line x1="{x0:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            ly - 4.0,
            x0 + 24.0,
            ly - 4.0,
            s.color,
            x0 + 30.0,
            ly,
            escape(s.name)
        );
    }
}

/// The decades (log10) that hold every x, widened by half a decade at
/// each end so no point sits on the frame.
fn log_range(xs: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = xs
        .filter(|x| *x > 0.0)
        .map(f64::log10)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    (lo.floor() - 0.25, hi.ceil() + 0.25)
}

/// A step of 1, 2 or 5 times a power of ten that divides 0..=max into at
/// most about `n` parts.
fn nice_step(max: f64, n: u32) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / f64::from(n);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// The median y of each distinct x, in x order.
fn medians(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut xs: Vec<f64> = points.iter().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    xs.into_iter()
        .map(|x| {
            let mut ys: Vec<f64> = points.iter().filter(|p| p.0 == x).map(|p| p.1).collect();
            ys.sort_by(f64::total_cmp);
            let mid = ys.len() / 2;
            let y = if ys.len() % 2 == 1 {
                ys[mid]
            } else {
                (ys[mid - 1] + ys[mid]) / 2.0
            };
            (x, y)
        })
        .collect()
}

/// A number as an axis shows it: thousands separated by commas, and as many
/// decimals as `step` needs.
fn number(v: f64, step: f64) -> String {
    if step < 1.0 {
        let decimals = (-step.log10().floor()) as usize;
        return format!("{v:.decimals$}");
    }
    let digits = format!("{:.0}", v.abs());
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if v < 0.0 {
        format!("-{grouped}")
    } else {
        grouped
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(workers: usize, p99: f64) -> Point {
        Point {
            workers,
            tasks: workers * 100,
            placed_per_sec: 50_000.0,
            running_per_sec: 40_000.0,
            p50: p99 / 2.0,
            p99,
        }
    }

    #[test]
    fn csv_round_trips() {
        let points = vec![point(100, 0.2115), point(1000, 1.25)];
        assert_eq!(from_csv(&to_csv(&points)).expect("parse"), points);
        assert!(from_csv("workers,tasks\n1,2\n").is_err());
        let bad = format!("{CSV_HEADER}\n100,1,2,3\n");
        let err = from_csv(&bad).expect_err("short line");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn steps_are_one_two_or_five_times_a_power_of_ten() {
        let cases = [
            (5.5, 5, 2.0),
            (60_000.0, 5, 20_000.0),
            (0.21, 5, 0.05),
            (100.0, 5, 20.0),
            (0.0, 5, 1.0),
        ];
        for (max, n, want) in cases {
            let got = nice_step(max, n);
            assert!((got - want).abs() < 1e-9, "nice_step({max}, {n}) = {got}");
        }
    }

    #[test]
    fn numbers_read_like_an_axis() {
        assert_eq!(number(10_000.0, 1.0), "10,000");
        assert_eq!(number(100.0, 20.0), "100");
        assert_eq!(number(1_000_000.0, 1.0), "1,000,000");
        assert_eq!(number(0.15, 0.05), "0.15");
        assert_eq!(number(4.0, 2.0), "4");
    }

    #[test]
    fn medians_per_size() {
        let pts = [
            (100.0, 3.0),
            (100.0, 1.0),
            (100.0, 2.0),
            (10.0, 4.0),
            (10.0, 6.0),
        ];
        assert_eq!(medians(&pts), vec![(10.0, 5.0), (100.0, 2.0)]);
    }

    #[test]
    fn the_picture_has_a_dot_per_run_and_a_line_per_series() {
        let points = [
            point(100, 0.2),
            point(1000, 1.2),
            point(1000, 1.4),
            point(10_000, 5.5),
        ];
        let svg = svg(&points);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        // Four series (two per panel), each with a dot per run.
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert_eq!(svg.matches("<circle").count(), 4 * points.len());
        assert!(svg.contains(">10,000<"), "decade labels");
        assert!(!svg.contains(">10<"), "no decade outside the points' range");
        assert!(svg.contains("Submit→running latency"));
    }
}
