//! The real loading path: a Hugging Face-style snapshot directory (config.json, tokenizer files,
//! generation_config.json, safetensors single-file or sharded with an index) written by the test
//! itself, since weights cannot be downloaded here.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use clap::Parser;
use common::post_chat_json;
use qwen3_engine::chat::locate_tokenizer_dir;
use qwen3_engine::qwen3::{random_weights, Qwen3, Qwen3Config, StepInput};
use serde_json::{json, Value};

fn config_json(c: &Qwen3Config) -> Value {
    // The shape of a real Qwen3 config.json, including fields the engine ignores.
    json!({
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": c.attention_bias,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "head_dim": c.head_dim(),
        "hidden_act": "silu",
        "hidden_size": c.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": c.intermediate_size,
        "max_position_embeddings": c.max_position_embeddings,
        "max_window_layers": c.num_hidden_layers,
        "model_type": "qwen3",
        "num_attention_heads": c.num_attention_heads,
        "num_hidden_layers": c.num_hidden_layers,
        "num_key_value_heads": c.num_key_value_heads,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_scaling": null,
        "rope_theta": c.rope_theta,
        "sliding_window": null,
        "tie_word_embeddings": c.tie_word_embeddings,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0",
        "use_cache": true,
        "use_sliding_window": false,
        "vocab_size": c.vocab_size
    })
}

fn write_snapshot(
    dir: &Path,
    weights: &HashMap<String, Tensor>,
    cfg: &Qwen3Config,
    shards: usize,
    dtype: DType,
) {
    std::fs::write(dir.join("config.json"), config_json(cfg).to_string()).unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        json!({"bos_token_id": 151643, "eos_token_id": [151645, 151643], "do_sample": true})
            .to_string(),
    )
    .unwrap();
    let tok = locate_tokenizer_dir(None).unwrap_or_else(|e| panic!("{e}"));
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok.join(f), dir.join(f)).unwrap();
    }
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let converted: HashMap<String, Tensor> = weights
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(dtype).unwrap()))
        .collect();
    if shards == 1 {
        candle_core::safetensors::save(&converted, dir.join("model.safetensors")).unwrap();
        return;
    }
    let mut map = serde_json::Map::new();
    for s in 0..shards {
        let file = format!("model-{:05}-of-{:05}.safetensors", s + 1, shards);
        let part: HashMap<String, Tensor> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % shards == s)
            .map(|(_, n)| ((*n).clone(), converted[*n].clone()))
            .collect();
        for n in part.keys() {
            map.insert(n.clone(), json!(file));
        }
        candle_core::safetensors::save(&part, dir.join(&file)).unwrap();
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        json!({"metadata": {"total_size": 0}, "weight_map": map}).to_string(),
    )
    .unwrap();
}

fn logits(m: &Qwen3, tokens: &[u32]) -> Vec<f32> {
    let mut c = m.new_cache();
    m.forward(&mut [StepInput {
        cache: &mut c,
        tokens,
    }])
    .unwrap()
    .flatten_all()
    .unwrap()
    .to_vec1()
    .unwrap()
}

fn reference(weights: &HashMap<String, Tensor>, cfg: &Qwen3Config, dtype: DType) -> Qwen3 {
    // The same weights after the round trip through the stored dtype.
    let w = weights
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap(),
            )
        })
        .collect();
    Qwen3::load(cfg, VarBuilder::from_tensors(w, DType::F32, &Device::Cpu)).unwrap()
}

async fn serve_one_chat(dir: &Path) -> Value {
    let args = qwen3_engine::server::Args::parse_from([
        "qwen3-engine",
        "--model",
        dir.to_str().unwrap(),
        "--max-model-len",
        "512",
    ]);
    let built = tokio::task::spawn_blocking(move || qwen3_engine::server::build(&args))
        .await
        .unwrap()
        .unwrap();
    let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
    assert_eq!(built.model_name, name);
    let body = json!({"model": name, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5, "temperature": 0});
    post_chat_json(&built.router, &body).await
}

#[tokio::test]
async fn loads_single_file_bf16_snapshot_and_serves_it() {
    let cfg = Qwen3Config::preset("tiny").unwrap();
    let weights = random_weights(&cfg, 3, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("Qwen3-Tiny-Test");
    std::fs::create_dir(&dir).unwrap();
    write_snapshot(&dir, &weights, &cfg, 1, DType::BF16);

    let loaded = Qwen3::from_snapshot(&dir, &Device::Cpu).unwrap();
    assert_eq!(loaded.config(), &cfg);
    let prompt = [151644u32, 872, 198, 9707, 151645];
    let a = logits(&loaded, &prompt);
    let b = logits(&reference(&weights, &cfg, DType::BF16), &prompt);
    assert_eq!(a.len(), cfg.vocab_size);
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "max |diff| {diff}");

    let v = serve_one_chat(&dir).await;
    assert_eq!(v["model"], "Qwen3-Tiny-Test");
    let completion = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=5).contains(&completion), "{v}");
}

#[tokio::test]
async fn loads_sharded_snapshot_with_index() {
    let mut cfg = Qwen3Config::preset("tiny").unwrap();
    cfg.tie_word_embeddings = false;
    let weights = random_weights(&cfg, 4, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write_snapshot(tmp.path(), &weights, &cfg, 3, DType::F32);
    assert!(tmp.path().join("model-00003-of-00003.safetensors").exists());

    let loaded = Qwen3::from_snapshot(tmp.path(), &Device::Cpu).unwrap();
    let prompt = [151644u32, 872, 198];
    let a = logits(&loaded, &prompt);
    let b = logits(&reference(&weights, &cfg, DType::F32), &prompt);
    assert_eq!(a, b);
    let v = serve_one_chat(tmp.path()).await;
    assert_eq!(v["object"], "chat.completion");
}

#[test]
fn broken_snapshots_fail_with_the_reason() {
    let cfg = Qwen3Config::preset("tiny").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let err = Qwen3::from_snapshot(tmp.path(), &Device::Cpu).unwrap_err();
    assert!(format!("{err:#}").contains("config.json"), "{err:#}");

    std::fs::write(
        tmp.path().join("config.json"),
        config_json(&cfg).to_string(),
    )
    .unwrap();
    let err = Qwen3::from_snapshot(tmp.path(), &Device::Cpu).unwrap_err();
    assert!(format!("{err:#}").contains("model.safetensors"), "{err:#}");

    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        json!({"weight_map": {"model.norm.weight": "missing.safetensors"}}).to_string(),
    )
    .unwrap();
    let err = Qwen3::from_snapshot(tmp.path(), &Device::Cpu).unwrap_err();
    assert!(
        format!("{err:#}").contains("missing.safetensors"),
        "{err:#}"
    );

    let mut bad = config_json(&cfg);
    bad["hidden_act"] = json!("gelu");
    std::fs::write(tmp.path().join("config.json"), bad.to_string()).unwrap();
    let err = Qwen3::from_snapshot(tmp.path(), &Device::Cpu).unwrap_err();
    assert!(format!("{err:#}").contains("hidden_act"), "{err:#}");
}

#[tokio::test]
async fn loaded_weights_are_never_steered_into_thinking() {
    // The preset's own weights (tiny, --seed 0) written as a snapshot: served as the preset they
    // think, because the engine steers random weights; loaded with --model they are sampled as they
    // are, and random weights do not open a think block by themselves.
    let cfg = Qwen3Config::preset("tiny").unwrap();
    let weights = random_weights(&cfg, 0, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write_snapshot(tmp.path(), &weights, &cfg, 1, DType::F32);
    let build = |argv: Vec<String>| async move {
        let args = qwen3_engine::server::Args::parse_from(argv);
        tokio::task::spawn_blocking(move || qwen3_engine::server::build(&args))
            .await
            .unwrap()
            .unwrap()
    };
    let loaded = build(vec![
        "qwen3-engine".into(),
        "--model".into(),
        tmp.path().to_str().unwrap().into(),
        "--served-model-name".into(),
        "m".into(),
    ])
    .await;
    let preset = build(vec![
        "qwen3-engine".into(),
        "--served-model-name".into(),
        "m".into(),
    ])
    .await;
    for seed in [1, 2, 3] {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "Think first."}],
                          "max_tokens": 40, "seed": seed, "enable_thinking": true});
        let steered = post_chat_json(&preset.router, &body).await;
        assert!(
            steered["usage"]["completion_tokens_details"]["reasoning_tokens"]
                .as_u64()
                .unwrap()
                > 0,
            "{steered}"
        );
        let free = post_chat_json(&loaded.router, &body).await;
        assert_eq!(
            free["usage"]["completion_tokens_details"]["reasoning_tokens"], 0,
            "{free}"
        );
        let msg = &free["choices"][0]["message"];
        assert!(msg["reasoning_content"].is_null(), "{free}");
        assert!(!msg["content"].as_str().unwrap_or("").contains("think>"));
    }
}
