//! Token sampling with OpenAI/vLLM parameters: temperature (0 = greedy), top_k, top_p, seed,
//! presence and frequency penalties.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
            None => StdRng::from_os_rng(),
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
}
