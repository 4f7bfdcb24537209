//! Splits a convolution's time into im2col and gemm (simple_cnn conv1 and conv2 shapes).
use std::time::Instant;
use vramlab_engine::isa;
use vramlab_engine::kernels::gemm;
use vramlab_engine::ops::conv::direct::{
    conv_direct, conv_wgrad_direct, direct_row, direct_weight_len, direct_weights, direct_wgrad,
    pad_planes,
};
use vramlab_engine::ops::conv::im2col::im2col;
use vramlab_engine::ops::conv::ConvGeom;

fn main() {
    let tier = isa::active();
    println!("tier {tier} (VRAMLAB_ISA forces it down)");
    for (cin, h, cout) in [(3usize, 32usize, 6usize), (6, 14, 16)] {
        let g = ConvGeom {
            cin,
            h,
            w: h,
            cout,
            kh: 5,
            kw: 5,
            sh: 1,
            sw: 1,
            ph: 0,
            pw: 0,
            dh: 1,
            dw: 1,
            groups: 1,
            ho: h - 4,
            wo: h - 4,
        };
        let (k, hw) = (g.k(), g.hw_out());
        let x = vec![0.5f32; cin * h * h];
        let w = vec![0.1f32; cout * k];
        let mut col = vec![0f32; k * hw];
        let mut out = vec![0f32; cout * hw];
        let n = 2000;
        let t = Instant::now();
        for _ in 0..n {
            im2col(&x, &g, 0, &mut col);
        }
        let ti = t.elapsed().as_secs_f64() / n as f64;
        let t = Instant::now();
        for _ in 0..n {
            gemm(
                cout,
                k,
                hw,
                &w,
                (k as isize, 1),
                &col,
                (hw as isize, 1),
                &mut out,
                (hw as isize, 1),
                0.0,
            );
        }
        let tg = t.elapsed().as_secs_f64() / n as f64;
        let t = Instant::now();
        for _ in 0..n {
            gemm(
                hw,
                k,
                cout,
                &col,
                (1, hw as isize),
                &w,
                (1, k as isize),
                &mut out,
                (1, hw as isize),
                0.0,
            );
        }
        let tt = t.elapsed().as_secs_f64() / n as f64;
        println!("cin {cin} cout {cout} {h}x{h}: im2col {:.1} us, gemm {:.1} us ({:.1} GFLOP/s), transposed gemm {:.1} us ({:.1} GFLOP/s)", ti * 1e6, tg * 1e6, 2.0 * (cout * k * hw) as f64 / tg / 1e9, tt * 1e6, 2.0 * (cout * k * hw) as f64 / tt / 1e9);
        if tier.direct_tile().is_none() {
            continue;
        }
        let (hp, wp) = (h, direct_row(g.wo, 5));
        let mut xp = vec![0f32; cin * hp * wp];
        let mut wb = vec![0f32; direct_weight_len(tier, cout, cin, 5, 5)];
        direct_weights(tier, &w, cout, cin, 5, 5, false, &mut wb);
        let t = Instant::now();
        for _ in 0..n {
            pad_planes(&x, cin, h, h, 0, 0, hp, wp, &mut xp);
            conv_direct(
                tier, &xp, cin, hp, wp, &wb, cout, 5, 5, &mut out, g.ho, g.wo,
            );
        }
        let td = t.elapsed().as_secs_f64() / n as f64;
        let macs = (cout * k * hw) as f64;
        println!(
            "  direct on {tier} (padding copy included): {:.1} us ({:.1} GFLOP/s)",
            td * 1e6,
            2.0 * macs / td / 1e9
        );
        if direct_wgrad(tier) {
            let dy = vec![0.25f32; cout * hw];
            let mut pw = vec![0f32; cout * k];
            let t = Instant::now();
            for _ in 0..n {
                pad_planes(&x, cin, h, h, 0, 0, hp, wp, &mut xp);
                conv_wgrad_direct(tier, &xp, cin, hp, wp, &dy, cout, g.ho, g.wo, 5, 5, &mut pw);
            }
            let tw = t.elapsed().as_secs_f64() / n as f64;
            println!(
                "  weight gradient on {tier} (padding copy included): {:.1} us ({:.1} GFLOP/s)",
                tw * 1e6,
                2.0 * macs / tw / 1e9
            );
        }
    }
}
