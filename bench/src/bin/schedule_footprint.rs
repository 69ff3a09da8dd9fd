//! Time and peak resident memory of computing one schedule, for bench/RESULTS.md:
//! `cargo run --release -p attnc-bench --bin schedule-footprint -- grat_b_2d H=512 W=512 TEXT=0`

use std::time::Instant;

fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let kernel = args.next().unwrap_or_else(|| "grat_b_2d".into());
    let sets: Vec<String> = args.collect();
    let sets: Vec<&str> = if sets.is_empty() {
        attnc_bench::CANVAS_512.to_vec()
    } else {
        sets.iter().map(String::as_str).collect()
    };
    let file = match kernel.as_str() {
        "na_2d" => "kernels/natten.attn",
        "sta_3d" => "kernels/sta.attn",
        "dense" | "causal" => "kernels/dense.attn",
        _ => "kernels/grat.attn",
    };
    let t = Instant::now();
    match attnc_bench::compile(file, &kernel, &sets) {
        Ok(c) => {
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let runs: usize = c.schedule.variants.iter().map(|v| v.runs.len()).sum();
            println!(
                "{kernel} {}: {} tokens, {} tiles, {runs} runs, density {:.4}; source to schedule and IR {ms:.1} ms; peak RSS {} KiB",
                sets.join(" "),
                c.schedule.geom.total_tokens,
                c.schedule.geom.total_tiles,
                c.schedule.density(),
                peak_rss_kib().map(|k| k.to_string()).unwrap_or_else(|| "?".into())
            );
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
