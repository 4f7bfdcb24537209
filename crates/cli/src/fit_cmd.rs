//! `vramlab fit` and `vramlab gpus`: batch size against a card's memory.

use clap::Args;
use serde::Serialize;
use vramlab_graph::fmt_shape;
use vramlab_memory::fit::{self, FitReport, LrAdvice, GPUS};

use crate::fmt::{bytes, parse_size, thousands, Table};
use crate::lang::{s, t, Lang};
use crate::{print_json, ModelArgs, PlanArgs, Result, UserError};

#[derive(Args)]
pub struct GpusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn gpus(a: &GpusArgs) -> Result<()> {
    if a.json {
        return print_json(&GPUS);
    }
    let mut t = Table::new(
        &["--gpu", "card", "memory", "also"],
        &[false, false, true, false],
    );
    for g in GPUS {
        t.row(vec![
            g.name.into(),
            g.label.into(),
            bytes(g.memory_bytes),
            g.aliases.join(", "),
        ]);
    }
    print!("{}", t.render());
    println!("\nAny other card: --memory SIZE (e.g. --memory 24GiB).");
    Ok(())
}

#[derive(Args)]
pub struct FitArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A card from `vramlab gpus`.
    #[arg(long, conflicts_with = "memory", required_unless_present = "memory")]
    gpu: Option<String>,
    /// The card's memory, e.g. 24GiB or 80GB.
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Use at most this fraction of the card (the lesson's 80 %).
    #[arg(long, default_value_t = 0.8)]
    fraction: f64,
    /// An effective batch to reach with gradient accumulation.
    #[arg(long, value_name = "N")]
    target_batch: Option<u64>,
    /// The batch size your learning rate was tuned at.
    #[arg(long, default_value_t = 16, value_name = "N")]
    base_batch: u64,
    /// The learning rate tuned at --base-batch (default: PyTorch's default for the optimizer).
    #[arg(long, value_name = "LR")]
    base_lr: Option<f64>,
    #[command(flatten)]
    plan: PlanArgs,
    /// Draw memory against batch size, stacked by category, with the card and the
    /// budget (.svg or .png).
    #[arg(long, value_name = "FILE")]
    plot: Option<std::path::PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Language of the text: en or zh.
    #[arg(long, value_enum, default_value = "en")]
    lang: Lang,
}

#[derive(Serialize)]
pub struct FitJson {
    pub model: String,
    pub input_shape: Vec<usize>,
    pub gpu: Option<String>,
    pub profile: &'static str,
    pub optimizer: String,
    pub precision: &'static str,
    #[serde(flatten)]
    pub fit: FitReport,
    pub lr_advice: Option<LrAdvice>,
}

pub fn fit(a: &FitArgs) -> Result<()> {
    let g = a.model.load()?;
    let cfg = a.plan.config(1)?;
    let (card, label) = match (&a.gpu, &a.memory) {
        (Some(name), _) => {
            let gpu = fit::find_gpu(name)?;
            (gpu.memory_bytes, Some(gpu.label.to_string()))
        }
        (None, Some(m)) => (parse_size(m)?, None),
        (None, None) => return Err(UserError("give --gpu NAME or --memory SIZE".into())),
    };
    if card == 0 {
        return Err(UserError("--memory must be more than 0".into()));
    }
    let report = fit::fit(&g, &cfg, card, a.fraction, a.target_batch)?;
    let base_lr = a.base_lr.unwrap_or(match cfg.optimizer.kind {
        vramlab_memory::OptimizerKind::RmsProp | vramlab_memory::OptimizerKind::Adagrad => 1e-2,
        _ => 1e-3,
    });
    let lr = report
        .max_power_of_two
        .map(|b| fit::lr_advice(a.base_batch, base_lr, b));
    let out = FitJson {
        model: g.graph.name.clone(),
        input_shape: g.graph.input_shape.clone(),
        gpu: label,
        profile: cfg.profile.name(),
        optimizer: cfg.optimizer.describe(),
        precision: cfg.precision.name(),
        fit: report,
        lr_advice: lr,
    };
    if let Some(path) = &a.plot {
        batch_chart(&g, &cfg, &out, a.lang).save(path)?;
    }
    if a.json {
        return print_json(&out);
    }
    print!("{}", render(&out, a.lang));
    if let Some(path) = &a.plot {
        println!("\n{}", t(a.lang, "Plot: {0}", &[&path.display()]));
    }
    Ok(())
}

/// Memory against batch size, stacked by category, with the card and the budget.
pub fn batch_chart(
    g: &vramlab_graph::Shaped,
    cfg: &vramlab_memory::PlanConfig,
    o: &FitJson,
    lang: Lang,
) -> crate::plot::Chart {
    use crate::plot::{Chart, HLine, Series, COLORS};
    use vramlab_memory::Category;
    let r = &o.fit;
    let top = r
        .max_batch_size
        .map_or(64, |b| b.saturating_mul(2).max(32))
        .min(fit::MAX_BATCH);
    let mut batches: Vec<u64> = (0..=48)
        .map(|i| ((top as f64 * i as f64 / 48.0).round() as u64).max(1))
        .collect();
    batches.dedup();
    let gib = (1u64 << 30) as f64;
    let mut series: Vec<Series> = Category::ALL
        .iter()
        .enumerate()
        .map(|(i, c)| Series {
            name: c.key().to_string(),
            points: Vec::new(),
            color: COLORS[i].to_string(),
        })
        .collect();
    for b in batches {
        let mut c = cfg.clone();
        c.batch_size = b;
        let Ok(rep) = vramlab_memory::plan(g, &c) else {
            continue;
        };
        let s = rep
            .steps
            .iter()
            .max_by_key(|s| s.peak_bytes)
            .expect("a step");
        for (i, cat) in Category::ALL.iter().enumerate() {
            series[i]
                .points
                .push((b as f64, s.at_peak.get(*cat) as f64 / gib));
        }
    }
    Chart {
        title: t(
            lang,
            "{0} {1}: peak memory by batch size ({2}, {3})",
            &[
                &o.model,
                &fmt_shape(&o.input_shape),
                &o.optimizer,
                &o.profile,
            ],
        ),
        x_label: s(lang, "batch size"),
        y_label: s(lang, "GiB at the peak"),
        x_log: false,
        stacked: true,
        series,
        hlines: vec![
            HLine {
                y: r.card_bytes as f64 / gib,
                label: t(lang, "card {0}", &[&bytes(r.card_bytes)]),
                color: "#c00000".into(),
                dashed: false,
            },
            HLine {
                y: r.budget_bytes as f64 / gib,
                label: t(
                    lang,
                    "{0} % budget",
                    &[&format!("{:.0}", r.fraction * 100.0)],
                ),
                color: "#e08000".into(),
                dashed: true,
            },
        ],
        vline: r.max_batch_size.map(|b| {
            (
                b as f64,
                t(lang, "largest batch {0}", &[&thousands(b as u128)]),
            )
        }),
    }
}

pub fn render(o: &FitJson, lang: Lang) -> String {
    let r = &o.fit;
    let mut out = t(
        lang,
        "{0} on {1} images, training with {2}, profile {3}, {4}",
        &[
            &o.model,
            &fmt_shape(&o.input_shape),
            &o.optimizer,
            &o.profile,
            &o.precision,
        ],
    );
    out.push('\n');
    let card = o
        .gpu
        .as_deref()
        .map(|l| format!("{l}, "))
        .unwrap_or_default();
    out.push_str(&t(
        lang,
        "Card: {0}{1}; budget {2} % = {3} (peaks include the overhead)",
        &[
            &card,
            &bytes(r.card_bytes),
            &format!("{:.0}", r.fraction * 100.0),
            &bytes(r.budget_bytes),
        ],
    ));
    out.push_str("\n\n");
    match (r.max_batch_size, r.peak_bytes_at_max) {
        (Some(b), Some(p)) => {
            out.push_str(&match r.peak_bytes_at_max_plus_one {
                Some(next) => t(
                    lang,
                    "Largest batch size that fits: {0} (peak {1}; at {2}: {3})",
                    &[
                        &thousands(b as u128),
                        &bytes(p),
                        &thousands(b as u128 + 1),
                        &bytes(next),
                    ],
                ),
                None => t(
                    lang,
                    "Largest batch size that fits: {0} (peak {1})",
                    &[&thousands(b as u128), &bytes(p)],
                ),
            });
            out.push('\n');
            if let Some(p2) = r.max_power_of_two {
                out.push_str(&t(
                    lang,
                    "Largest power of two under it: {0}",
                    &[&thousands(p2 as u128)],
                ));
                out.push('\n');
            }
        }
        _ => {
            out.push_str(&s(lang, "It does not fit even at batch 1."));
            out.push('\n');
        }
    }
    out.push('\n');
    out.push_str(&t(lang, "The lesson's procedure: start at 16 and double while the peak stays under {0} % of the card.", &[&format!("{:.0}", r.fraction * 100.0)]));
    out.push('\n');
    let h = [
        s(lang, "batch"),
        s(lang, "peak"),
        s(lang, "% of card"),
        String::new(),
    ];
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let mut tb = Table::new(&h, &[true, true, true, false]);
    for row in &r.procedure {
        tb.row(vec![
            thousands(row.batch_size as u128),
            row.peak_bytes.map(bytes).unwrap_or_else(|| "-".into()),
            row.percent_of_card
                .map(|p| format!("{p:.1} %"))
                .unwrap_or_else(|| "-".into()),
            if row.fits {
                s(lang, "fits")
            } else {
                s(lang, "over the budget: stop")
            },
        ]);
    }
    out.push_str(&tb.render());
    if !r.advice.is_empty() {
        out.push('\n');
        out.push_str(&s(lang, "What would make batch 1 fit:"));
        out.push('\n');
        let h = [s(lang, "change"), s(lang, "peak at batch 1"), String::new()];
        let h: Vec<&str> = h.iter().map(String::as_str).collect();
        let mut tb = Table::new(&h, &[false, true, false]);
        for a in &r.advice {
            tb.row(vec![
                t(lang, a.template, &[&a.flags]),
                a.peak_bytes.map(bytes).unwrap_or_else(|| "-".into()),
                if a.fits {
                    s(lang, "fits")
                } else {
                    s(lang, "still over")
                },
            ]);
        }
        out.push_str(&tb.render());
    }
    if let Some(acc) = &r.accumulation {
        out.push('\n');
        out.push_str(&t(
            lang,
            "To train with an effective batch of {0}: micro-batches of {1} with --accumulation-steps {2} (peak {3}).",
            &[&thousands(acc.target_batch as u128), &thousands(acc.micro_batch as u128), &acc.accumulation_steps, &bytes(acc.peak_bytes)],
        ));
        out.push('\n');
    }
    if let Some(lr) = &o.lr_advice {
        out.push('\n');
        out.push_str(&t(
            lang,
            "Learning rate at batch {0} (tuned {1} at batch {2}):",
            &[&thousands(lr.batch as u128), &lr.base_lr, &lr.base_batch],
        ));
        out.push_str("\n  ");
        out.push_str(&t(
            lang,
            "linear scaling rule: {0} (lr x {1}/{2}; SGD, with a few epochs of warm-up)",
            &[
                &format!("{:.3e}", lr.linear_scaling_rule),
                &lr.batch,
                &lr.base_batch,
            ],
        ));
        out.push_str("\n  ");
        out.push_str(&t(
            lang,
            "square-root scaling rule: {0} (lr x sqrt({1}/{2}); usual for Adam)",
            &[
                &format!("{:.3e}", lr.square_root_scaling_rule),
                &lr.batch,
                &lr.base_batch,
            ],
        ));
        out.push('\n');
    }
    out
}
