//! `qwen3-gguf`'s export path (`gguf::qwen3_metadata`, `gguf::tokenizer_metadata`,
//! `gguf::write`) on the tiny preset with the real Qwen3 tokenizer: the engine loads the file back
//! to the same model as `--preset tiny`, and the tokenizer keys llama.cpp reads are complete and
//! consistent with tokenizer.json.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Device;
use qwen3_engine::chat::locate_tokenizer_dir;
use qwen3_engine::gguf::{self, token_type};
use qwen3_engine::qwen3::{random_weights, Qwen3, Qwen3Config, StepInput, WeightDType};
use serde_json::Value as Json;

fn export(cfg: &Qwen3Config, tok: &Path, dtype: WeightDType, path: &Path) {
    let mut md = gguf::qwen3_metadata(cfg, "test", dtype);
    md.extend(gguf::tokenizer_metadata(tok, cfg.vocab_size).unwrap());
    let weights = random_weights(cfg, 0, &Device::Cpu).unwrap();
    gguf::write(path, &md, &weights, dtype).unwrap();
}

/// Logits of a 5-token prefill and two decode steps.
fn logits(m: &Qwen3) -> Vec<Vec<f32>> {
    let mut cache = m.new_cache();
    let mut out = Vec::new();
    for tokens in [&[1u32, 20, 300, 4000, 50000][..], &[7], &[151_645]] {
        let t = m
            .forward(&mut [StepInput {
                cache: &mut cache,
                tokens,
            }])
            .unwrap();
        out.extend(t.to_vec2::<f32>().unwrap());
    }
    out
}

fn read_json(path: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn exported_gguf_loads_as_the_preset_and_carries_llama_cpp_tokenizer_keys() {
    let tok = locate_tokenizer_dir(None).unwrap_or_else(|e| panic!("{e}"));
    let cfg = Qwen3Config::preset("tiny").unwrap();
    let tmp = tempfile::tempdir().unwrap();

    // f32: the same values as the server's `--preset tiny --seed 0`, so the same logits.
    let f32_path = tmp.path().join("tiny-f32.gguf");
    export(&cfg, &tok, WeightDType::F32, &f32_path);
    let loaded = Qwen3::from_gguf(&f32_path, &Device::Cpu).unwrap();
    assert_eq!(loaded.config(), &cfg);
    let preset = Qwen3::random(&cfg, 0, &Device::Cpu).unwrap();
    let (a, b) = (logits(&loaded), logits(&preset));
    for (x, y) in a.iter().zip(&b) {
        let worst = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "logits differ by {worst}");
    }

    // Q8_0: loads with its matrices quantized.
    let q8_path = tmp.path().join("tiny-q8_0.gguf");
    export(&cfg, &tok, WeightDType::Q8_0, &q8_path);
    let q8 = Qwen3::from_gguf(&q8_path, &Device::Cpu).unwrap();
    assert_eq!(q8.config(), &cfg);
    assert!(
        q8.weight_summary().contains_key("Q8_0"),
        "{:?}",
        q8.weight_summary()
    );

    // The tokenizer keys, against tokenizer.json and tokenizer_config.json.
    let tj = read_json(&tok.join("tokenizer.json"));
    let tc = read_json(&tok.join("tokenizer_config.json"));
    let vocab = tj["model"]["vocab"].as_object().unwrap();
    let added = tj["added_tokens"].as_array().unwrap();
    let merges = tj["model"]["merges"].as_array().unwrap();
    let content = Content::read(&mut std::fs::File::open(&q8_path).unwrap()).unwrap();
    let md = &content.metadata;
    let s = |k: &str| md[k].to_string().unwrap().clone();
    let u = |k: &str| md[k].to_u32().unwrap();
    assert_eq!(s("tokenizer.ggml.model"), "gpt2");
    assert_eq!(s("tokenizer.ggml.pre"), "qwen2");
    assert_eq!(
        s("tokenizer.chat_template"),
        tc["chat_template"].as_str().unwrap()
    );
    let tokens = md["tokenizer.ggml.tokens"].to_vec().unwrap();
    let types = md["tokenizer.ggml.token_type"].to_vec().unwrap();
    // llama.cpp requires one token per embedding row.
    assert_eq!(tokens.len(), cfg.vocab_size);
    assert_eq!(types.len(), cfg.vocab_size);
    let text = |i: usize| tokens[i].to_string().unwrap().as_str();
    let ty = |i: usize| match types[i] {
        Value::I32(t) => t,
        ref v => panic!("token type {i} is {v:?}"),
    };
    let real = vocab.len() + added.len();
    assert_eq!(real, 151_669);
    assert!(real <= cfg.vocab_size);
    for (t, id) in vocab {
        let id = id.as_u64().unwrap() as usize;
        assert_eq!(text(id), t);
        assert_eq!(ty(id), token_type::NORMAL);
    }
    for a in added {
        let id = a["id"].as_u64().unwrap() as usize;
        assert_eq!(text(id), a["content"].as_str().unwrap());
        let want = if a["special"] == Json::Bool(true) {
            token_type::CONTROL
        } else if text(id).starts_with("<|") {
            // <|fim_prefix|> and the like: not special in tokenizer.json, control for llama.cpp.
            token_type::CONTROL
        } else {
            token_type::USER_DEFINED
        };
        assert_eq!(ty(id), want, "{}", text(id));
    }
    for id in real..cfg.vocab_size {
        assert_eq!(text(id), format!("[PAD{id}]"));
        assert_eq!(ty(id), token_type::UNUSED);
    }
    assert_eq!(ty(151_644), token_type::CONTROL); // <|im_start|>
    assert_eq!(ty(151_667), token_type::USER_DEFINED); // <think>
    let gm = md["tokenizer.ggml.merges"].to_vec().unwrap();
    assert_eq!(gm.len(), merges.len());
    let first = match &merges[0] {
        Json::String(m) => m.clone(),
        Json::Array(p) => format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
        m => panic!("{m}"),
    };
    assert_eq!(gm[0].to_string().unwrap(), &first);
    assert_eq!(u("tokenizer.ggml.eos_token_id"), 151_645); // <|im_end|>
    assert_eq!(u("tokenizer.ggml.padding_token_id"), 151_643); // <|endoftext|>
    assert_eq!(u("tokenizer.ggml.bos_token_id"), 151_643);
    assert!(!md["tokenizer.ggml.add_bos_token"].to_bool().unwrap());
    assert_eq!(u("general.file_type"), 7);
}
