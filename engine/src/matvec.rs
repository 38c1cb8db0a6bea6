//! Batched matrix-vector products for decode steps on the CPU.
//!
//! A decode step multiplies a handful of token vectors (one per running sequence) by every weight
//! matrix. That work is bound by reading the weights, so batching only pays if each weight is read
//! once per step whatever the number of sequences. candle's CPU matmul (the `gemm` crate) does
//! that for one row, but for a few rows it packs the weight matrix on every call: at Qwen3-0.6B
//! shapes two rows of the LM head took 4–5× the one-row time, so two sequences decoded together
//! were slower than one after the other; and its one-row path streamed the weights at about half
//! the machine's read bandwidth. Here each weight row is loaded once and dotted with all
//! inputs while it sits in L1 (two rows then cost about one), rows are split over the rayon pool
//! candle already uses, and the inner loop is compiled for AVX-512 or AVX2+FMA when the CPU has
//! them (checked at run time). One row reaches about 90 % of the read bound this way. It is
//! compute-bound beyond a few rows, where the model switches to `(W · xᵀ)ᵀ`.

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
    const GROUP: usize = 4;
    let simd = Simd::detect();
    yt.par_chunks_mut(ROWS * m)
        .enumerate()
        .for_each(|(c, out)| {
            let r0 = c * ROWS;
            // Inputs in groups of four: a group (16 KiB at k = 1024) and the current weight row
            // stay in L1; the tile of weight rows is re-read from L2, not memory, per group.
            for g in (0..m).step_by(GROUP) {
                let ge = (g + GROUP).min(m);
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn dots_avx512(row: &[f32], xs: &[f32], k: usize, out: &mut [f32]) {
    dots_impl::<true>(row, xs, k, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dots_avx2(row: &[f32], xs: &[f32], k: usize, out: &mut [f32]) {
    dots_impl::<true>(row, xs, k, out)
}

fn dots(row: &[f32], xs: &[f32], k: usize, out: &mut [f32]) {
    dots_impl::<false>(row, xs, k, out)
}

/// `out[i] = row · xs[i]`. Thirty-two accumulator lanes (four AVX registers) per input; fixed-size
/// array views remove bounds checks so the loop vectorises; with `FMA` the multiply-adds are fused
/// (`mul_add` would be a slow libm call without it). The weight row stays in L1 while it is dotted
/// with every input of the group.
#[inline(always)]
fn dots_impl<const FMA: bool>(row: &[f32], xs: &[f32], k: usize, out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        let x = &xs[i * k..(i + 1) * k];
        let mut acc = [0f32; 32];
        let mut rc = row.chunks_exact(32);
        let mut xc = x.chunks_exact(32);
        for (a, b) in rc.by_ref().zip(xc.by_ref()) {
            let (Ok(a), Ok(b)) = (<&[f32; 32]>::try_from(a), <&[f32; 32]>::try_from(b)) else {
                unreachable!("chunks_exact(32) yields 32 elements")
            };
            for l in 0..32 {
                acc[l] = if FMA {
                    a[l].mul_add(b[l], acc[l])
                } else {
                    a[l] * b[l] + acc[l]
                };
            }
        }
        let mut s: f32 = acc.iter().sum();
        for (a, b) in rc.remainder().iter().zip(xc.remainder()) {
            s += a * b;
        }
        *o = s;
    }
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
