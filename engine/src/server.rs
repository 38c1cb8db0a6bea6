//! Command-line options and assembly of model, tokenizer, scheduler and router.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use candle_core::Device;
use clap::Parser;

use crate::api::{router, AppState};
use crate::chat::{locate_tokenizer_dir, ChatTokenizer};
use crate::metrics::MetricsRegistry;
use crate::qwen3::{Qwen3, Qwen3Config, WeightDType};
use crate::scheduler::{spawn, Backend, SchedulerConfig};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "qwen3-engine",
    version,
    about = "OpenAI-compatible Qwen3 server (candle + axum) with thinking mode, continuous batching \
             and vLLM-compatible /metrics"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free port).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// A local Hugging Face snapshot directory (config.json, tokenizer files, safetensors), or a
    /// Qwen3 GGUF file (`*.gguf`, tokenizer from --tokenizer-dir).
    #[arg(long, value_name = "DIR|FILE.gguf", conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// Random-weight model with real Qwen3 shapes when no --model is given.
    #[arg(long, default_value = "tiny", value_parser = ["tiny", "qwen3-0.6b", "qwen3-1.7b"])]
    pub preset: String,
    /// Storage of the weight matrices of a preset or snapshot directory: f32, q8_0 or q4k
    /// (quantized at load). A GGUF file keeps the types it was written with.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: WeightDType,
    /// Model name clients use (default: qwen3-<preset>, the --model directory's name, or the GGUF
    /// file's stem).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Directory with tokenizer.json and tokenizer_config.json, for presets and GGUF models.
    #[arg(long, value_name = "DIR", env = "QWEN3_TOKENIZER_DIR")]
    pub tokenizer_dir: Option<PathBuf>,
    /// Most sequences decoded together in one step.
    #[arg(long, default_value_t = 8)]
    pub max_num_seqs: usize,
    /// Most requests waiting for a slot; more are refused with 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Context length (prompt + completion); default min(model limit, 8192).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// KV-cache budget in tokens over all running sequences, used in whole blocks (rounded down);
    /// default: max-num-seqs full contexts, each rounded up to whole blocks.
    #[arg(long)]
    pub kv_cache_tokens: Option<usize>,
    /// Tokens per KV-cache block: the unit in which caches are reserved, allocated and reported.
    #[arg(long, default_value_t = crate::kv::DEFAULT_BLOCK_SIZE)]
    pub block_size: usize,
    /// Most tokens (prompt chunks + decode tokens) in one forward step.
    #[arg(long, default_value_t = 512)]
    pub max_num_batched_tokens: usize,
    /// Seed of the random preset weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seconds between SSE keep-alive comments while a stream waits for its first token.
    #[arg(long, default_value_t = 10)]
    pub sse_keepalive_secs: u64,
    /// Run on the first CUDA GPU (needs the `cuda` feature).
    #[arg(long)]
    pub cuda: bool,
}

/// `--dtype`'s parser; clap prefixes the error with the flag and the value.
fn parse_dtype(s: &str) -> anyhow::Result<WeightDType> {
    s.parse()
}

/// Whether `--model` names a GGUF file rather than a snapshot directory.
fn is_gguf(path: &std::path::Path) -> bool {
    !path.is_dir()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

pub struct Built {
    pub router: axum::Router,
    pub state: Arc<AppState>,
    pub model_name: String,
}

fn device(args: &Args) -> anyhow::Result<Device> {
    if args.cuda {
        Ok(Device::new_cuda(0).context("--cuda: no CUDA device (build with --features cuda)")?)
    } else {
        Ok(Device::Cpu)
    }
}

/// Loads the model and tokenizer named by `args` and starts the scheduler.
pub fn build(args: &Args) -> anyhow::Result<Built> {
    let dev = device(args)?;
    let (model, tok_dir, default_name) = match &args.model {
        Some(file) if is_gguf(file) => {
            if args.dtype != WeightDType::F32 {
                anyhow::bail!(
                    "--dtype {}: a GGUF file keeps the tensor types it was written with (--dtype \
                     applies to presets and snapshot directories)",
                    args.dtype
                );
            }
            // The file carries its own tokenizer metadata, but the chat path needs the Hugging
            // Face tokenizer files (their Jinja template included). Found before the weights
            // load, so a missing tokenizer fails at once.
            let tok_dir = locate_tokenizer_dir(args.tokenizer_dir.as_deref())?;
            let t = std::time::Instant::now();
            let m = Qwen3::from_gguf(file, &dev).context("--model")?;
            log_loaded(&m, &file.display().to_string(), t.elapsed());
            let name = file
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into());
            (m, tok_dir, name)
        }
        Some(dir) => {
            let t = std::time::Instant::now();
            // The model layer names the file at fault; the flag that pointed there is named here.
            let m = Qwen3::from_snapshot_as(dir, args.dtype, &dev).context("--model")?;
            log_loaded(&m, &dir.display().to_string(), t.elapsed());
            let name = dir
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "model".into());
            for f in ["tokenizer.json", "tokenizer_config.json"] {
                if !dir.join(f).is_file() {
                    anyhow::bail!("--model: {} has no {f}", dir.display());
                }
            }
            (m, dir.clone(), name)
        }
        None => {
            let cfg = Qwen3Config::preset(&args.preset).context("--preset")?;
            let tok_dir = locate_tokenizer_dir(args.tokenizer_dir.as_deref())?;
            let t = std::time::Instant::now();
            let m = Qwen3::random_as(&cfg, args.seed, args.dtype, &dev)?;
            log_loaded(
                &m,
                &format!(
                    "random {} weights ({} parameters, seed {})",
                    args.preset,
                    cfg.num_params(),
                    args.seed
                ),
                t.elapsed(),
            );
            let name = if args.preset.starts_with("qwen3-") {
                args.preset.clone()
            } else {
                format!("qwen3-{}", args.preset)
            };
            (m, tok_dir, name)
        }
    };
    let tokenizer = Arc::new(ChatTokenizer::from_dir(&tok_dir)?);
    if tokenizer.vocab_size() > model.config().vocab_size {
        anyhow::bail!(
            "the tokenizer has {} tokens but the model's vocab_size is {}",
            tokenizer.vocab_size(),
            model.config().vocab_size
        );
    }
    let model_name = args.served_model_name.clone().unwrap_or(default_name);
    let max_model_len = args
        .max_model_len
        .unwrap_or_else(|| model.config().max_position_embeddings.min(8192));
    if max_model_len > model.config().max_position_embeddings {
        anyhow::bail!(
            "--max-model-len {max_model_len} exceeds the model's max_position_embeddings {}",
            model.config().max_position_embeddings
        );
    }
    let kv_per_token = model.config().kv_bytes_per_token();
    let sched = scheduler_config(args, max_model_len);
    // Configuration errors name the flag before anything else is logged.
    sched.validate()?;
    let budget = sched.kv_budget();
    // The most KV memory the caches can hold: the whole budget, plus the old copy of one layer of
    // the largest sequence while its cache grows (see `kv`).
    let largest = budget.blocks_for(max_model_len) * budget.block_size;
    let worst = budget.tokens() * kv_per_token
        + largest * kv_per_token / model.config().num_hidden_layers.max(1);
    tracing::info!(
        "max_model_len {max_model_len}, KV budget {} blocks of {} tokens ({} tokens): at most \
         {:.2} GiB at {} bytes per token",
        budget.num_blocks,
        budget.block_size,
        budget.tokens(),
        worst as f64 / (1u64 << 30) as f64,
        kv_per_token
    );
    assemble(
        model,
        tokenizer,
        model_name,
        sched,
        Duration::from_secs(args.sse_keepalive_secs.max(1)),
    )
}

/// One log line per load: what, how long, and the storage of the weight matrices.
fn log_loaded(m: &Qwen3, what: &str, took: Duration) {
    let types: Vec<String> = m
        .weight_summary()
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    tracing::info!(
        "loaded {what} in {took:.1?}: matrices {}, {:.2} GB read per decode step",
        types.join(", "),
        m.weight_bytes() as f64 / 1e9
    );
}

/// The scheduler's settings from the flags.
fn scheduler_config(args: &Args, max_model_len: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: args.max_num_seqs,
        max_queue: args.max_queue,
        max_model_len,
        // By default every slot can hold a full context in whole blocks; memory is allocated as
        // the caches fill (see `kv`).
        kv_cache_tokens: args.kv_cache_tokens.unwrap_or(
            args.max_num_seqs.max(1)
                * max_model_len.div_ceil(args.block_size.max(1))
                * args.block_size.max(1),
        ),
        block_size: args.block_size,
        max_num_batched_tokens: args.max_num_batched_tokens,
        // Random preset weights get Qwen3's thinking shape imposed (they would never open a think
        // block); weights loaded with --model are trained and sampled as they are.
        steer_thinking: args.model.is_none(),
    }
}

/// Starts a scheduler over any backend and builds the router around it (tests use the scripted
/// backend here; the binary uses the Qwen3 model).
pub fn assemble<B: Backend>(
    backend: B,
    tokenizer: Arc<ChatTokenizer>,
    model_name: String,
    sched: SchedulerConfig,
    keepalive: Duration,
) -> anyhow::Result<Built> {
    let max_model_len = sched.max_model_len;
    let registry = Arc::new(MetricsRegistry::new(&model_name, max_model_len));
    let engine = spawn(backend, tokenizer.clone(), sched, registry.metrics.clone())?;
    let state = Arc::new(AppState {
        engine,
        tokenizer,
        model_name: model_name.clone(),
        max_model_len,
        metrics: registry,
        keepalive,
        created: crate::api::now_secs(),
    });
    Ok(Built {
        router: router(state.clone()),
        state,
        model_name,
    })
}

/// Binds, prints the address and serves until Ctrl-C / SIGTERM.
pub async fn serve(args: Args) -> anyhow::Result<()> {
    let built = tokio::task::spawn_blocking({
        let args = args.clone();
        move || build(&args)
    })
    .await??;
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("--host/--port: invalid address {}:{}", args.host, args.port))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    // One parseable line for scripts and tests that start the binary on port 0.
    println!(
        "qwen3-engine serving {} on http://{local}",
        built.model_name
    );
    tracing::info!("serving model {} on http://{local}", built.model_name);
    let engine = built.state.engine.clone();
    axum::serve(listener, built.router)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: open requests end with an error event");
            // Ends every running and waiting request so open streams finish and the server stops.
            engine.shutdown();
        })
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_layer_errors_are_named_by_the_flag_that_led_there() {
        // clap refuses unknown presets before `build`; a library caller can still pass one.
        let args = Args {
            preset: "huge".into(),
            ..Args::parse_from(["qwen3-engine"])
        };
        let err = format!("{:#}", build(&args).err().expect("unknown preset"));
        assert!(
            err.starts_with("--preset: unknown preset \"huge\""),
            "{err}"
        );

        let missing = std::env::temp_dir().join("qwen3-engine-no-such-snapshot");
        let args = Args::parse_from(["qwen3-engine", "--model", missing.to_str().unwrap_or(".")]);
        let err = format!("{:#}", build(&args).err().expect("missing snapshot"));
        assert!(err.starts_with("--model: cannot read "), "{err}");
    }

    #[test]
    fn the_default_kv_budget_holds_a_full_context_per_slot_in_whole_blocks() {
        let cfg = |argv: &[&str]| scheduler_config(&Args::parse_from(argv), 1000);
        // 1,000 tokens take 63 blocks of 16: two slots get 2 × 63 blocks, not 2,000 tokens.
        let c = cfg(&["qwen3-engine", "--max-num-seqs", "2"]);
        assert_eq!((c.kv_cache_tokens, c.block_size), (2016, 16));
        assert_eq!(c.kv_budget().num_blocks, 126);
        c.validate().unwrap();
        let c = cfg(&[
            "qwen3-engine",
            "--block-size",
            "32",
            "--kv-cache-tokens",
            "1010",
        ]);
        assert_eq!(c.kv_budget().num_blocks, 31);
        let err = c.validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "--kv-cache-tokens (1010) holds 31 blocks of --block-size 32; one sequence of \
             --max-model-len (1000) needs 32 blocks (1024 tokens)"
        );
    }

    #[test]
    fn only_the_random_presets_steer_thinking() {
        let cfg = |argv: &[&str]| scheduler_config(&Args::parse_from(argv), 1024);
        assert!(cfg(&["qwen3-engine"]).steer_thinking);
        assert!(cfg(&["qwen3-engine", "--preset", "qwen3-0.6b"]).steer_thinking);
        assert!(!cfg(&["qwen3-engine", "--model", "some/snapshot"]).steer_thinking);
    }
}
