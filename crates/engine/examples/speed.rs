//! Quick throughput probe: `cargo run --release -p vramlab-engine --example speed -- simple_cnn 64 2`
use std::time::Instant;
use vramlab_engine::{Engine, OptimizerConfig};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let model = a.get(1).map(String::as_str).unwrap_or("simple_cnn");
    let batch: usize = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let threads: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(2);
    let g = vramlab_graph::zoo::build(model, &Default::default())
        .unwrap()
        .infer()
        .unwrap();
    let per: usize = g.shapes[0].iter().product();
    let mut e = Engine::new(g, OptimizerConfig::named("adam", None).unwrap(), 0, threads).unwrap();
    let labels = e.labels((0..batch).map(|i| (i % 10) as i64).collect());
    let run = |n: usize, e: &mut Engine| {
        let t = Instant::now();
        for _ in 0..n {
            let x = e.batch(vec![0.1; batch * per], batch).unwrap();
            e.train_step(&x, &labels).unwrap();
        }
        t.elapsed().as_secs_f64()
    };
    run(5, &mut e);
    let steps = 40;
    let s = run(steps, &mut e);
    println!(
        "{model} batch {batch} threads {threads}: {:.0} images/s",
        (steps * batch) as f64 / s
    );
    let total: f64 = e.op_seconds.values().sum();
    let mut v: Vec<_> = e.op_seconds.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1));
    for (k, t) in v {
        println!("  {k:<28} {:>5.1} %", 100.0 * t / total);
    }
}
