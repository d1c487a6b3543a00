//! `make bench`: Switchboard's hot paths measured against raw baselines run in the same
//! process on the same servers, reported as ratios (ours / baseline time; 1.00 = as fast
//! as the raw operation) and written to BENCHMARKS.md.
//!
//! Needs Postgres on 127.0.0.1:5432 and NATS on 127.0.0.1:4222, like the test suite.
//!
//! This file is the harness: the command line, running the chosen benchmarks and the
//! report. Each benchmark is a module of its own; the fixtures they share are in `common`.

mod actions;
mod appends;
mod common;
mod connexease;
mod flows;
mod insights;
mod latency;
mod rebuild;
mod relay;
mod webhooks;

use std::fmt::Write as _;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Write the results as Markdown to this file.
    #[arg(long)]
    write: Option<std::path::PathBuf>,
    /// Scale every workload (1.0 = the recorded size).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Requests per second of the latency benchmark.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Run only the benchmarks whose name contains this.
    #[arg(long)]
    only: Option<String>,
}

/// One line of the report: a benchmark, our figure, the baseline's, and their ratio.
struct Row {
    name: String,
    ours: String,
    baseline: String,
    ratio: f64,
    note: String,
}

fn per_sec(n: usize, d: Duration) -> String {
    format!("{:.0}/s", n as f64 / d.as_secs_f64())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// `p50 1.23 ms, p99 4.56 ms` of sorted latencies.
fn p50_p99(sorted: &[Duration]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(sorted, 0.5)),
        ms(percentile(sorted, 0.99))
    )
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut rows = Vec::new();
    let run = |name: &str| args.only.as_deref().is_none_or(|only| name.contains(only));
    if run("append") {
        appends::run(&mut rows, args.scale).await;
    }
    if run("relay") {
        relay::run(&mut rows, args.scale).await;
    }
    if run("rebuild") {
        rebuild::run(&mut rows, args.scale).await;
    }
    if run("latency") {
        latency::run(&mut rows, args.scale, args.rate).await;
    }
    if run("action") {
        actions::run(&mut rows, args.scale).await;
    }
    if run("webhooks") {
        webhooks::deliveries(&mut rows, args.scale).await;
        webhooks::latency(&mut rows, args.scale).await;
    }
    if run("flows") {
        flows::run(&mut rows, args.scale).await;
    }
    if run("connexease") {
        connexease::run(&mut rows, args.scale).await;
    }
    if run("insights") {
        insights::run(&mut rows, args.scale).await;
    }
    let mut out = String::new();
    writeln!(
        out,
        "| benchmark | Switchboard | baseline | ratio (time, ours / baseline) | baseline is |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|").unwrap();
    for r in &rows {
        let ratio = if r.ratio.is_nan() {
            "-".into()
        } else {
            format!("{:.2}", r.ratio)
        };
        writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            r.name, r.ours, r.baseline, ratio, r.note
        )
        .unwrap();
    }
    writeln!(
        out,
        "\nPeak RSS of the benchmark process: {:.0} MiB.",
        peak_rss_mib()
    )
    .unwrap();
    print!("{out}");
    if let Some(path) = args.write {
        let header = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.split("<!-- results -->").next().map(str::to_owned))
            .unwrap_or_default();
        std::fs::write(&path, format!("{header}<!-- results -->\n{out}")).unwrap();
    }
}
