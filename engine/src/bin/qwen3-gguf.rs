//! `qwen3-gguf`: writes a Qwen3 random-weight preset as a GGUF file that llama.cpp, candle's
//! `quantized_qwen3` and `qwen3-engine --model` all load, so the three can be benchmarked on the
//! same bytes (`engine/bench/side_by_side.py`).
//!
//! The weights are exactly the server's `--preset NAME --seed N` weights (each tensor's generator
//! is seeded by its name), the matrices stored as `--dtype` and the norms as F32; the metadata is
//! what llama.cpp's converter writes for a Qwen3 model, including the full tokenizer (vocabulary,
//! token types, merges, special ids, chat template) read from `--tokenizer-dir`.
//!
//! ```text
//! cargo run --release -p qwen3-engine --bin qwen3-gguf -- \
//!     --preset qwen3-0.6b --dtype q8_0 --seed 0 --out .cache/bench/qwen3-0.6b-q8_0.gguf
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use clap::Parser;
use qwen3_engine::chat::locate_tokenizer_dir;
use qwen3_engine::gguf;
use qwen3_engine::qwen3::{random_weights, Qwen3Config, WeightDType};

#[derive(Parser)]
#[command(about = "Write a Qwen3 random-weight preset as a llama.cpp-compatible GGUF file")]
struct Args {
    /// Model shape: tiny, qwen3-0.6b or qwen3-1.7b.
    #[arg(long, default_value = "qwen3-0.6b")]
    preset: String,
    /// Storage of the weight matrices: f32, q8_0 or q4k (norms stay F32).
    #[arg(long, default_value = "q8_0", value_parser = parse_dtype)]
    dtype: WeightDType,
    /// Seed of the random weights (the server's --seed).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Directory with tokenizer.json and tokenizer_config.json (default: as the server finds it).
    #[arg(long, value_name = "DIR", env = "QWEN3_TOKENIZER_DIR")]
    tokenizer_dir: Option<PathBuf>,
    /// Output file.
    #[arg(long, value_name = "FILE.gguf")]
    out: PathBuf,
}

fn parse_dtype(s: &str) -> anyhow::Result<WeightDType> {
    s.parse()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = Qwen3Config::preset(&args.preset).context("--preset")?;
    let tok_dir = locate_tokenizer_dir(args.tokenizer_dir.as_deref())?;
    let name = format!("{}-random-seed{}", args.preset, args.seed);
    let mut metadata = gguf::qwen3_metadata(&cfg, &name, args.dtype);
    metadata.extend(
        gguf::tokenizer_metadata(&tok_dir, cfg.vocab_size)
            .with_context(|| format!("tokenizer from {}", tok_dir.display()))?,
    );
    let t0 = Instant::now();
    let weights = random_weights(&cfg, args.seed, &Device::Cpu)?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--out: cannot create {}", dir.display()))?;
    }
    // Written under a temporary name and renamed, so an interrupted run leaves no half file that
    // a later run would take as done.
    let tmp = args.out.with_extension("gguf.partial");
    gguf::write(&tmp, &metadata, &weights, args.dtype)?;
    std::fs::rename(&tmp, &args.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), args.out.display()))?;
    let bytes = std::fs::metadata(&args.out)
        .with_context(|| format!("{}", args.out.display()))?
        .len();
    println!(
        "wrote {} ({} {}, seed {}, {:.1} MB) in {:.1} s",
        args.out.display(),
        args.preset,
        args.dtype,
        args.seed,
        bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
