//! The caching-allocator simulation inside a plan (pytorch-cuda): reserved memory,
//! fragmentation, the device total, and the out-of-memory boundary.

use vramlab_graph::{zoo, ModelOptions, Shaped};
use vramlab_memory::cuda_alloc::AllocConf;
use vramlab_memory::{plan, Mode, PlanConfig, Profile};

fn model(name: &str) -> Shaped {
    let (_, input) = zoo::describe(name).expect("a zoo model");
    let opts = ModelOptions {
        num_classes: None,
        input_shape: Some(input.to_vec()),
    };
    zoo::build(name, &opts).unwrap().infer().unwrap()
}

#[test]
fn reserved_is_at_least_allocated_on_every_zoo_model() {
    for name in zoo::NAMES {
        let g = model(name);
        for mode in [Mode::Train, Mode::Inference] {
            let mut cfg = PlanConfig::new(4);
            cfg.mode = mode;
            let r = plan(&g, &cfg).unwrap();
            let d = r
                .device
                .as_ref()
                .expect("pytorch-cuda simulates the allocator");
            // Train: steps 1, 2 and the steady-state step 3; inference: 1 and 2.
            assert_eq!(d.steps.len(), r.steps.len() + 1, "{name}");
            for s in &d.steps {
                assert!(s.allocated_peak_bytes > 0, "{name}");
                assert!(
                    s.reserved_peak_bytes >= s.allocated_peak_bytes,
                    "{name} step {}",
                    s.step
                );
                assert!(
                    s.reserved_at_allocated_peak_bytes >= s.allocated_peak_bytes,
                    "{name}"
                );
                assert!((0.0..1.0).contains(&s.fragmentation), "{name}");
                // Every block is a multiple of 512 B; segments of 2 MiB.
                assert_eq!(s.allocated_peak_bytes % 512, 0, "{name}");
                assert_eq!(s.reserved_peak_bytes % (2 << 20), 0, "{name}");
            }
            // The allocator counts at every malloc; the planner samples between ops, so
            // PyTorch's max_memory_allocated is at least the planner's peak.
            let planner = r.peak_bytes - r.context_bytes;
            assert!(
                d.allocated_peak_bytes >= planner,
                "{name}: {} < {planner}",
                d.allocated_peak_bytes
            );
            assert_eq!(
                d.device_total_bytes,
                d.cuda_context_bytes + d.reserved_peak_bytes
            );
            assert!(d.out_of_memory.is_none());
        }
    }
}

#[test]
fn steady_state_repeats_and_the_cache_is_reused() {
    let g = model("resnet18");
    let r = plan(&g, &PlanConfig::new(32)).unwrap();
    let d = r.device.unwrap();
    // Steps 2 and 3 allocate the same tensors; step 3 finds every segment it needs in
    // the cache that steps 1 and 2 left, so it reserves nothing more.
    let (s2, s3) = (&d.steps[1], &d.steps[2]);
    assert_eq!(s2.allocated_peak_bytes, s3.allocated_peak_bytes);
    assert_eq!(s2.reserved_peak_bytes, s3.reserved_peak_bytes);
    assert_eq!(s2.segments, s3.segments);
    assert_eq!(s3.reserved_at_allocated_peak_bytes, s3.reserved_peak_bytes);
    assert!(s3.fragmentation >= s2.fragmentation);
    // resnet18 has a Linear: the forward's and the backward's thread each take a cuBLAS
    // workspace, and its bias the cuBLASLt one; all are part of the allocator's count.
    assert_eq!(d.cublas_workspace_bytes, 2 * 8_519_680 + (1 << 20));
    // cuDNN's largest workspace (estimated): conv1's weight gradient, its input and
    // output and weight transposed, and 14 fp32 partial weights of split-K.
    let (input, output, weight) = (32 * 3 * 224 * 224 * 4, 32 * 64 * 112 * 112 * 4, 37_632);
    assert_eq!(
        d.cudnn_workspace_peak_bytes,
        input + output + weight + 14 * weight + 16
    );
}

/// A cuDNN workspace the allocator cannot serve is no error: PyTorch takes the next
/// plan (modelled as needing none), after the allocator has freed its cache and retried.
#[test]
fn a_workspace_the_allocator_cannot_serve_makes_cudnn_take_another_plan() {
    let g = model("resnet18");
    let mut none = PlanConfig::new(32);
    none.cudnn_workspace_bytes = Some(0);
    let without = plan(&g, &none).unwrap().device.unwrap();
    let with = plan(&g, &PlanConfig::new(32)).unwrap().device.unwrap();
    assert!(with.reserved_peak_bytes > without.reserved_peak_bytes);
    assert!(with.allocated_peak_bytes > without.allocated_peak_bytes);
    // Room for the tensors and not for the workspaces: the steps still run.
    let mut tight = PlanConfig::new(32);
    tight.device_limit_bytes = Some(without.reserved_peak_bytes);
    let d = plan(&g, &tight).unwrap().device.unwrap();
    assert!(d.out_of_memory.is_none(), "{:?}", d.out_of_memory);
    assert!(d.steps.iter().any(|s| s.alloc_retries > 0));
    assert!(d.reserved_peak_bytes <= without.reserved_peak_bytes);
}

#[test]
fn the_cpu_profile_has_no_device_report() {
    let g = model("simple_cnn");
    let mut cfg = PlanConfig::new(8);
    cfg.profile = Profile::PytorchCpu;
    assert!(plan(&g, &cfg).unwrap().device.is_none());
}

#[test]
fn a_device_limit_below_the_reserved_peak_is_an_out_of_memory_error() {
    let g = model("resnet18");
    let free = plan(&g, &PlanConfig::new(32)).unwrap().device.unwrap();
    let mut cfg = PlanConfig::new(32);
    cfg.device_limit_bytes = Some(free.reserved_peak_bytes);
    // Exactly the reserved peak: every request is served.
    assert!(plan(&g, &cfg)
        .unwrap()
        .device
        .unwrap()
        .out_of_memory
        .is_none());
    // Below what must be allocated at once: a request fails.
    cfg.device_limit_bytes = Some(free.allocated_peak_bytes - (1 << 20));
    let oom = plan(&g, &cfg)
        .unwrap()
        .device
        .unwrap()
        .out_of_memory
        .unwrap();
    assert!(oom.requested_bytes > 0);
    assert!(oom.reserved_bytes <= free.allocated_peak_bytes);
}

#[test]
fn expandable_segments_reserve_less_than_separate_segments() {
    let g = model("resnet50");
    let mut cfg = PlanConfig::new(16);
    let plain = plan(&g, &cfg).unwrap().device.unwrap();
    cfg.alloc_conf = AllocConf::parse("expandable_segments:True").unwrap();
    let exp = plan(&g, &cfg).unwrap().device.unwrap();
    assert_eq!(exp.alloc_conf, "expandable_segments:True");
    assert!(exp.reserved_peak_bytes <= plain.reserved_peak_bytes);
    assert!(exp.reserved_peak_bytes >= exp.allocated_peak_bytes);
    // Allocated differs only by blocks handed out whole versus split exactly.
    assert!(exp.allocated_peak_bytes <= plain.allocated_peak_bytes);
}

#[test]
fn device_fit_returns_a_batch_that_runs_and_one_more_does_not() {
    use vramlab_memory::device_fit::{device_fit, DeviceBudget};
    let g = model("resnet18");
    let budget = DeviceBudget {
        card_total_bytes: 4 << 30,
        card_total_source: "test".into(),
        fraction: 1.0,
    };
    let template = PlanConfig::new(1);
    let d = device_fit(&g, &template, &budget).unwrap();
    let b = d.max_batch_size.expect("resnet18 trains in 4 GiB");
    // The card less the CUDA context: cuDNN's workspaces are requests to the
    // allocator like any other.
    assert_eq!(d.allocator_limit_bytes, (4 << 30) - (666 << 20));
    let run = |batch: u64| {
        let mut c = template.clone();
        c.batch_size = batch;
        c.device_limit_bytes = Some(d.allocator_limit_bytes);
        plan(&g, &c).unwrap().device.unwrap()
    };
    let at = run(b);
    assert!(at.out_of_memory.is_none());
    assert_eq!(Some(at.reserved_peak_bytes), d.reserved_peak_bytes);
    assert!(at.reserved_peak_bytes <= d.allocator_limit_bytes);
    assert!(run(b + 1).out_of_memory.is_some());
    assert!(d.out_of_memory_above.is_some());
    // The planner's peak alone would allow at least as much: the allocator's answer is
    // never above it.
    let planner =
        vramlab_memory::fit::max_batch(&g, &template, d.allocator_limit_bytes + (666 << 20))
            .unwrap()
            .unwrap()
            .0;
    assert!(b <= planner, "{b} > {planner}");
    // A per-process fraction caps what the allocator may reserve.
    let half = device_fit(
        &g,
        &template,
        &DeviceBudget {
            fraction: 0.5,
            ..budget
        },
    )
    .unwrap();
    assert_eq!(half.allowed_memory_bytes, Some(2 << 30));
    assert!(half.max_batch_size.unwrap() < b);
    assert!(half.reserved_peak_bytes.unwrap() <= 2 << 30);
}

#[test]
fn device_fit_names_the_failing_request_when_nothing_runs() {
    use vramlab_memory::device_fit::{device_fit, DeviceBudget};
    let g = model("vgg16");
    let budget = DeviceBudget {
        card_total_bytes: 2 << 30,
        card_total_source: "test".into(),
        fraction: 1.0,
    };
    let d = device_fit(&g, &PlanConfig::new(1), &budget).unwrap();
    assert_eq!(d.max_batch_size, None);
    // vgg16's 528 MB of weights, gradients and Adam's two moments do not fit in 1.44 GiB.
    let oom = d
        .out_of_memory_above
        .expect("the failing request at batch 1");
    assert_eq!(oom.step, 1);
    assert_eq!(oom.layer, "optimizer.step");
}

#[test]
fn the_timeline_carries_the_allocators_allocated_and_reserved() {
    let g = model("resnet18");
    let mut cfg = PlanConfig::new(16);
    cfg.record_timeline = true;
    let r = plan(&g, &cfg).unwrap();
    let tl = r.timeline.unwrap();
    let d = r.device.unwrap();
    let mut top = (0, 0);
    for p in &tl {
        let (a, res) = (p.allocated.unwrap(), p.reserved.unwrap());
        // Segments hold at least the blocks handed out; blocks are rounded up.
        assert!(res >= a && a + r.context_bytes >= p.bytes, "{p:?}");
        top = (top.0.max(a), top.1.max(res));
    }
    // The timeline covers steps 1 and 2: its highest points are their peaks.
    let steps = &d.steps[..2];
    assert_eq!(
        top.0,
        steps.iter().map(|s| s.allocated_peak_bytes).max().unwrap()
    );
    assert_eq!(
        top.1,
        steps.iter().map(|s| s.reserved_peak_bytes).max().unwrap()
    );
    // The CPU profile has no allocator: no such figures.
    cfg.profile = Profile::PytorchCpu;
    let tl = plan(&g, &cfg).unwrap().timeline.unwrap();
    assert!(tl
        .iter()
        .all(|p| p.allocated.is_none() && p.reserved.is_none()));
}
