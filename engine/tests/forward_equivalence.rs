//! Our batched forward pass against candle-transformers' `qwen3` on identical random weights.
//!
//! candle-transformers can only run one position offset per model instance, so the reference runs
//! one instance per sequence; ours runs all sequences in one step at different positions, mixing
//! prompt chunks and single decode tokens, exactly as the scheduler does.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::qwen3 as reference;
use qwen3_engine::qwen3::{random_weights, Qwen3, Qwen3Config, StepInput};

fn config() -> Qwen3Config {
    let mut c = Qwen3Config::preset("tiny").unwrap();
    c.vocab_size = 512;
    c.max_position_embeddings = 128;
    c.num_hidden_layers = 3;
    c
}

fn reference_config(c: &Qwen3Config) -> reference::Config {
    reference::Config {
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        head_dim: c.head_dim(),
        attention_bias: c.attention_bias,
        num_key_value_heads: c.num_key_value_heads,
        max_position_embeddings: c.max_position_embeddings,
        sliding_window: None,
        max_window_layers: c.num_hidden_layers,
        tie_word_embeddings: c.tie_word_embeddings,
        rope_theta: c.rope_theta,
        rms_norm_eps: c.rms_norm_eps,
        use_sliding_window: false,
        hidden_act: candle_nn::Activation::Silu,
    }
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

fn run_reference(m: &mut reference::ModelForCausalLM, tokens: &[u32], offset: usize) -> Tensor {
    let input = Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward(&input, offset).unwrap().flatten_all().unwrap()
}

fn check(cfg: &Qwen3Config) {
    let dev = Device::Cpu;
    let weights = random_weights(cfg, 42, &dev).unwrap();
    let ours = Qwen3::load(
        cfg,
        VarBuilder::from_tensors(weights.clone(), DType::F32, &dev),
    )
    .unwrap();
    let rcfg = reference_config(cfg);
    let new_ref = || {
        reference::ModelForCausalLM::new(
            &rcfg,
            VarBuilder::from_tensors(weights.clone(), DType::F32, &dev),
        )
        .unwrap()
    };
    let (mut ra, mut rb, mut rc) = (new_ref(), new_ref(), new_ref());
    let (mut ca, mut cb, mut cc) = (ours.new_cache(), ours.new_cache(), ours.new_cache());

    let pa: Vec<u32> = vec![3, 17, 250, 9, 77, 401, 5, 5, 130];
    let pb: Vec<u32> = vec![88, 2, 311, 64, 19, 7, 200];
    let pc: Vec<u32> = vec![1, 2, 3, 4, 5];

    // Step 1: A prefills its whole prompt, B only the first 4 tokens of its prompt.
    let out = ours
        .forward(&mut [
            StepInput {
                cache: &mut ca,
                tokens: &pa,
            },
            StepInput {
                cache: &mut cb,
                tokens: &pb[..4],
            },
        ])
        .unwrap();
    let la = run_reference(&mut ra, &pa, 0);
    let lb = run_reference(&mut rb, &pb[..4], 0);
    // The tolerance must be small next to the logits themselves for the comparison to mean anything.
    let spread = la
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(spread > 0.05, "logits too small to compare: {spread}");
    assert!(
        max_abs_diff(&la, &lb) > 1e-2,
        "different prompts must give different logits"
    );
    assert!(max_abs_diff(&out.get(0).unwrap(), &la) < 1e-4);
    assert!(max_abs_diff(&out.get(1).unwrap(), &lb) < 1e-4);

    // Step 2: A decodes one token at position 9, B finishes its prompt (3 tokens at 4..7), and C
    // joins with its whole prompt at position 0.
    let mut next_a = qwen3_engine::qwen3::argmax(&la.to_vec1::<f32>().unwrap());
    let out = ours
        .forward(&mut [
            StepInput {
                cache: &mut ca,
                tokens: &[next_a],
            },
            StepInput {
                cache: &mut cb,
                tokens: &pb[4..],
            },
            StepInput {
                cache: &mut cc,
                tokens: &pc,
            },
        ])
        .unwrap();
    let mut la = run_reference(&mut ra, &[next_a], pa.len());
    let mut lb = run_reference(&mut rb, &pb[4..], 4);
    let mut lc = run_reference(&mut rc, &pc, 0);
    for (i, r) in [&la, &lb, &lc].into_iter().enumerate() {
        let d = max_abs_diff(&out.get(i).unwrap(), r);
        assert!(d < 1e-4, "step 2 sequence {i}: max |diff| {d}");
    }

    // Steps 3..8: all three decode greedily, each at its own position.
    let mut pos = [pa.len() + 1, pb.len(), pc.len()];
    for step in 3..9 {
        next_a = qwen3_engine::qwen3::argmax(&la.to_vec1::<f32>().unwrap());
        let next_b = qwen3_engine::qwen3::argmax(&lb.to_vec1::<f32>().unwrap());
        let next_c = qwen3_engine::qwen3::argmax(&lc.to_vec1::<f32>().unwrap());
        let out = ours
            .forward(&mut [
                StepInput {
                    cache: &mut ca,
                    tokens: &[next_a],
                },
                StepInput {
                    cache: &mut cb,
                    tokens: &[next_b],
                },
                StepInput {
                    cache: &mut cc,
                    tokens: &[next_c],
                },
            ])
            .unwrap();
        la = run_reference(&mut ra, &[next_a], pos[0]);
        lb = run_reference(&mut rb, &[next_b], pos[1]);
        lc = run_reference(&mut rc, &[next_c], pos[2]);
        for (i, r) in [&la, &lb, &lc].into_iter().enumerate() {
            let d = max_abs_diff(&out.get(i).unwrap(), r);
            assert!(d < 1e-4, "step {step} sequence {i}: max |diff| {d}");
        }
        pos = [pos[0] + 1, pos[1] + 1, pos[2] + 1];
    }
    assert_eq!(ca.len(), pa.len() + 7);
    assert_eq!(cb.len(), pb.len() + 6);
    assert_eq!(cc.len(), pc.len() + 6);
}

#[test]
fn batched_forward_matches_candle_transformers_qwen3() {
    check(&config());
}

#[test]
fn batched_forward_matches_candle_transformers_qwen3_untied_with_bias() {
    let mut cfg = config();
    cfg.tie_word_embeddings = false;
    cfg.attention_bias = true;
    check(&cfg);
}
