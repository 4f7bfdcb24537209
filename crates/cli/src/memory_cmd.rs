//! `vramlab memory`: the categories of training memory, the peak and where it is.

use clap::Args;
use vramlab_graph::fmt_shape;
use vramlab_memory::{plan, Category, MemoryReport, Mode};

use crate::fmt::{bytes, thousands, Table};
use crate::{print_json, ModelArgs, PlanArgs, Result};

#[derive(Args)]
pub struct MemoryArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Images per training step.
    #[arg(long, short = 'b', default_value_t = 64, value_name = "N")]
    batch_size: u64,
    #[command(flatten)]
    plan: PlanArgs,
    /// Include the whole timeline (every op's live total) in the JSON.
    #[arg(long)]
    timeline: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One plain sentence per category.
pub fn explain(c: Category, r: &MemoryReport) -> String {
    match c {
        Category::Params => format!(
            "the weights and biases the model learns ({} params)",
            thousands(r.num_params)
        ),
        Category::Buffers => "state that is not learned: BatchNorm running mean and variance".into(),
        Category::Grads => "one gradient per parameter, made by backward, read by the optimizer".into(),
        Category::OptimizerState => {
            "what the optimizer remembers between steps (momentum, Adam's two moments), made at the first step()".into()
        }
        Category::DataBatch => "the batch of input images and its int64 labels on the device".into(),
        Category::Activations => {
            "what forward keeps for backward: conv and linear inputs, ReLU outputs, max-pool indices, BatchNorm statistics".into()
        }
        Category::Temporaries => {
            "short-lived tensors: gradients flowing back, outputs nobody keeps, optimizer scratch".into()
        }
        Category::Overhead => {
            "outside the tensors: the allocator's rounding up to 512 B blocks and the CUDA context".into()
        }
    }
}

pub fn run(a: &MemoryArgs) -> Result<()> {
    let g = a.model.load()?;
    let mut cfg = a.plan.config(a.batch_size)?;
    cfg.record_timeline = a.timeline;
    let r = plan(&g, &cfg)?;
    if a.json {
        return print_json(&r);
    }
    print!("{}", render(&r));
    Ok(())
}

pub fn render(r: &MemoryReport) -> String {
    let mut out = String::new();
    let what = if r.mode == Mode::Inference {
        "inference".to_string()
    } else {
        format!("training with {}", r.optimizer)
    };
    out.push_str(&format!(
        "{} on {} images, batch {}, {}, profile {}, {}\n\n",
        r.model,
        fmt_shape(&r.input_shape),
        thousands(r.batch_size as u128),
        what,
        r.profile.name(),
        r.precision.name()
    ));
    let mut header = vec!["category"];
    let names = ["step 1 peak", "step 2 peak"];
    for s in &r.steps {
        header.push(names[(s.step - 1) as usize]);
    }
    header.push("after step");
    header.push("what it is");
    let mut right = vec![false];
    right.extend(std::iter::repeat_n(true, r.steps.len() + 1));
    right.push(false);
    let mut t = Table::new(&header, &right);
    for c in Category::ALL {
        let mut row = vec![c.key().to_string()];
        for s in &r.steps {
            row.push(bytes(s.at_peak.get(c)));
        }
        row.push(bytes(r.steps.last().expect("one step").after_step.get(c)));
        row.push(explain(c, r));
        t.row(row);
    }
    let mut total = vec!["total".to_string()];
    for s in &r.steps {
        total.push(bytes(s.peak_bytes));
    }
    total.push(bytes(r.steps.last().expect("one step").after_step.total()));
    total.push(String::new());
    t.row(total);
    out.push_str(&t.render());
    out.push('\n');
    for s in &r.steps {
        out.push_str(&format!(
            "Peak of step {}: {} ({} B) in {}, at {}.\n",
            s.step,
            bytes(s.peak_bytes),
            thousands(s.peak_bytes),
            s.peak_phase,
            s.peak_at
        ));
    }
    if r.steps.len() == 2 && r.steps[0].peak_bytes != r.steps[1].peak_bytes {
        out.push_str("Step 1 differs from step 2: optimizer state is created during the first step(), and step 1's gradients live until step 2's zero_grad().\n");
    }
    if r.context_bytes > 0 {
        out.push_str(&format!(
            "Overhead includes the CUDA context, estimated at {} (set it with --cuda-context); torch.cuda.max_memory_allocated() would report about {}.\n",
            bytes(r.context_bytes),
            bytes(r.peak_bytes - r.context_bytes)
        ));
    }
    out
}
