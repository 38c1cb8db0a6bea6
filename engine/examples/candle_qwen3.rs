//! A Qwen3 GGUF through candle-transformers' own `quantized_qwen3`, as a candle user would run it:
//! `ModelWeights::from_gguf`, a prefill of the prompt, then greedy decoding one token at a time.
//! `engine/bench/side_by_side.py` runs it next to `qwen3-engine` and llama.cpp on the same file.
//!
//! `--streams N` runs N threads, each with its own clone of the model: the weights are shared
//! (`QMatMul` and `Tensor` hold their data behind `Arc`), the KV caches are not. candle's model
//! has no batching, so N streams are N independent forward passes competing for the cores.
//!
//! Prints one JSON line: per stream the prompt length, the time of the first token (TTFT, from
//! the common start, after a warm-up pass) and the time of every generated token, in seconds.
//!
//! The file is loaded as candle-transformers loads it; without a `general.dtype` key (llama.cpp
//! writes none) its rotary tables are F16, which changes values but not the work per token.
//!
//! ```text
//! cargo run --release -p qwen3-engine --example candle_qwen3 -- \
//!     --model .cache/bench/qwen3-0.6b-q8_0.gguf --prompt "Hello" --max-tokens 32 --streams 1
//! ```

use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_qwen3::ModelWeights;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Greedy Qwen3 decoding through candle-transformers' quantized_qwen3")]
struct Args {
    /// The GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Directory with tokenizer.json.
    #[arg(long, env = "QWEN3_TOKENIZER_DIR")]
    tokenizer_dir: PathBuf,
    /// The prompt, tokenized as is (no chat template).
    #[arg(long)]
    prompt: String,
    /// Tokens to generate per stream (EOS is not a stop: this measures speed).
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Concurrent streams (threads, each with its own KV cache).
    #[arg(long, default_value_t = 1)]
    streams: usize,
}

fn argmax(logits: &Tensor) -> anyhow::Result<u32> {
    let v: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

/// One stream: prefill, then greedy decode; the time of every token from `start`.
fn run(
    mut model: ModelWeights,
    prompt: &[u32],
    max_tokens: usize,
    start: Instant,
) -> anyhow::Result<Vec<f64>> {
    let dev = Device::Cpu;
    let mut times = Vec::with_capacity(max_tokens);
    let input = Tensor::new(prompt, &dev)?.unsqueeze(0)?;
    let mut next = argmax(&model.forward(&input, 0)?)?;
    times.push(start.elapsed().as_secs_f64());
    for i in 1..max_tokens {
        let input = Tensor::new(&[next], &dev)?.unsqueeze(0)?;
        next = argmax(&model.forward(&input, prompt.len() + i - 1)?)?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(times)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.streams == 0 || args.max_tokens == 0 {
        bail!("--streams and --max-tokens must be at least 1");
    }
    let tok_path = args.tokenizer_dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
        .map_err(|e| anyhow::anyhow!("--tokenizer-dir: {}: {e}", tok_path.display()))?;
    let prompt: Vec<u32> = tokenizer
        .encode(args.prompt.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizing --prompt: {e}"))?
        .get_ids()
        .to_vec();
    if prompt.is_empty() {
        bail!("--prompt tokenizes to no tokens");
    }

    let t_load = Instant::now();
    let mut file = std::fs::File::open(&args.model)
        .with_context(|| format!("--model: cannot open {}", args.model.display()))?;
    let content = gguf_file::Content::read(&mut file)
        .with_context(|| format!("--model: {} is not GGUF", args.model.display()))?;
    let mut model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu)
        .with_context(|| format!("loading {} with quantized_qwen3", args.model.display()))?;
    let load_s = t_load.elapsed().as_secs_f64();
    // Warm-up (thread pools, first allocations), as the servers get a warm-up request: a short
    // prefill and one decode step, then the caches are emptied before the model is cloned.
    let warm = Tensor::new(&prompt[..prompt.len().min(4)], &Device::Cpu)?.unsqueeze(0)?;
    let next = argmax(&model.forward(&warm, 0)?)?;
    model.forward(
        &Tensor::new(&[next], &Device::Cpu)?.unsqueeze(0)?,
        warm.dim(1)?,
    )?;
    model.clear_kv_cache();

    // Every thread waits at the barrier, then all start from the same instant.
    let barrier = Arc::new(Barrier::new(args.streams));
    let prompt = Arc::new(prompt);
    let start = Arc::new(std::sync::OnceLock::<Instant>::new());
    let handles: Vec<_> = (0..args.streams)
        .map(|_| {
            let (model, barrier, prompt, start) = (
                model.clone(),
                barrier.clone(),
                prompt.clone(),
                start.clone(),
            );
            let max_tokens = args.max_tokens;
            std::thread::spawn(move || {
                barrier.wait();
                let t0 = *start.get_or_init(Instant::now);
                run(model, &prompt, max_tokens, t0)
            })
        })
        .collect();
    drop(model);
    let mut streams = Vec::new();
    for h in handles {
        let times = h
            .join()
            .map_err(|_| anyhow::anyhow!("a decoding thread panicked"))??;
        streams.push(serde_json::json!({
            "prompt_tokens": prompt.len(),
            "ttft_s": times[0],
            "token_times_s": times,
        }));
    }
    println!(
        "{}",
        serde_json::json!({
            "impl": "candle-transformers quantized_qwen3",
            "load_s": load_s,
            "streams": streams,
        })
    );
    Ok(())
}
