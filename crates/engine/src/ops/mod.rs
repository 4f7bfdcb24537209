//! The engine's layers: one file per layer type, each with its forward and backward
//! kernels and the scratch buffers they declare ([`Scratch`]). A kernel allocates every
//! tensor through the [`Ctx`] (the engine's tracker, threads and instruction-set tier),
//! and its scratch exactly as declared: the planner's `native` profile
//! (`vramlab_memory`) plans a layer's scratch from the same declaration, so the two
//! cannot drift apart.
//!
//! What a layer keeps for backward (PyTorch's autograd record) is the layer's one
//! definition in `vramlab_graph`; its file here holds only how the engine computes it.

use std::rc::Rc;

use rayon::prelude::*;

use crate::kernels::{gemm, Tier};
use crate::tensor::{Category, Tensor, Tracker};

pub mod activation;
pub mod adaptive_avg_pool;
pub mod add;
pub mod attention;
pub mod avg_pool;
pub mod batch_norm;
pub mod channel_shuffle;
pub mod concat;
pub mod conv;
pub mod departition;
pub mod dropout;
pub mod layer_norm;
pub mod linear;
pub mod max_pool;
pub mod mul;
pub mod narrow;
pub mod param;
pub mod partition;
pub mod patch_merge;
pub mod permute;
pub mod rel_pos_attention;
pub mod select;
pub mod stochastic_depth;
pub mod tokens;
pub mod window_attention;

/// One scratch buffer a kernel declares: what it holds and its size in f32 values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    pub label: &'static str,
    pub floats: u128,
}

/// The scratch of one kernel call, in phases run one after another: a phase allocates
/// its buffers in order and frees them all at its end. The engine allocates exactly
/// this ([`Ctx::phase`]); the planner's native profile reads the same declaration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scratch {
    pub phases: Vec<Vec<Buffer>>,
}

impl Scratch {
    /// A declaration of one phase of `buffers` (those of zero floats left out).
    pub fn one(buffers: &[Buffer]) -> Scratch {
        let mut s = Scratch::default();
        s.push(buffers);
        s
    }

    /// Adds a phase of `buffers` (those of zero floats left out; no phase if none is left).
    pub fn push(&mut self, buffers: &[Buffer]) {
        let b: Vec<Buffer> = buffers.iter().copied().filter(|b| b.floats > 0).collect();
        if !b.is_empty() {
            self.phases.push(b);
        }
    }
}

/// A buffer of `floats` f32 values named `label`.
pub fn buffer(label: &'static str, floats: u128) -> Buffer {
    Buffer { label, floats }
}

/// Chunks a batch of `batch` samples is split into on `threads` threads: one scratch set
/// per chunk.
pub fn chunks(threads: usize, batch: usize) -> usize {
    threads.min(batch).max(1)
}

/// What a layer kernel may use of the engine: its tracker, its threads, and the
/// instruction-set tier its vector code runs.
pub(crate) struct Ctx<'a> {
    pub tracker: &'a Rc<Tracker>,
    pub pool: &'a rayon::ThreadPool,
    pub threads: usize,
    pub tier: Tier,
}

impl Ctx<'_> {
    pub fn zeros(&self, shape: &[usize]) -> Tensor {
        Tensor::zeros(self.tracker, shape, None)
    }

    /// A parameter's gradient (category gradients).
    pub fn grad(&self, shape: &[usize]) -> Tensor {
        Tensor::zeros(self.tracker, shape, Some(Category::Grads))
    }

    /// Chunks a batch of `b` samples is split into for the threads.
    pub fn chunks(&self, b: usize) -> usize {
        chunks(self.threads, b)
    }

    /// The buffers of phase `k` of a declaration, allocated in order (none where the
    /// declaration has no such phase); each is freed when dropped.
    pub fn phase(&self, s: &Scratch, k: usize) -> Held {
        let bufs = s.phases.get(k).map_or(&[][..], |p| &p[..]);
        Held(
            bufs.iter()
                .map(|b| {
                    // The engine's batch check bounds every buffer of a step.
                    let n = usize::try_from(b.floats).expect("a scratch size that fits memory");
                    (b.label, Tensor::zeros(self.tracker, &[n], None))
                })
                .collect(),
        )
    }

    /// `c[m x n] = a[m x k] * b` with `a`'s rows contiguous (`lda` apart), split by rows
    /// across the threads.
    #[allow(clippy::too_many_arguments)]
    pub fn rows_gemm(
        &self,
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        bs: (isize, isize),
        c: &mut [f32],
    ) {
        let rows = m.div_ceil(self.threads).max(1);
        self.pool.install(|| {
            c.par_chunks_mut(rows * n)
                .zip(a.par_chunks(rows * lda))
                .for_each(|(cc, ac)| {
                    let mr = cc.len() / n;
                    gemm(
                        mr,
                        k,
                        n,
                        ac,
                        (lda as isize, 1),
                        b,
                        bs,
                        cc,
                        (n as isize, 1),
                        0.0,
                    );
                });
        });
    }

    /// `w[n x k] = g^T * x` for `g` `[m x n]` and `x` `[m x k]`, both row-major: a weight
    /// gradient, split by the rows of `w` across the threads.
    pub fn weight_grad(&self, m: usize, n: usize, k: usize, g: &[f32], x: &[f32], w: &mut [f32]) {
        let rows = n.div_ceil(self.threads).max(1);
        self.pool.install(|| {
            w.par_chunks_mut(rows * k).enumerate().for_each(|(ci, wc)| {
                let nr = wc.len() / k;
                gemm(
                    nr,
                    m,
                    k,
                    &g[ci * rows..],
                    (1, n as isize),
                    x,
                    (k as isize, 1),
                    wc,
                    (k as isize, 1),
                    0.0,
                );
            });
        });
    }
}

/// The scratch buffers of one phase, held until dropped.
pub(crate) struct Held(Vec<(&'static str, Tensor)>);

impl Held {
    /// The buffer declared as `label`, which the kernel wants of `want` values (`None`:
    /// it wants none). A declaration that differs from what the kernel computes is a bug
    /// that would plan wrong bytes or compute on a short buffer: it panics.
    pub fn take(&mut self, label: &str, want: Option<usize>) -> Option<Tensor> {
        let got = self
            .0
            .iter()
            .position(|(l, _)| *l == label)
            .map(|i| self.0.remove(i).1);
        let len = got.as_ref().map(Tensor::numel);
        assert_eq!(
            len, want,
            "scratch `{label}`: declared {len:?} values, the kernel uses {want:?}"
        );
        got
    }

    /// The buffer declared as `label`, which the kernel wants of `len` values.
    pub fn need(&mut self, label: &str, len: usize) -> Tensor {
        self.take(label, Some(len))
            .unwrap_or_else(|| unreachable!("checked by take"))
    }
}

/// A view of the same storage with the same shape.
pub(crate) fn alias(x: &Tensor) -> Tensor {
    Tensor {
        buf: Rc::clone(&x.buf),
        shape: x.shape.clone(),
    }
}

/// Adds each row of `g` (rows of `n`) into `sum`.
pub(crate) fn column_sums(g: &[f32], n: usize, sum: &mut [f32]) {
    for row in g.chunks(n) {
        sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
}

/// The tiers this CPU runs, and a check that a tier the CPU has was covered: a test
/// over tiers cannot pass on a tier it skipped.
#[cfg(test)]
pub(crate) fn test_tiers() -> Vec<Tier> {
    let t = vramlab_isa::available();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            assert!(t.contains(&Tier::Avx2), "AVX2+FMA present but not tested");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            assert!(t.contains(&Tier::Avx512), "AVX-512 present but not tested");
        }
    }
    #[cfg(target_arch = "aarch64")]
    assert!(t.contains(&Tier::Neon), "NEON present but not tested");
    t
}

/// A tracker and a pool of two threads for the kernels' unit tests.
#[cfg(test)]
pub(crate) fn test_parts() -> (Rc<Tracker>, rayon::ThreadPool) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a pool");
    (Tracker::new(), pool)
}

/// The context of the kernels' unit tests (two threads, this CPU's tier).
#[cfg(test)]
pub(crate) fn test_ctx<'a>(tracker: &'a Rc<Tracker>, pool: &'a rayon::ThreadPool) -> Ctx<'a> {
    Ctx {
        tracker,
        pool,
        threads: 2,
        tier: vramlab_isa::active(),
    }
}

/// A tensor of `v` for the kernels' unit tests.
#[cfg(test)]
pub(crate) fn t(tr: &Rc<Tracker>, shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from_vec(tr, shape, v, None)
}
