//! `cargo bench -p vramlab-memory`: how long a full memory report takes.
//! Target (issue 2): resnet50 at 3x224x224 in under 10 ms.

use std::time::Instant;

use vramlab_graph::{zoo, ModelOptions};
use vramlab_memory::{plan, PlanConfig, Profile};

fn median_ms(mut f: impl FnMut(), runs: usize) -> (f64, f64) {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    (t[runs / 2], t[runs * 9 / 10])
}

fn main() {
    println!("{:<52} {:>10} {:>10}", "case", "median ms", "p90 ms");
    for (name, input, batch, profile, timeline) in [
        ("resnet50", [3, 224, 224], 64, Profile::PytorchCuda, false),
        ("resnet50", [3, 224, 224], 64, Profile::PytorchCuda, true),
        ("resnet50", [3, 224, 224], 64, Profile::PytorchCpu, false),
        ("vgg16", [3, 224, 224], 64, Profile::PytorchCuda, false),
        (
            "mobilenet_v2",
            [3, 224, 224],
            64,
            Profile::PytorchCuda,
            false,
        ),
        ("simple_cnn", [3, 32, 32], 64, Profile::PytorchCuda, false),
    ] {
        let opts = ModelOptions {
            num_classes: None,
            input_shape: Some(input.to_vec()),
        };
        let (median, p90) = median_ms(
            || {
                // The whole report: build the graph, infer shapes, simulate two steps.
                let g = zoo::build(name, &opts).unwrap().infer().unwrap();
                let mut cfg = PlanConfig::new(batch);
                cfg.profile = profile;
                cfg.record_timeline = timeline;
                std::hint::black_box(plan(&g, &cfg).unwrap());
            },
            101,
        );
        let label = format!(
            "{name} {}x{}x{} batch {batch} {}{}",
            input[0],
            input[1],
            input[2],
            profile.name(),
            if timeline { " +timeline" } else { "" }
        );
        println!("{label:<52} {median:>10.3} {p90:>10.3}");
    }
}
