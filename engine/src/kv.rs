//! KV-cache accounting in blocks, as vLLM counts it, kept equal to the memory the caches hold.
//!
//! The budget is a whole number of blocks of `block_size` tokens: `--kv-cache-tokens /
//! --block-size`, rounded down, so the caches never get more memory than the flag allows
//! ([`KvBudget`]). Three numbers are kept true:
//!
//! - **Admission** reserves the blocks a sequence can ever fill: its prompt plus `max_tokens - 1`
//!   generated tokens (the last sampled token is never fed back to the model), capped by the
//!   context, rounded up to whole blocks ([`KvBudget::blocks_for`]). A request starts only when its
//!   reservation fits next to those of the running sequences, so the caches can never outgrow the
//!   budget, and there is no preemption to undo.
//! - **Allocation** ([`CachePlan`]): each sequence's cache grows by doubling its capacity, in whole
//!   blocks, clamped to its reservation, so appends stay amortised copies and the last growth lands
//!   exactly on the reserved blocks. A cache is never larger than its reservation.
//! - **Usage** (`vllm:kv_cache_usage_perc`) is the capacity the caches hold right now, in blocks,
//!   over the budget: memory allocated (capacity × bytes per token), not tokens written. It is at
//!   most the reserved fraction, and 0 when nothing runs.
//!
//! The worst case is therefore `num_blocks × block_size × bytes per token`, plus, for the instant
//! a cache grows, the old copy of one layer of one sequence (the new buffer is filled from it, then
//! it is freed). The startup log prints that figure.

/// vLLM's default `--block-size`, in tokens; ours too.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// The KV budget: `num_blocks` blocks of `block_size` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvBudget {
    pub block_size: usize,
    pub num_blocks: usize,
}

impl KvBudget {
    /// The whole blocks that `kv_cache_tokens` holds (rounded down). `block_size` must be at least
    /// 1 (the scheduler's configuration checks it).
    pub fn new(kv_cache_tokens: usize, block_size: usize) -> Self {
        let block_size = block_size.max(1);
        Self {
            block_size,
            num_blocks: kv_cache_tokens / block_size,
        }
    }

    /// Blocks that hold `tokens` (rounded up).
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Tokens the whole budget holds.
    pub fn tokens(&self) -> usize {
        self.num_blocks * self.block_size
    }
}

/// The most tokens a sequence's cache will hold: the prompt, then every generated token but the
/// last (generation ends on sampling it, before it would be fed), never past the context.
pub fn max_cached_tokens(prompt: usize, max_tokens: usize, max_model_len: usize) -> usize {
    (prompt + max_tokens.max(1) - 1)
        .min(max_model_len.saturating_sub(1))
        .max(prompt)
}

/// How one sequence's cache grows: whole blocks, doubling, never past `max_capacity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePlan {
    block_size: usize,
    max_capacity: usize,
}

impl CachePlan {
    /// A cache for at most `max_tokens` tokens, allocated in blocks of `block_size`.
    pub fn new(block_size: usize, max_tokens: usize) -> Self {
        let block_size = block_size.max(1);
        Self {
            block_size,
            max_capacity: max_tokens.div_ceil(block_size) * block_size,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The capacity this cache can reach: its reservation, in tokens.
    pub fn max_capacity(&self) -> usize {
        self.max_capacity
    }

    /// The capacity to hold `need` tokens when `current` are allocated: `current` if they fit,
    /// else twice `current` (or `need`, if more), rounded up to whole blocks and clamped to
    /// [`Self::max_capacity`]. `None` when `need` is beyond the reservation.
    pub fn grow(&self, current: usize, need: usize) -> Option<usize> {
        if need <= current {
            return Some(current);
        }
        if need > self.max_capacity {
            return None;
        }
        let want = (2 * current).max(need).div_ceil(self.block_size) * self.block_size;
        Some(want.min(self.max_capacity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_whole_blocks_rounded_down() {
        let b = KvBudget::new(1000, 16);
        assert_eq!(b.num_blocks, 62);
        assert_eq!(b.tokens(), 992);
        assert_eq!(b.blocks_for(0), 0);
        assert_eq!(b.blocks_for(1), 1);
        assert_eq!(b.blocks_for(16), 1);
        assert_eq!(b.blocks_for(17), 2);
    }

    #[test]
    fn a_sequence_caches_its_prompt_and_all_but_its_last_token() {
        assert_eq!(max_cached_tokens(10, 1, 256), 10);
        assert_eq!(max_cached_tokens(10, 5, 256), 14);
        // The context ends generation first.
        assert_eq!(max_cached_tokens(10, 500, 256), 255);
        // A prompt is always cached whole.
        assert_eq!(max_cached_tokens(300, 5, 256), 300);
    }

    #[test]
    fn caches_grow_by_doubling_in_whole_blocks_up_to_the_reservation() {
        let p = CachePlan::new(16, 100);
        assert_eq!(p.max_capacity(), 112);
        assert_eq!(p.grow(0, 9), Some(16));
        assert_eq!(p.grow(16, 16), Some(16));
        assert_eq!(p.grow(16, 17), Some(32));
        assert_eq!(p.grow(32, 33), Some(64));
        // The last growth lands on the reservation, not on the next power of two.
        assert_eq!(p.grow(64, 65), Some(112));
        assert_eq!(p.grow(112, 100), Some(112));
        assert_eq!(p.grow(112, 113), None);
        // A prompt chunk larger than twice the capacity gets what it needs, in whole blocks.
        assert_eq!(p.grow(16, 70), Some(80));
    }
}
