//! Numeric kernels on plain slices, NCHW layout. Matrix products go through
//! `matrixmultiply`; the callers split work across threads with rayon.

pub use vramlab_isa::Tier;

/// `c[m x n] = alpha * a[m x k] * b[k x n] + beta * c`, each matrix given by its row and
/// column strides.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (isize, isize),
    b: &[f32],
    (rsb, csb): (isize, isize),
    c: &mut [f32],
    (rsc, csc): (isize, isize),
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if beta == 0.0 {
            c.iter_mut().for_each(|v| *v = 0.0);
        }
        return;
    }
    // SAFETY: the callers pass slices that hold every element the strides address:
    // a holds m*k, b k*n and c m*n elements laid out by those strides.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            rsc,
            csc,
        );
    }
}
