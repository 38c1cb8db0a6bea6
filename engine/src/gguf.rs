//! Qwen3 GGUF files as llama.cpp writes them (`convert_hf_to_gguf.py`, `llama-quantize`).
//!
//! CPU users run quantized models, and GGUF is the format they come in. The config is read from the
//! `qwen3.*` metadata, each tensor keeps the type it was stored in (Q8_0, Q4_K, Q6_K, ... through
//! candle's `QMatMul`; F32/F16/BF16 matrices are widened to f32 and use the f32 kernels), and
//! `Qwen3::build` sees the tensors under their Hugging Face names, so the forward pass is the same
//! as for a snapshot. Qwen3 uses the non-interleaved ("NeoX") rotary layout and llama.cpp does not
//! permute its Q/K weights, so the matrices are used as they are.
//!
//! The tokenizer is not read from the file: the chat path needs `tokenizer.json` and
//! `tokenizer_config.json` (its Jinja template), which the server takes from `--tokenizer-dir`.
//!
//! The writer side ([`qwen3_metadata`], [`tokenizer_metadata`], [`write()`]) is what `qwen3-gguf`
//! uses to give llama.cpp, candle-transformers and this engine one file to benchmark: the same
//! keys and tensor names, plus the `tokenizer.*` keys llama.cpp needs.
//!
//! Every malformed input is an error naming the key or tensor: a file that is not GGUF, a truncated
//! header or tensor, another architecture, a missing or mistyped key, a missing tensor or one of
//! the wrong shape (checked before its data is read, so an absurd shape never allocates).

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use anyhow::{bail, Context};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};

use crate::qwen3::{Qwen3, Qwen3Config, Weight, WeightDType, WeightSource};

/// Metadata integers above this are not a Qwen3 model (the largest has a 152k vocabulary and a
/// 40k context); refusing them keeps products of two dimensions far from overflowing and a
/// hostile file from asking for terabytes.
const MAX_DIM: u64 = 1 << 20;

/// Opens `path`, reads the config from its metadata and loads every tensor.
pub fn load(path: &Path, device: &Device) -> anyhow::Result<Qwen3> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let content = read_header(&mut reader)
        .with_context(|| format!("{}: not a readable GGUF file", path.display()))?;
    let cfg = config(&content).with_context(|| format!("{}", path.display()))?;
    let mut src = GgufSource {
        content,
        reader,
        device: device.clone(),
    };
    Qwen3::build(&cfg, &mut src).with_context(|| format!("loading weights from {}", path.display()))
}

/// candle's header reader, with a panic turned into an error: it divides by the file's
/// `general.alignment`, so a file that sets it to 0 would otherwise bring the server down.
fn read_header<R: Read + Seek>(reader: &mut R) -> anyhow::Result<Content> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(reader))) {
        Ok(content) => Ok(content?),
        Err(_) => bail!("malformed GGUF header (general.alignment must be positive)"),
    }
}

/// The Qwen3 config a GGUF file describes. Keys and defaults follow llama.cpp's loader:
/// `head_count_kv` defaults to `head_count`, `key_length` to `embedding_length / head_count`,
/// `rope.freq_base` to 10000; the vocabulary is the row count of `token_embd.weight`, and the LM
/// head is tied when the file has no `output.weight`.
pub fn config(content: &Content) -> anyhow::Result<Qwen3Config> {
    let md = &content.metadata;
    let arch = md
        .get("general.architecture")
        .context("GGUF metadata key general.architecture is missing")?;
    let arch = arch.to_string().map_err(|_| {
        anyhow::anyhow!("GGUF metadata general.architecture is not a string: {arch:?}")
    })?;
    if arch != "qwen3" {
        bail!("GGUF metadata general.architecture is {arch:?}; only \"qwen3\" is supported");
    }
    let uint = |key: &str| -> anyhow::Result<Option<usize>> {
        let full = format!("qwen3.{key}");
        let Some(v) = md.get(&full) else {
            return Ok(None);
        };
        let n = match v {
            Value::U8(_) | Value::U16(_) | Value::U32(_) | Value::U64(_) => v.to_u64().ok(),
            Value::I8(x) => u64::try_from(*x).ok(),
            Value::I16(x) => u64::try_from(*x).ok(),
            Value::I32(x) => u64::try_from(*x).ok(),
            Value::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        match n {
            Some(n) if (1..=MAX_DIM).contains(&n) => Ok(Some(n as usize)),
            Some(n) => bail!("GGUF metadata {full} = {n} is out of range (1..={MAX_DIM})"),
            None => bail!("GGUF metadata {full} must be a positive integer, found {v:?}"),
        }
    };
    let required = |key: &str| -> anyhow::Result<usize> {
        uint(key)?.with_context(|| format!("GGUF metadata key qwen3.{key} is missing"))
    };
    // An f32 value is read as the shortest decimal that gives it back (1e-6 rather than the f32's
    // exact 9.99999997e-7): that is the value the writer converted from.
    let float = |key: &str| -> anyhow::Result<Option<f64>> {
        let full = format!("qwen3.{key}");
        match md.get(&full) {
            None => Ok(None),
            Some(Value::F32(x)) if x.is_finite() && *x > 0.0 => {
                Ok(Some(x.to_string().parse::<f64>()?))
            }
            Some(Value::F64(x)) if x.is_finite() && *x > 0.0 => Ok(Some(*x)),
            Some(v) => bail!("GGUF metadata {full} must be a positive float, found {v:?}"),
        }
    };

    let layers = required("block_count")?;
    let hidden = required("embedding_length")?;
    let heads = required("attention.head_count")?;
    let kv_heads = uint("attention.head_count_kv")?.unwrap_or(heads);
    let head_dim = match uint("attention.key_length")? {
        Some(d) => d,
        None => hidden / heads,
    };
    if let Some(v) = uint("attention.value_length")? {
        if v != head_dim {
            bail!(
                "GGUF metadata qwen3.attention.value_length ({v}) differs from key_length \
                 ({head_dim}); Qwen3 attention uses one head size"
            );
        }
    }
    if !heads.is_multiple_of(kv_heads) {
        bail!(
            "GGUF metadata qwen3.attention.head_count ({heads}) must be a multiple of \
             qwen3.attention.head_count_kv ({kv_heads})"
        );
    }
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        bail!("GGUF metadata qwen3.attention.key_length ({head_dim}) must be even and positive");
    }
    if let Some(v) = md.get("qwen3.rope.scaling.type") {
        let kind = v.to_string().map(String::as_str).unwrap_or("?");
        if kind != "none" {
            bail!(
                "GGUF metadata qwen3.rope.scaling.type = {v:?} is not supported (plain RoPE only)"
            );
        }
    }
    let eps = float("attention.layer_norm_rms_epsilon")?
        .context("GGUF metadata key qwen3.attention.layer_norm_rms_epsilon is missing")?;
    let embd = content
        .tensor_infos
        .get("token_embd.weight")
        .context("GGUF tensor token_embd.weight is missing")?;
    let vocab = match embd.shape.dims() {
        [v, h] if *h == hidden && (1..=MAX_DIM as usize).contains(v) => *v,
        dims => bail!(
            "GGUF tensor token_embd.weight has shape {dims:?}, expected [vocab, {hidden}] \
             (qwen3.embedding_length)"
        ),
    };
    if let Some(v) = uint("vocab_size")? {
        if v != vocab {
            bail!("GGUF metadata qwen3.vocab_size ({v}) differs from token_embd.weight's {vocab} rows");
        }
    }
    Ok(Qwen3Config {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: required("feed_forward_length")?,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim: Some(head_dim),
        rms_norm_eps: eps,
        rope_theta: float("rope.freq_base")?.unwrap_or(10_000.0),
        max_position_embeddings: required("context_length")?,
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        hidden_act: "silu".into(),
        use_sliding_window: false,
    })
}

/// The GGUF name of a Hugging Face Qwen3 tensor name (llama.cpp's `tensor_mapping.py`), or
/// `None` for a name outside the Qwen3 layout.
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    const LAYER: [(&str, &str); 11] = [
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("self_attn.q_norm", "attn_q_norm"),
        ("self_attn.k_norm", "attn_k_norm"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
    ];
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (_, gguf) = LAYER.iter().find(|(h, _)| *h == module)?;
    Some(format!("blk.{layer}.{gguf}.{kind}"))
}

struct GgufSource<R> {
    content: Content,
    reader: R,
    device: Device,
}

impl<R: Read + Seek> GgufSource<R> {
    /// Reads the tensor `hf` (a Hugging Face name) after checking that its shape is `shape`.
    fn read(
        &mut self,
        hf: &str,
        shape: &[usize],
    ) -> anyhow::Result<candle_core::quantized::QTensor> {
        let name = gguf_name(hf).with_context(|| format!("no GGUF name for tensor {hf}"))?;
        let info = self
            .content
            .tensor_infos
            .get(&name)
            .with_context(|| format!("GGUF tensor {name} is missing"))?;
        if info.shape.dims() != shape {
            bail!(
                "GGUF tensor {name} has shape {:?}, but the qwen3.* metadata implies {shape:?}",
                info.shape.dims()
            );
        }
        info.read(
            &mut self.reader,
            self.content.tensor_data_offset,
            &self.device,
        )
        .with_context(|| format!("reading GGUF tensor {name} ({:?})", info.ggml_dtype))
    }
}

impl<R: Read + Seek> WeightSource for GgufSource<R> {
    fn vector(&mut self, name: &str, len: usize) -> anyhow::Result<Tensor> {
        let q = self.read(name, &[len])?;
        Ok(q.dequantize(&self.device)?
            .to_dtype(candle_core::DType::F32)?)
    }

    fn matrix(&mut self, name: &str, out: usize, inp: usize) -> anyhow::Result<Weight> {
        let q = self.read(name, &[out, inp])?;
        Ok(Weight::from_qtensor(q, &self.device)?)
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

/// GGUF token types (llama.cpp's `LLAMA_TOKEN_TYPE_*` / gguf-py's `TokenType`).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
}

/// The `general.*` and `qwen3.*` metadata llama.cpp's converter writes for `cfg`: everything
/// [`config`] reads, and what llama.cpp's loader requires, for a file whose matrices [`write()`]
/// stores as `dtype`.
pub fn qwen3_metadata(cfg: &Qwen3Config, name: &str, dtype: WeightDType) -> Vec<(String, Value)> {
    // llama.cpp's `general.file_type` (LLAMA_FTYPE_*): all F32, mostly Q8_0, mostly Q4_K_M
    // (every matrix is Q4_K here).
    let file_type = match dtype {
        WeightDType::F32 => 0,
        WeightDType::Q8_0 => 7,
        WeightDType::Q4K => 15,
    };
    let u = |v: usize| Value::U32(v as u32);
    let mut md = vec![
        ("general.architecture".into(), Value::String("qwen3".into())),
        ("general.name".into(), Value::String(name.into())),
        ("general.file_type".into(), Value::U32(file_type)),
        ("qwen3.block_count".into(), u(cfg.num_hidden_layers)),
        (
            "qwen3.context_length".into(),
            u(cfg.max_position_embeddings),
        ),
        ("qwen3.embedding_length".into(), u(cfg.hidden_size)),
        ("qwen3.feed_forward_length".into(), u(cfg.intermediate_size)),
        (
            "qwen3.attention.head_count".into(),
            u(cfg.num_attention_heads),
        ),
        (
            "qwen3.attention.head_count_kv".into(),
            u(cfg.num_key_value_heads),
        ),
        ("qwen3.attention.key_length".into(), u(cfg.head_dim())),
        ("qwen3.attention.value_length".into(), u(cfg.head_dim())),
        (
            "qwen3.rope.freq_base".into(),
            Value::F32(cfg.rope_theta as f32),
        ),
        (
            "qwen3.attention.layer_norm_rms_epsilon".into(),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
    ];
    if file_type != 0 {
        md.push(("general.quantization_version".into(), Value::U32(2)));
    }
    md
}

/// The `tokenizer.*` metadata llama.cpp needs to tokenize with Qwen3's byte-level BPE, read from
/// `dir`'s `tokenizer.json` and `tokenizer_config.json` as llama.cpp's `convert_hf_to_gguf.py`
/// does for Qwen2/Qwen3: model `gpt2`, pre-tokenizer `qwen2`, one token per id in `0..n_vocab`
/// (ids the tokenizer does not use become `[PADn]`, type unused), added tokens typed control when
/// marked special or spelled `<|...|>` and user-defined otherwise, every merge as `"a b"`, the
/// special token ids and the chat template. `n_vocab` is the model's embedding row count, which
/// llama.cpp requires to equal the token count.
pub fn tokenizer_metadata(dir: &Path, n_vocab: usize) -> anyhow::Result<Vec<(String, Value)>> {
    use serde_json::Value as Json;
    let read = |name: &str| -> anyhow::Result<Json> {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
    };
    let tok = read("tokenizer.json")?;
    let tcfg = read("tokenizer_config.json")?;
    let model = &tok["model"];
    if model["type"] != "BPE" {
        bail!(
            "tokenizer.json model.type is {}, expected \"BPE\"",
            model["type"]
        );
    }
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; n_vocab];
    let mut put = |id: u64, text: &str, ty: i32, what: &str| -> anyhow::Result<()> {
        let slot = usize::try_from(id)
            .ok()
            .and_then(|i| tokens.get_mut(i))
            .with_context(|| {
                format!(
                    "tokenizer.json {what} {text:?} has id {id}, outside the model's {n_vocab} \
                     embedding rows"
                )
            })?;
        *slot = Some((text.to_string(), ty));
        Ok(())
    };
    let vocab = model["vocab"]
        .as_object()
        .context("tokenizer.json model.vocab is not an object")?;
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .with_context(|| format!("tokenizer.json model.vocab[{text:?}] is not an id: {id}"))?;
        put(id, text, token_type::NORMAL, "model.vocab token")?;
    }
    let added = tok["added_tokens"]
        .as_array()
        .context("tokenizer.json added_tokens is not an array")?;
    let mut special_ids = std::collections::HashMap::new();
    for (i, a) in added.iter().enumerate() {
        let text = a["content"]
            .as_str()
            .with_context(|| format!("tokenizer.json added_tokens[{i}].content is not a string"))?;
        let id = a["id"]
            .as_u64()
            .with_context(|| format!("tokenizer.json added_tokens[{i}].id is not an id"))?;
        let looks_special = text.starts_with("<|") && text.ends_with("|>");
        let ty = if a["special"] == Json::Bool(true) || looks_special {
            token_type::CONTROL
        } else {
            token_type::USER_DEFINED
        };
        put(id, text, ty, "added token")?;
        special_ids.insert(text.to_string(), id as u32);
    }
    let (mut texts, mut types) = (Vec::with_capacity(n_vocab), Vec::with_capacity(n_vocab));
    for (i, t) in tokens.into_iter().enumerate() {
        let (text, ty) = t.unwrap_or_else(|| (format!("[PAD{i}]"), token_type::UNUSED));
        texts.push(Value::String(text));
        types.push(Value::I32(ty));
    }
    let merges = model["merges"]
        .as_array()
        .context("tokenizer.json model.merges is not an array")?
        .iter()
        .enumerate()
        .map(|(i, m)| match m {
            Json::String(s) => Ok(Value::String(s.clone())),
            Json::Array(p) => match p.as_slice() {
                [Json::String(a), Json::String(b)] => Ok(Value::String(format!("{a} {b}"))),
                _ => bail!("tokenizer.json model.merges[{i}] is not a pair of strings: {m}"),
            },
            _ => bail!("tokenizer.json model.merges[{i}] is neither \"a b\" nor [a, b]: {m}"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // A special token is named in tokenizer_config.json as a string or as {"content": ...}.
    let special = |key: &str| -> anyhow::Result<Option<u32>> {
        let name = match &tcfg[key] {
            Json::Null => return Ok(None),
            Json::String(s) => s.as_str(),
            v => v["content"].as_str().with_context(|| {
                format!("tokenizer_config.json {key} is neither a string nor {{content}}: {v}")
            })?,
        };
        let id = special_ids
            .get(name)
            .copied()
            .or_else(|| vocab.get(name).and_then(|v| v.as_u64()).map(|id| id as u32));
        id.map(Some)
            .with_context(|| format!("tokenizer_config.json {key} {name:?} is not a token"))
    };
    let eos = special("eos_token")?.context("tokenizer_config.json has no eos_token")?;
    let pad = special("pad_token")?;
    // Qwen3's tokenizer_config.json has no bos_token (its config.json's bos_token_id is
    // <|endoftext|>, which llama.cpp's converter takes); add_bos_token false means it is never
    // prepended, so the id only fills the key.
    let bos = match special("bos_token")? {
        Some(id) => id,
        None => pad.unwrap_or(eos),
    };
    let add_bos = tcfg["add_bos_token"].as_bool().unwrap_or(false);
    let template = tcfg["chat_template"]
        .as_str()
        .context("tokenizer_config.json chat_template is not a string")?;
    let mut md = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("qwen2".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(texts)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)),
        (
            "tokenizer.chat_template".into(),
            Value::String(template.into()),
        ),
    ];
    if let Some(pad) = pad {
        md.push(("tokenizer.ggml.padding_token_id".into(), Value::U32(pad)));
    }
    Ok(md)
}

/// Writes a GGUF file llama.cpp and `--model` both load: `metadata` and `weights` (Hugging Face
/// names, as [`crate::qwen3::random_weights`] gives them) under llama.cpp's tensor names, every
/// matrix stored as `dtype` and every vector as F32 (llama.cpp keeps norms in F32).
pub fn write(
    path: &Path,
    metadata: &[(String, Value)],
    weights: &std::collections::HashMap<String, Tensor>,
    dtype: WeightDType,
) -> anyhow::Result<()> {
    use candle_core::quantized::{GgmlDType, QTensor};
    let matrices = dtype.ggml().unwrap_or(GgmlDType::F32);
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for hf in names {
        let t = &weights[hf];
        let name = gguf_name(hf).with_context(|| format!("no GGUF name for tensor {hf}"))?;
        let ty = if t.rank() == 2 {
            matrices
        } else {
            GgmlDType::F32
        };
        let q = QTensor::quantize(t, ty)
            .with_context(|| format!("quantizing {hf} {:?} to {ty:?}", t.dims()))?;
        tensors.push((name, q));
    }
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    candle_core::quantized::gguf_file::write(&mut out, &md, &ts)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::flush(&mut out).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugging_face_names_map_to_llama_cpp_names() {
        for (hf, gguf) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
            (
                "model.layers.0.self_attn.q_proj.weight",
                "blk.0.attn_q.weight",
            ),
            ("model.layers.3.self_attn.k_proj.bias", "blk.3.attn_k.bias"),
            (
                "model.layers.12.self_attn.o_proj.weight",
                "blk.12.attn_output.weight",
            ),
            (
                "model.layers.1.self_attn.q_norm.weight",
                "blk.1.attn_q_norm.weight",
            ),
            (
                "model.layers.1.self_attn.k_norm.weight",
                "blk.1.attn_k_norm.weight",
            ),
            (
                "model.layers.2.mlp.gate_proj.weight",
                "blk.2.ffn_gate.weight",
            ),
            ("model.layers.2.mlp.up_proj.weight", "blk.2.ffn_up.weight"),
            (
                "model.layers.2.mlp.down_proj.weight",
                "blk.2.ffn_down.weight",
            ),
            (
                "model.layers.27.input_layernorm.weight",
                "blk.27.attn_norm.weight",
            ),
            (
                "model.layers.27.post_attention_layernorm.weight",
                "blk.27.ffn_norm.weight",
            ),
        ] {
            assert_eq!(gguf_name(hf).as_deref(), Some(gguf), "{hf}");
        }
        for bad in [
            "model.layers.x.mlp.up_proj.weight",
            "model.layers.0.mlp.up_proj.scale",
            "model.layers.0.mlp.sideways.weight",
            "embed",
        ] {
            assert_eq!(gguf_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_zero_alignment_is_an_error_not_a_panic() {
        let mut bytes = Vec::new();
        candle_core::quantized::gguf_file::write(
            &mut std::io::Cursor::new(&mut bytes),
            &[("general.alignment", &Value::U32(0))],
            &[],
        )
        .unwrap();
        let err = read_header(&mut std::io::Cursor::new(&bytes)).unwrap_err();
        assert!(format!("{err:#}").contains("general.alignment"), "{err:#}");
    }
}
