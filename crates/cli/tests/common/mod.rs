//! What the integration tests share.

#![allow(dead_code)]

use vramlab_engine::{Engine, OptimizerConfig};
use vramlab_graph::Shaped;
use vramlab_memory::{plan, Optimizer, PlanConfig, Profile};

/// Threads of the engine in the native == engine tests (the native profile's scratch
/// scales with them).
pub const THREADS: usize = 2;

/// Trains `g` in the engine for two steps on a fixed batch and holds every figure of
/// its measured memory to the native profile's plan, to the byte: the peak, its phase,
/// every category at the peak, before and after each step (overhead included). A
/// BatchNorm that sees one value per channel must fail in both, with PyTorch's words.
pub fn engine_equals_native_plan(
    label: &str,
    g: &Shaped,
    batch: usize,
    planner_optimizer: &Optimizer,
    engine_optimizer: &OptimizerConfig,
) {
    let mut cfg = PlanConfig::new(batch as u64);
    cfg.profile = Profile::Native;
    cfg.optimizer = planner_optimizer.clone();
    cfg.threads = THREADS;
    let planned = plan(g, &cfg);
    let mut e = Engine::new(g.clone(), engine_optimizer.clone(), 7, THREADS).unwrap();
    let per: usize = g.shapes[0].iter().product();
    let x = e
        .batch(
            (0..batch * per)
                .map(|i| ((i % 17) as f32) / 17.0 - 0.5)
                .collect(),
            batch,
        )
        .unwrap();
    let y = e.labels((0..batch).map(|i| (i % g.num_classes()) as i64).collect());
    let planned = match planned {
        Ok(p) => p,
        Err(err) => {
            let measured = e.train_step(&x, &y).unwrap_err();
            let want = "Expected more than 1 value per channel";
            assert!(measured.0.contains(want), "{label}: {measured}");
            assert!(err.to_string().contains(want), "{label}: {err}");
            return;
        }
    };
    for step in 0..2 {
        let r = e.train_step(&x, &y).unwrap();
        assert!(r.loss.is_finite(), "{label}: loss {}", r.loss);
        let (m, p, s) = (r.memory, &planned.steps[step], step + 1);
        assert_eq!(m.peak.bytes, p.peak_bytes, "{label} step {s}: peak");
        assert_eq!(m.peak.phase, p.peak_phase, "{label} step {s}: phase");
        assert_eq!(
            m.peak.at, p.at_peak,
            "{label} step {s}: categories at the peak"
        );
        assert_eq!(
            m.before_step, p.before_step,
            "{label} step {s}: before the step"
        );
        assert_eq!(
            m.after_step, p.after_step,
            "{label} step {s}: after the step"
        );
    }
}
