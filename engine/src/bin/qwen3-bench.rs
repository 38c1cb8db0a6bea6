//! `qwen3-bench`: decode and prefill throughput of the batched forward pass at a Qwen3 preset,
//! next to this machine's memory-bandwidth bound for one decode step.
//!
//! A decode step reads every weight once, so on a CPU it cannot run faster than
//! `weight bytes / memory bandwidth`; the bound is measured here with a large memcpy. Numbers are
//! for the engine's forward pass plus sampling (no HTTP), which is what the scheduler runs.
//!
//! ```text
//! cargo run --release -p qwen3-engine --bin qwen3-bench -- --quick
//! ```

use std::time::Instant;

use candle_core::Device;
use clap::Parser;
use qwen3_engine::model::{argmax, Qwen3, Qwen3Config, StepInput};

#[derive(Parser)]
#[command(about = "Benchmark the Qwen3 forward pass (decode tok/s, batched tok/s, TTFT)")]
struct Args {
    /// Model shape (random weights).
    #[arg(long, default_value = "qwen3-0.6b")]
    preset: String,
    /// Fewer steps per measurement (a couple of minutes on 2 cores at 0.6B).
    #[arg(long)]
    quick: bool,
    /// Concurrent streams to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    streams: Vec<usize>,
    /// Prompt lengths for time to first token.
    #[arg(long, value_delimiter = ',', default_value = "128,1024")]
    ttft_prompts: Vec<usize>,
    /// Prefill chunk size, as the server's --max-num-batched-tokens.
    #[arg(long, default_value_t = 512)]
    chunk: usize,
}

/// Copy bandwidth in bytes/s: a 1 GiB copy counts 2 GiB of traffic (read + write).
fn memory_bandwidth() -> f64 {
    let n = 1usize << 30;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    dst.copy_from_slice(&src); // fault the pages in
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * n as f64 / best
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 7919 + salt * 104729) % 150_000)
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = Qwen3Config::preset(&args.preset)?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "preset {} ({:.0}M parameters, f32), {} CPU threads{}",
        args.preset,
        cfg.num_params() as f64 / 1e6,
        threads,
        if args.quick { ", quick mode" } else { "" }
    );
    let bw = memory_bandwidth();
    let t = Instant::now();
    let model = Qwen3::random(&cfg, 0, &Device::Cpu)?;
    println!("random weights generated in {:.1?}", t.elapsed());
    let wbytes = model.weight_bytes() as f64;
    let bound_s = wbytes / bw;
    println!(
        "memory bandwidth (1 GiB memcpy, read+write): {:.1} GB/s; weights {:.2} GB -> bound {:.0} ms per decode step ({:.1} steps/s)",
        bw / 1e9,
        wbytes / 1e9,
        bound_s * 1e3,
        1.0 / bound_s
    );

    let steps = if args.quick { 8 } else { 32 };
    println!("\n| streams | decode steps | ms/step | aggregate tok/s | per-stream tok/s | share of bandwidth bound |");
    println!("|---|---|---|---|---|---|");
    for &b in &args.streams {
        // Different prompt lengths so the sequences sit at different positions.
        let mut caches: Vec<_> = (0..b).map(|_| model.new_cache()).collect();
        let prompts: Vec<Vec<u32>> = (0..b).map(|i| prompt(16 + 5 * i, i as u32)).collect();
        let mut inputs: Vec<StepInput> = caches
            .iter_mut()
            .zip(&prompts)
            .map(|(c, p)| StepInput {
                cache: c,
                tokens: p,
            })
            .collect();
        let logits = model.forward(&mut inputs)?.to_vec2::<f32>()?;
        let mut next: Vec<u32> = logits.iter().map(|l| argmax(l)).collect();
        let t = Instant::now();
        for _ in 0..steps {
            let toks: Vec<[u32; 1]> = next.iter().map(|t| [*t]).collect();
            let mut inputs: Vec<StepInput> = caches
                .iter_mut()
                .zip(&toks)
                .map(|(c, t)| StepInput {
                    cache: c,
                    tokens: t,
                })
                .collect();
            let logits = model.forward(&mut inputs)?.to_vec2::<f32>()?;
            next = logits.iter().map(|l| argmax(l)).collect();
        }
        let per_step = t.elapsed().as_secs_f64() / steps as f64;
        println!(
            "| {b} | {steps} | {:.0} | {:.2} | {:.2} | {:.0}% |",
            per_step * 1e3,
            b as f64 / per_step,
            1.0 / per_step,
            100.0 * bound_s / per_step
        );
    }

    println!(
        "\n| prompt tokens | TTFT (prefill in {}-token chunks + first sample) | prefill tok/s |",
        args.chunk
    );
    println!("|---|---|---|");
    for &len in &args.ttft_prompts {
        let p = prompt(len, 99);
        let mut cache = model.new_cache();
        let t = Instant::now();
        let mut last = None;
        for chunk in p.chunks(args.chunk) {
            last = Some(model.forward(&mut [StepInput {
                cache: &mut cache,
                tokens: chunk,
            }])?);
        }
        let first = last.map(|l| argmax(&l.flatten_all().unwrap().to_vec1::<f32>().unwrap()));
        let el = t.elapsed().as_secs_f64();
        std::hint::black_box(first);
        println!("| {len} | {:.2} s | {:.0} |", el, len as f64 / el);
    }
    Ok(())
}
