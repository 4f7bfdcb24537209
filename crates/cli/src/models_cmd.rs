//! `vramlab models` and `vramlab summary`.

use clap::Args;
use serde::Serialize;
use vramlab_graph::{fmt_shape, zoo, ModelOptions};
use vramlab_memory::{saved_for_backward, PlanConfig, Profile};

use crate::fmt::{bytes, thousands, Table};
use crate::{print_json, ModelArgs, Result, UserError};

#[derive(Args)]
pub struct ModelsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct ModelRow {
    name: &'static str,
    description: &'static str,
    input_shape: [usize; 3],
    num_classes: usize,
    num_params: u128,
    macs: u128,
}

pub fn models(a: &ModelsArgs) -> Result<()> {
    let mut rows = Vec::new();
    for &name in zoo::NAMES {
        let (description, input_shape) = zoo::describe(name).expect("listed");
        let g = zoo::build(name, &ModelOptions::default())?.infer()?;
        rows.push(ModelRow {
            name,
            description,
            input_shape,
            num_classes: g.num_classes(),
            num_params: g.num_params(),
            macs: g.macs(),
        });
    }
    if a.json {
        return print_json(&rows);
    }
    let mut t = Table::new(
        &[
            "model",
            "input",
            "classes",
            "params",
            "MACs/image",
            "what it is",
        ],
        &[false, false, true, true, true, false],
    );
    for r in &rows {
        t.row(vec![
            r.name.into(),
            fmt_shape(&r.input_shape),
            r.num_classes.to_string(),
            thousands(r.num_params),
            thousands(r.macs),
            r.description.into(),
        ]);
    }
    crate::out!("{}", t.render());
    crate::outln!("\nAny of them takes --input CxHxW and --num-classes N; a .toml model file works wherever a name does (docs/MODEL_FILES.md).");
    Ok(())
}

#[derive(Args)]
pub struct SummaryArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Batch size for the bytes kept for backward (default 1, or 2 where BatchNorm in
    /// training needs more than one value per channel, as PyTorch does).
    #[arg(long, short = 'b', value_name = "N")]
    batch_size: Option<u64>,
    /// pytorch-cuda or pytorch-cpu: what backward keeps (dropout masks differ).
    #[arg(long, default_value = "pytorch-cuda")]
    profile: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct LayerRow {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    output_shape: Vec<usize>,
    params: u128,
    macs: u128,
    saved_bytes: u128,
}

#[derive(Serialize)]
struct Summary {
    model: String,
    input_shape: Vec<usize>,
    batch_size: u64,
    /// Why the batch is not the one asked for (BatchNorm needs 2), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_note: Option<String>,
    num_params: u128,
    param_bytes: u128,
    buffer_bytes: u128,
    macs: u128,
    saved_bytes: u128,
    layers: Vec<LayerRow>,
}

pub fn summary(a: &SummaryArgs) -> Result<()> {
    let g = a.model.load()?;
    let profile = Profile::parse(&a.profile)?;
    if profile == Profile::Native {
        return Err(UserError(
            "summary supports the pytorch-cuda and pytorch-cpu profiles".into(),
        ));
    }
    if a.batch_size == Some(0) {
        return Err(UserError("--batch-size must be at least 1".into()));
    }
    if let Some(b) = a.batch_size {
        vramlab_memory::fit::check_batch(&g, b)?;
    }
    let config = |b: u64| {
        let mut cfg = PlanConfig::new(b);
        cfg.profile = profile;
        cfg
    };
    // Without -b, batch 1 is the natural unit; where PyTorch's BatchNorm refuses it (one
    // value per channel in training), batch 2 is what a user would run, and we say so.
    let (cfg, saved, note) = if g.params().is_empty() {
        // Nothing requires grad: autograd records nothing and forward keeps nothing.
        (
            config(a.batch_size.unwrap_or(1)),
            vec![0; g.nodes().len()],
            Some("the model has no parameters: nothing requires grad, so forward keeps nothing for backward".to_string()),
        )
    } else {
        match (a.batch_size, saved_for_backward(&g, &config(1))) {
        (Some(b), _) => (config(b), saved_for_backward(&g, &config(b))?, None),
        (None, Ok(saved)) => (config(1), saved, None),
        (None, Err(vramlab_memory::PlanError::Framework { layer, .. })) => (
            config(2),
            saved_for_backward(&g, &config(2))?,
            Some(format!(
                "batch 2, since at batch 1 layer `{layer}` would see one value per channel and PyTorch's BatchNorm refuses that in training; -b N to choose"
            )),
        ),
        (None, Err(e)) => return Err(e.into()),
        }
    };
    let mut layers = Vec::new();
    for (i, n) in g.nodes().iter().enumerate().skip(1) {
        layers.push(LayerRow {
            name: n.name.clone(),
            kind: n.op.type_name(),
            output_shape: g.shapes[i].clone(),
            params: n.op.params().iter().map(|p| p.numel()).sum(),
            macs: n.op.macs(&g.shapes[i]),
            saved_bytes: saved[i],
        });
    }
    let s = Summary {
        model: g.graph.name.clone(),
        input_shape: g.graph.input_shape.clone(),
        batch_size: cfg.batch_size,
        batch_note: note.clone(),
        num_params: g.num_params(),
        param_bytes: g.params().iter().map(|p| p.bytes()).sum(),
        buffer_bytes: g.buffer_bytes(),
        macs: g.macs(),
        saved_bytes: saved.iter().sum(),
        layers,
    };
    if a.json {
        return print_json(&s);
    }
    crate::outln!(
        "{} with input {} (batch {} for the bytes kept for backward, {})",
        s.model,
        fmt_shape(&s.input_shape),
        s.batch_size,
        cfg.profile.name()
    );
    if let Some(n) = &note {
        crate::outln!("({n})");
    }
    let mut t = Table::new(
        &[
            "layer",
            "type",
            "output",
            "params",
            "MACs",
            "kept for backward",
        ],
        &[false, false, false, true, true, true],
    );
    for l in &s.layers {
        t.row(vec![
            l.name.clone(),
            l.kind.into(),
            fmt_shape(&l.output_shape),
            thousands(l.params),
            thousands(l.macs),
            if l.saved_bytes == 0 {
                "-".into()
            } else {
                bytes(l.saved_bytes)
            },
        ]);
    }
    crate::out!("{}", t.render());
    crate::outln!(
        "\nparameters: {} ({}), buffers: {}, MACs per image: {}, kept for backward: {}",
        thousands(s.num_params),
        bytes(s.param_bytes),
        bytes(s.buffer_bytes),
        thousands(s.macs),
        bytes(s.saved_bytes)
    );
    Ok(())
}
