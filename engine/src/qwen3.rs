//! The Qwen3 forward pass, written for continuous batching.
//!
//! candle-transformers' `qwen3` keeps one KV cache inside the model and one position offset per
//! batch, so every sequence in a batch must sit at the same position. A server interleaves requests
//! that arrived at different times: one decode step must carry sequences at different positions,
//! some of them still prefilling a chunk of their prompt. Here the weights are immutable and shared,
//! every sequence owns a [`SeqCache`], and [`Qwen3::forward`] packs the new tokens of all sequences
//! into one `(tokens, hidden)` matrix so each weight matrix is read once per step — the point of
//! batching on a memory-bound CPU. Only attention, which reads each sequence's own cache, runs per
//! sequence.
//!
//! The weight names and maths follow the Hugging Face `Qwen3ForCausalLM` checkpoint layout, and the
//! test `batched_forward_matches_candle_transformers_qwen3` checks the logits against
//! candle-transformers on the same weights.
//!
//! Weights come in two storages behind one `Weight` type, so the forward pass is written once:
//! f32 matrices (snapshots, random presets) use candle's GEMM and our batched mat-vec
//! ([`crate::matvec`]), and GGML block-quantized matrices (GGUF files, or presets and snapshots
//! quantized in process with [`WeightDType`]) use candle's `QMatMul`, which quantizes the
//! activations to 8 bits and dots the blocks without dequantizing the weight. A CPU decode step is
//! bound by reading the weights, so Q8_0 (8.5 bits a weight) and Q4_K (4.5 bits) read about a
//! quarter and a seventh of the f32 bytes. Norm weights and biases are always f32; the KV cache and
//! the attention are f32 whatever the weights.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{bail, Context};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use rand::{RngExt, SeedableRng};
use serde::Deserialize;

use crate::kv::{CachePlan, DEFAULT_BLOCK_SIZE};

/// The subset of a Hugging Face `config.json` that the Qwen3 architecture needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Qwen3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub use_sliding_window: bool,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    1_000_000.0
}
fn default_act() -> String {
    "silu".into()
}

impl Qwen3Config {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Checks what this implementation supports, naming the offending `config.json` field.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.hidden_act != "silu" {
            bail!(
                "config.json: hidden_act {:?} is not supported (Qwen3 uses \"silu\")",
                self.hidden_act
            );
        }
        if self.use_sliding_window {
            bail!("config.json: use_sliding_window = true is not supported");
        }
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            bail!(
                "config.json: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!("config.json: head_dim must be even for rotary embeddings");
        }
        Ok(())
    }

    /// Random-weight presets with real Qwen3 shapes. The vocabulary is the real Qwen3 one so the
    /// real tokenizer can be used with any preset.
    pub fn preset(name: &str) -> anyhow::Result<Self> {
        let base = |hidden, inter, layers, heads, kv, head_dim, tie| Qwen3Config {
            vocab_size: 151_936,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: Some(head_dim),
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            max_position_embeddings: 40_960,
            tie_word_embeddings: tie,
            attention_bias: false,
            hidden_act: "silu".into(),
            use_sliding_window: false,
        };
        Ok(match name {
            "tiny" => base(64, 128, 2, 4, 2, 16, true),
            // Shapes of Qwen/Qwen3-0.6B and Qwen/Qwen3-1.7B (config.json on the Hub).
            "qwen3-0.6b" => base(1024, 3072, 28, 16, 8, 128, true),
            "qwen3-1.7b" => base(2048, 6144, 28, 16, 8, 128, true),
            other => bail!("unknown preset {other:?} (expected tiny, qwen3-0.6b or qwen3-1.7b)"),
        })
    }

    /// Number of weight parameters (embedding counted once when tied).
    pub fn num_params(&self) -> usize {
        let h = self.hidden_size;
        let hd = self.head_dim();
        let q = self.num_attention_heads * hd;
        let kv = self.num_key_value_heads * hd;
        let per_layer =
            h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + 2 * hd + 2 * h;
        let emb = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        emb + head + self.num_hidden_layers * per_layer + h
    }

    /// Bytes of K and V cached per token across all layers, in f32.
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim() * 4
    }
}

/// How the weight matrices of a model built in process (a random preset, a snapshot directory) are
/// stored; `--dtype` on the command line. A GGUF file keeps the types it was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightDType {
    /// Plain f32 (the checkpoint's values exactly).
    #[default]
    F32,
    /// GGML Q8_0: blocks of 32 weights as i8 with one f16 scale, 8.5 bits a weight.
    Q8_0,
    /// GGML Q4_K: super-blocks of 256 weights in 4 bits with 6-bit scales and minimums, 4.5 bits a
    /// weight (llama.cpp's Q4_K_M keeps some matrices at Q6_K; this stores every matrix as Q4_K).
    Q4K,
}

impl WeightDType {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4k",
        }
    }

    /// The GGML block type of the matrices, `None` for plain f32.
    pub(crate) fn ggml(self) -> Option<GgmlDType> {
        match self {
            Self::F32 => None,
            Self::Q8_0 => Some(GgmlDType::Q8_0),
            Self::Q4K => Some(GgmlDType::Q4K),
        }
    }
}

impl FromStr for WeightDType {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "q8_0" => Ok(Self::Q8_0),
            "q4k" => Ok(Self::Q4K),
            other => bail!("unknown weight dtype {other:?} (expected f32, q8_0 or q4k)"),
        }
    }
}

impl std::fmt::Display for WeightDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One weight matrix `(out, in)` in the storage its linear layer multiplies by. Cloning shares the
/// data, which is how tied embeddings read one matrix as both the embedding and the LM head.
#[derive(Clone)]
pub(crate) enum Weight {
    /// f32; multiplied as [`Lin`] describes.
    F32(Tensor),
    /// GGML block-quantized (Q8_0, Q4_K, or any block type a GGUF file holds), always the
    /// `QMatMul::QTensor` variant: candle's quantized CPU (and CUDA) kernels.
    Quantized(QMatMul),
}

impl Weight {
    /// Quantizes an f32 matrix to `dtype`. A matrix whose rows are not a multiple of the type's
    /// block (256 values for Q4_K, 32 for Q8_0) cannot be stored in it, so it falls back to Q8_0 and
    /// then to f32, as llama.cpp falls back for such tensors; [`Qwen3::weight_summary`] shows what
    /// each matrix became.
    pub(crate) fn quantize(w: Tensor, dtype: WeightDType, device: &Device) -> anyhow::Result<Self> {
        let Some(target) = dtype.ggml() else {
            return Ok(Self::F32(w.to_device(device)?));
        };
        let row = w.dim(candle_core::D::Minus1)?;
        let Some(ty) = [target, GgmlDType::Q8_0]
            .into_iter()
            .find(|t| row.is_multiple_of(t.block_size()))
        else {
            return Ok(Self::F32(w.to_device(device)?));
        };
        // Quantization runs on the CPU; the blocks are then moved to the model's device.
        let q = QTensor::quantize_onto(&w.to_device(&Device::Cpu)?, ty, device)?;
        Ok(Self::from_qtensor(q, device)?)
    }

    /// A tensor read from a file: float types become f32 matrices (the f32 kernels, at 4 bytes a
    /// weight), block types stay quantized.
    pub(crate) fn from_qtensor(q: QTensor, device: &Device) -> candle_core::Result<Self> {
        Ok(match q.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                Self::F32(q.dequantize(device)?.to_dtype(DType::F32)?)
            }
            _ => Self::Quantized(QMatMul::QTensor(Arc::new(q))),
        })
    }

    /// The rows `ids` of the matrix, as f32 `(ids, in)`: the embedding lookup. A quantized matrix
    /// is dequantized row by row here rather than once at load: the lookup reads a few rows a step,
    /// and a dequantized copy would cost `vocab × hidden × 4` bytes (622 MB at Qwen3-0.6B, more
    /// than the whole Q4_K model) next to the quantized matrix that tied weights also need as the
    /// LM head.
    fn rows(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::F32(w) => w.index_select(ids, 0),
            Self::Quantized(q) => q.embedding(ids),
        }
    }

    /// Bytes of weight data.
    fn bytes(&self) -> usize {
        match self {
            Self::F32(w) => w.elem_count() * w.dtype().size_in_bytes(),
            Self::Quantized(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            Self::Quantized(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => {
                w.elem_count() * w.dtype().size_in_bytes()
            }
        }
    }

    /// The storage type, named as GGML names it (`F32`, `Q8_0`, `Q4K`, ...).
    fn type_name(&self) -> String {
        match self {
            Self::F32(w) | Self::Quantized(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => {
                format!("{:?}", w.dtype()).to_uppercase()
            }
            Self::Quantized(QMatMul::QTensor(q)) => format!("{:?}", q.dtype()),
        }
    }
}

/// A linear layer, `x · Wᵀ (+ b)`.
///
/// Quantized weights go through candle's `QMatMul` for every row count (its CPU kernel reads each
/// weight block once per tile of rows). f32 weights pick the matmul by the number of rows (tokens
/// in the step), because candle's CPU matmul is fast for one row but for a few rows packs the whole
/// weight on every call (measured at Qwen3-0.6B shapes on the 2-core CI machine: 2 rows of
/// 1024→3072 took 12× one row, 2 rows of the LM head 4–5×). Batched decoding only pays if a step
/// reads each weight about once:
/// - 1–16 rows: [`crate::matvec::matmul_wt`], one pass over the weight for all rows on every core
///   (one row streams at the machine's read rate; four rows take about 1.2× one row's time on a
///   1 GiB matrix, BENCHMARKS.md);
/// - 17–64 rows (2–64 off the CPU): `(W · xᵀ)ᵀ`, which keeps the weight in its stored layout and
///   stays nearly flat;
/// - longer prompt chunks: the ordinary `x · Wᵀ`, compute-bound like any GEMM.
struct Lin {
    w: Weight,
    b: Option<Tensor>,
}

impl Lin {
    fn new(w: Weight, b: Option<Tensor>) -> Self {
        Self { w, b }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.w {
            Weight::F32(w) => {
                let m = x.dim(0)?;
                let cpu_f32 = x.device().is_cpu() && x.dtype() == DType::F32;
                match m {
                    1..=16 if cpu_f32 => crate::matvec::matmul_wt(x, w)?,
                    2..=64 => w.matmul(&x.t()?)?.t()?.contiguous()?,
                    _ => x.matmul(&w.t()?)?,
                }
            }
            // The quantized kernel wants a contiguous input (`contiguous` copies only if it is not).
            Weight::Quantized(q) => q.forward(&x.contiguous()?)?,
        };
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

struct Attention {
    q_proj: Lin,
    k_proj: Lin,
    v_proj: Lin,
    o_proj: Lin,
    q_norm: Tensor,
    k_norm: Tensor,
}

struct Layer {
    attn: Attention,
    gate_proj: Lin,
    up_proj: Lin,
    down_proj: Lin,
    input_layernorm: Tensor,
    post_attention_layernorm: Tensor,
}

/// Qwen3 weights plus rotary tables; shared, immutable, used by [`Qwen3::forward`].
pub struct Qwen3 {
    cfg: Qwen3Config,
    /// `(vocab, hidden)`; looked up by rows ([`Weight::rows`]).
    embed: Weight,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Lin,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

/// One layer's cache: `(capacity, kv_heads, head_dim)` tensors filled up to the sequence length,
/// grown as its [`CachePlan`] says (doubling, in whole blocks, up to the reservation) so appends
/// are amortised copies of only the new rows.
struct LayerCache {
    k: Tensor,
    v: Tensor,
}

/// The KV cache of one sequence. Dropping it frees the memory.
pub struct SeqCache {
    layers: Vec<Option<LayerCache>>,
    len: usize,
    plan: CachePlan,
}

impl SeqCache {
    /// Tokens already in the cache (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens the cache has memory for, read off its tensors (every layer has the same capacity,
    /// a whole number of blocks); `capacity() × kv_bytes_per_token()` is what it holds.
    pub fn capacity(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|c| c.k.dims().first().copied().unwrap_or(0))
            .max()
            .unwrap_or(0)
    }

    pub fn plan(&self) -> CachePlan {
        self.plan
    }
}

/// New tokens of one sequence for one step.
pub struct StepInput<'a> {
    pub cache: &'a mut SeqCache,
    pub tokens: &'a [u32],
}

impl std::fmt::Debug for Qwen3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qwen3")
            .field("config", &self.cfg)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// Where [`Qwen3::build`] gets its tensors. Names are the Hugging Face checkpoint names
/// (`model.layers.0.self_attn.q_proj.weight`); a GGUF source translates them to its own.
pub(crate) trait WeightSource {
    /// A vector of `len` f32 values: norm weights, biases.
    fn vector(&mut self, name: &str, len: usize) -> anyhow::Result<Tensor>;
    /// A weight matrix `(out, inp)` in the storage the source decides.
    fn matrix(&mut self, name: &str, out: usize, inp: usize) -> anyhow::Result<Weight>;
    fn device(&self) -> &Device;
}

/// A source of f32 tensors (a `VarBuilder`, the random generator) whose matrices are stored as
/// `dtype`; each f32 matrix is dropped as soon as it is quantized, so a quantized preset never
/// holds the whole f32 model.
struct Converted<F> {
    get: F,
    dtype: WeightDType,
    device: Device,
}

impl<F: FnMut(&str, &[usize]) -> anyhow::Result<Tensor>> WeightSource for Converted<F> {
    fn vector(&mut self, name: &str, len: usize) -> anyhow::Result<Tensor> {
        Ok((self.get)(name, &[len])?.to_dtype(DType::F32)?)
    }

    fn matrix(&mut self, name: &str, out: usize, inp: usize) -> anyhow::Result<Weight> {
        let w = (self.get)(name, &[out, inp])?.to_dtype(DType::F32)?;
        Weight::quantize(w, self.dtype, &self.device)
            .with_context(|| format!("quantizing {name} to {}", self.dtype))
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

impl Qwen3 {
    /// Builds the model from checkpoint tensors named as in Hugging Face Qwen3 snapshots, in f32.
    pub fn load(cfg: &Qwen3Config, vb: VarBuilder<'_>) -> anyhow::Result<Self> {
        Self::load_as(cfg, vb, WeightDType::F32)
    }

    /// [`Qwen3::load`] with the weight matrices stored as `dtype`.
    pub fn load_as(
        cfg: &Qwen3Config,
        vb: VarBuilder<'_>,
        dtype: WeightDType,
    ) -> anyhow::Result<Self> {
        let device = vb.device().clone();
        let get = |name: &str, shape: &[usize]| -> anyhow::Result<Tensor> {
            Ok(vb.get(shape.to_vec(), name)?)
        };
        Self::build(cfg, &mut Converted { get, dtype, device })
    }

    /// Builds the model from any [`WeightSource`]: the one place that knows the layout.
    pub(crate) fn build(cfg: &Qwen3Config, src: &mut dyn WeightSource) -> anyhow::Result<Self> {
        cfg.validate()?;
        let device = src.device().clone();
        let h = cfg.hidden_size;
        let hd = cfg.head_dim();
        let nh = cfg.num_attention_heads;
        let nkv = cfg.num_key_value_heads;
        fn linear(
            src: &mut dyn WeightSource,
            name: &str,
            (i, o): (usize, usize),
            bias: bool,
        ) -> anyhow::Result<Lin> {
            let w = src.matrix(&format!("{name}.weight"), o, i)?;
            let b = if bias {
                Some(src.vector(&format!("{name}.bias"), o)?)
            } else {
                None
            };
            Ok(Lin::new(w, b))
        }
        let embed = src.matrix("model.embed_tokens.weight", cfg.vocab_size, h)?;
        let bias = cfg.attention_bias;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let a = format!("model.layers.{i}.self_attn");
            let m = format!("model.layers.{i}.mlp");
            let ffn = cfg.intermediate_size;
            let q_proj = linear(src, &format!("{a}.q_proj"), (h, nh * hd), bias)?;
            let k_proj = linear(src, &format!("{a}.k_proj"), (h, nkv * hd), bias)?;
            let v_proj = linear(src, &format!("{a}.v_proj"), (h, nkv * hd), bias)?;
            let o_proj = linear(src, &format!("{a}.o_proj"), (nh * hd, h), bias)?;
            let gate_proj = linear(src, &format!("{m}.gate_proj"), (h, ffn), false)?;
            let up_proj = linear(src, &format!("{m}.up_proj"), (h, ffn), false)?;
            let down_proj = linear(src, &format!("{m}.down_proj"), (ffn, h), false)?;
            let l = format!("model.layers.{i}");
            layers.push(Layer {
                attn: Attention {
                    q_proj,
                    k_proj,
                    v_proj,
                    o_proj,
                    q_norm: src.vector(&format!("{a}.q_norm.weight"), hd)?,
                    k_norm: src.vector(&format!("{a}.k_norm.weight"), hd)?,
                },
                gate_proj,
                up_proj,
                down_proj,
                input_layernorm: src.vector(&format!("{l}.input_layernorm.weight"), h)?,
                post_attention_layernorm: src
                    .vector(&format!("{l}.post_attention_layernorm.weight"), h)?,
            });
        }
        let norm = src.vector("model.norm.weight", h)?;
        let lm_head = if cfg.tie_word_embeddings {
            Lin::new(embed.clone(), None)
        } else {
            Lin::new(src.matrix("lm_head.weight", cfg.vocab_size, h)?, None)
        };
        let (cos, sin) = rotary_tables(cfg, &device)?;
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            device,
        })
    }

    /// Loads a Hugging Face snapshot directory: `config.json` plus `model.safetensors` or the shards
    /// listed in `model.safetensors.index.json`. Weights are converted to f32.
    pub fn from_snapshot(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        Self::from_snapshot_as(dir, WeightDType::F32, device)
    }

    /// [`Qwen3::from_snapshot`] with the weight matrices stored as `dtype` (quantized at load).
    pub fn from_snapshot_as(
        dir: &Path,
        dtype: WeightDType,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let cfg = load_config(dir)?;
        let files = safetensors_files(dir)?;
        // SAFETY: the files are memory-mapped read-only; the snapshot must not be modified while
        // the model loads (weights are copied into owned f32 tensors).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, device)? };
        Self::load_as(&cfg, vb, dtype)
            .with_context(|| format!("loading weights from {}", dir.display()))
    }

    /// Loads a GGUF file as llama.cpp writes Qwen3 models: the config from its `qwen3.*`
    /// metadata, every tensor in the type it was stored in (see [`crate::gguf`]).
    pub fn from_gguf(path: &Path, device: &Device) -> anyhow::Result<Self> {
        crate::gguf::load(path, device)
    }

    /// A deterministic random-weight model: the same `seed` always gives the same weights.
    pub fn random(cfg: &Qwen3Config, seed: u64, device: &Device) -> anyhow::Result<Self> {
        Self::random_as(cfg, seed, WeightDType::F32, device)
    }

    /// [`Qwen3::random`] with the weight matrices quantized to `dtype` (the same f32 values as
    /// `random` before quantization), for benchmarks of the quantized kernels.
    pub fn random_as(
        cfg: &Qwen3Config,
        seed: u64,
        dtype: WeightDType,
        device: &Device,
    ) -> anyhow::Result<Self> {
        // Tensors are generated one at a time as the model asks for them, each exactly as
        // `random_weights` makes it (its generator is seeded by its name).
        let get = |name: &str, shape: &[usize]| -> anyhow::Result<Tensor> {
            // Matrices and biases are random, norm weights ones.
            let random = shape.len() == 2 || name.ends_with(".bias");
            random_tensor(name, shape, random, seed, device)
        };
        Self::build(
            cfg,
            &mut Converted {
                get,
                dtype,
                device: device.clone(),
            },
        )
    }

    /// How many weight matrices are stored in each type (`F32`, `Q8_0`, `Q4K`, ...), a tied LM head
    /// counted once with the embedding.
    pub fn weight_summary(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for w in self.matrices() {
            *out.entry(w.type_name()).or_insert(0) += 1;
        }
        out
    }

    /// Every weight matrix once (a tied LM head is the embedding).
    fn matrices(&self) -> impl Iterator<Item = &Weight> {
        let layers = self.layers.iter().flat_map(|l| {
            [
                &l.attn.q_proj,
                &l.attn.k_proj,
                &l.attn.v_proj,
                &l.attn.o_proj,
                &l.gate_proj,
                &l.up_proj,
                &l.down_proj,
            ]
            .map(|lin| &lin.w)
        });
        let head = (!self.cfg.tie_word_embeddings).then_some(&self.lm_head.w);
        layers.chain(std::iter::once(&self.embed)).chain(head)
    }

    pub fn config(&self) -> &Qwen3Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A cache that can grow to the whole context (`max_position_embeddings`), in blocks of
    /// [`DEFAULT_BLOCK_SIZE`].
    pub fn new_cache(&self) -> SeqCache {
        self.new_cache_with(CachePlan::new(
            DEFAULT_BLOCK_SIZE,
            self.cfg.max_position_embeddings,
        ))
    }

    /// A cache that grows as `plan` says and refuses to grow past it (the scheduler passes the
    /// sequence's KV reservation).
    pub fn new_cache_with(&self, plan: CachePlan) -> SeqCache {
        SeqCache {
            layers: (0..self.cfg.num_hidden_layers).map(|_| None).collect(),
            len: 0,
            plan,
        }
    }

    /// Bytes of weight data read by one decode step, as stored: every layer matrix and the LM head
    /// once (with tied weights that is the embedding matrix; an untied embedding is only gathered
    /// from, a few rows a step, and not counted), plus the f32 norm vectors.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                let a = &l.attn;
                [
                    &a.q_proj,
                    &a.k_proj,
                    &a.v_proj,
                    &a.o_proj,
                    &l.gate_proj,
                    &l.up_proj,
                    &l.down_proj,
                ]
                .iter()
                .map(|lin| lin.w.bytes() + lin.b.as_ref().map_or(0, |b| b.elem_count() * 4))
                .sum::<usize>()
                    + 4 * (a.q_norm.elem_count()
                        + a.k_norm.elem_count()
                        + l.input_layernorm.elem_count()
                        + l.post_attention_layernorm.elem_count())
            })
            .sum();
        layers + self.lm_head.w.bytes() + 4 * self.norm.elem_count()
    }

    /// Runs one step over several sequences, each at its own position, and returns the logits of
    /// each sequence's last new token, shape `(batch.len(), vocab)`. Each cache grows by its input.
    pub fn forward(&self, batch: &mut [StepInput<'_>]) -> anyhow::Result<Tensor> {
        // On the CPU this runs the step inside candle's own rayon pool, so candle's GEMMs, the
        // attention kernel and our batched mat-vec share one set of warm threads instead of
        // oversubscribing the cores with a second pool.
        self.device.with_context(|| self.forward_inner(batch))
    }

    fn forward_inner(&self, batch: &mut [StepInput<'_>]) -> anyhow::Result<Tensor> {
        if batch.is_empty() {
            bail!("forward: empty batch");
        }
        let cfg = &self.cfg;
        let (nh, nkv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim(),
        );
        let eps = cfg.rms_norm_eps as f32;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut lasts = Vec::with_capacity(batch.len());
        for item in batch.iter() {
            if item.tokens.is_empty() {
                bail!("forward: a sequence has no new tokens");
            }
            let start = item.cache.len;
            if start + item.tokens.len() > cfg.max_position_embeddings {
                bail!(
                    "sequence of {} tokens exceeds max_position_embeddings {}",
                    start + item.tokens.len(),
                    cfg.max_position_embeddings
                );
            }
            if start + item.tokens.len() > item.cache.plan.max_capacity() {
                bail!(
                    "sequence of {} tokens exceeds its KV reservation of {} tokens",
                    start + item.tokens.len(),
                    item.cache.plan.max_capacity()
                );
            }
            ids.extend_from_slice(item.tokens);
            positions.extend((start..start + item.tokens.len()).map(|p| p as u32));
            lasts.push((ids.len() - 1) as u32);
        }
        let total = ids.len();
        let ids = Tensor::from_vec(ids, total, &self.device)?;
        let pos = Tensor::from_vec(positions, total, &self.device)?;
        let cos = self.cos.index_select(&pos, 0)?;
        let sin = self.sin.index_select(&pos, 0)?;
        let scale = 1.0 / (hd as f32).sqrt();

        let mut h = self.embed.rows(&ids)?;
        for (li, layer) in self.layers.iter().enumerate() {
            let x = candle_nn::ops::rms_norm(&h, &layer.input_layernorm, eps)?;
            let a = &layer.attn;
            let q = a.q_proj.forward(&x)?.reshape((total * nh, hd))?;
            let q = candle_nn::ops::rms_norm(&q, &a.q_norm, eps)?.reshape((1, total, nh, hd))?;
            let k = a.k_proj.forward(&x)?.reshape((total * nkv, hd))?;
            let k = candle_nn::ops::rms_norm(&k, &a.k_norm, eps)?.reshape((1, total, nkv, hd))?;
            let v = a.v_proj.forward(&x)?.reshape((total, nkv, hd))?;
            let q = candle_nn::rotary_emb::rope_thd(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_thd(&k, &cos, &sin)?.squeeze(0)?;

            let mut outs = Vec::with_capacity(batch.len());
            let mut off = 0;
            for item in batch.iter_mut() {
                let l = item.tokens.len();
                let prev = item.cache.len;
                let plan = item.cache.plan;
                let (kc, vc) = append_kv(
                    &mut item.cache.layers[li],
                    plan,
                    &k.narrow(0, off, l)?,
                    &v.narrow(0, off, l)?,
                    prev,
                )?;
                let qi = q.narrow(1, off, l)?;
                let o = attention(&qi, &kc, &vc, prev, scale, nh / nkv)?;
                outs.push(o.reshape((l, nh * hd))?);
                off += l;
            }
            let o = Tensor::cat(&outs, 0)?;
            h = (h + a.o_proj.forward(&o)?)?;

            let x = candle_nn::ops::rms_norm(&h, &layer.post_attention_layernorm, eps)?;
            let g = candle_nn::ops::silu(&layer.gate_proj.forward(&x)?)?;
            let u = layer.up_proj.forward(&x)?;
            h = (h + layer.down_proj.forward(&(g * u)?)?)?;
        }
        for item in batch.iter_mut() {
            item.cache.len += item.tokens.len();
        }
        let lasts = Tensor::from_vec(lasts, batch.len(), &self.device)?;
        let h = h.index_select(&lasts, 0)?;
        let h = candle_nn::ops::rms_norm(&h, &self.norm, eps)?;
        Ok(self.lm_head.forward(&h)?)
    }
}

/// Appends `k`, `v` (`(l, kv_heads, head_dim)`) after `prev` cached rows and returns views of the
/// whole cache, `(prev + l, kv_heads, head_dim)`. A full cache is reallocated at the capacity
/// `plan` gives (the old buffer is copied in and freed).
fn append_kv(
    slot: &mut Option<LayerCache>,
    plan: CachePlan,
    k: &Tensor,
    v: &Tensor,
    prev: usize,
) -> anyhow::Result<(Tensor, Tensor)> {
    let (l, nkv, hd) = k.dims3()?;
    let need = prev + l;
    let cap = slot.as_ref().map(|c| c.k.dim(0)).transpose()?.unwrap_or(0);
    if need > cap {
        let new_cap = plan.grow(cap, need).with_context(|| {
            format!(
                "KV cache of {need} tokens exceeds its reservation of {}",
                plan.max_capacity()
            )
        })?;
        let nk = Tensor::zeros((new_cap, nkv, hd), k.dtype(), k.device())?;
        let nv = Tensor::zeros((new_cap, nkv, hd), v.dtype(), v.device())?;
        if let Some(old) = slot.as_ref() {
            if prev > 0 {
                nk.slice_set(&old.k.narrow(0, 0, prev)?, 0, 0)?;
                nv.slice_set(&old.v.narrow(0, 0, prev)?, 0, 0)?;
            }
        }
        *slot = Some(LayerCache { k: nk, v: nv });
    }
    let c = slot.as_ref().context("kv cache slot")?;
    c.k.slice_set(&k.contiguous()?, 0, prev)?;
    c.v.slice_set(&v.contiguous()?, 0, prev)?;
    Ok((c.k.narrow(0, 0, need)?, c.v.narrow(0, 0, need)?))
}

/// Causal attention of `q` (`(1, l, heads, hd)`, positions `prev..prev+l`) over a cache
/// (`(prev+l, kv_heads, hd)`); returns `(1, l, heads, hd)`.
fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    prev: usize,
    scale: f32,
    groups: usize,
) -> anyhow::Result<Tensor> {
    if q.device().is_cpu() && q.dtype() == DType::F32 && q.dim(1)? == 1 {
        return decode_attention(q, k, v, scale, groups);
    }
    matmul_attention(q, k, v, prev, scale, groups)
}

/// Attention of one new token (`q`: `(1, 1, heads, hd)`) over its whole cache (`(kv, kv_heads,
/// hd)`, every position visible), on the calling thread; returns `(1, 1, heads, hd)`.
///
/// A decode step runs this once per sequence and layer over a few hundred keys at most: well under
/// a millisecond of arithmetic. candle-nn's fused kernel spreads even that over the thread pool,
/// and the hand-offs cost more than the work: profiled at Qwen3-0.6B shapes on the 2-core machine,
/// it took about 1.2 ms per call, 137 of a 4-stream step's 353 ms (`qwen3-bench`, BENCHMARKS.md).
fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    groups: usize,
) -> anyhow::Result<Tensor> {
    let (_, _, nh, hd) = q.dims4()?;
    let (kv_len, nkv, hd2) = k.dims3()?;
    if hd2 != hd || nh != nkv * groups || v.dims3()? != (kv_len, nkv, hd) {
        bail!(
            "decode attention: q {:?}, k {:?}, v {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let q = q.flatten_all()?.to_vec1::<f32>()?;
    let (k, v) = (k.contiguous()?, v.contiguous()?);
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (candle_core::Storage::Cpu(ks), candle_core::Storage::Cpu(vs)) = (&*ks, &*vs) else {
        bail!("decode attention: CPU tensors only");
    };
    let len = kv_len * nkv * hd;
    let kd = &ks.as_slice::<f32>()?[kl.start_offset()..kl.start_offset() + len];
    let vd = &vs.as_slice::<f32>()?[vl.start_offset()..vl.start_offset() + len];
    let mut out = vec![0f32; nh * hd];
    let mut scores = vec![0f32; kv_len];
    for (h, (qh, oh)) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)).enumerate() {
        let g = h / groups;
        for (t, s) in scores.iter_mut().enumerate() {
            let kt = &kd[(t * nkv + g) * hd..(t * nkv + g + 1) * hd];
            *s = crate::matvec::dot(qh, kt) * scale;
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        for (t, s) in scores.iter().enumerate() {
            let vt = &vd[(t * nkv + g) * hd..(t * nkv + g + 1) * hd];
            let p = s / sum;
            for (o, x) in oh.iter_mut().zip(vt) {
                *o += p * x;
            }
        }
    }
    Ok(Tensor::from_vec(out, (1, 1, nh, hd), &Device::Cpu)?)
}

/// Causal attention as matmuls (any device): prompt chunks, and every step off the CPU.
///
/// On the CPU this runs on candle's GEMM, which is faster here than candle-nn's fused CPU
/// flash-attention kernel: profiled on the 2-core machine, the attention of a 1,024-token prompt
/// (28 layers, two 512-token chunks) took 14.3 s through the fused kernel and 3.7 s this way, so
/// time to first token went from 20.7 s to 9.9 s (BENCHMARKS.md). K and V are expanded to every
/// query head (GQA), a copy of `heads × kv × head_dim` floats per layer call.
pub(crate) fn matmul_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    prev: usize,
    scale: f32,
    groups: usize,
) -> anyhow::Result<Tensor> {
    let (_, l, nh, hd) = q.dims4()?;
    let kv_len = k.dim(0)?;
    let nkv = nh / groups;
    let q = q.squeeze(0)?.transpose(0, 1)?.contiguous()?; // (nh, l, hd)
    let expand = |t: &Tensor| -> anyhow::Result<Tensor> {
        Ok(t.transpose(0, 1)? // (nkv, kv, hd)
            .unsqueeze(1)?
            .broadcast_as((nkv, groups, kv_len, hd))?
            .reshape((nh, kv_len, hd))?
            .contiguous()?)
    };
    let k = expand(k)?;
    let v = expand(v)?;
    let scores = (q.matmul(&k.t()?)? * scale as f64)?; // (nh, l, kv)
    let mask: Vec<f32> = (0..l)
        .flat_map(|i| {
            (0..kv_len).map(move |j| {
                if j <= prev + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (l, kv_len), q.device())?.to_dtype(scores.dtype())?;
    let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?;
    let o = probs.matmul(&v)?; // (nh, l, hd)
    Ok(o.transpose(0, 1)?.unsqueeze(0)?)
}

fn rotary_tables(cfg: &Qwen3Config, dev: &Device) -> anyhow::Result<(Tensor, Tensor)> {
    let dim = cfg.head_dim();
    let inv_freq: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| 1f32 / cfg.rope_theta.powf(i as f64 / dim as f64) as f32)
        .collect();
    let n = inv_freq.len();
    let inv_freq = Tensor::from_vec(inv_freq, (1, n), dev)?;
    let t = Tensor::arange(0u32, cfg.max_position_embeddings as u32, dev)?
        .to_dtype(DType::F32)?
        .reshape((cfg.max_position_embeddings, 1))?;
    let freqs = t.matmul(&inv_freq)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

/// Reads and validates `config.json` from a snapshot directory.
pub fn load_config(dir: &Path) -> anyhow::Result<Qwen3Config> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let cfg: Qwen3Config =
        serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
    cfg.validate()?;
    Ok(cfg)
}

/// The safetensors files of a snapshot: the shards named by `model.safetensors.index.json`, else
/// `model.safetensors`.
pub fn safetensors_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("invalid {}", index.display()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{} has no weight_map object", index.display()))?;
        let mut files: Vec<String> = map
            .values()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .context("weight_map values must be file names")
            })
            .collect::<anyhow::Result<_>>()?;
        files.sort();
        files.dedup();
        return files
            .into_iter()
            .map(|f| {
                let p = dir.join(&f);
                if p.exists() {
                    Ok(p)
                } else {
                    bail!("shard {} listed in the index is missing", p.display())
                }
            })
            .collect();
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    bail!(
        "{} has neither model.safetensors nor model.safetensors.index.json",
        dir.display()
    )
}

/// Random Qwen3 weights under their checkpoint names. Each tensor has its own generator seeded from
/// `seed` and the tensor name, so the result does not depend on iteration order. Matrices are
/// uniform with standard deviation 0.02 (Hugging Face's `initializer_range`), norms are ones.
pub fn random_weights(
    cfg: &Qwen3Config,
    seed: u64,
    device: &Device,
) -> anyhow::Result<HashMap<String, Tensor>> {
    let h = cfg.hidden_size;
    let hd = cfg.head_dim();
    let q = cfg.num_attention_heads * hd;
    let kv = cfg.num_key_value_heads * hd;
    let mut shapes: Vec<(String, Vec<usize>, bool)> = vec![
        (
            "model.embed_tokens.weight".into(),
            vec![cfg.vocab_size, h],
            true,
        ),
        ("model.norm.weight".into(), vec![h], false),
    ];
    if !cfg.tie_word_embeddings {
        shapes.push(("lm_head.weight".into(), vec![cfg.vocab_size, h], true));
    }
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        shapes.extend([
            (format!("{p}.self_attn.q_proj.weight"), vec![q, h], true),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, h], true),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, h], true),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, q], true),
            (format!("{p}.self_attn.q_norm.weight"), vec![hd], false),
            (format!("{p}.self_attn.k_norm.weight"), vec![hd], false),
            (
                format!("{p}.mlp.gate_proj.weight"),
                vec![cfg.intermediate_size, h],
                true,
            ),
            (
                format!("{p}.mlp.up_proj.weight"),
                vec![cfg.intermediate_size, h],
                true,
            ),
            (
                format!("{p}.mlp.down_proj.weight"),
                vec![h, cfg.intermediate_size],
                true,
            ),
            (format!("{p}.input_layernorm.weight"), vec![h], false),
            (
                format!("{p}.post_attention_layernorm.weight"),
                vec![h],
                false,
            ),
        ]);
        if cfg.attention_bias {
            shapes.extend([
                (format!("{p}.self_attn.q_proj.bias"), vec![q], true),
                (format!("{p}.self_attn.k_proj.bias"), vec![kv], true),
                (format!("{p}.self_attn.v_proj.bias"), vec![kv], true),
                (format!("{p}.self_attn.o_proj.bias"), vec![h], true),
            ]);
        }
    }
    let mut out = HashMap::with_capacity(shapes.len());
    for (name, shape, random) in shapes {
        let t = random_tensor(&name, &shape, random, seed, device)?;
        out.insert(name, t);
    }
    Ok(out)
}

/// One tensor of [`random_weights`]: uniform with standard deviation 0.02 from a generator seeded
/// by `seed` and `name`, or ones.
fn random_tensor(
    name: &str,
    shape: &[usize],
    random: bool,
    seed: u64,
    device: &Device,
) -> anyhow::Result<Tensor> {
    if !random {
        return Ok(Tensor::ones(shape, DType::F32, device)?);
    }
    // Uniform(-a, a) has standard deviation a / sqrt(3).
    let a = 0.02f32 * 3f32.sqrt();
    let n: usize = shape.iter().product();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ fnv1a(name.as_bytes()));
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-a..a)).collect();
    Ok(Tensor::from_vec(data, shape, device)?)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Softmax-free helper for tests and sampling: the index of the largest logit.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Qwen3Config {
        let mut c = Qwen3Config::preset("tiny").unwrap();
        c.vocab_size = 300;
        c.max_position_embeddings = 256;
        c
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn random_weights_are_deterministic_per_seed() {
        let cfg = tiny();
        let a = random_weights(&cfg, 7, &Device::Cpu).unwrap();
        let b = random_weights(&cfg, 7, &Device::Cpu).unwrap();
        let c = random_weights(&cfg, 8, &Device::Cpu).unwrap();
        let k = "model.layers.1.mlp.up_proj.weight";
        assert_eq!(max_abs_diff(&a[k], &b[k]), 0.0);
        assert!(max_abs_diff(&a[k], &c[k]) > 0.0);
    }

    #[test]
    fn prefill_attention_equals_candle_nn_fused_attention() {
        use candle_nn::attention::{flash_attn, AttnMask};
        let dev = Device::Cpu;
        let (l, prev, nh, nkv, hd) = (3, 5, 4, 2, 16);
        let q = Tensor::randn(0f32, 1.0, (1, l, nh, hd), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (prev + l, nkv, hd), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (prev + l, nkv, hd), &dev).unwrap();
        let a = attention(&q, &k, &v, prev, 0.25, nh / nkv).unwrap();
        // An independent implementation: candle-nn's GQA-aware causal kernel with a KV offset.
        let b = flash_attn::<f32>(
            &q,
            &k.unsqueeze(0).unwrap(),
            &v.unsqueeze(0).unwrap(),
            0.25,
            AttnMask::causal_with_offset(prev),
            None,
            None,
        )
        .unwrap()
        .transpose(1, 2)
        .unwrap();
        assert_eq!(a.dims(), b.dims());
        assert!(max_abs_diff(&a, &b) < 1e-5);
    }

    #[test]
    fn decode_attention_equals_reference_attention() {
        let dev = Device::Cpu;
        for (prev, nh, nkv, hd) in [(0, 4, 2, 16), (9, 4, 2, 16), (40, 6, 2, 24), (3, 2, 2, 20)] {
            let q = Tensor::randn(0f32, 1.0, (1, 1, nh, hd), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (prev + 1, nkv, hd), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (prev + 1, nkv, hd), &dev).unwrap();
            let a = attention(&q, &k, &v, prev, 0.3, nh / nkv).unwrap();
            let b = matmul_attention(&q, &k, &v, prev, 0.3, nh / nkv).unwrap();
            assert_eq!(a.dims(), b.dims());
            assert!(
                max_abs_diff(&a, &b) < 1e-5,
                "prev {prev}, heads {nh}/{nkv}, hd {hd}"
            );
        }
    }

    #[test]
    fn chunked_prefill_equals_whole_prefill() {
        let cfg = tiny();
        let m = Qwen3::random(&cfg, 1, &Device::Cpu).unwrap();
        let prompt: Vec<u32> = (10..30).collect();
        let mut whole = m.new_cache();
        let a = m
            .forward(&mut [StepInput {
                cache: &mut whole,
                tokens: &prompt,
            }])
            .unwrap();
        let mut chunked = m.new_cache();
        m.forward(&mut [StepInput {
            cache: &mut chunked,
            tokens: &prompt[..7],
        }])
        .unwrap();
        let b = m
            .forward(&mut [StepInput {
                cache: &mut chunked,
                tokens: &prompt[7..],
            }])
            .unwrap();
        assert_eq!(chunked.len(), 20);
        assert!(max_abs_diff(&a, &b) < 1e-4);
    }

    #[test]
    fn cache_memory_grows_in_whole_blocks_up_to_the_reservation_and_no_further() {
        let cfg = tiny();
        let m = Qwen3::random(&cfg, 1, &Device::Cpu).unwrap();
        // Room for 40 tokens in blocks of 16: 48 tokens of memory at most.
        let mut c = m.new_cache_with(CachePlan::new(16, 40));
        let feed = |c: &mut SeqCache, tokens: &[u32]| {
            m.forward(&mut [StepInput { cache: c, tokens }]).map(|_| ())
        };
        assert_eq!(c.capacity(), 0);
        feed(&mut c, &[5; 9]).unwrap();
        // Every layer's K and V tensors hold exactly one block.
        for l in c.layers.iter().flatten() {
            assert_eq!(l.k.dims()[0], 16);
            assert_eq!(l.v.dims()[0], 16);
        }
        assert_eq!(c.capacity(), 16);
        feed(&mut c, &[6; 8]).unwrap();
        assert_eq!((c.len(), c.capacity()), (17, 32));
        for _ in 17..40 {
            feed(&mut c, &[7]).unwrap();
        }
        // Doubling would give 64; the reservation stops it at three blocks.
        assert_eq!((c.len(), c.capacity()), (40, 48));
        let err = feed(&mut c, &[8; 9]).unwrap_err().to_string();
        assert!(
            err.contains("exceeds its KV reservation of 48 tokens"),
            "{err}"
        );
        assert_eq!((c.len(), c.capacity()), (40, 48));
    }

    #[test]
    fn presets_reject_unknown_names_and_count_params() {
        // The CLI layer names the flag (server.rs); the model layer names the value.
        assert!(Qwen3Config::preset("huge")
            .unwrap_err()
            .to_string()
            .contains("unknown preset \"huge\""));
        // Qwen3-0.6B has ~596M parameters with tied embeddings.
        let p = Qwen3Config::preset("qwen3-0.6b").unwrap().num_params();
        assert!((590_000_000..600_000_000).contains(&p), "{p}");
    }
}
