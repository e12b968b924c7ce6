//! `loadgen chart`: the e2e phase's pod-creation latencies as an SVG chart, one line per admission configuration
//! (no mutation, secure-defaults, the null webhook, MutatingAdmissionPolicy; with `make bench-peers`, Kyverno and
//! Gatekeeper instead of the null webhook): the share of creates that took at most
//! a given time (a cumulative distribution, log time axis), with one creator and, beside it, with 8 concurrent
//! creators. Drawn from every timed create's latency (`samples_us` in e2e-latency.json and e2e-throughput.json).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use plotters::prelude::*;
use serde_json::Value;

use crate::Args;

/// The configurations in drawing order: name in the JSON, legend, colour. `make bench` names secure-defaults
/// `webhook`, `make bench-peers` names it `secure-defaults`.
const CONFIGS: [(&str, &str, RGBColor); 9] = [
    ("none", "no mutation", RGBColor(120, 120, 120)),
    ("webhook", "secure-defaults webhook", RGBColor(31, 119, 180)),
    (
        "secure-defaults",
        "secure-defaults webhook",
        RGBColor(31, 119, 180),
    ),
    ("null", "null webhook (no patch)", RGBColor(255, 127, 14)),
    (
        "images",
        "image-aware defaults, cached",
        RGBColor(23, 190, 207),
    ),
    (
        "images-cold",
        "image-aware defaults, cold miss",
        RGBColor(140, 86, 75),
    ),
    ("map", "MutatingAdmissionPolicy", RGBColor(44, 160, 44)),
    ("kyverno", "Kyverno", RGBColor(214, 39, 40)),
    ("gatekeeper", "Gatekeeper", RGBColor(148, 103, 189)),
];

/// Points of the cumulative distribution: at most `points` (latency ms, percent of creates at or below it).
fn cdf(samples: &mut [u32], points: usize) -> Vec<(f64, f64)> {
    samples.sort_unstable();
    let n = samples.len();
    if n == 0 {
        return Vec::new();
    }
    let steps = points.min(n).max(2);
    (0..steps)
        .map(|i| {
            let rank = i * (n - 1) / (steps - 1);
            (
                f64::from(samples[rank].max(1)) / 1000.0,
                100.0 * (rank + 1) as f64 / n as f64,
            )
        })
        .collect()
}

fn quantile(sorted: &[u32], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

struct Run {
    title: String,
    /// (legend, colour, sorted samples µs)
    lines: Vec<(String, RGBColor, Vec<u32>)>,
}

fn read_run(path: &Path, title: &str) -> anyhow::Result<Option<Run>> {
    let Ok(text) = std::fs::read(path) else {
        return Ok(None);
    };
    let run: Value =
        serde_json::from_slice(&text).with_context(|| format!("{}", path.display()))?;
    let targets = run["targets"].as_array().context("no targets")?;
    let mut lines = Vec::new();
    for (name, legend, colour) in CONFIGS {
        let Some(target) = targets.iter().find(|t| t["name"] == name) else {
            continue;
        };
        let mut samples: Vec<u32> = target["samples_us"]
            .as_array()
            .with_context(|| format!("{}: {name} has no samples_us", path.display()))?
            .iter()
            .filter_map(|v| v.as_u64().map(|v| v.min(u64::from(u32::MAX)) as u32))
            .collect();
        if samples.is_empty() {
            continue;
        }
        samples.sort_unstable();
        let legend = format!(
            "{legend}: p50 {:.2} ms, p99 {:.2} ms",
            quantile(&samples, 0.5),
            quantile(&samples, 0.99)
        );
        lines.push((legend, colour, samples));
    }
    let creators = run["connections"].as_u64().unwrap_or(0);
    let creates: usize = lines.iter().map(|l| l.2.len()).sum();
    Ok(Some(Run {
        title: format!("{title}: {creators} creator(s), {creates} creates"),
        lines,
    }))
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let dir = PathBuf::from(args.req("dir")?);
    let out = PathBuf::from(args.req("out")?);
    let runs: Vec<Run> = [
        ("e2e-latency.json", "Latency"),
        ("e2e-throughput.json", "Under load"),
    ]
    .iter()
    .filter_map(|(file, title)| read_run(&dir.join(file), title).transpose())
    .collect::<anyhow::Result<_>>()?;
    if runs.iter().all(|r| r.lines.is_empty()) {
        bail!("no pod-creation samples in {}", dir.display());
    }
    draw(&runs, &out).map_err(|e| anyhow!("drawing {}: {e}", out.display()))?;
    eprintln!("[chart] wrote {}", out.display());
    Ok(())
}

fn draw(runs: &[Run], out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let width = 560 * runs.len() as u32;
    let root = SVGBackend::new(out, (width, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "Pod creation through kube-apiserver: time per create, by admission configuration",
        ("sans-serif", 18),
    )?;
    let areas = root.split_evenly((1, runs.len()));
    // One time axis for all panels, so they compare at a glance.
    let all = runs
        .iter()
        .flat_map(|r| r.lines.iter().flat_map(|l| l.2.iter()));
    let (lo, hi) = all.fold((u32::MAX, 0), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    // From the decade below the fastest create (so the axis starts on a labelled 1, 10, ...) to a little past
    // the slowest.
    let lo = 10f64.powf((f64::from(lo.max(1)) / 1000.0).log10().floor());
    let hi = f64::from(hi.max(2)) / 1000.0 * 1.5;
    for (run, area) in runs.iter().zip(areas.iter()) {
        let (plot_area, legend_area) = area.split_vertically(400);
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(&run.title, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(48)
            .build_cartesian_2d((lo..hi).log_scale(), 0.0..100.0)?;
        chart
            .configure_mesh()
            .x_desc("time per pod create (ms, log scale)")
            .y_desc("creates done within it (%)")
            .x_labels(60)
            .x_label_formatter(&one_two_five)
            .light_line_style(WHITE)
            .label_style(("sans-serif", 12))
            .draw()?;
        for (_, colour, samples) in &run.lines {
            let mut samples = samples.clone();
            chart.draw_series(LineSeries::new(
                cdf(&mut samples, 300),
                colour.stroke_width(2),
            ))?;
        }
        // The legend below the plot, where no line can run under it.
        for (i, (legend, colour, _)) in run.lines.iter().enumerate() {
            let y = 12 + 20 * i as i32;
            legend_area.draw(&PathElement::new(
                vec![(70, y), (96, y)],
                colour.stroke_width(3),
            ))?;
            legend_area.draw(&Text::new(legend.clone(), (104, y - 7), ("sans-serif", 13)))?;
        }
    }
    root.present()?;
    Ok(())
}

/// Labels only at 1, 2 and 5 times a power of ten: a log axis labelled at every step crowds its upper end.
fn one_two_five(v: &f64) -> String {
    let magnitude = 10f64.powf(v.log10().floor());
    let lead = (v / magnitude).round();
    let on_grid = ((v / magnitude) - lead).abs() < 0.01;
    if on_grid && [1.0, 2.0, 5.0].contains(&lead) {
        let text = format!("{:.3}", lead * magnitude);
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_runs_from_the_fastest_to_all() {
        let mut samples: Vec<u32> = (1..=1000).rev().collect();
        let points = cdf(&mut samples, 11);
        assert_eq!(points.len(), 11);
        assert_eq!(points[0], (0.001, 0.1));
        assert_eq!(points[10], (1.0, 100.0));
        assert!(
            points
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1)
        );
    }

    #[test]
    fn the_time_axis_is_labelled_at_one_two_five() {
        let labels: Vec<String> = [0.5, 0.6, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 20.0]
            .iter()
            .map(one_two_five)
            .collect();
        assert_eq!(labels, ["0.5", "", "1", "2", "", "5", "", "10", "20"]);
    }
}
