//! Token sampling with OpenAI/vLLM parameters: temperature (0 = greedy), top_k, top_p, seed,
//! presence and frequency penalties; and [`ThinkingConstraint`], which gives a random-weight model
//! Qwen3's thinking shape.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    counts: std::collections::HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => rand::make_rng(),
        };
        Self {
            params,
            rng,
            counts: Default::default(),
        }
    }

    /// Picks the next token from raw logits and remembers it for the penalties.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let p = &self.params;
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&tok, &n) in &self.counts {
                if let Some(l) = logits.get_mut(tok as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
        let tok = if p.temperature <= 1e-5 {
            crate::qwen3::argmax(logits)
        } else {
            self.sample_random(logits)
        };
        *self.counts.entry(tok).or_default() += 1;
        tok
    }

    fn sample_random(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.top_k == 0 && p.top_p >= 1.0 {
            // Plain temperature sampling needs no sort over the whole vocabulary.
            let max = logits
                .iter()
                .copied()
                .filter(|l| l.is_finite())
                .fold(f32::NEG_INFINITY, f32::max);
            if max == f32::NEG_INFINITY {
                return 0;
            }
            let w: Vec<f32> = logits
                .iter()
                .map(|l| {
                    if l.is_finite() {
                        ((l - max) / p.temperature).exp()
                    } else {
                        0.0
                    }
                })
                .collect();
            let mut r = self.rng.random::<f32>() * w.iter().sum::<f32>();
            let mut last = 0;
            for (i, x) in w.iter().enumerate() {
                if *x > 0.0 {
                    last = i;
                    r -= x;
                    if r <= 0.0 {
                        return i as u32;
                    }
                }
            }
            return last as u32;
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, l)| (i as u32, *l / p.temperature))
            .collect();
        if cand.is_empty() {
            return 0;
        }
        let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            cand.truncate(p.top_k);
        }
        cand.sort_unstable_by(by_logit_desc);
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|(_, l)| (l - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, q) in probs.iter().enumerate() {
            r -= q;
            if r <= 0.0 {
                return cand[i].0;
            }
        }
        cand[probs.len() - 1].0
    }
}

/// Fewest and most reasoning tokens a seeded thinking request gets from a random-weight model.
pub const REASONING_MIN: usize = 8;
pub const REASONING_MAX: usize = 128;

/// The token ids [`ThinkingConstraint`] needs, taken from the tokenizer once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinkingTokens {
    pub think_start: u32,
    pub think_end: u32,
    /// Qwen3's generation prompt, `<|im_start|>assistant\n`. A prompt that ends with it asks the
    /// model to think; with thinking off the chat template appends an empty `<think>\n\n</think>\n\n`
    /// after it, so the prompt ends differently.
    pub generation_prompt: Vec<u32>,
    /// End-of-sequence tokens, kept out of the reasoning so that an answer follows it.
    pub stop: Vec<u32>,
}

/// Qwen3's thinking shape imposed on sampling, for random weights only.
///
/// Random weights never choose `<think>` by themselves (one token in 151,936), so without this the
/// thinking mode, the `reasoning_content` split and the gateway's reasoning metrics would never be
/// exercised against the engine. The scheduler applies it only when `SchedulerConfig::steer_thinking`
/// is set, which the server does for the random presets and never for weights loaded with
/// `--model`: a trained Qwen3 decides for itself, and steering it would change its output.
///
/// A thinking prompt (one that ends with the generation prompt) gets: `<think>` as the first token,
/// then `reasoning_len` free tokens in which neither tag nor an end-of-sequence token can be
/// chosen, then `</think>`, then one answer token that is not end-of-sequence, then free tokens
/// that cannot reopen or close a think block. Any other prompt (thinking off, or a raw completion
/// prompt) never gets a think tag, as a trained Qwen3 would not emit one there. `max_tokens` still
/// ends the completion wherever it falls, so a small budget ends inside the reasoning with
/// `finish_reason: "length"`, as it does with real Qwen3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinkingConstraint {
    think_start: u32,
    think_end: u32,
    stop: Vec<u32>,
    /// `Some(n)`: think for `n` tokens; `None`: no think block at all.
    reasoning_len: Option<usize>,
}

impl ThinkingConstraint {
    /// The constraint for one request: whether it thinks is read off its prompt, how long from
    /// [`reasoning_len`].
    pub fn for_prompt(
        tokens: &ThinkingTokens,
        prompt: &[u32],
        seed: Option<u64>,
        max_tokens: usize,
    ) -> Self {
        let thinks =
            !tokens.generation_prompt.is_empty() && prompt.ends_with(&tokens.generation_prompt);
        Self {
            think_start: tokens.think_start,
            think_end: tokens.think_end,
            stop: tokens.stop.clone(),
            reasoning_len: thinks.then(|| reasoning_len(seed, max_tokens)),
        }
    }

    /// Reasoning tokens this request is steered to (between the tags); `None` when it does not think.
    pub fn reasoning_len(&self) -> Option<usize> {
        self.reasoning_len
    }

    /// Masks `logits` for the next token of a completion that has `generated` tokens so far.
    pub fn apply(&self, generated: usize, logits: &mut [f32]) {
        let tags = [self.think_start, self.think_end];
        match self.reasoning_len {
            Some(_) if generated == 0 => force(logits, self.think_start),
            Some(n) if generated <= n => {
                forbid(logits, tags.iter().chain(&self.stop));
            }
            Some(n) if generated == n + 1 => force(logits, self.think_end),
            Some(n) if generated == n + 2 => {
                forbid(logits, tags.iter().chain(&self.stop));
            }
            _ => forbid(logits, &tags),
        }
    }
}

/// How many tokens a random-weight model reasons for.
///
/// With a seed the length is fixed by the seed alone, uniform in
/// [`REASONING_MIN`]..=[`REASONING_MAX`], so a request repeats exactly (as seeded sampling does) and
/// `max_tokens` can cut it short. Without a seed it is drawn afresh and kept to at most half of
/// `max_tokens` (and at least 1), so a client that just turns thinking on sees the reasoning and
/// an answer. The seed is mixed with a constant so the length is not tied to the sampler's first
/// random numbers, which come from the same seed.
pub fn reasoning_len(seed: Option<u64>, max_tokens: usize) -> usize {
    const SALT: u64 = 0x7468_696e_6b69_6e67; // "thinking"
    match seed {
        Some(s) => StdRng::seed_from_u64(s ^ SALT).random_range(REASONING_MIN..=REASONING_MAX),
        None => {
            let hi = (max_tokens / 2).clamp(1, REASONING_MAX);
            rand::rng().random_range(REASONING_MIN.min(hi)..=hi)
        }
    }
}

fn force(logits: &mut [f32], token: u32) {
    logits.fill(f32::NEG_INFINITY);
    if let Some(l) = logits.get_mut(token as usize) {
        *l = 0.0;
    }
}

fn forbid<'a>(logits: &mut [f32], tokens: impl IntoIterator<Item = &'a u32>) {
    for &t in tokens {
        if let Some(l) = logits.get_mut(t as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_temperature_is_greedy() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_one_is_greedy() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let params = SamplingParams {
            seed: Some(5),
            ..Default::default()
        };
        let run = |p: SamplingParams| {
            let mut s = Sampler::new(p);
            (0..20)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(params.clone()), run(params.clone()));
        let k1 = run(SamplingParams {
            top_k: 1,
            ..params.clone()
        });
        assert!(k1.iter().all(|t| *t == crate::qwen3::argmax(&logits)));
    }

    #[test]
    fn tiny_top_p_keeps_only_the_best_token() {
        let mut s = Sampler::new(SamplingParams {
            top_p: 0.01,
            seed: Some(1),
            ..Default::default()
        });
        for _ in 0..10 {
            assert_eq!(s.sample(&mut [1.0, 5.0, 4.0]), 1);
        }
    }

    #[test]
    fn frequency_penalty_discourages_repeats() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            frequency_penalty: 2.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut [0.0, 1.0, 0.5]), 1);
        assert_eq!(s.sample(&mut [0.0, 1.0, 0.5]), 2);
    }

    fn tokens() -> ThinkingTokens {
        ThinkingTokens {
            think_start: 3,
            think_end: 4,
            generation_prompt: vec![7, 8, 9],
            stop: vec![5, 6],
        }
    }

    /// Greedy completion of `n` tokens under `c` when the model always prefers `favourite`.
    fn steered(c: &ThinkingConstraint, favourite: u32, n: usize) -> Vec<u32> {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            ..Default::default()
        });
        (0..n)
            .map(|i| {
                let mut logits: Vec<f32> = (0..12).map(|t| t as f32 * 0.01).collect();
                logits[favourite as usize] = 10.0;
                c.apply(i, &mut logits);
                s.sample(&mut logits)
            })
            .collect()
    }

    #[test]
    fn a_thinking_prompt_opens_reasons_closes_then_answers() {
        let c = ThinkingConstraint::for_prompt(&tokens(), &[1, 2, 7, 8, 9], Some(42), 1000);
        let n = c.reasoning_len().unwrap();
        assert!((REASONING_MIN..=REASONING_MAX).contains(&n));
        // A model that would end at once (favourite = end-of-sequence) is kept reasoning.
        let out = steered(&c, 5, n + 4);
        assert_eq!(out[0], 3);
        assert!(
            out[1..=n].iter().all(|t| ![3, 4, 5, 6].contains(t)),
            "{out:?}"
        );
        assert_eq!(out[n + 1], 4);
        assert!(
            ![3, 4, 5, 6].contains(&out[n + 2]),
            "one answer token first"
        );
        assert_eq!(out[n + 3], 5, "then it may stop");
        // A model that loves `<think>` cannot reopen the block after it closed.
        let out = steered(&c, 3, n + 4);
        assert!(out[1..].iter().all(|t| *t != 3), "{out:?}");
    }

    #[test]
    fn other_prompts_never_get_a_think_tag() {
        // Thinking off: the template already closed an empty think block after the generation prompt.
        let c = ThinkingConstraint::for_prompt(&tokens(), &[7, 8, 9, 3, 4], Some(1), 100);
        assert_eq!(c.reasoning_len(), None);
        assert!(steered(&c, 3, 5).iter().all(|t| *t != 3));
        assert!(steered(&c, 4, 5).iter().all(|t| *t != 4));
        assert_eq!(steered(&c, 5, 1), [5], "ending is allowed");
    }

    #[test]
    fn reasoning_length_follows_the_seed() {
        assert_eq!(reasoning_len(Some(9), 10), reasoning_len(Some(9), 5000));
        let lens: std::collections::HashSet<usize> =
            (0..20).map(|s| reasoning_len(Some(s), 100)).collect();
        assert!(lens.len() > 1, "different seeds give different lengths");
        assert!(lens
            .iter()
            .all(|n| (REASONING_MIN..=REASONING_MAX).contains(n)));
        // Unseeded: within half of max_tokens, so an answer fits.
        for _ in 0..50 {
            assert!((8..=24).contains(&reasoning_len(None, 48)));
            assert_eq!(reasoning_len(None, 1), 1);
            assert!((REASONING_MIN..=REASONING_MAX).contains(&reasoning_len(None, 100_000)));
        }
    }
}
