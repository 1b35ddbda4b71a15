//! Evaluates the anomaly detector: on the synthetic labelled benchmark (default) or on
//! CSV series with labelled windows (NAB layout). See docs/anomaly-detection.md.

use std::process::ExitCode;

use turnpike_anomaly::evaluate::{quantile, replay, score, throughput, Report};
use turnpike_anomaly::synth::{generate, SynthConfig};
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
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--tenants" => synth.tenants = parse(value()?)?,
            "--weeks" => synth.weeks = parse(value()?)?,
            "--seed" => synth.seed = parse(value()?)?,
            "--interval" => synth.interval_secs = parse(value()?)?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let config = Config::default();
    let series = generate(&synth);
    let (alerts, _, _) = replay(&series, &config);
    let report = score(&series, &alerts, |_| 0);
    println!(
        "synthetic benchmark: {} tenants, {} weeks, {} s buckets, seed {}",
        synth.tenants, synth.weeks, synth.interval_secs, synth.seed
    );
    print_report(&report);
    let rate = throughput(&series, &config, 3);
    println!(
        "replay throughput: {:.2} M buckets/s (one core)",
        rate / 1e6
    );
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
