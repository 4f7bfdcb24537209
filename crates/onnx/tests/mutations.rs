//! What fuzz/fuzz_targets/onnx.rs checks, run in CI without cargo-fuzz: the fixtures with
//! bytes flipped, cut short or overwritten never panic the reader or the mapping.

use vramlab_onnx::{from_model, proto, Inplace, Options};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn check(bytes: &[u8]) {
    let Ok(m) = proto::decode_bytes(bytes) else {
        return;
    };
    for opts in [
        Options::default(),
        Options {
            inplace: Inplace::None,
            restore_bn: false,
        },
    ] {
        if let Ok(l) = from_model(&m, "mutated.onnx", "mutated", &opts) {
            if let Ok(s) = l.graph.infer() {
                let _ = (s.num_params(), s.macs(), s.buffer_bytes());
            }
        }
    }
}

#[test]
fn mutated_fixtures_never_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut decoded = 0;
    // VRAMLAB_MUTATIONS=100000 for a longer run than CI's.
    let rounds: usize = std::env::var("VRAMLAB_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    for name in [
        "simple_cnn_torchscript_train",
        "lenet5_dynamo_train_noopt",
        "tinyres_torchscript_train",
        "tinyres_dynamo_train_noopt",
        "unsupported_leakyrelu",
        "resnet18_dynamo_eval_fresh",
        "tinyres_mean_torchscript_opset13",
        "mobilenet_v2_torchscript_eval",
        "tiny_vit_torchscript_train",
        "attn_net_dynamo_train",
        "tiny_convnext_dynamo_train_noopt",
        "shufflenet_v2_x0_5_dynamo_train_noopt",
        "tiny_swin_v2_torchscript_train",
    ] {
        let original = std::fs::read(dir.join(format!("{name}.onnx"))).unwrap();
        check(&original);
        for cut in (0..original.len()).step_by(7) {
            check(&original[..cut]);
        }
        for _ in 0..rounds {
            let mut b = original.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len());
                match rng.below(3) {
                    0 => b[i] ^= 1 << rng.below(8),
                    1 => b[i] = rng.next() as u8,
                    _ => b[i] = [0x00, 0x7f, 0x80, 0xff][rng.below(4)],
                }
            }
            if proto::decode_bytes(&b).is_ok() {
                decoded += 1;
            }
            check(&b);
        }
    }
    // Many mutations still decode, so the mapping saw odd models too.
    assert!(decoded > 100, "{decoded}");
}
