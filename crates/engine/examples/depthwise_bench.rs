//! The depthwise convolution kernels on mobilenet_v2's layers at 3x64x64 (16 samples, one
//! thread, the detected tier): `cargo run --release -p vramlab-engine --example
//! depthwise_bench`. A benchmark, not a test: compare figures measured in one run.

use std::time::Instant;
use vramlab_engine::ops::conv::{depthwise, ConvGeom};

fn main() {
    // (channels, side, stride) of each depthwise layer.
    let layers = [
        (32, 32, 1),
        (96, 32, 2),
        (144, 16, 1),
        (144, 16, 2),
        (192, 8, 1),
        (192, 8, 1),
        (192, 8, 2),
        (384, 4, 1),
        (384, 4, 1),
        (384, 4, 1),
        (384, 4, 1),
        (576, 4, 1),
        (576, 4, 1),
        (576, 4, 2),
        (960, 2, 1),
        (960, 2, 1),
        (960, 2, 1),
    ];
    let n = 16;
    let reps = 20;
    let tier = vramlab_isa::detected();
    let (mut total_f, mut total_b) = (0.0, 0.0);
    for &(c, side, s) in &layers {
        let ho = (side + 2 - 3) / s + 1;
        let g = ConvGeom {
            cin: c,
            h: side,
            w: side,
            cout: c,
            kh: 3,
            kw: 3,
            sh: s,
            sw: s,
            ph: 1,
            pw: 1,
            dh: 1,
            dw: 1,
            groups: c,
            ho,
            wo: ho,
        };
        let x: Vec<f32> = (0..n * c * side * side).map(|i| (i % 7) as f32).collect();
        let w: Vec<f32> = (0..c * 9).map(|i| (i % 5) as f32).collect();
        let dy: Vec<f32> = (0..n * c * ho * ho).map(|i| (i % 3) as f32).collect();
        let mut out = vec![0.0; n * c * ho * ho];
        let mut sf = vec![0.0; depthwise::depthwise_scratch(&g, false)];
        let mut sb = vec![0.0; depthwise::depthwise_scratch(&g, true)];
        let (mut gw, mut dx) = (vec![0.0; c * 9], vec![0.0; n * c * side * side]);
        let t = Instant::now();
        for _ in 0..reps {
            depthwise::depthwise_forward(tier, n, &x, &w, &g, &mut sf, &mut out);
        }
        let f = t.elapsed().as_secs_f64() / reps as f64;
        let t = Instant::now();
        for _ in 0..reps {
            depthwise::depthwise_backward(
                tier,
                n,
                &x,
                &w,
                &dy,
                &g,
                &mut sb,
                &mut gw,
                Some(&mut dx),
            );
        }
        let b = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{c:>4} channels {side:>2}x{side:<2} stride {s}: forward {:6.2} ms, backward {:6.2} ms",
            f * 1e3,
            b * 1e3
        );
        (total_f, total_b) = (total_f + f, total_b + b);
    }
    println!(
        "{tier:?}, {n} samples: forward {:.2} ms, backward {:.2} ms",
        total_f * 1e3,
        total_b * 1e3
    );
}
