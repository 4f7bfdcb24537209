//! `vramlab report`: one self-contained HTML file (inline SVG and PNG, no scripts, no
//! network, no external fonts) with dataset samples, the model summary, the memory
//! breakdown and timeline, the batch-size curve, and a sweep's curves when given one.

use std::path::PathBuf;

use base64_engine::encode as b64;
use clap::Args;
use vramlab_graph::fmt_shape;
use vramlab_memory::{plan, saved_for_backward, Category};

use crate::fit_cmd::{batch_chart, FitJson};
use crate::fmt::{bytes, parse_size, thousands};
use crate::lang::{s, t, Lang};
use crate::memory_cmd::{explain, phase};
use crate::plot::{write_atomic, Chart, Series, COLORS};
use crate::train_cmd::{sweep_charts, SweepJson};
use crate::{ModelArgs, PlanArgs, Result, UserError};

#[derive(Args)]
pub struct ReportArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A dataset to show samples of (as for `data info`).
    #[arg(long = "data")]
    dataset: Option<String>,
    /// Folder with the dataset's files (as for `data info`).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// A card from `vramlab gpus` for the batch-size curve.
    #[arg(long, conflicts_with = "memory")]
    gpu: Option<String>,
    /// Or the card's memory, e.g. 24GiB.
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Share of the card the batch-size curve may use (default: the lesson's 80 %;
    /// with --gpu or --memory).
    #[arg(long)]
    fraction: Option<f64>,
    /// Batch size for the memory breakdown.
    #[arg(long, short = 'b', default_value_t = 64)]
    batch_size: u64,
    #[command(flatten)]
    plan: PlanArgs,
    /// The JSON of a `vramlab sweep ... --json` run, to include its curves.
    #[arg(long, value_name = "FILE")]
    sweep: Option<PathBuf>,
    /// The global --lang, set by `main`.
    #[arg(skip)]
    pub lang: Lang,
    /// The HTML file to write (`-`: standard output).
    #[arg(long, value_name = "FILE.html")]
    out: PathBuf,
}

/// Base64 without a dependency.
mod base64_engine {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for c in data.chunks(3) {
            let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

fn esc(x: &str) -> String {
    x.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn table(head: &[String], rows: &[Vec<String>]) -> String {
    let mut h = String::from("<table><tr>");
    for c in head {
        h.push_str(&format!("<th>{}</th>", esc(c)));
    }
    h.push_str("</tr>");
    for r in rows {
        h.push_str("<tr>");
        for c in r {
            h.push_str(&format!("<td>{}</td>", esc(c)));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    h
}

pub fn report(a: &ReportArgs) -> Result<()> {
    let to_stdout = a.out.as_os_str() == "-";
    if !to_stdout {
        crate::plot::check_output(&a.out, "--out")?;
    }
    let l = a.lang;
    // Checked whether or not a card is given (-5 and NaN were accepted without one).
    let fraction = a.fraction.unwrap_or(0.8);
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(crate::UserError(format!(
            "--fraction must be in (0, 1], got {fraction}"
        )));
    }
    // The share of a card: with no card it would change nothing.
    if a.fraction.is_some() && a.gpu.is_none() && a.memory.is_none() {
        return Err(crate::UserError(
            "--fraction is a share of the card: give --gpu NAME or --memory SIZE".into(),
        ));
    }
    let g = a.model.load()?;
    vramlab_memory::fit::check_batch(&g, a.batch_size)?;
    let cfg = a.plan.config(a.batch_size)?;
    a.plan.gpu_needs_cuda(
        a.gpu.as_deref(),
        cfg.profile,
        "; give a memory size with --memory instead",
    )?;
    let mut body = String::new();
    body.push_str(&format!(
        "<h1>{} — {}</h1>",
        esc(&s(l, "vramlab report")),
        esc(&g.graph.name)
    ));
    body.push_str(&format!(
        "<p>{} {} · {} {} · {} {}</p>",
        esc(&s(l, "Model")),
        esc(&fmt_shape(&g.graph.input_shape)),
        thousands(g.num_params()),
        esc(&s(l, "parameters")),
        thousands(g.macs()),
        esc(&s(l, "MACs per image"))
    ));
    // The training set's size, so the batch-size advice can say when a batch is larger.
    let mut dataset_size = None;
    if let Some(d) = &a.dataset {
        let src = crate::data_cmd::Source {
            dataset: d.clone(),
            root: a.root.clone(),
            folder: Default::default(),
            coarse: false,
        };
        let ds = src.open()?;
        dataset_size = Some(ds.train.len() as u64);
        let img = vramlab_data::show::grid(&ds, &ds.train, 6, 3)?;
        let png = vramlab_data::show::png_bytes(&img)?;
        body.push_str(&format!(
            "<h2>{}: {}</h2><p>{} {} · {} · {} {}</p><p>{}</p><img alt=\"samples\" src=\"data:image/png;base64,{}\">",
            esc(&s(l, "Dataset")),
            esc(&ds.name),
            thousands(ds.train.len() as u128),
            esc(&s(l, "images")),
            esc(&fmt_shape(&ds.shape)),
            ds.classes.len(),
            esc(&s(l, "classes")),
            esc(&s(l, "samples per class, first of each class")),
            b64(&png)
        ));
    }
    // Layers.
    let saved = saved_for_backward(&g, &{
        let mut c = cfg.clone();
        if c.profile == vramlab_memory::Profile::Native {
            c.profile = vramlab_memory::Profile::PytorchCpu;
        }
        c
    })
    .unwrap_or_else(|_| vec![0; g.nodes().len()]);
    let rows: Vec<Vec<String>> = g
        .nodes()
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, n)| {
            vec![
                n.name.clone(),
                n.op.type_name().into(),
                fmt_shape(&g.shapes[i]),
                thousands(n.op.params().iter().map(|p| p.numel()).sum()),
                thousands(n.op.macs(&g.shapes[i])),
                if saved[i] == 0 {
                    "-".into()
                } else {
                    bytes(saved[i])
                },
            ]
        })
        .collect();
    let head = [
        "layer",
        "type",
        "output",
        "parameters",
        "MACs per image",
        "kept for backward",
    ]
    .map(|k| s(l, k));
    body.push_str(&format!(
        "<h2>{}</h2><details open><summary>{}</summary>{}</details>",
        esc(&s(l, "Layers")),
        esc(&t(l, "{0} layers", &[&rows.len()])),
        table(&head, &rows)
    ));
    // Memory.
    let mut tcfg = cfg.clone();
    tcfg.record_timeline = true;
    let r = plan(&g, &tcfg)?;
    body.push_str(&format!(
        "<h2>{}</h2>",
        esc(&t(l, "Memory at batch {0}", &[&a.batch_size]))
    ));
    // What the figures are of: optimizer, precision, micro-batches, ranks.
    for line in crate::memory_cmd::setup_lines(&r, l).lines() {
        body.push_str(&format!("<p>{}</p>", esc(line)));
    }
    let head = [
        s(l, "category"),
        s(l, "step 1 peak"),
        s(l, "step 2 peak"),
        s(l, "after step"),
        s(l, "what it is"),
    ];
    let mut rows: Vec<Vec<String>> = Category::ALL
        .iter()
        .map(|&c| {
            let mut row = vec![c.key().to_string()];
            for st in &r.steps {
                row.push(bytes(st.at_peak.get(c)));
            }
            row.push(bytes(r.steps.last().expect("a step").after_step.get(c)));
            row.push(explain(c, &r, l));
            row
        })
        .collect();
    let mut total = vec![s(l, "total")];
    for st in &r.steps {
        total.push(bytes(st.peak_bytes));
    }
    total.push(bytes(r.steps.last().expect("a step").after_step.total()));
    total.push(String::new());
    rows.push(total);
    body.push_str(&table(
        &head[..r.steps.len() + 1]
            .iter()
            .chain(&head[3..])
            .cloned()
            .collect::<Vec<_>>(),
        &rows,
    ));
    for st in &r.steps {
        body.push_str(&format!(
            "<p>{}</p>",
            esc(&t(
                l,
                "Peak of step {0}: {1} ({2} B) in {3}, at {4}.",
                &[
                    &st.step,
                    &bytes(st.peak_bytes),
                    &thousands(st.peak_bytes),
                    &phase(st.peak_phase, l),
                    &st.peak_at
                ]
            ))
        ));
    }
    if let Some(tl) = &r.timeline {
        let gib = (1u64 << 30) as f64;
        let mib = (1u64 << 20) as f64;
        // The CUDA context is a constant: leave it out so the step's shape shows.
        let base = r.context_bytes + r.nccl_bytes;
        let unit = if (r.peak_bytes - base) as f64 > gib {
            gib
        } else {
            mib
        };
        let points: Vec<(f64, f64)> = tl
            .iter()
            .enumerate()
            .map(|(i, p)| (i as f64, (p.bytes - base) as f64 / unit))
            .collect();
        // pytorch-cuda: what the simulated caching allocator holds (segments, cached
        // blocks included) beside what the tensors take.
        let reserved: Vec<(f64, f64)> = tl
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.reserved.map(|r| (i as f64, r as f64 / unit)))
            .collect();
        let mut series = vec![Series {
            name: s(l, "allocated (tensors alive)"),
            points,
            color: COLORS[0].into(),
        }];
        if !reserved.is_empty() {
            series.push(Series {
                name: s(l, "reserved (caching allocator, simulated)"),
                points: reserved,
                color: COLORS[1].into(),
            });
        }
        let chart = Chart {
            title: s(l, "Memory during one training step"),
            x_label: s(l, "op"),
            y_label: format!(
                "{}, {} ({})",
                s(l, "bytes alive after each op"),
                s(l, "without the CUDA context"),
                if unit == gib { "GiB" } else { "MiB" }
            ),
            x_log: false,
            stacked: false,
            series,
            hlines: vec![],
            vline: None,
        };
        body.push_str(&chart.svg());
    }
    // Batch-size curve.
    let card = match (&a.gpu, &a.memory) {
        (Some(name), _) => {
            if name.contains(',') {
                return Err(crate::UserError(format!(
                    "--gpu `{name}`: the report draws one card's curve; give one (fit compares \
                     several)"
                )));
            }
            let gpu = vramlab_memory::fit::find_gpu(name)?;
            let (total, basis) = crate::fit_cmd::card_budget_total(&gpu);
            Some((total, Some(gpu.label.to_string()), Some(basis)))
        }
        (None, Some(m)) => Some((
            parse_size(m).map_err(|e| crate::UserError(format!("--memory: {e}")))?,
            None,
            None,
        )),
        _ => None,
    };
    if let Some((card_bytes, label, card_total_basis)) = card {
        crate::fit_cmd::check_context(&cfg, card_bytes)?;
        let mut fcfg = cfg.clone();
        fcfg.record_timeline = false;
        // The curve is the batch per optimizer step without accumulation (any batch
        // size, not only multiples of --accumulation-steps).
        fcfg.accumulation_steps = 1;
        let request = vramlab_memory::fit::FitRequest {
            fraction,
            dataset_size,
            ..vramlab_memory::fit::FitRequest::new(card_bytes)
        };
        let fit = vramlab_memory::fit::fit_with(&g, &fcfg, &request)?;
        let fj = FitJson {
            distributed: cfg.distributed.clone(),
            model: g.graph.name.clone(),
            input_shape: g.graph.input_shape.clone(),
            gpu: label,
            card_total_basis,
            memory_as_given: a.memory.clone(),
            profile: cfg.profile.name(),
            optimizer: cfg.optimizer.describe(),
            precision: cfg.precision.name(),
            fit,
            lr_advice: None,
        };
        body.push_str(&format!("<h2>{}</h2>", esc(&s(l, "Batch size"))));
        body.push_str(&format!(
            "<pre>{}</pre>",
            esc(&crate::fit_cmd::render(&fj, l))
        ));
        body.push_str(&batch_chart(&g, &fcfg, &fj, l).svg());
    }
    if let Some(path) = &a.sweep {
        // Only a regular file, read to a cap: /dev/zero or a FIFO never ended.
        let raw = vramlab_data::limits::read_regular(path, MAX_SWEEP_JSON_BYTES, "a sweep JSON")?;
        let not_sweep = |e: &dyn std::fmt::Display| {
            UserError(format!(
                "{}: not the JSON of `vramlab sweep --json`: {e}",
                path.display()
            ))
        };
        let sw: SweepJson = serde_json::from_slice(&raw).map_err(|e| not_sweep(&e))?;
        sw.check().map_err(|e| not_sweep(&e))?;
        // Another model's curves in this model's report would read as this one's.
        if sw.model != g.graph.name {
            return Err(UserError(format!(
                "{}: the sweep trained {}, the report is of {}: give the sweep of the same model",
                path.display(),
                sw.model,
                g.graph.name
            )));
        }
        body.push_str(&format!("<h2>{}</h2>", esc(&s(l, "Batch-size sweep"))));
        let head = [
            s(l, "batch"),
            s(l, "images/s"),
            s(l, "final loss"),
            s(l, "test accuracy"),
            s(l, "measured peak"),
            s(l, "planned peak"),
        ];
        let rows: Vec<Vec<String>> = sw
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.batch_size.to_string(),
                    thousands(r.images_per_s as u128),
                    format!("{:.4}", r.final_train_loss),
                    r.test_accuracy
                        .map(|v| format!("{v:.4}"))
                        .unwrap_or_else(|| "-".into()),
                    bytes(r.measured_peak_bytes),
                    bytes(r.planned_peak_bytes),
                ]
            })
            .collect();
        body.push_str(&table(&head, &rows));
        for (_, c) in sweep_charts(&sw, l) {
            body.push_str(&c.svg());
        }
    }
    body.push_str(&format!(
        "<footer>{}</footer>",
        esc(&t(l, "Made by vramlab {0}.", &[&env!("CARGO_PKG_VERSION")]))
    ));
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"{}\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{} — {}</title><style>{}</style></head><body>{}</body></html>\n",
        if l == Lang::Zh { "zh-CN" } else { "en" },
        esc(&s(l, "vramlab report")),
        esc(&g.graph.name),
        STYLE,
        body
    );
    if to_stdout {
        // `--out -`: the page on stdout (`vramlab report ... --out - > r.html`, a pipe).
        crate::out!("{html}");
        return Ok(());
    }
    write_atomic(&a.out, html.as_bytes())?;
    println!("{}", a.out.display());
    Ok(())
}

/// The largest `--sweep` file read: a sweep of 64 batch sizes with a point per step
/// of a long run is a few MiB.
const MAX_SWEEP_JSON_BYTES: u64 = 64 << 20;

const STYLE: &str = "body{font-family:'DejaVu Sans','Noto Sans CJK SC','Noto Sans SC','WenQuanYi Micro Hei','Source Han Sans SC','PingFang SC','Microsoft YaHei',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f4f4f4}pre{background:#f8f8f8;padding:1em;overflow-x:auto;font-size:12px}svg{max-width:100%;height:auto;display:block;margin:1em 0}img{image-rendering:pixelated;max-width:100%}footer{color:#888;margin-top:3em;font-size:12px}";
