//! `qwen3-bench`: decode and prefill throughput of the batched forward pass at a Qwen3 preset,
//! next to this machine's memory-bandwidth bound for one decode step.
//!
//! A decode step reads every weight once, so on a CPU it cannot run faster than
//! `weight bytes / memory read bandwidth`; the bound is measured here by reading a 1 GiB buffer on
//! every thread. The first table times the forward pass alone (greedy argmax); a kernel table
//! shows the batched mat-vec alone at 1-8 rows on a 1 GiB matrix, a shape table each of the
//! model's matrix shapes at one row; the others go through the scheduler (batching, chunked
//! prefill, sampling, detokenization), which is what the server adds before HTTP, and report
//! prefill next to the machine's measured GEMM rate.
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
/// buffer (far beyond the caches) split over the rayon pool the matmuls use, each part summed as
/// fast as this CPU can (AVX-512 or AVX2 when it has them, checked at run time, with the same
/// 4 KiB software prefetch as the mat-vec kernel); the best of five passes. A `memcpy` figure
/// would count the writes too and run on one core, and a plain scalar loop reads slower than the
/// kernel does, which would make the bound no bound.
fn read_bandwidth() -> f64 {
    use rayon::prelude::*;
    let n = (1usize << 30) / 4;
    let buf: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect(); // touched, so the pages exist
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let s: f32 = Device::Cpu.with_context(|| {
            buf.par_chunks(1 << 16)
                .map(sum_stream)
                .reduce(|| 0.0, |a, b| a + b)
        });
        std::hint::black_box(s);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (n * 4) as f64 / best
}

fn sum_stream(c: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { sum_avx512(c) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { sum_avx2(c) };
        }
    }
    prefetched_sum(c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn sum_avx512(c: &[f32]) -> f32 {
    prefetched_sum(c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_avx2(c: &[f32]) -> f32 {
    prefetched_sum(c)
}

/// Sixty-four independent lanes per chunk (vectorised at whatever width the caller enables), with
/// the line 4 KiB ahead prefetched on x86.
#[inline(always)]
fn prefetched_sum(c: &[f32]) -> f32 {
    let mut acc = [0f32; 64];
    for (i, w) in c.chunks_exact(64).enumerate() {
        #[cfg(target_arch = "x86_64")]
        for line in 0..4 {
            qwen3_engine::matvec::prefetch(c, i * 64 + line * 16);
        }
        for (a, x) in acc.iter_mut().zip(w) {
            *a += x;
        }
    }
    acc.iter().sum()
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

    // Quick mode still runs 24 steps a row: with the median step time this repeats within a few
    // per cent between runs on an idle machine (8 steps did not).
    let steps = if args.quick { 24 } else { 64 };
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
        let mut times = Vec::with_capacity(steps);
        for _ in 0..steps {
            let t = Instant::now();
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
            times.push(t.elapsed().as_secs_f64());
        }
        // The median step: a step the OS preempted does not move it.
        let per_step = median(&mut times);
        println!(
            "| {b} | {steps} | {:.0} | {:.2} | {:.2} | {:.0}% |",
            per_step * 1e3,
            b as f64 / per_step,
            1.0 / per_step,
            100.0 * bound_s / per_step
        );
    }

    kernel_table(bw)?;
    shape_table(&cfg, bw)?;
    let gflops = gemm_gflops()?;
    println!(
        "\nmatmul throughput (candle's f32 GEMM, 512x1024 by 1024x3072, the prefill shape; best of 5): {:.1} GFLOP/s",
        gflops / 1e9
    );
    engine_level(model, &args, steps, &cfg, gflops)
}

/// The batched mat-vec kernel alone (`matvec::matmul_wt`, what every f32 linear layer of a
/// decode step runs) on a 1 GiB weight matrix, far beyond the caches: the weight read rate for
/// 1 to 8 rows, next to the measured bandwidth. A step that takes much longer than its matrices
/// do here spends the rest outside the kernel.
fn kernel_table(bw: f64) -> anyhow::Result<()> {
    use candle_core::Tensor;
    let dev = Device::Cpu;
    let (n, k) = (1usize << 18, 1024usize);
    let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
    println!("\n| rows | mat-vec over a 1 GiB weight (ms, best of 5) | weight read rate | share of the read bandwidth |");
    println!("|---|---|---|---|");
    for m in [1usize, 2, 4, 8] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            let y = dev.with_context(|| qwen3_engine::matvec::matmul_wt(&x, &w))?;
            std::hint::black_box(y);
            best = best.min(t.elapsed().as_secs_f64());
        }
        let rate = (n * k * 4) as f64 / best;
        println!(
            "| {m} | {:.1} | {:.1} GB/s | {:.0}% |",
            best * 1e3,
            rate / 1e9,
            100.0 * rate / bw
        );
    }
    Ok(())
}

/// One-row mat-vec at each of the model's matrix shapes, one distinct matrix per layer (so, as in
/// a decode step, nothing is read from cache twice): how fast each shape streams, and what the
/// linear layers of a one-stream step cost when run alone. Against the forward table's step this
/// splits a step into matrix time and everything else, and shows whether small matrices read
/// slower than large ones.
fn shape_table(cfg: &Qwen3Config, bw: f64) -> anyhow::Result<()> {
    use candle_core::Tensor;
    let dev = Device::Cpu;
    let (h, hd, ffn) = (cfg.hidden_size, cfg.head_dim(), cfg.intermediate_size);
    let (q, kv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
    let layers = cfg.num_hidden_layers;
    // (name, rows n, columns k, matrices per step)
    let shapes = [
        ("q_proj", q, h, layers),
        ("k_proj, v_proj", kv, h, 2 * layers),
        ("o_proj", h, q, layers),
        ("gate_proj, up_proj", ffn, h, 2 * layers),
        ("down_proj", h, ffn, layers),
        ("lm_head", cfg.vocab_size, h, 1),
    ];
    println!("\n| matrices (one row, as a 1-stream step) | shape | count | ms per step (best of 3) | read rate | share of the read bandwidth |");
    println!("|---|---|---|---|---|---|");
    let x = Tensor::randn(0f32, 1.0, (1, h.max(q).max(ffn)), &dev)?;
    let mut total = 0.0;
    for (name, n, k, count) in shapes {
        let ws = (0..count)
            .map(|_| Tensor::randn(0f32, 1.0, (n, k), &dev))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let xk = x.narrow(1, 0, k)?;
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            for w in &ws {
                let y = dev.with_context(|| qwen3_engine::matvec::matmul_wt(&xk, w))?;
                std::hint::black_box(y);
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        total += best;
        let rate = (count * n * k * 4) as f64 / best;
        println!(
            "| {name} | {n}x{k} | {count} | {:.1} | {:.1} GB/s | {:.0}% |",
            best * 1e3,
            rate / 1e9,
            100.0 * rate / bw
        );
    }
    println!("| all | | | {:.1} | | |", total * 1e3);
    Ok(())
}

/// The median of `v` (sorted in place); 0 when empty.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The machine's f32 matmul rate in FLOP/s as prefill sees it: candle's GEMM (the `x · Wᵀ` a
/// prompt chunk runs through, on the same thread pool) at a Qwen3-0.6B MLP shape.
fn gemm_gflops() -> anyhow::Result<f64> {
    use candle_core::Tensor;
    let dev = Device::Cpu;
    let (m, k, n) = (512usize, 1024usize, 3072usize);
    let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
    let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let y = dev.with_context(|| x.matmul(&w.t()?))?;
        std::hint::black_box(y);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok((2 * m * k * n) as f64 / best)
}

/// Floating-point operations of prefilling a `len`-token prompt: two per weight of every layer
/// matrix per token, plus causal attention (scores and the weighted sum: `2 · 2 · heads · head_dim`
/// per key a query attends to, `len · (len + 1) / 2` query-key pairs a layer), plus the LM head
/// for the last token alone.
fn prefill_flops(cfg: &Qwen3Config, len: usize) -> f64 {
    let (h, hd) = (cfg.hidden_size, cfg.head_dim());
    let (q, kv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
    let per_token = 2 * (h * q + 2 * h * kv + q * h + 3 * h * cfg.intermediate_size);
    let pairs = len * (len + 1) / 2;
    let attn = 4 * cfg.num_attention_heads * hd * pairs;
    cfg.num_hidden_layers as f64 * (per_token * len + attn) as f64
        + 2.0 * (h * cfg.vocab_size) as f64
}

/// The same measurements through the scheduler (continuous batching, sampling over the whole
/// vocabulary, detokenization, metrics): what a client of the server gets, minus HTTP.
fn engine_level(
    model: Qwen3,
    args: &Args,
    steps: usize,
    cfg: &Qwen3Config,
    gflops: f64,
) -> anyhow::Result<()> {
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
        "\n| prompt tokens | TTFT through the scheduler (one request, prefill in {}-token chunks) | prefill tok/s | prefill GFLOP/s | share of the matmul rate |",
        args.chunk
    );
    println!("|---|---|---|---|---|");
    for &len in &args.ttft_prompts {
        let r = run(vec![prompt(len, 11)], 1)?;
        let rate = prefill_flops(cfg, len) / r[0].1;
        println!(
            "| {len} | {:.2} s | {:.0} | {:.1} | {:.0}% |",
            r[0].1,
            len as f64 / r[0].1,
            rate / 1e9,
            100.0 * rate / gflops
        );
    }
    engine.shutdown();
    Ok(())
}
