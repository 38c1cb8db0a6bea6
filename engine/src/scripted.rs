//! A backend that "generates" a fixed token script, for tests of the HTTP layer, the reasoning
//! split and the scheduler without model weights (the real tokenizer and chat template still run).
//! Test-only: it is compiled with the `scripted` feature, which the crate's own tests turn on, so
//! the shipped binary does not carry it.
//!
//! The script is indexed by how many tokens a sequence has generated, so concurrent sequences each
//! replay it from the start. After the script, it repeats `filler` (so `max_tokens` decides the end).
//! Prompts must fit in one prefill chunk (`--max-num-batched-tokens`).

use std::time::Duration;

use crate::kv::CachePlan;
use crate::scheduler::Backend;

pub struct ScriptedBackend {
    pub script: Vec<u32>,
    pub filler: u32,
    pub vocab_size: usize,
    /// Sleep per forward step, to make queueing and cancellation observable.
    pub step_delay: Duration,
    /// Steps run so far (shared so tests can watch progress).
    pub steps: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Fail every forward step from this one on (to test mid-stream failures).
    pub fail_from_step: Option<usize>,
    /// Largest number of sequences seen in one step.
    pub max_batch: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Panic when a sequence is admitted (a fault in the scheduler loop outside the forward pass).
    pub panic_on_admit: bool,
    /// Steps to stop in, so a test can look at the engine between two steps.
    pub gate: Option<StepGate>,
}

/// Holds the backend at the start of chosen steps (numbered from 0, before the step touches any
/// cache) until the test lets it go: the scheduler's gauges then show the state after the previous
/// step, and nothing moves while the test reads them.
pub struct StepGate {
    at: Vec<usize>,
    reached: tokio::sync::mpsc::UnboundedSender<usize>,
    resume: std::sync::mpsc::Receiver<()>,
}

impl StepGate {
    /// A gate at `steps`, the receiver that hears which step is held, and the sender whose every
    /// message releases one hold (dropping it releases them all).
    pub fn new(
        steps: Vec<usize>,
    ) -> (
        Self,
        tokio::sync::mpsc::UnboundedReceiver<usize>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (reached, held) = tokio::sync::mpsc::unbounded_channel();
        let (release, resume) = std::sync::mpsc::channel();
        (
            Self {
                at: steps,
                reached,
                resume,
            },
            held,
            release,
        )
    }
}

impl ScriptedBackend {
    pub fn new(script: Vec<u32>, filler: u32, vocab_size: usize) -> Self {
        Self {
            script,
            filler,
            vocab_size,
            step_delay: Duration::ZERO,
            steps: Default::default(),
            fail_from_step: None,
            max_batch: Default::default(),
            panic_on_admit: false,
            gate: None,
        }
    }
}

/// What a cache would be: its fill, and the capacity the real one would have allocated (grown by
/// the same [`CachePlan`] as the Qwen3 cache).
pub struct ScriptedCache {
    prompt_len: Option<usize>,
    fed: usize,
    plan: CachePlan,
    capacity: usize,
}

impl Backend for ScriptedBackend {
    type Cache = ScriptedCache;

    fn new_cache(&self, plan: CachePlan) -> ScriptedCache {
        assert!(!self.panic_on_admit, "scripted panic on admission");
        ScriptedCache {
            prompt_len: None,
            fed: 0,
            plan,
            capacity: 0,
        }
    }

    fn cache_capacity(cache: &ScriptedCache) -> usize {
        cache.capacity
    }

    fn forward(
        &mut self,
        batch: &mut [(&mut ScriptedCache, &[u32])],
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        if !self.step_delay.is_zero() {
            std::thread::sleep(self.step_delay);
        }
        let step = self.steps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(g) = &self.gate {
            if g.at.contains(&step) && g.reached.send(step).is_ok() {
                // An error means the test dropped its sender: nothing more to wait for.
                let _ = g.resume.recv();
            }
        }
        self.max_batch
            .fetch_max(batch.len(), std::sync::atomic::Ordering::SeqCst);
        if self.fail_from_step.is_some_and(|f| step >= f) {
            anyhow::bail!("scripted failure at step {step}");
        }
        batch
            .iter_mut()
            .map(|(cache, tokens)| {
                cache.fed += tokens.len();
                cache.capacity = cache.plan.grow(cache.capacity, cache.fed).ok_or_else(|| {
                    anyhow::anyhow!(
                        "scripted: {} tokens exceed the KV reservation of {}",
                        cache.fed,
                        cache.plan.max_capacity()
                    )
                })?;
                let prompt = *cache.prompt_len.get_or_insert(tokens.len());
                let idx = cache.fed - prompt;
                let next = self.script.get(idx).copied().unwrap_or(self.filler);
                let mut logits = vec![0f32; self.vocab_size];
                logits[next as usize] = 100.0;
                Ok(logits)
            })
            .collect()
    }
}
