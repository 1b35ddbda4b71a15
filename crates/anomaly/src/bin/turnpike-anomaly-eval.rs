//! Evaluates the anomaly detector on the synthetic labelled benchmark (default) or on
//! labelled CSV series (NAB layout). See docs/anomaly-detection.md.
//!
//! ```text
//! turnpike-anomaly-eval [--tenants N] [--weeks W] [--seed S] [--interval SECS]
//! turnpike-anomaly-eval --data DIR | --csv FILE ... [--windows FILE] [--probation nab|none]
//!                       [--per-series] [--alerts]
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use turnpike_anomaly::dataset::{attach_windows, read_series, read_windows};
use turnpike_anomaly::evaluate::{nab_probation, quantile, replay, score, throughput, Report};
use turnpike_anomaly::synth::{generate, Series, SynthConfig};
use turnpike_anomaly::Config;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("turnpike-anomaly-eval: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let mut synth = SynthConfig::default();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut windows: Option<PathBuf> = None;
    let mut nab = true;
    let mut per_series = false;
    let mut list_alerts = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--tenants" => synth.tenants = parse(value()?)?,
            "--weeks" => synth.weeks = parse(value()?)?,
            "--seed" => synth.seed = parse(value()?)?,
            "--interval" => synth.interval_secs = parse(value()?)?,
            "--csv" => files.push(PathBuf::from(value()?)),
            "--data" => collect_csv(Path::new(value()?), &mut files)?,
            "--windows" => windows = Some(PathBuf::from(value()?)),
            "--probation" => {
                nab = match value()?.as_str() {
                    "nab" => true,
                    "none" => false,
                    other => return Err(format!("--probation nab|none, not {other}")),
                }
            }
            "--per-series" => per_series = true,
            "--alerts" => list_alerts = true,
            "-h" | "--help" => {
                println!("see docs/anomaly-detection.md");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let config = Config::default();
    if !files.is_empty() {
        return run_csv(
            &files,
            windows.as_deref(),
            nab,
            (per_series, list_alerts),
            &config,
        );
    }
    let series = generate(&synth);
    let (alerts, _, _) = replay(&series, &config);
    let report = score(&series, &alerts, |_| 0);
    println!(
        "synthetic benchmark: {} tenants, {} weeks, {} s buckets, seed {}",
        synth.tenants, synth.weeks, synth.interval_secs, synth.seed
    );
    print_report(&report);
    let rate = throughput(&series, &config, 3);
    match rate.cpu {
        Some(cpu) => println!(
            "replay throughput (one thread): {:.2} M buckets/s of CPU time, {:.2} M/s wall clock",
            cpu / 1e6,
            rate.wall / 1e6
        ),
        None => println!(
            "replay throughput (one thread): {:.2} M buckets/s wall clock",
            rate.wall / 1e6
        ),
    }
    Ok(())
}

fn collect_csv(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_csv(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "csv") {
            out.push(p);
        }
    }
    Ok(())
}

fn run_csv(
    files: &[PathBuf],
    windows: Option<&Path>,
    nab: bool,
    (per_series, list_alerts): (bool, bool),
    config: &Config,
) -> Result<(), String> {
    let windows = match windows {
        Some(p) => read_windows(p)?,
        None => Vec::new(),
    };
    let mut series: Vec<Series> = Vec::with_capacity(files.len());
    for f in files {
        let (mut s, times) = read_series(f)?;
        attach_windows(&mut s, &times, &windows);
        series.push(s);
    }
    let (alerts, _, _) = replay(&series, config);
    let probation = |len: usize| if nab { nab_probation(len) } else { 0 };
    if per_series {
        for (s, a) in series.iter().zip(&alerts) {
            let r = score(std::slice::from_ref(s), std::slice::from_ref(a), probation);
            println!(
                "{}  rows {}  interval {} s  windows {}  detected {}  alerts {}  false {}  NAB {:.1}",
                s.name,
                s.buckets.len(),
                s.interval_secs,
                r.windows,
                r.detected,
                r.alerts,
                r.false_alerts,
                r.nab.first().map_or(0.0, |n| n.1)
            );
        }
    }
    if list_alerts {
        println!("series,row,bucket_start,kind,episode_start,score,expected,observed,in_window");
        for (s, alerts) in series.iter().zip(&alerts) {
            for a in alerts {
                let Some(x) = a.anomaly else { continue };
                let inside = s
                    .labels
                    .iter()
                    .any(|l| a.index >= l.start && a.index < l.end);
                println!(
                    "{},{},{},{},{},{:.2},{:.4},{:.4},{}",
                    s.name,
                    a.index,
                    x.bucket,
                    x.kind,
                    x.episode_start,
                    x.score,
                    x.expected,
                    x.observed,
                    inside
                );
            }
        }
    }
    let report = score(&series, &alerts, probation);
    println!(
        "{} CSV series, probation {}",
        series.len(),
        if nab {
            "NAB (15 %, at most 750 rows)"
        } else {
            "none"
        }
    );
    print_report(&report);
    Ok(())
}

fn parse<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad number {s}"))
}

fn print_report(r: &Report) {
    println!(
        "series {}  buckets {}  series-weeks {:.1}",
        r.series, r.buckets, r.weeks
    );
    println!(
        "windows {}  detected {}  recall {:.3}",
        r.windows,
        r.detected,
        r.recall()
    );
    println!(
        "alerts {}  in windows {}  false {}  precision {:.3}  false alarms/series-week {:.3}",
        r.alerts,
        r.true_alerts,
        r.false_alerts,
        r.precision(),
        r.false_per_week()
    );
    let q = |p| quantile(&r.delays, p).map_or("-".into(), |d: usize| d.to_string());
    println!(
        "delay (buckets) median {}  p90 {}  max {}",
        q(0.5),
        q(0.9),
        q(1.0)
    );
    println!(
        "{:<14} {:>7} {:>8} {:>7} {:>10} {:>12}",
        "window kind", "windows", "detected", "recall", "kind agrees", "median delay"
    );
    for (kind, s) in &r.by_kind {
        println!(
            "{:<14} {:>7} {:>8} {:>7.3} {:>10} {:>12}",
            kind,
            s.windows,
            s.detected,
            if s.windows > 0 {
                s.detected as f64 / s.windows as f64
            } else {
                0.0
            },
            s.kind_agrees,
            quantile(&s.delays, 0.5).map_or("-".into(), |d| d.to_string())
        );
    }
    let fk: Vec<String> = r
        .false_by_kind
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!("false alarms by kind: {}", fk.join(", "));
    let fg: Vec<String> = r
        .false_by_group
        .iter()
        .map(|(g, (n, w))| {
            format!(
                "{g} {n} ({:.2}/week)",
                if *w > 0.0 { *n as f64 / w } else { 0.0 }
            )
        })
        .collect();
    println!("false alarms by series type: {}", fg.join(", "));
    let nab: Vec<String> = r.nab.iter().map(|(p, s)| format!("{p} {s:.1}")).collect();
    println!(
        "NAB score (0 = no alerts, 100 = perfect): {}",
        nab.join(", ")
    );
}
