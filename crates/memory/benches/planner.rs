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
    let opts = ModelOptions {
        num_classes: None,
        input_shape: Some(vec![3, 224, 224]),
    };
    let (m, _) = median_ms(
        || {
            std::hint::black_box(zoo::build("resnet50", &opts).unwrap().infer().unwrap());
        },
        101,
    );
    let g = zoo::build("resnet50", &opts).unwrap().infer().unwrap();
    let (p, _) = median_ms(
        || {
            std::hint::black_box(plan(&g, &PlanConfig::new(64)).unwrap());
        },
        101,
    );
    println!("resnet50: build+infer {m:.3} ms, plan alone {p:.3} ms");
    let (f, f90) = median_ms(
        || {
            let g = zoo::build("resnet50", &opts).unwrap().infer().unwrap();
            let card = vramlab_memory::fit::find_gpu("h100").unwrap().memory_bytes;
            let r = vramlab_memory::fit::fit(&g, &PlanConfig::new(1), card, 0.8, None).unwrap();
            std::hint::black_box(r);
        },
        51,
    );
    println!("fit resnet50 3x224x224 --gpu h100 (issue 5, target < 10 ms): median {f:.3} ms, p90 {f90:.3} ms");
    let (d, d90) = median_ms(
        || {
            let g = zoo::build("resnet50", &opts).unwrap().infer().unwrap();
            let budget = vramlab_memory::device_fit::DeviceBudget {
                card_total_bytes: 81_559 << 20,
                card_total_source: String::new(),
                fraction: 1.0,
            };
            let r = vramlab_memory::device_fit::device_fit(&g, &PlanConfig::new(1), &budget);
            std::hint::black_box(r.unwrap());
        },
        51,
    );
    println!("  + the allocator's answer (issue 10, device_fit on h100): median {d:.3} ms, p90 {d90:.3} ms");
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
