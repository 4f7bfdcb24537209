//! `vramlab tour`: the memory lesson end to end, with no download. It prints the six
//! numbers the lesson prints, exactly as it prints them (MB = 1024*1024 B), then what
//! the lesson leaves out: gradients, activations and the real peak.

use clap::Args;
use serde::Serialize;
use vramlab_graph::{zoo, ModelOptions};
use vramlab_memory::{plan, Optimizer, OptimizerKind, PlanConfig, Profile};

use crate::fmt::{bytes, thousands, Table};
use crate::lang::{s as tr, t, Lang};
use crate::{print_json, Result};

#[derive(Args)]
pub struct TourArgs {
    /// Print the lesson's numbers and the planner's as JSON.
    #[arg(long)]
    json: bool,
    /// The global --lang, set by `main`.
    #[arg(skip)]
    pub lang: Lang,
}

const MB: f64 = 1024.0 * 1024.0;
const KB: f64 = 1024.0;

#[derive(Serialize)]
struct TourPeak {
    batch_size: u64,
    profile: &'static str,
    step: u32,
    peak_bytes: u128,
    peak_phase: String,
    peak_at: String,
    grads: u128,
    optimizer_state: u128,
    data_batch: u128,
    activations: u128,
    temporaries: u128,
}

#[derive(Serialize)]
struct TourJson {
    num_params: u128,
    param_bytes: u128,
    adam_state_bytes: u128,
    image_bytes: u128,
    batch4_bytes: u128,
    batch64_bytes: u128,
    lesson_lines: Vec<String>,
    activation_bytes_per_image: u128,
    peaks: Vec<TourPeak>,
}

pub fn run(a: &TourArgs) -> Result<()> {
    let g = zoo::build("simple_cnn", &ModelOptions::default())?.infer()?;
    let num_params = g.num_params();
    let param_bytes = num_params * 4;
    let adam_state = 2 * param_bytes;
    let image = g.numel(0) * 4;
    let l = a.lang;
    let lesson_lines = vec![
        t(l, "Total parameters: {0}", &[&num_params]),
        t(
            l,
            "Parameter memory: {0} MB",
            &[&format!("{:.2}", param_bytes as f64 / MB)],
        ),
        t(
            l,
            "Adam optimizer state: {0} MB",
            &[&format!("{:.2}", adam_state as f64 / MB)],
        ),
        t(
            l,
            "One image: {0} KB",
            &[&format!("{:.2}", image as f64 / KB)],
        ),
        t(
            l,
            "Batch of 4: {0} KB",
            &[&format!("{:.2}", (4 * image) as f64 / KB)],
        ),
        t(
            l,
            "Batch of 64: {0} MB",
            &[&format!("{:.2}", (64 * image) as f64 / MB)],
        ),
    ];
    let mut peaks = Vec::new();
    for profile in [Profile::PytorchCpu, Profile::PytorchCuda] {
        for batch in [4u64, 64] {
            let mut cfg = PlanConfig::new(batch);
            cfg.profile = profile;
            cfg.optimizer = Optimizer::new(OptimizerKind::Adam);
            let r = plan(&g, &cfg)?;
            let s = r
                .steps
                .iter()
                .max_by_key(|s| s.peak_bytes)
                .expect("two steps");
            peaks.push(TourPeak {
                batch_size: batch,
                profile: profile.name(),
                step: s.step,
                peak_bytes: s.peak_bytes,
                peak_phase: s.peak_phase.to_string(),
                peak_at: s.peak_at.clone(),
                grads: s.at_peak.grads,
                optimizer_state: s.at_peak.optimizer_state,
                data_batch: s.at_peak.data_batch,
                activations: s.at_peak.activations,
                temporaries: s.at_peak.temporaries,
            });
        }
    }
    let per_image = {
        let mut cfg = PlanConfig::new(1);
        cfg.profile = Profile::PytorchCpu;
        vramlab_memory::saved_for_backward(&g, &cfg)?
            .iter()
            .sum::<u128>()
    };
    let json = TourJson {
        num_params,
        param_bytes,
        adam_state_bytes: adam_state,
        image_bytes: image,
        batch4_bytes: 4 * image,
        batch64_bytes: 64 * image,
        lesson_lines,
        activation_bytes_per_image: per_image,
        peaks,
    };
    if a.json {
        return print_json(&json);
    }
    print!("{}", render(&json, a.lang));
    Ok(())
}

fn render(j: &TourJson, l: Lang) -> String {
    let mut o = String::new();
    let line = |o: &mut String, text: String| {
        o.push_str(&text);
        o.push('\n');
    };
    line(
        &mut o,
        tr(
            l,
            "vramlab tour: how much memory does training take, and where does it go?",
        ),
    );
    o.push('\n');
    line(&mut o, tr(l, "1. Image formats"));
    o.push('\n');
    line(&mut o, tr(l, "An image is a tensor of channels x height x width. Stored as uint8 it takes one byte per value; as the float32 a model trains on, four."));
    o.push('\n');
    let h = [
        tr(l, "format"),
        tr(l, "shape"),
        tr(l, "values"),
        "uint8".into(),
        "float32".into(),
    ];
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let mut tb = Table::new(&h, &[false, false, true, true, true]);
    for (name, c, hh, w) in [
        ("grayscale (Fashion-MNIST)", 1u128, 28u128, 28u128),
        ("colour (CIFAR-10)", 3, 32, 32),
    ] {
        let n = c * hh * w;
        tb.row(vec![
            tr(l, name),
            format!("{c}x{hh}x{w}"),
            thousands(n),
            format!("{} B", thousands(n)),
            format!("{} B = {:.2} KB", thousands(n * 4), (n * 4) as f64 / KB),
        ]);
    }
    o.push_str(&tb.render());
    o.push('\n');
    line(
        &mut o,
        tr(
            l,
            "A float32 CIFAR image is 12 KB: 3,072 values of 4 bytes.",
        ),
    );
    o.push('\n');
    line(&mut o, tr(l, "2. The model: SimpleCNN"));
    o.push('\n');
    o.push_str("  conv1 Conv2d(3, 6, 5) -> ReLU -> MaxPool2d(2)\n  conv2 Conv2d(6, 16, 5) -> ReLU -> MaxPool2d(2)\n  view(-1, 400) -> fc1 Linear(400, 120) -> ReLU -> fc2 Linear(120, 84) -> ReLU -> fc3 Linear(84, 10)\n\n");
    line(
        &mut o,
        format!(
            "  {}",
            tr(l, "(vramlab summary simple_cnn shows every layer.)")
        ),
    );
    o.push('\n');
    line(
        &mut o,
        tr(l, "3. The lesson's numbers, as it prints them: its MB is 1024*1024 B (a MiB) and its KB 1024 B (a KiB); the rest of vramlab writes MiB and KiB"),
    );
    o.push('\n');
    for s in &j.lesson_lines {
        line(&mut o, format!("  {s}"));
    }
    o.push('\n');
    line(&mut o, tr(l, "4. What the lesson leaves out"));
    o.push('\n');
    line(&mut o, format!("  {}", t(l, "Gradients: {0} MB, one per parameter, alive from backward until the next zero_grad().", &[&format!("{:.2}", j.param_bytes as f64 / MB)])));
    line(
        &mut o,
        format!(
            "  {}",
            t(
                l,
                "Activations: forward keeps {0} per image for backward (conv inputs, ReLU outputs, max-pool inputs and int64 indices), {1}x the image itself.",
                &[&bytes(j.activation_bytes_per_image), &format!("{:.1}", j.activation_bytes_per_image as f64 / j.image_bytes as f64)]
            )
        ),
    );
    line(
        &mut o,
        format!(
            "  {}",
            tr(
                l,
                "The peak: not the sum of the parts, but the highest point of the step's timeline."
            )
        ),
    );
    o.push('\n');
    let h = [
        tr(l, "profile"),
        tr(l, "batch"),
        tr(l, "peak"),
        tr(l, "in"),
        tr(l, "grads"),
        tr(l, "Adam state"),
        tr(l, "batch data"),
        tr(l, "activations"),
        tr(l, "temporaries"),
    ];
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let mut tb = Table::new(
        &h,
        &[false, true, true, false, true, true, true, true, true],
    );
    for p in &j.peaks {
        tb.row(vec![
            p.profile.into(),
            p.batch_size.to_string(),
            bytes(p.peak_bytes),
            tr(l, &p.peak_phase),
            bytes(p.grads),
            bytes(p.optimizer_state),
            bytes(p.data_batch),
            bytes(p.activations),
            bytes(p.temporaries),
        ]);
    }
    o.push_str(&tb.render());
    o.push('\n');
    line(
        &mut o,
        format!(
            "  {}",
            tr(
                l,
                "(the higher of steps 1 and 2; step 2 holds the Adam state made during step 1)"
            )
        ),
    );
    o.push('\n');
    line(&mut o, format!("  {}", tr(l, "pytorch-cpu reproduces real PyTorch 2.15 measurements to the byte (tested against shared/reference); pytorch-cuda adds the caching allocator's 512 B rounding and the CUDA context (outside PyTorch's counters), shown as overhead in `vramlab memory`.")));
    o.push('\n');
    line(&mut o, tr(l, "5. Batch size"));
    o.push('\n');
    line(&mut o, format!("  {}", tr(l, "Memory grows with the batch through the data and the activations; parameters, gradients and optimizer state do not. Start small (16), double while the peak stays under about 80 % of the card, and scale the learning rate with the batch.")));
    o.push('\n');
    line(
        &mut o,
        format!(
            "{} vramlab memory simple_cnn --batch-size 64 --optimizer adam",
            tr(l, "Next:")
        ),
    );
    line(
        &mut o,
        "      vramlab fit resnet18 --input 3x32x32 --num-classes 10 --gpu rtx-4090".into(),
    );
    o
}
