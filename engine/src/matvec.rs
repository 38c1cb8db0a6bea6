//! Batched matrix-vector products for decode steps on the CPU.
//!
//! A decode step multiplies a handful of token vectors (one per running sequence) by every weight
//! matrix. That work is bound by reading the weights, so batching only pays if each weight is read
//! once per step whatever the number of sequences. candle's CPU matmul (the `gemm` crate) does
//! that for one row, but for a few rows it packs the weight matrix on every call: at Qwen3-0.6B
//! shapes two rows of the LM head took 4–5× the one-row time, so two sequences decoded together
//! were slower than one after the other; and its one-row path streamed the weights at about half
//! the machine's read bandwidth. Here each 32-float chunk of a weight row is loaded once into
//! registers and multiplied into the accumulators of every input (up to eight with AVX-512, four
//! with AVX2), the weight 4 KiB ahead is prefetched, rows are split over the rayon pool candle
//! already uses, and the inner loop is compiled for AVX-512 or AVX2+FMA when the CPU has them
//! (checked at run time). On a 1 GiB matrix one row streams at the machine's full read rate and
//! four rows take about 1.2× one row's time (`qwen3-bench`'s kernel table). The model uses it for
//! up to 16 rows; beyond that it switches to `(W · xᵀ)ᵀ` and GEMM.

use candle_core::{Device, Storage, Tensor};
use rayon::prelude::*;

/// `x · Wᵀ` for `x` of shape `(m, k)` and `w` of shape `(n, k)` (the checkpoint layout), f32 on
/// the CPU. Returns `(m, n)`.
pub fn matmul_wt(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let (m, k) = x.dims2()?;
    let (n, k2) = w.dims2()?;
    if k != k2 {
        candle_core::bail!("matmul_wt: x is {m}x{k} but w is {n}x{k2}");
    }
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (Storage::Cpu(xs), Storage::Cpu(ws)) = (&*xs, &*ws) else {
        candle_core::bail!("matmul_wt: CPU tensors only");
    };
    let xv = &xs.as_slice::<f32>()?[xl.start_offset()..xl.start_offset() + m * k];
    let wv = &ws.as_slice::<f32>()?[wl.start_offset()..wl.start_offset() + n * k];
    // Output transposed, (n, m): each task writes whole weight rows' results.
    let mut yt = vec![0f32; n * m];
    const ROWS: usize = 32;
    let simd = Simd::detect();
    yt.par_chunks_mut(ROWS * m)
        .enumerate()
        .for_each(|(c, out)| {
            let r0 = c * ROWS;
            // Inputs in groups (eight with AVX-512, else four): a group (16–32 KiB at k = 1024)
            // and the current weight row stay in L1; the tile of weight rows is re-read from L2,
            // not memory, per group.
            for g in (0..m).step_by(simd.group()) {
                let ge = (g + simd.group()).min(m);
                let xg = &xv[g * k..ge * k];
                for (r, o) in out.chunks_mut(m).enumerate() {
                    let row = &wv[(r0 + r) * k..(r0 + r + 1) * k];
                    let o = &mut o[g..ge];
                    match simd {
                        // SAFETY: the CPU supports AVX-512F and FMA (checked by `Simd::detect`).
                        #[cfg(target_arch = "x86_64")]
                        Simd::Avx512 => unsafe { dots_avx512(row, xg, k, o) },
                        // SAFETY: the CPU supports AVX2 and FMA (checked by `Simd::detect`).
                        #[cfg(target_arch = "x86_64")]
                        Simd::Avx2 => unsafe { dots_avx2(row, xg, k, o) },
                        Simd::Scalar => dots(row, xg, k, o),
                    }
                }
            }
        });
    Tensor::from_vec(yt, (n, m), &Device::Cpu)?
        .t()?
        .contiguous()
}

/// The widest inner loop this CPU runs, checked at run time (the binary is built for baseline
/// x86-64).
#[derive(Clone, Copy)]
enum Simd {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Scalar,
}

impl Simd {
    /// Inputs the kernel takes per pass over a weight row.
    fn group(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => GROUP_AVX512,
            _ => GROUP,
        }
    }

    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
                return Self::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Self::Avx2;
            }
        }
        Self::Scalar
    }
}

/// How far ahead of the chunk being multiplied the weight is prefetched, in floats (4 KiB).
/// The rows of a task are adjacent in memory, so near a row's end this fetches the start of the
/// next one. Measured on a 1 GiB matrix (`qwen3-bench`'s kernel table, Sapphire Rapids VM): one
/// row 82 -> 69 ms, four rows 118 -> 83 ms; 1 KiB ahead helped less, 16 KiB no more.
const PREFETCH_AHEAD: usize = 1024;

/// Asks for the cache line `PREFETCH_AHEAD` floats past `row[j]` (a hint: it never faults, and
/// the address is only computed, so it may lie past the slice). Also the read bound's prefetch in
/// `qwen3-bench`, so the bound and the kernel read the same way.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn prefetch(row: &[f32], j: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let p = row.as_ptr().wrapping_add(j + PREFETCH_AHEAD);
    // SAFETY: a prefetch reads nothing the program sees and cannot fault, whatever the address.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) };
}

/// Inputs dotted with one weight row per pass over it: AVX-512's 32 registers hold eight
/// inputs' accumulators (16) and the weight chunk; AVX2's 16 registers hold four.
const GROUP_AVX512: usize = 8;
const GROUP: usize = 4;

/// `out[i] = row · xs[i]` for the up to [`GROUP_AVX512`] inputs in `xs` (`out.len()` of them, `k`
/// each), with AVX-512.
///
/// Each 32-float chunk of the weight row is loaded once (two registers) and multiplied into every
/// input's two accumulators, so a group of four runs eight independent multiply-add chains and the
/// weight is read from L1 once, not once per input; the weight 4 KiB ahead is prefetched.
/// (Dotting the row with each input in turn, as this kernel first did, reloads the weight per
/// input and leaves two dependent chains per input; four rows then took about twice one row's
/// time.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn dots_avx512(row: &[f32], xs: &[f32], k: usize, out: &mut [f32]) {
    match out.len() {
        1 => dots_avx512_n::<1>(row, xs, k, out),
        2 => dots_avx512_n::<2>(row, xs, k, out),
        3 => dots_avx512_n::<3>(row, xs, k, out),
        4 => dots_avx512_n::<4>(row, xs, k, out),
        5 => dots_avx512_n::<5>(row, xs, k, out),
        6 => dots_avx512_n::<6>(row, xs, k, out),
        7 => dots_avx512_n::<7>(row, xs, k, out),
        _ => dots_avx512_n::<GROUP_AVX512>(row, xs, k, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn dots_avx512_n<const N: usize>(row: &[f32], xs: &[f32], k: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let inputs: [&[f32]; N] = std::array::from_fn(|i| &xs[i * k..(i + 1) * k]);
    let whole = k - k % 32;
    let mut acc = [[_mm512_setzero_ps(); 2]; N];
    let mut j = 0;
    while j < whole {
        // SAFETY: j + 32 <= whole <= k, the length of `row` and of every input slice.
        unsafe {
            let w0 = _mm512_loadu_ps(row.as_ptr().add(j));
            let w1 = _mm512_loadu_ps(row.as_ptr().add(j + 16));
            prefetch(row, j);
            prefetch(row, j + 16);
            for (a, x) in acc.iter_mut().zip(&inputs) {
                a[0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x.as_ptr().add(j)), a[0]);
                a[1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x.as_ptr().add(j + 16)), a[1]);
            }
        }
        j += 32;
    }
    for ((o, a), x) in out.iter_mut().zip(&acc).zip(&inputs) {
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]));
        for (w, x) in row[whole..].iter().zip(&x[whole..]) {
            s += w * x;
        }
        *o = s;
    }
}

/// [`dots_avx512`] with AVX2: 16-float chunks, so a group's eight accumulators and the weight
/// chunk fit AVX2's sixteen registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dots_avx2(row: &[f32], xs: &[f32], k: usize, out: &mut [f32]) {
    match out.len() {
        1 => dots_avx2_n::<1>(row, xs, k, out),
        2 => dots_avx2_n::<2>(row, xs, k, out),
        3 => dots_avx2_n::<3>(row, xs, k, out),
        _ => dots_avx2_n::<GROUP>(row, xs, k, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dots_avx2_n<const N: usize>(row: &[f32], xs: &[f32], k: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let inputs: [&[f32]; N] = std::array::from_fn(|i| &xs[i * k..(i + 1) * k]);
    let whole = k - k % 16;
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    let mut j = 0;
    while j < whole {
        // SAFETY: j + 16 <= whole <= k, the length of `row` and of every input slice.
        unsafe {
            let w0 = _mm256_loadu_ps(row.as_ptr().add(j));
            let w1 = _mm256_loadu_ps(row.as_ptr().add(j + 8));
            prefetch(row, j);
            for (a, x) in acc.iter_mut().zip(&inputs) {
                a[0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x.as_ptr().add(j)), a[0]);
                a[1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.as_ptr().add(j + 8)), a[1]);
            }
        }
        j += 16;
    }
    for ((o, a), x) in out.iter_mut().zip(&acc).zip(&inputs) {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds the eight floats an unaligned 256-bit store writes.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(a[0], a[1])) };
        let mut s: f32 = lanes.iter().sum();
        for (w, x) in row[whole..].iter().zip(&x[whole..]) {
            s += w * x;
        }
        *o = s;
    }
}

/// Portable fallback: each input dotted with the row in turn.
fn dots(row: &[f32], xs: &[f32], k: usize, out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot(row, &xs[i * k..(i + 1) * k]);
    }
}

/// `a · b` in sixteen accumulator lanes, which the compiler vectorises for the baseline target:
/// the portable kernel, and one decode token's attention scores (`qwen3.rs`).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (mut ac, mut bc) = (a.chunks_exact(16), b.chunks_exact(16));
    for (x, y) in ac.by_ref().zip(bc.by_ref()) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ac.remainder().iter().zip(bc.remainder()) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_candle_matmul_for_odd_shapes() {
        let dev = Device::Cpu;
        for (m, k, n) in [
            (1, 16, 5),
            (3, 37, 70),
            (8, 64, 33),
            (5, 1024, 96),
            (6, 13, 40),
            (16, 96, 70),
            (11, 1030, 33),
        ] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let a = matmul_wt(&x, &w).unwrap();
            let b = x.matmul(&w.t().unwrap()).unwrap();
            let d = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-3, "{m}x{k}x{n}: {d}");
        }
    }
}
