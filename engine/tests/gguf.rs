//! `--model FILE.gguf`: GGUF files written by the test itself (candle's `gguf_file::write`, with
//! llama.cpp's metadata keys and tensor names), since no model can be downloaded here. The tensor
//! names are spelled out here independently of the engine's own mapping, so a wrong mapping (say
//! gate and up swapped) shows up as diverging logits.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use clap::Parser;
use qwen3_engine::chat::locate_tokenizer_dir;
use qwen3_engine::qwen3::{random_weights, Qwen3, Qwen3Config, StepInput, WeightDType};
use serde_json::{json, Value as Json};

/// A small model whose every row length is a multiple of 256, so Q4_K (256-value super-blocks)
/// can store every matrix; the tiny preset's 64-wide rows only fit Q8_0.
fn wide_config() -> Qwen3Config {
    let mut c = Qwen3Config::preset("tiny").unwrap();
    c.hidden_size = 256;
    c.intermediate_size = 512;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = Some(64);
    c.vocab_size = 1024;
    c.max_position_embeddings = 128;
    c
}

/// llama.cpp's name for a Hugging Face Qwen3 tensor name.
fn llama_cpp_name(hf: &str) -> String {
    let top = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = top.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (i, rest) = rest.split_once('.').unwrap();
    let g = match rest {
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        other => panic!("no llama.cpp name for {other}"),
    };
    format!("blk.{i}.{g}")
}

/// What a GGUF file holds, before it is written; tests break it on purpose.
struct Parts {
    metadata: Vec<(String, Value)>,
    /// GGUF name, tensor, and the Hugging Face name it came from.
    tensors: Vec<(String, QTensor, String)>,
}

impl Parts {
    /// The metadata llama.cpp writes for a Qwen3 model and `weights` with every matrix quantized to
    /// `dtype` (vectors stay F32, as llama.cpp keeps norms).
    fn new(cfg: &Qwen3Config, weights: &HashMap<String, Tensor>, dtype: GgmlDType) -> Self {
        let u = |v: usize| Value::U32(v as u32);
        let metadata = vec![
            ("general.architecture".into(), Value::String("qwen3".into())),
            ("general.name".into(), Value::String("test".into())),
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
        let mut names: Vec<&String> = weights.keys().collect();
        names.sort();
        let tensors = names
            .into_iter()
            .map(|hf| {
                let t = &weights[hf];
                let ty = if t.rank() == 2 { dtype } else { GgmlDType::F32 };
                let q = QTensor::quantize(t, ty).unwrap();
                (llama_cpp_name(hf), q, hf.clone())
            })
            .collect();
        Self { metadata, tensors }
    }

    fn write(&self, path: &Path) {
        let md: Vec<(&str, &Value)> = self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &QTensor)> = self
            .tensors
            .iter()
            .map(|(n, t, _)| (n.as_str(), t))
            .collect();
        let mut f = std::fs::File::create(path).unwrap();
        gguf_file::write(&mut f, &md, &ts).unwrap();
    }

    /// The stored weights dequantized back to f32, under their Hugging Face names.
    fn dequantized(&self) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .map(|(_, q, hf)| (hf.clone(), q.dequantize(&Device::Cpu).unwrap()))
            .collect()
    }

    fn set(&mut self, key: &str, value: Value) {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.into(), value));
    }
}

fn f32_model(cfg: &Qwen3Config, w: HashMap<String, Tensor>) -> Qwen3 {
    Qwen3::load(cfg, VarBuilder::from_tensors(w, DType::F32, &Device::Cpu)).unwrap()
}

/// Logits of two sequences through mixed steps: a prefill (A's 6 tokens with B's first 3: 9 rows),
/// six batched decode steps (2 rows), then two steps of A alone (1 row), so every row-count path
/// of the linear layers is compared. Inputs are fixed tokens, not each model's own argmax, so
/// both models always see the same sequence.
fn trace(m: &Qwen3, vocab: u32) -> Vec<Vec<f32>> {
    let tok = |i: u32| (i * 7919 + 13) % vocab;
    let (mut a, mut b) = (m.new_cache(), m.new_cache());
    let pa: Vec<u32> = (0..6).map(tok).collect();
    let pb: Vec<u32> = (10..13).map(tok).collect();
    let mut out = Vec::new();
    let mut push = |t: Tensor| out.extend(t.to_vec2::<f32>().unwrap());
    push(
        m.forward(&mut [
            StepInput {
                cache: &mut a,
                tokens: &pa,
            },
            StepInput {
                cache: &mut b,
                tokens: &pb,
            },
        ])
        .unwrap(),
    );
    for s in 0..6 {
        push(
            m.forward(&mut [
                StepInput {
                    cache: &mut a,
                    tokens: &[tok(20 + s)],
                },
                StepInput {
                    cache: &mut b,
                    tokens: &[tok(40 + s)],
                },
            ])
            .unwrap(),
        );
    }
    for s in 0..2 {
        push(
            m.forward(&mut [StepInput {
                cache: &mut a,
                tokens: &[tok(60 + s)],
            }])
            .unwrap(),
        );
    }
    out
}

/// Largest relative L2 error `|a - b| / |b|` over the traces, and on how many of them the argmax
/// agrees.
fn compare(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f32, usize) {
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    let mut agree = 0;
    for (x, y) in a.iter().zip(b) {
        let diff: f32 = x.iter().zip(y).map(|(p, q)| (p - q) * (p - q)).sum();
        let norm: f32 = y.iter().map(|q| q * q).sum();
        assert!(norm > 0.0);
        worst = worst.max((diff / norm).sqrt());
        agree += usize::from(qwen3_engine::qwen3::argmax(x) == qwen3_engine::qwen3::argmax(y));
    }
    (worst, agree)
}

/// Writes `cfg`'s random weights as a GGUF of `dtype`, loads it as `--model` does and returns the
/// model with the errors against the same weights dequantized and against the original f32 ones.
fn roundtrip(cfg: &Qwen3Config, dtype: GgmlDType) -> (Qwen3, (f32, usize), (f32, usize)) {
    let weights = random_weights(cfg, 5, &Device::Cpu).unwrap();
    let parts = Parts::new(cfg, &weights, dtype);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.gguf");
    parts.write(&path);
    let loaded = Qwen3::from_gguf(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.config(), cfg);

    let vocab = cfg.vocab_size as u32;
    let q = trace(&loaded, vocab);
    assert_eq!(q.len(), 2 + 6 * 2 + 2);
    assert!(q.iter().all(|l| l.len() == cfg.vocab_size));
    let same_weights = compare(&q, &trace(&f32_model(cfg, parts.dequantized()), vocab));
    let original = compare(&q, &trace(&f32_model(cfg, weights), vocab));
    (loaded, same_weights, original)
}

// Tolerances (measured on this seed: Q8_0 1.7% / 2.1%, Q4_K 1.8% / 23%; the test is deterministic,
// the margins cover other CPUs' SIMD paths). Against the same weights dequantized to f32 the only
// difference is that candle's quantized kernels quantize the activations to 8 bits (Q8_0 blocks
// for Q8_0 weights, Q8_K for Q4_K): about 0.6% relative error per matmul, and seven matmuls lie on
// the path from the embedding to the logits, so < 3%. Against the original f32 weights the weight
// rounding adds to it: Q8_0 (step max/127 per 32 values) stays within a few percent (< 4%); Q4_K
// (16 levels per 32 values, about 7% a weight for uniform weights) is an order of magnitude
// coarser, hence < 40% and clearly above Q8_0's error. The argmax agrees wherever the error is
// small next to the gap between the two largest logits: always for the 8-bit errors; Q4_K on
// random weights, whose 1,024 logits are nearly flat, still agrees far above chance (1/1024).
const SAME_WEIGHTS: f32 = 0.03;

#[test]
fn q8_0_gguf_loads_with_its_metadata_and_stays_close_to_f32() {
    let cfg = wide_config();
    let (m, (same, same_agree), (orig, orig_agree)) = roundtrip(&cfg, GgmlDType::Q8_0);
    // Every layer matrix and the tied embedding / LM head stay Q8_0.
    let summary = m.weight_summary();
    assert_eq!(
        summary.get("Q8_0"),
        Some(&(7 * cfg.num_hidden_layers + 1)),
        "{summary:?}"
    );
    assert_eq!(summary.len(), 1, "{summary:?}");
    eprintln!(
        "q8_0: same weights {same:.4} ({same_agree}/16), original {orig:.4} ({orig_agree}/16)"
    );
    assert!(
        same < SAME_WEIGHTS,
        "relative L2 error {same} against the dequantized weights"
    );
    assert!(
        orig < 0.04,
        "relative L2 error {orig} against the original weights"
    );
    assert!(same_agree >= 14, "argmax agrees on {same_agree}/16");
    assert!(orig_agree >= 14, "argmax agrees on {orig_agree}/16");
}

#[test]
fn q4_k_gguf_with_untied_head_stays_close_to_f32() {
    let mut cfg = wide_config();
    cfg.tie_word_embeddings = false;
    let (m, (same, same_agree), (orig, orig_agree)) = roundtrip(&cfg, GgmlDType::Q4K);
    let summary = m.weight_summary();
    // 7 per layer, the embedding and the separate LM head (`output.weight`).
    assert_eq!(
        summary.get("Q4K"),
        Some(&(7 * cfg.num_hidden_layers + 2)),
        "{summary:?}"
    );
    eprintln!(
        "q4k: same weights {same:.4} ({same_agree}/16), original {orig:.4} ({orig_agree}/16)"
    );
    assert!(
        same < SAME_WEIGHTS,
        "relative L2 error {same} against the dequantized weights"
    );
    assert!(
        orig < 0.40,
        "relative L2 error {orig} against the original weights"
    );
    assert!(orig > 0.08, "Q4_K should be far coarser than Q8_0: {orig}");
    assert!(same_agree >= 14, "argmax agrees on {same_agree}/16");
    assert!(orig_agree >= 6, "argmax agrees on {orig_agree}/16");
}

#[test]
fn f16_and_f32_matrices_use_the_f32_kernels() {
    let cfg = wide_config();
    let weights = random_weights(&cfg, 6, &Device::Cpu).unwrap();
    let parts = Parts::new(&cfg, &weights, GgmlDType::F16);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("f16.gguf");
    parts.write(&path);
    let loaded = Qwen3::from_gguf(&path, &Device::Cpu).unwrap();
    let summary = loaded.weight_summary();
    assert_eq!(
        summary.get("F32"),
        Some(&(7 * cfg.num_hidden_layers + 1)),
        "{summary:?}"
    );
    // No activation quantization on this path: equal to the f32 model on the f16-rounded weights.
    let (err, agree) = compare(
        &trace(&loaded, cfg.vocab_size as u32),
        &trace(&f32_model(&cfg, parts.dequantized()), cfg.vocab_size as u32),
    );
    assert!(err < 1e-5, "{err}");
    assert_eq!(agree, 16);
}

fn load_err(parts: &Parts) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("broken.gguf");
    parts.write(&path);
    match Qwen3::from_gguf(&path, &Device::Cpu) {
        Ok(_) => panic!("a broken GGUF loaded"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn broken_gguf_files_fail_naming_the_key_or_tensor() {
    let mut cfg = Qwen3Config::preset("tiny").unwrap();
    cfg.vocab_size = 256;
    let weights = random_weights(&cfg, 1, &Device::Cpu).unwrap();
    let good = || Parts::new(&cfg, &weights, GgmlDType::Q8_0);

    let mut p = good();
    p.tensors.retain(|(n, _, _)| n != "blk.1.ffn_down.weight");
    let err = load_err(&p);
    assert!(
        err.contains("GGUF tensor blk.1.ffn_down.weight is missing"),
        "{err}"
    );

    let mut p = good();
    p.set("general.architecture", Value::String("llama".into()));
    let err = load_err(&p);
    assert!(err.contains("general.architecture is \"llama\""), "{err}");

    let mut p = good();
    p.metadata.retain(|(k, _)| k != "general.architecture");
    let err = load_err(&p);
    assert!(err.contains("general.architecture is missing"), "{err}");

    let mut p = good();
    p.metadata.retain(|(k, _)| k != "qwen3.feed_forward_length");
    let err = load_err(&p);
    assert!(
        err.contains("qwen3.feed_forward_length is missing"),
        "{err}"
    );

    let mut p = good();
    p.set("qwen3.block_count", Value::String("two".into()));
    let err = load_err(&p);
    assert!(
        err.contains("qwen3.block_count must be a positive integer"),
        "{err}"
    );

    let mut p = good();
    p.set("qwen3.rope.scaling.type", Value::String("yarn".into()));
    let err = load_err(&p);
    assert!(err.contains("qwen3.rope.scaling.type"), "{err}");

    // A matrix of the wrong shape (up projection stored transposed) is refused before it is read.
    let mut p = good();
    let up = p
        .tensors
        .iter_mut()
        .find(|(n, _, _)| n == "blk.0.ffn_up.weight")
        .unwrap();
    up.1 = QTensor::quantize(
        &weights["model.layers.0.mlp.up_proj.weight"].t().unwrap(),
        GgmlDType::Q8_0,
    )
    .unwrap();
    let err = load_err(&p);
    assert!(
        err.contains("GGUF tensor blk.0.ffn_up.weight has shape [64, 128]"),
        "{err}"
    );

    // Truncated files: inside the tensor data, and inside the header.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cut.gguf");
    good().write(&path);
    let bytes = std::fs::read(&path).unwrap();
    for (keep, expect) in [
        (bytes.len() * 2 / 3, "reading GGUF tensor"),
        (100, "not a readable GGUF file"),
        (0, "not a readable GGUF file"),
    ] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let err = format!("{:#}", Qwen3::from_gguf(&path, &Device::Cpu).err().unwrap());
        assert!(err.contains(expect), "cut at {keep}: {err}");
    }
    std::fs::write(&path, b"{\"not\": \"gguf\"}").unwrap();
    let err = format!("{:#}", Qwen3::from_gguf(&path, &Device::Cpu).err().unwrap());
    assert!(err.contains("not a readable GGUF file"), "{err}");
}

#[test]
fn server_flags_name_the_gguf_and_dtype_errors() {
    let err = qwen3_engine::server::Args::try_parse_from(["qwen3-engine", "--dtype", "q5_1"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--dtype") && err.contains("q5_1"), "{err}");
    assert!(err.contains("expected f32, q8_0 or q4k"), "{err}");
    assert_eq!(
        qwen3_engine::server::Args::parse_from(["qwen3-engine", "--dtype", "q4k"]).dtype,
        WeightDType::Q4K
    );

    let mut cfg = Qwen3Config::preset("tiny").unwrap();
    cfg.vocab_size = 256;
    let weights = random_weights(&cfg, 1, &Device::Cpu).unwrap();
    let mut parts = Parts::new(&cfg, &weights, GgmlDType::Q8_0);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m.gguf");
    parts.write(&path);
    let build = |argv: &[&str]| {
        let args = qwen3_engine::server::Args::parse_from(argv);
        match qwen3_engine::server::build(&args) {
            Ok(_) => panic!("built"),
            Err(e) => format!("{e:#}"),
        }
    };
    let p = path.to_str().unwrap();
    let err = build(&["qwen3-engine", "--model", p, "--dtype", "q8_0"]);
    assert!(err.starts_with("--dtype q8_0: a GGUF file keeps"), "{err}");

    parts.tensors.retain(|(n, _, _)| n != "output_norm.weight");
    parts.write(&path);
    let err = build(&["qwen3-engine", "--model", p]);
    assert!(err.starts_with("--model: loading weights from "), "{err}");
    assert!(
        err.ends_with("GGUF tensor output_norm.weight is missing"),
        "{err}"
    );
}

#[test]
fn quantized_presets_fall_back_where_rows_do_not_fit_the_blocks() {
    // The tiny preset's rows are 64 and 128 wide: no Q4_K super-block (256) fits, Q8_0 (32) does.
    let mut cfg = Qwen3Config::preset("tiny").unwrap();
    cfg.vocab_size = 256;
    let m = Qwen3::random_as(&cfg, 0, WeightDType::Q4K, &Device::Cpu).unwrap();
    let n = 7 * cfg.num_hidden_layers + 1;
    assert_eq!(
        m.weight_summary().into_iter().collect::<Vec<_>>(),
        [("Q8_0".to_string(), n)]
    );
    let m = Qwen3::random_as(&wide_config(), 0, WeightDType::Q4K, &Device::Cpu).unwrap();
    assert_eq!(
        m.weight_summary().into_iter().collect::<Vec<_>>(),
        [("Q4K".to_string(), n)]
    );
    // The quantized preset holds about a quarter of the f32 bytes (8.5 bits a weight at Q8_0).
    let f = Qwen3::random(&cfg, 0, &Device::Cpu).unwrap();
    let q = Qwen3::random_as(&cfg, 0, WeightDType::Q8_0, &Device::Cpu).unwrap();
    let ratio = q.weight_bytes() as f64 / f.weight_bytes() as f64;
    assert!((0.26..0.28).contains(&ratio), "{ratio}");
}

#[tokio::test]
async fn quantized_preset_serves_a_chat_completion() {
    let args = qwen3_engine::server::Args::parse_from(["qwen3-engine", "--dtype", "q8_0"]);
    let built = tokio::task::spawn_blocking(move || qwen3_engine::server::build(&args))
        .await
        .unwrap()
        .unwrap();
    let body = json!({"model": "qwen3-tiny", "messages": [{"role": "user", "content": "Hi"}],
                      "max_tokens": 6, "seed": 1});
    let v = common::post_chat_json(&built.router, &body).await;
    let completion = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=6).contains(&completion), "{v}");
}

#[test]
fn binary_serves_a_gguf_file_named_after_its_stem() {
    // The tiny preset's shapes with the real vocabulary, so the real tokenizer fits.
    let cfg = Qwen3Config::preset("tiny").unwrap();
    let weights = random_weights(&cfg, 2, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("Qwen3-Tiny-Q8_0.gguf");
    Parts::new(&cfg, &weights, GgmlDType::Q8_0).write(&path);
    let tok = locate_tokenizer_dir(None).unwrap_or_else(|e| panic!("{e}"));

    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen3-engine"))
        .arg("--model")
        .arg(&path)
        .arg("--tokenizer-dir")
        .arg(&tok)
        .args(["--port", "0", "--max-model-len", "256"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let _guard = Kill(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(
        line.starts_with("qwen3-engine serving Qwen3-Tiny-Q8_0 on http://"),
        "{line:?}"
    );
    let addr = line.trim().rsplit("http://").next().unwrap().to_owned();

    let body = json!({"model": "Qwen3-Tiny-Q8_0", "messages": [{"role": "user", "content": "Hello"}],
                      "max_tokens": 5, "temperature": 0});
    let resp = common::http(&addr, "POST", "/v1/chat/completions", &body.to_string());
    let (head, raw) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The body may be chunked; the JSON object sits between the first '{' and the last '}'.
    let json = &raw[raw.find('{').unwrap()..=raw.rfind('}').unwrap()];
    let v: Json = serde_json::from_str(json).unwrap();
    assert_eq!(v["model"], "Qwen3-Tiny-Q8_0");
    let u = &v["usage"];
    let (p, c) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 5 && (1..=5).contains(&c), "{v}");
    assert_eq!(u["total_tokens"].as_u64(), Some(p + c), "{v}");
}
