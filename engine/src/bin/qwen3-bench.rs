//! `qwen3-bench`: decode and prefill throughput of the batched forward pass at a Qwen3 preset,
//! next to this machine's memory-bandwidth bound for one decode step.
//!
//! A decode step reads every weight once, so on a CPU it cannot run faster than
//! `weight bytes / memory read bandwidth`; the bound is measured here by reading a 1 GiB buffer on
//! every thread. The first table times the forward pass alone (greedy argmax); the others go
//! through the scheduler (batching, chunked prefill, sampling, detokenization), which is what the
//! server adds before HTTP.
//!
//! `--dtype q8_0|q4k` quantizes the same random weights in process, as the server's `--dtype`
//! does, so the f32 and quantized kernels can be compared at the same shapes; the bound then uses
//! the quantized bytes.
//!
//! ```text
//! cargo run --release -p qwen3-engine --bin qwen3-bench -- --quick
//! cargo run --release -p qwen3-engine --bin qwen3-bench -- --quick --dtype q4k --streams 1
//! ```

use std::time::Instant;

use candle_core::Device;
use clap::Parser;
use qwen3_engine::qwen3::{argmax, Qwen3, Qwen3Config, StepInput, WeightDType};

#[derive(Parser)]
#[command(about = "Benchmark the Qwen3 forward pass (decode tok/s, batched tok/s, TTFT)")]
struct Args {
    /// Model shape (random weights).
    #[arg(long, default_value = "qwen3-0.6b")]
    preset: String,
    /// Storage of the weight matrices: f32, q8_0 or q4k (quantized in process).
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: WeightDType,
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

fn parse_dtype(s: &str) -> anyhow::Result<WeightDType> {
    s.parse()
}

/// Read bandwidth in bytes/s with every core reading, which is what a decode step does: a 1 GiB
/// buffer (far beyond the caches) split over the rayon pool the matmuls use, each part summed
/// with eight independent accumulators; the best of five passes. A `memcpy` figure would count the
/// writes too and run on one core.
fn read_bandwidth() -> f64 {
    use rayon::prelude::*;
    let n = (1usize << 30) / 8;
    let buf: Vec<u64> = (0..n as u64).collect(); // touched, so the pages exist
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let s: u64 = buf
            .par_chunks(1 << 16)
            .map(|c| {
                let mut acc = [0u64; 8];
                for w in c.chunks_exact(8) {
                    for (a, x) in acc.iter_mut().zip(w) {
                        *a = a.wrapping_add(*x);
                    }
                }
                acc.iter().fold(0u64, |a, b| a.wrapping_add(*b))
            })
            .reduce(|| 0, u64::wrapping_add);
        std::hint::black_box(s);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (n * 8) as f64 / best
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
        "preset {} ({:.0}M parameters, {}), {} CPU threads{}",
        args.preset,
        cfg.num_params() as f64 / 1e6,
        args.dtype,
        threads,
        if args.quick { ", quick mode" } else { "" }
    );
    let bw = read_bandwidth();
    let t = Instant::now();
    let model = Qwen3::random_as(&cfg, 0, args.dtype, &Device::Cpu)?;
    println!(
        "random weights generated in {:.1?} (matrices: {:?})",
        t.elapsed(),
        model.weight_summary()
    );
    let wbytes = model.weight_bytes() as f64;
    let bound_s = wbytes / bw;
    println!(
        "read bandwidth (1 GiB, all threads): {:.1} GB/s; weights {:.2} GB -> bound {:.0} ms per decode step ({:.1} steps/s)",
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
        let mut inputs: Vec<StepInput<'_>> = caches
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
            let mut inputs: Vec<StepInput<'_>> = caches
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

    engine_level(model, &args, steps)
}

/// The same measurements through the scheduler (continuous batching, sampling over the whole
/// vocabulary, detokenization, metrics): what a client of the server gets, minus HTTP.
fn engine_level(model: Qwen3, args: &Args, steps: usize) -> anyhow::Result<()> {
    use qwen3_engine::chat::{locate_tokenizer_dir, ChatTokenizer};
    use qwen3_engine::sampling::SamplingParams;
    use qwen3_engine::scheduler::{spawn, Event, GenerateRequest, SchedulerConfig};
    use std::sync::Arc;

    let tok = Arc::new(ChatTokenizer::from_dir(&locate_tokenizer_dir(None)?)?);
    let registry = qwen3_engine::metrics::MetricsRegistry::new("bench", 4096);
    let max_streams = args.streams.iter().copied().max().unwrap_or(1);
    let engine = spawn(
        model,
        tok,
        SchedulerConfig {
            max_num_seqs: max_streams.max(1),
            max_queue: 64,
            max_model_len: 4096,
            kv_cache_tokens: 65_536,
            block_size: qwen3_engine::kv::DEFAULT_BLOCK_SIZE,
            max_num_batched_tokens: args.chunk.max(max_streams),
            // The benchmark times decode steps on raw token prompts; sampling stays unconstrained.
            steer_thinking: false,
        },
        registry.metrics.clone(),
    )?;
    // Runs `n` requests at once; returns (first event, done, completion tokens) per request.
    let run =
        |prompts: Vec<Vec<u32>>, max_tokens: usize| -> anyhow::Result<Vec<(f64, f64, usize)>> {
            let t0 = Instant::now();
            let mut rxs = Vec::new();
            for p in prompts {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                engine
                    .submit(GenerateRequest {
                        prompt: p,
                        max_tokens,
                        sampling: SamplingParams {
                            temperature: 0.0,
                            ..Default::default()
                        },
                        stop: vec![],
                        split_reasoning: true,
                        parse_tool_calls: false,
                        events: tx,
                        arrival: Instant::now(),
                    })
                    .map_err(|e| anyhow::anyhow!("submit: {e:?}"))?;
                rxs.push(rx);
            }
            let handles: Vec<_> = rxs
                .into_iter()
                .map(|mut rx| {
                    std::thread::spawn(move || {
                        let mut first = None;
                        while let Some(ev) = rx.blocking_recv() {
                            let now = t0.elapsed().as_secs_f64();
                            first.get_or_insert(now);
                            match ev {
                                Event::Done { usage, .. } => {
                                    return Ok((first.unwrap_or(now), now, usage.completion_tokens))
                                }
                                Event::Error(e) => anyhow::bail!("{e}"),
                                Event::Delta { .. } | Event::ToolCall { .. } => {}
                            }
                        }
                        anyhow::bail!("engine stopped")
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| anyhow::anyhow!("panic"))?)
                .collect()
        };

    println!("\nThrough the scheduler (continuous batching, greedy sampling over the full vocabulary, detokenization):\n");
    println!("| streams | tokens per stream | aggregate decode tok/s | per-stream tok/s |");
    println!("|---|---|---|---|");
    for &b in &args.streams {
        // Decode rate = extra tokens / extra time of a long run over a one-token run with the
        // same prompts, so prefill and the first token cancel out.
        let prompts: Vec<Vec<u32>> = (0..b).map(|i| prompt(16 + 5 * i, 7 + i as u32)).collect();
        let short = run(prompts.clone(), 1)?;
        let long = run(prompts, steps + 1)?;
        let t_short = short.iter().map(|x| x.1).fold(0.0, f64::max);
        let t_long = long.iter().map(|x| x.1).fold(0.0, f64::max);
        let toks: usize =
            long.iter().map(|x| x.2).sum::<usize>() - short.iter().map(|x| x.2).sum::<usize>();
        let agg = toks as f64 / (t_long - t_short);
        println!("| {b} | {} | {agg:.2} | {:.2} |", steps + 1, agg / b as f64);
    }
    println!(
        "\n| prompt tokens | TTFT through the scheduler (one request, prefill in {}-token chunks) | prefill tok/s |",
        args.chunk
    );
    println!("|---|---|---|");
    for &len in &args.ttft_prompts {
        let r = run(vec![prompt(len, 11)], 1)?;
        println!("| {len} | {:.2} s | {:.0} |", r[0].1, len as f64 / r[0].1);
    }
    engine.shutdown();
    Ok(())
}
