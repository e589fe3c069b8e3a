//! Line charts as inline SVG: one value a second per line (a gap where there is none), the
//! run's phases as dashed vertical lines, axes with round ticks and a legend. No script, no
//! network: the page reads anywhere.

use std::fmt::Write;

/// One line: a value per second (None: nothing that second).
pub(super) struct Line<'a> {
    pub label: &'a str,
    pub color: &'a str,
    pub values: Vec<Option<f64>>,
}

const WIDTH: f64 = 880.0;
const HEIGHT: f64 = 230.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 28.0;

/// A chart over `seconds` seconds; `phases` are (second, name). Its `data-chart` is `id`.
pub(super) fn chart(
    id: &str,
    title: &str,
    unit: &str,
    lines: &[Line<'_>],
    phases: &[(f64, String)],
    seconds: usize,
) -> String {
    let span = (seconds.max(2) - 1) as f64;
    let top = lines
        .iter()
        .flat_map(|l| l.values.iter().flatten())
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let (y_max, y_step) = nice_axis(top);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |s: f64| LEFT + s / span * plot_w;
    let y = |v: f64| TOP + plot_h - (v / y_max).min(1.0) * plot_h;
    let mut svg = format!(
        r#"<figure><figcaption>{}</figcaption><svg class="chart" data-chart="{}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{}">"#,
        escape(title),
        escape(id),
        escape(title)
    );
    // Axes and horizontal grid with the unit's ticks.
    let mut tick = 0.0;
    while tick <= y_max + y_step / 2.0 {
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y(tick) + 4.0,
            number(tick),
            y = y(tick),
        );
        tick += y_step;
    }
    let _ = write!(
        svg,
        r#"<text x="4" y="{}" font-size="11">{}</text>"#,
        TOP - 8.0,
        escape(unit)
    );
    let (_, x_step) = nice_axis(span);
    let mut s = 0.0;
    while s <= span + 1e-9 {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle">{}s</text>"#,
            x(s),
            HEIGHT - 8.0,
            number(s)
        );
        s += x_step.max(1.0);
    }
    for (at, name) in phases {
        let px = x(at.clamp(0.0, span));
        let _ = write!(
            svg,
            r##"<line class="phase" x1="{px:.1}" x2="{px:.1}" y1="{TOP}" y2="{}" stroke="#888" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" font-size="10" fill="#555">{}</text>"##,
            TOP + plot_h,
            px + 3.0,
            TOP + 10.0,
            escape(name)
        );
    }
    // The lines: a path each, broken where a second has no value.
    let mut legend_x = LEFT;
    for line in lines {
        let mut d = String::new();
        let mut pen_down = false;
        for (second, value) in line.values.iter().enumerate() {
            match value.filter(|v| v.is_finite()) {
                Some(v) => {
                    let command = if pen_down { 'L' } else { 'M' };
                    let _ = write!(d, "{command}{:.1} {:.1} ", x(second as f64), y(v));
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        if !d.is_empty() {
            let _ = write!(
                svg,
                r#"<path class="line" data-label="{}" d="{}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
                escape(line.label),
                d.trim_end(),
                line.color
            );
        }
        let _ = write!(
            svg,
            r#"<rect x="{legend_x:.1}" y="6" width="12" height="4" fill="{}"/><text x="{:.1}" y="12" font-size="11">{}</text>"#,
            line.color,
            legend_x + 16.0,
            escape(line.label)
        );
        legend_x += 24.0 + 7.0 * line.label.len() as f64;
    }
    svg.push_str("</svg></figure>\n");
    svg
}

/// A round top for the axis and its step (4 to 5 ticks): 0.37 -> (0.4, 0.1), 1234 -> (1500, 500).
pub(super) fn nice_axis(top: f64) -> (f64, f64) {
    if top <= 0.0 || !top.is_finite() {
        return (1.0, 0.25);
    }
    let raw = top / 4.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    ((top / step).ceil() * step, step)
}

fn number(v: f64) -> String {
    if v == v.trunc() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Text for HTML and SVG.
pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round_and_lines_break_at_gaps() {
        let close =
            |(a, b): (f64, f64), (x, y): (f64, f64)| (a - x).abs() < 1e-9 && (b - y).abs() < 1e-9;
        assert!(close(nice_axis(0.37), (0.4, 0.1)), "{:?}", nice_axis(0.37));
        assert!(close(nice_axis(1234.0), (1500.0, 500.0)));
        assert!(close(nice_axis(0.0), (1.0, 0.25)));
        let svg = chart(
            "t",
            "A <title>",
            "ms",
            &[Line {
                label: "p50",
                color: "#123456",
                values: vec![Some(1.0), Some(2.0), None, Some(4.0)],
            }],
            &[(2.0, "peak".into())],
            4,
        );
        assert!(svg.contains("A &lt;title&gt;"), "{svg}");
        let d = svg
            .split(r#"d=""#)
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(d.matches('M').count(), 2, "two pieces around the gap: {d}");
        assert_eq!(d.matches('L').count(), 1, "{d}");
        assert!(
            svg.contains(r#"class="phase""#) && svg.contains(">peak<"),
            "{svg}"
        );
    }
}
