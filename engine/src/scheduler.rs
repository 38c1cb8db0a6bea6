//! The scheduler: one thread owns the model and runs continuous batching.
//!
//! Requests wait in a bounded queue ([`EngineHandle::submit`] refuses when it is full). Each step,
//! up to `max_num_seqs` running sequences advance together: decoding sequences contribute one token,
//! sequences still prefilling contribute a chunk of their prompt (at most
//! `max_num_batched_tokens` tokens per step in all), and the model runs them in one forward pass.
//! Every sampled token goes through detokenization, the Qwen3 reasoning split and stop checks here,
//! so `usage` and the metrics count exactly the tokens the client received.
//!
//! With [`SchedulerConfig::steer_thinking`] (random weights only), each request's logits pass
//! through a [`ThinkingConstraint`] before sampling, so thinking requests open with `<think>`,
//! reason for a seed-drawn number of tokens and close with `</think>` as Qwen3 does.
//!
//! A request is cancelled when its event receiver is dropped (the client disconnected, or the
//! HTTP handler was dropped): the next step frees its slot and its KV cache.
//!
//! KV memory is accounted in blocks ([`crate::kv`]): admission reserves the blocks a request can
//! fill (prompt + `max_tokens` − 1, rounded up), each cache grows in whole blocks up to that
//! reservation, and `vllm:kv_cache_usage_perc` is the capacity the caches hold over the budget.
//! [`EngineHandle::submit`] refuses a request whose reservation exceeds the whole budget, so none
//! can wait at the head of the queue for room that will never come.
//!
//! What usage counts: a structural token (the stop token, the think and tool-call tags) counts
//! when it is handled; a text token counts once the detokenizer has turned it into text (its own
//! or, for a byte of an unfinished character, the character it completes) or has been flushed
//! without error at a mode switch or the end. Tokens that produce no text of their own (a special
//! token skipped in the output, an id the tokenizer does not know) count with the text that
//! follows them or at the flush. A matched stop string counts its tokens, as OpenAI and vLLM do,
//! though the stop string is not sent. When the detokenizer fails, the token and any it still held
//! are dropped together with their text and are not counted; the detokenizer starts afresh. So
//! `usage.completion_tokens` and `vllm:generation_tokens_total` count what the client was given,
//! and can be below the number of sampled tokens (`max_tokens` limits the latter).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::chat::{ChatTokenizer, Detokenizer};
use crate::kv::{max_cached_tokens, CachePlan, KvBudget};
use crate::metrics::{FinishedReason, Metrics};
use crate::sampling::{Sampler, SamplingParams, ThinkingConstraint, ThinkingTokens};

/// The model as the scheduler sees it: per-sequence caches and one batched step.
pub trait Backend: Send + 'static {
    type Cache: Send;
    /// An empty cache for one sequence that grows as `plan` says (never past its reservation).
    fn new_cache(&self, plan: CachePlan) -> Self::Cache;
    /// Tokens of KV memory `cache` holds now, a whole number of blocks: what usage reports.
    fn cache_capacity(cache: &Self::Cache) -> usize;
    /// Feeds each sequence its new tokens and returns the logits after each one's last token.
    fn forward(
        &mut self,
        batch: &mut [(&mut Self::Cache, &[u32])],
    ) -> anyhow::Result<Vec<Vec<f32>>>;
}

impl Backend for crate::qwen3::Qwen3 {
    type Cache = crate::qwen3::SeqCache;

    fn new_cache(&self, plan: CachePlan) -> Self::Cache {
        crate::qwen3::Qwen3::new_cache_with(self, plan)
    }

    fn cache_capacity(cache: &Self::Cache) -> usize {
        cache.capacity()
    }

    fn forward(
        &mut self,
        batch: &mut [(&mut Self::Cache, &[u32])],
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        let mut inputs: Vec<crate::qwen3::StepInput<'_>> = batch
            .iter_mut()
            .map(|(c, t)| crate::qwen3::StepInput {
                cache: c,
                tokens: t,
            })
            .collect();
        let logits = crate::qwen3::Qwen3::forward(self, &mut inputs)?;
        Ok(logits.to_vec2::<f32>()?)
    }
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    pub max_queue: usize,
    pub max_model_len: usize,
    /// KV budget in tokens; the scheduler uses the whole blocks of `block_size` it holds (rounded
    /// down, see [`SchedulerConfig::kv_budget`]).
    pub kv_cache_tokens: usize,
    /// Tokens per KV block: the unit of reservation, allocation and usage (vLLM's `--block-size`).
    pub block_size: usize,
    pub max_num_batched_tokens: usize,
    /// Give thinking requests Qwen3's `<think>…</think>` shape through a [`ThinkingConstraint`] on
    /// sampling. Only for random weights, which would never think by themselves; trained weights
    /// (`--model`) must never be steered.
    pub steer_thinking: bool,
}

impl SchedulerConfig {
    /// The KV budget in whole blocks.
    pub fn kv_budget(&self) -> KvBudget {
        KvBudget::new(self.kv_cache_tokens, self.block_size)
    }

    /// Blocks that a request with this prompt and `max_tokens` reserves.
    pub fn blocks_for_request(&self, prompt: usize, max_tokens: usize) -> usize {
        self.kv_budget()
            .blocks_for(max_cached_tokens(prompt, max_tokens, self.max_model_len))
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_num_seqs == 0 {
            anyhow::bail!("--max-num-seqs must be at least 1");
        }
        if self.max_model_len == 0 {
            anyhow::bail!("--max-model-len must be at least 1");
        }
        if self.block_size == 0 {
            anyhow::bail!("--block-size must be at least 1");
        }
        let budget = self.kv_budget();
        let one = budget.blocks_for(self.max_model_len);
        if budget.num_blocks < one {
            anyhow::bail!(
                "--kv-cache-tokens ({}) holds {} blocks of --block-size {}; one sequence of \
                 --max-model-len ({}) needs {one} blocks ({} tokens)",
                self.kv_cache_tokens,
                budget.num_blocks,
                self.block_size,
                self.max_model_len,
                one * self.block_size
            );
        }
        if self.max_num_batched_tokens < self.max_num_seqs {
            anyhow::bail!(
                "--max-num-batched-tokens ({}) must be at least --max-num-seqs ({})",
                self.max_num_batched_tokens,
                self.max_num_seqs
            );
        }
        Ok(())
    }
}

/// OpenAI's `finish_reason` of a completed request, as the response carries it. Its metric label
/// is the [`FinishedReason`] it converts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    /// Stopped after emitting tool calls (OpenAI's `tool_calls`).
    ToolCalls,
}

impl FinishReason {
    /// The `finish_reason` value in responses.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

/// The metric label of a completed request (vLLM has no separate value for tool calls).
impl From<FinishReason> for FinishedReason {
    fn from(reason: FinishReason) -> Self {
        match reason {
            FinishReason::Stop | FinishReason::ToolCalls => FinishedReason::Stop,
            FinishReason::Length => FinishedReason::Length,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub reasoning_tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A decoded piece of text, reasoning (inside `<think>`) or answer content.
    Delta {
        reasoning: bool,
        text: String,
    },
    /// A complete tool call parsed from `<tool_call>{"name": ..., "arguments": ...}</tool_call>`;
    /// `arguments` is a JSON string as in OpenAI's API.
    ToolCall {
        index: usize,
        name: String,
        arguments: String,
    },
    Done {
        reason: FinishReason,
        usage: Usage,
    },
    Error(String),
}

pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Split `<think>...</think>` into reasoning deltas (chat); otherwise tags are plain text.
    pub split_reasoning: bool,
    /// Parse Qwen3's `<tool_call>` blocks into [`Event::ToolCall`] (the request offered tools).
    pub parse_tool_calls: bool,
    pub events: mpsc::UnboundedSender<Event>,
    pub arrival: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitError {
    QueueFull,
    Stopped,
    /// The request would reserve more KV blocks than the whole budget has: it could never run.
    /// (The API refuses such a request earlier, by `max_model_len`, which the budget always fits.)
    TooLarge {
        blocks: usize,
        num_blocks: usize,
    },
}

struct Queue {
    waiting: VecDeque<GenerateRequest>,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    alive: AtomicBool,
    cfg: SchedulerConfig,
    metrics: Metrics,
}

/// Cheap handle used by HTTP handlers.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

impl EngineHandle {
    pub fn submit(&self, req: GenerateRequest) -> Result<(), SubmitError> {
        if !self.is_alive() {
            return Err(SubmitError::Stopped);
        }
        let cfg = &self.shared.cfg;
        let blocks = cfg.blocks_for_request(req.prompt.len(), req.max_tokens);
        let num_blocks = cfg.kv_budget().num_blocks;
        if blocks > num_blocks {
            return Err(SubmitError::TooLarge { blocks, num_blocks });
        }
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.shutdown {
            return Err(SubmitError::Stopped);
        }
        if q.waiting.len() >= self.shared.cfg.max_queue {
            return Err(SubmitError::QueueFull);
        }
        q.waiting.push_back(req);
        self.shared
            .metrics
            .num_requests_waiting
            .set(q.waiting.len() as i64);
        drop(q);
        self.shared.wake.notify_one();
        Ok(())
    }

    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.shared.cfg
    }

    /// Stops the scheduler thread after the current step; waiting requests get an error.
    pub fn shutdown(&self) {
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.shutdown = true;
        drop(q);
        self.shared.wake.notify_all();
    }
}

/// Starts the scheduler thread that owns `backend`.
pub fn spawn<B: Backend>(
    backend: B,
    tokenizer: Arc<ChatTokenizer>,
    cfg: SchedulerConfig,
    metrics: Metrics,
) -> anyhow::Result<EngineHandle> {
    cfg.validate()?;
    let budget = cfg.kv_budget();
    metrics.set_cache_config(budget.block_size, budget.num_blocks);
    metrics.touch_lora_info();
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            waiting: VecDeque::new(),
            shutdown: false,
        }),
        wake: Condvar::new(),
        alive: AtomicBool::new(true),
        cfg,
        metrics,
    });
    let s = shared.clone();
    std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || {
            let thinking = if s.cfg.steer_thinking {
                tokenizer.thinking_tokens()
            } else {
                None
            };
            let mut sched = Scheduler {
                backend,
                thinking,
                tok: tokenizer,
                shared: s.clone(),
                running: Vec::new(),
                reserved: 0,
            };
            // The forward pass has its own guard (a failed step fails its batch); a panic anywhere
            // else in the loop ends the loop. Either way the engine is then dead: `/health` says
            // so, and every open and queued request gets an error instead of waiting forever.
            let ended = std::panic::catch_unwind(AssertUnwindSafe(|| sched.run()));
            s.alive.store(false, Ordering::SeqCst);
            sched.fail_all(if ended.is_ok() {
                "the engine is shutting down"
            } else {
                "the engine's scheduler failed"
            });
        })?;
    Ok(EngineHandle { shared })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Content,
    Reasoning,
    ToolCall,
}

struct Running<C> {
    req: GenerateRequest,
    cache: C,
    fed: usize,
    generated: Vec<u32>,
    sampler: Sampler,
    /// Qwen3's thinking shape for random weights; `None` when not steering.
    steer: Option<ThinkingConstraint>,
    detok: Detokenizer,
    mode: Mode,
    reasoning_seen: bool,
    reasoning_tokens: usize,
    /// Generated tokens counted in usage so far (see the module docs for the rule).
    completion_tokens: usize,
    /// Text tokens handed to the detokenizer that it has not yet turned into text.
    held: usize,
    tool_calls: usize,
    pending: String,
    admitted: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    /// KV blocks reserved at admission.
    reserve: usize,
}

impl<C> Running<C> {
    fn new(
        req: GenerateRequest,
        cache: C,
        steer: Option<ThinkingConstraint>,
        reserve: usize,
        admitted: Instant,
    ) -> Self {
        Self {
            cache,
            fed: 0,
            generated: Vec::new(),
            sampler: Sampler::new(req.sampling.clone()),
            steer,
            detok: Detokenizer::default(),
            mode: Mode::Content,
            reasoning_seen: false,
            reasoning_tokens: 0,
            completion_tokens: 0,
            held: 0,
            tool_calls: 0,
            pending: String::new(),
            admitted,
            first_token: None,
            last_token: None,
            reserve,
            req,
        }
    }

    fn prefilling(&self) -> bool {
        self.fed < self.req.prompt.len()
    }
}

struct Scheduler<B: Backend> {
    backend: B,
    tok: Arc<ChatTokenizer>,
    /// Set when steering thinking (see [`SchedulerConfig::steer_thinking`]).
    thinking: Option<ThinkingTokens>,
    shared: Arc<Shared>,
    running: Vec<Running<B::Cache>>,
    reserved: usize,
}

impl<B: Backend> Scheduler<B> {
    fn run(&mut self) {
        loop {
            if !self.admit() {
                break;
            }
            self.drop_cancelled();
            self.update_gauges();
            if self.running.is_empty() {
                continue;
            }
            self.step();
            self.update_gauges();
        }
    }

    /// Fails every running and waiting request with `why`, and refuses new ones (under the queue
    /// lock, so no request slips in after the drain).
    fn fail_all(&mut self, why: &str) {
        for r in self.running.drain(..) {
            let _ = r.req.events.send(Event::Error(why.into()));
        }
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.shutdown = true;
        for r in q.waiting.drain(..) {
            let _ = r.events.send(Event::Error(why.into()));
        }
    }

    /// Moves waiting requests into free slots. Blocks while there is nothing to do. Returns false
    /// on shutdown.
    fn admit(&mut self) -> bool {
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        let m = &shared.metrics;
        let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if q.shutdown {
                return false;
            }
            // Requests whose client went away while waiting are dropped here.
            let before = q.waiting.len();
            q.waiting.retain(|r| !r.events.is_closed());
            for _ in q.waiting.len()..before {
                m.request_finished(FinishedReason::Abort);
            }
            while self.running.len() < cfg.max_num_seqs {
                let Some(front) = q.waiting.front() else {
                    break;
                };
                // Blocks, not tokens: what the cache will really allocate at most. `submit`
                // refused anything larger than the whole budget, so an empty engine always
                // admits the head of the queue.
                let need = cfg.blocks_for_request(front.prompt.len(), front.max_tokens);
                if self.reserved + need > cfg.kv_budget().num_blocks {
                    break;
                }
                let Some(req) = q.waiting.pop_front() else {
                    break;
                };
                let now = Instant::now();
                m.request_queue_time
                    .observe(now.duration_since(req.arrival).as_secs_f64());
                self.reserved += need;
                let plan = CachePlan::new(cfg.block_size, need * cfg.block_size);
                let steer = self.thinking.as_ref().map(|t| {
                    ThinkingConstraint::for_prompt(
                        t,
                        &req.prompt,
                        req.sampling.seed,
                        req.max_tokens,
                    )
                });
                let cache = self.backend.new_cache(plan);
                self.running
                    .push(Running::new(req, cache, steer, need, now));
            }
            m.num_requests_waiting.set(q.waiting.len() as i64);
            m.num_requests_running.set(self.running.len() as i64);
            if !self.running.is_empty() {
                return true;
            }
            // Idle: sleep until a submit; wake periodically to drop cancelled waiters.
            let (guard, _) = shared
                .wake
                .wait_timeout(q, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner());
            q = guard;
        }
    }

    fn drop_cancelled(&mut self) {
        let m = &self.shared.metrics;
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].req.events.is_closed() {
                let r = self.running.swap_remove(i);
                self.reserved -= r.reserve;
                m.request_finished(FinishedReason::Abort);
                tracing::info!(
                    prompt_tokens = r.req.prompt.len(),
                    completion_tokens = r.generated.len(),
                    "request aborted (client gone); slot and KV cache freed"
                );
                // r (and its KV cache) is dropped here.
            } else {
                i += 1;
            }
        }
        m.num_requests_running.set(self.running.len() as i64);
    }

    /// Running count and KV usage: the memory the caches hold now (their capacity, in blocks)
    /// over the budget.
    fn update_gauges(&self) {
        let m = &self.shared.metrics;
        let allocated: usize = self
            .running
            .iter()
            .map(|r| B::cache_capacity(&r.cache))
            .sum();
        m.kv_cache_usage_perc
            .set(allocated as f64 / self.shared.cfg.kv_budget().tokens() as f64);
        m.num_requests_running.set(self.running.len() as i64);
        m.touch_lora_info();
    }

    fn step(&mut self) {
        let budget = self.shared.cfg.max_num_batched_tokens;
        // Decoding sequences first (one token each), then prompt chunks in arrival order.
        let mut plan: Vec<(usize, usize, usize)> = Vec::new(); // (index, start, len)
        let mut used = 0;
        for (i, r) in self.running.iter().enumerate() {
            if !r.prefilling() {
                plan.push((i, 0, 1));
                used += 1;
            }
        }
        for (i, r) in self.running.iter().enumerate() {
            if r.prefilling() && used < budget {
                let n = (r.req.prompt.len() - r.fed).min(budget - used);
                plan.push((i, r.fed, n));
                used += n;
            }
        }
        if plan.is_empty() {
            return;
        }
        plan.sort_by_key(|p| p.0);
        let result = {
            let mut batch: Vec<(&mut B::Cache, &[u32])> = Vec::with_capacity(plan.len());
            let mut it = self.running.iter_mut().enumerate();
            for &(idx, start, len) in &plan {
                let (_, r) = it.by_ref().find(|(j, _)| *j == idx).expect("planned index");
                let tokens: &[u32] = if r.prefilling() {
                    &r.req.prompt[start..start + len]
                } else {
                    std::slice::from_ref(r.generated.last().expect("decoding has a token"))
                };
                batch.push((&mut r.cache, tokens));
            }
            let backend = &mut self.backend;
            std::panic::catch_unwind(AssertUnwindSafe(|| backend.forward(&mut batch)))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the model panicked")))
        };
        let logits = match result {
            Ok(l) if l.len() == plan.len() => l,
            Ok(_) => {
                let e = anyhow::anyhow!("backend returned the wrong number of rows");
                self.fail_batch(&plan, e);
                return;
            }
            Err(e) => {
                self.fail_batch(&plan, e);
                return;
            }
        };
        let mut finished = Vec::new();
        for ((idx, _, len), mut row) in plan.into_iter().zip(logits) {
            let r = &mut self.running[idx];
            let was_prefill = r.prefilling();
            if was_prefill {
                r.fed += len;
                if r.prefilling() {
                    continue;
                }
                self.shared
                    .metrics
                    .prompt_tokens
                    .inc_by(r.req.prompt.len() as u64);
            }
            if let Some(c) = &r.steer {
                c.apply(r.generated.len(), &mut row);
            }
            let token = r.sampler.sample(&mut row);
            if let Some(reason) = on_token(r, token, &self.tok, &self.shared) {
                finished.push((idx, reason));
            }
        }
        // Remove finished from the back so indices stay valid.
        finished.sort_by_key(|f| std::cmp::Reverse(f.0));
        let done: Vec<_> = finished
            .into_iter()
            .map(|(idx, reason)| {
                let r = self.running.swap_remove(idx);
                self.reserved -= r.reserve;
                (r, reason)
            })
            .collect();
        // Gauges first, so a client that reads /metrics right after its response sees them.
        self.update_gauges();
        for (r, reason) in done {
            finish(r, reason, &self.tok, &self.shared);
        }
    }

    fn fail_batch(&mut self, plan: &[(usize, usize, usize)], e: anyhow::Error) {
        tracing::error!("forward pass failed: {e:#}");
        let mut idx: Vec<usize> = plan.iter().map(|p| p.0).collect();
        idx.sort_unstable_by(|a, b| b.cmp(a));
        let failed: Vec<_> = idx
            .into_iter()
            .map(|i| {
                let r = self.running.swap_remove(i);
                self.reserved -= r.reserve;
                r
            })
            .collect();
        // Metrics before the clients hear about it, as for normal completions.
        self.update_gauges();
        for r in failed {
            self.shared.metrics.request_finished(FinishedReason::Error);
            let _ = r
                .req
                .events
                .send(Event::Error(format!("generation failed: {e}")));
        }
    }
}

/// Handles one sampled token; returns a finish reason when the sequence is done.
fn on_token<C>(
    r: &mut Running<C>,
    token: u32,
    tok: &ChatTokenizer,
    shared: &Shared,
) -> Option<FinishReason> {
    let now = Instant::now();
    let m = &shared.metrics;
    match r.last_token {
        None => {
            m.time_to_first_token
                .observe(now.duration_since(r.req.arrival).as_secs_f64());
            r.first_token = Some(now);
        }
        Some(prev) => {
            let dt = now.duration_since(prev).as_secs_f64();
            m.inter_token_latency.observe(dt);
            m.time_per_output_token.observe(dt);
        }
    }
    r.last_token = Some(now);
    r.generated.push(token);

    if tok.stop_token_ids.contains(&token) {
        count(r, 1, m);
        return Some(FinishReason::Stop);
    }
    let mut stopped = false;
    if r.req.split_reasoning && Some(token) == tok.think_start && !r.reasoning_seen {
        flush_mode(r, tok, m);
        count(r, 1, m);
        r.mode = Mode::Reasoning;
        r.reasoning_seen = true;
    } else if r.req.split_reasoning && Some(token) == tok.think_end && r.mode == Mode::Reasoning {
        flush_mode(r, tok, m);
        count(r, 1, m);
        r.mode = Mode::Content;
    } else if r.req.parse_tool_calls
        && Some(token) == tok.tool_call_start
        && r.mode == Mode::Content
    {
        flush_mode(r, tok, m);
        count(r, 1, m);
        r.mode = Mode::ToolCall;
    } else if r.req.parse_tool_calls && Some(token) == tok.tool_call_end && r.mode == Mode::ToolCall
    {
        count(r, 1, m);
        end_tool_call(r, tok, m);
    } else {
        r.held += 1;
        match r.detok.step(tok, token) {
            Ok(Some(text)) => {
                settle(r, m);
                if r.mode == Mode::ToolCall {
                    // A tool call is held whole until its closing tag; stop strings do not
                    // apply inside.
                    r.pending.push_str(&text);
                } else {
                    stopped = push_text(r, &text);
                }
            }
            // An unfinished character, or a token with no text of its own: settled later.
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("{e}; its text and {} held token(s) dropped", r.held - 1);
                drop_held(r);
            }
        }
    }
    if stopped {
        return Some(FinishReason::Stop);
    }
    let total = r.req.prompt.len() + r.generated.len();
    if r.generated.len() >= r.req.max_tokens || total >= shared.cfg.max_model_len {
        return Some(FinishReason::Length);
    }
    None
}

/// Adds decoded text to the current mode, emitting all of it except a tail that could still
/// become a stop string. Returns true when a stop string matched (text before it is emitted).
fn push_text<C>(r: &mut Running<C>, text: &str) -> bool {
    r.pending.push_str(text);
    if let Some(pos) = r
        .req
        .stop
        .iter()
        .filter_map(|s| r.pending.find(s.as_str()))
        .min()
    {
        let before = r.pending[..pos].to_owned();
        r.pending.clear();
        emit(r, before);
        return true;
    }
    let hold = r
        .req
        .stop
        .iter()
        .map(|s| longest_suffix_prefix(&r.pending, s))
        .max()
        .unwrap_or(0);
    let cut = r.pending.len() - hold;
    let out: String = r.pending.drain(..cut).collect();
    emit(r, out);
    false
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, on char boundaries.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = stop.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && stop.is_char_boundary(n)
                && stop.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

fn emit<C>(r: &Running<C>, text: String) {
    if !text.is_empty() {
        let _ = r.req.events.send(Event::Delta {
            reasoning: r.mode == Mode::Reasoning,
            text,
        });
    }
}

/// Counts `n` generated tokens in usage and in `vllm:generation_tokens_total`.
fn count<C>(r: &mut Running<C>, n: usize, m: &Metrics) {
    r.completion_tokens += n;
    m.generation_tokens.inc_by(n as u64);
}

/// The detokenizer produced text for every token it held: count them (as reasoning too, inside
/// `<think>`: the mode is flushed at every switch, so held tokens are all of the current mode).
fn settle<C>(r: &mut Running<C>, m: &Metrics) {
    let n = std::mem::take(&mut r.held);
    if r.mode == Mode::Reasoning {
        r.reasoning_tokens += n;
    }
    count(r, n, m);
}

/// The detokenizer failed: the tokens it held are dropped with their text, uncounted, and it
/// starts afresh (its state no longer matches its tokens).
fn drop_held<C>(r: &mut Running<C>) {
    r.held = 0;
    r.detok = Detokenizer::default();
}

/// Moves what the detokenizer still holds into `pending`, settling or dropping its tokens.
fn flush_detok<C>(r: &mut Running<C>, tok: &ChatTokenizer, m: &Metrics) {
    match r.detok.flush(tok) {
        Ok(rest) => {
            settle(r, m);
            if let Some(rest) = rest {
                r.pending.push_str(&rest);
            }
        }
        Err(e) => {
            tracing::warn!("{e}; {} held token(s) dropped", r.held);
            drop_held(r);
        }
    }
}

/// Parses the held `<tool_call>` body (Hermes-style JSON, as Qwen3's template asks for) into a
/// tool-call event; a body that is not a call is passed through as content, tags included.
fn end_tool_call<C>(r: &mut Running<C>, tok: &ChatTokenizer, m: &Metrics) {
    flush_detok(r, tok, m);
    let body = std::mem::take(&mut r.pending);
    r.mode = Mode::Content;
    let parsed: Option<(String, String)> = serde_json::from_str::<serde_json::Value>(body.trim())
        .ok()
        .and_then(|v| {
            let name = v.get("name")?.as_str()?.to_owned();
            let args = match v.get("arguments") {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(a) => crate::chat::python_json(a),
                None => "{}".to_owned(),
            };
            Some((name, args))
        });
    match parsed {
        Some((name, arguments)) => {
            let _ = r.req.events.send(Event::ToolCall {
                index: r.tool_calls,
                name,
                arguments,
            });
            r.tool_calls += 1;
        }
        None => emit(r, format!("<tool_call>{body}</tool_call>")),
    }
}

/// Emits everything held for the current mode (at a `<think>` boundary or the end).
fn flush_mode<C>(r: &mut Running<C>, tok: &ChatTokenizer, m: &Metrics) {
    flush_detok(r, tok, m);
    let out = std::mem::take(&mut r.pending);
    emit(r, out);
}

fn finish<C>(mut r: Running<C>, reason: FinishReason, tok: &ChatTokenizer, shared: &Shared) {
    let stopped_by_string = reason == FinishReason::Stop
        && !r
            .generated
            .last()
            .is_some_and(|t| tok.stop_token_ids.contains(t));
    let m = &shared.metrics;
    if r.mode == Mode::ToolCall {
        // An unterminated tool call is returned as the text it is.
        flush_detok(&mut r, tok, m);
        r.pending.insert_str(0, "<tool_call>");
        r.mode = Mode::Content;
    }
    if !stopped_by_string {
        flush_mode(&mut r, tok, m);
    }
    let reason = if reason == FinishReason::Stop && r.tool_calls > 0 {
        FinishReason::ToolCalls
    } else {
        reason
    };
    let now = Instant::now();
    m.e2e_request_latency
        .observe(now.duration_since(r.req.arrival).as_secs_f64());
    let first = r.first_token.unwrap_or(now);
    m.request_prefill_time
        .observe(first.duration_since(r.admitted).as_secs_f64());
    m.request_decode_time
        .observe(now.duration_since(first).as_secs_f64());
    m.request_finished(reason.into());
    m.request_prompt_tokens.observe(r.req.prompt.len() as f64);
    m.request_generation_tokens
        .observe(r.completion_tokens as f64);
    tracing::info!(
        prompt_tokens = r.req.prompt.len(),
        completion_tokens = r.completion_tokens,
        sampled_tokens = r.generated.len(),
        reasoning_tokens = r.reasoning_tokens,
        finish_reason = reason.as_str(),
        ttft_ms = first.duration_since(r.req.arrival).as_millis() as u64,
        e2e_ms = now.duration_since(r.req.arrival).as_millis() as u64,
        "request finished"
    );
    let _ = r.req.events.send(Event::Done {
        reason,
        usage: Usage {
            prompt_tokens: r.req.prompt.len(),
            completion_tokens: r.completion_tokens,
            reasoning_tokens: r.reasoning_tokens,
        },
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MetricsRegistry;

    fn shared(metrics: Metrics) -> Shared {
        Shared {
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                shutdown: false,
            }),
            wake: Condvar::new(),
            alive: AtomicBool::new(true),
            cfg: SchedulerConfig {
                max_num_seqs: 1,
                max_queue: 1,
                max_model_len: 256,
                kv_cache_tokens: 256,
                block_size: 16,
                max_num_batched_tokens: 16,
                steer_thinking: false,
            },
            metrics,
        }
    }

    fn running(split_reasoning: bool) -> (Running<()>, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let req = GenerateRequest {
            prompt: vec![1, 2, 3],
            max_tokens: 64,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            split_reasoning,
            parse_tool_calls: false,
            events,
            arrival: Instant::now(),
        };
        (Running::new(req, (), None, 1, Instant::now()), rx)
    }

    fn tokenizer() -> ChatTokenizer {
        let dir = crate::chat::locate_tokenizer_dir(None).unwrap_or_else(|e| panic!("{e}"));
        ChatTokenizer::from_dir(&dir).unwrap()
    }

    /// Feeds `tokens`, finishes at the end (or at a stop token) and returns the text sent and
    /// the usage reported.
    fn generate(
        mut r: Running<()>,
        mut rx: mpsc::UnboundedReceiver<Event>,
        tokens: &[u32],
        tok: &ChatTokenizer,
        sh: &Shared,
    ) -> (String, Usage) {
        let mut reason = FinishReason::Length;
        for &t in tokens {
            if let Some(why) = on_token(&mut r, t, tok, sh) {
                reason = why;
                break;
            }
        }
        finish(r, reason, tok, sh);
        let mut text = String::new();
        let mut usage = None;
        while let Ok(e) = rx.try_recv() {
            match e {
                Event::Delta { text: t, .. } => text.push_str(&t),
                Event::Done { usage: u, .. } => usage = Some(u),
                other => panic!("unexpected {other:?}"),
            }
        }
        (text, usage.expect("a Done event"))
    }

    #[test]
    fn a_token_whose_text_the_detokenizer_lost_is_not_counted() {
        // Regression: a failed detokenizer step dropped the token's text but still counted the
        // token in usage and vllm:generation_tokens_total; and because the detokenizer kept its
        // broken state, every later token failed the same way, so the client got no text at all
        // for a usage of 3.
        let tok = tokenizer();
        let registry = MetricsRegistry::new("m", 256);
        let sh = shared(registry.metrics.clone());
        let hello = tok.encode("Hello").unwrap();
        assert_eq!(hello.len(), 1);
        let (mut r, rx) = running(false);
        r.detok = Detokenizer::failing();
        let (text, usage) = generate(r, rx, &[hello[0], hello[0], 151645], &tok, &sh);
        // The first "Hello" is lost with the failure; the detokenizer starts afresh for the second;
        // the stop token counts as the finish reason it becomes.
        assert_eq!(text, "Hello");
        assert_eq!(usage.completion_tokens, 2);
        assert_eq!(registry.metrics.generation_tokens.get(), 2);
    }

    #[test]
    fn tokens_without_text_of_their_own_count_with_the_text_that_completes_them() {
        // A rare character is several byte-level tokens, none of them text alone. A special
        // token skipped in the output and an id the tokenizer does not know produce nothing
        // either. All count once the detokenizer has settled them, at the next text or at the
        // final flush.
        let tok = tokenizer();
        let registry = MetricsRegistry::new("m", 256);
        let sh = shared(registry.metrics.clone());
        let rare = ["𓂀", "🫠", "ꙮ", "𝔘", "🦩"]
            .into_iter()
            .find(|c| tok.encode(c).unwrap().len() >= 2)
            .expect("a character that takes several tokens");
        let mut tokens = vec![151644, 151_900];
        tokens.extend(tok.encode(rare).unwrap());
        tokens.extend(tok.encode("!").unwrap());
        let (r, rx) = running(false);
        let (text, usage) = generate(r, rx, &tokens, &tok, &sh);
        assert_eq!(text, format!("{rare}!"));
        assert_eq!(usage.completion_tokens, tokens.len());
        assert_eq!(
            registry.metrics.generation_tokens.get(),
            tokens.len() as u64
        );
    }

    #[test]
    fn suffix_prefix_hold_back() {
        assert_eq!(longest_suffix_prefix("hello wo", "world"), 2);
        assert_eq!(longest_suffix_prefix("hello", "xyz"), 0);
        assert_eq!(longest_suffix_prefix("ab", "abc"), 2);
        assert_eq!(longest_suffix_prefix("é", "éa"), 2);
    }

    #[test]
    fn tool_calls_count_as_stop_in_the_metric_label() {
        assert_eq!(
            FinishedReason::from(FinishReason::ToolCalls).label(),
            "stop"
        );
        assert_eq!(FinishedReason::from(FinishReason::Stop).label(), "stop");
        assert_eq!(FinishedReason::from(FinishReason::Length).label(), "length");
    }
}
