//! `fit`'s answer by what fails on the card: the simulated caching allocator's largest
//! batch, the figures it rests on (modelled or estimated), and what an
//! `--alloc-conf` setting buys against the default.

use serde::Serialize;
use vramlab_memory::device_fit::DeviceFit;

use crate::fit_cmd::FitJson;
use crate::fmt::{bytes, terminal_width, thousands, wrap_words, Table};
use crate::lang::{s, t, Lang};
use crate::memory_cmd::phase;

/// The allocator's answer, and the default settings' when `--alloc-conf` changed them.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceAnswer {
    #[serde(flatten)]
    pub fit: DeviceFit,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_conf: Option<DeviceFit>,
}

fn batch(b: Option<u64>, lang: Lang) -> String {
    b.map_or_else(|| s(lang, "none"), |b| thousands(b as u128))
}

/// A sentence wrapped to the terminal (at most 100 columns), indented as it starts.
fn line(out: &mut String, text: &str) {
    let indent = text.len() - text.trim_start().len();
    let width = terminal_width().clamp(60, 100) - indent;
    for l in wrap_words(text.trim_start(), width) {
        out.push_str(&" ".repeat(indent));
        out.push_str(&l);
        out.push('\n');
    }
}

pub fn render(a: &DeviceAnswer, lang: Lang) -> String {
    let d = &a.fit;
    let mut out = String::new();
    let head = t(
        lang,
        "On the card, by what fails (PyTorch's caching allocator simulated, PYTORCH_CUDA_ALLOC_CONF: {0}):",
        &[&d.alloc_conf],
    );
    line(&mut out, &head);
    let full = d.cuda_context_bytes + d.nccl_bytes >= d.card_total_bytes;
    let (total, source, context, nccl, limit) = (
        bytes(d.card_total_bytes),
        d.card_total_source.as_str(),
        bytes(d.cuda_context_bytes),
        bytes(d.nccl_bytes),
        bytes(d.allocator_limit_bytes),
    );
    let sentence = match (full, d.nccl_bytes > 0) {
        (true, false) => t(
            lang,
            "  {0} ({1}): the CUDA context alone ({2}) takes all of it, {3} is left for the allocator",
            &[&total, &source, &context, &limit],
        ),
        (false, false) => t(
            lang,
            "  {0} ({1}) - CUDA context {2} = {3} for the allocator",
            &[&total, &source, &context, &limit],
        ),
        (true, true) => t(
            lang,
            "  {0} ({1}): the CUDA context ({2}) and NCCL's buffers ({3}) take all of it, {4} is left for the allocator",
            &[&total, &source, &context, &nccl, &limit],
        ),
        (false, true) => t(
            lang,
            "  {0} ({1}) - CUDA context {2} - NCCL buffers {3} = {4} for the allocator",
            &[&total, &source, &context, &nccl, &limit],
        ),
    };
    line(&mut out, &sentence);
    if let Some(allowed) = d.allowed_memory_bytes {
        line(
            &mut out,
            &t(
                lang,
                "  and at most {0} under torch.cuda.set_per_process_memory_fraction",
                &[&bytes(allowed)],
            ),
        );
    }
    match (
        d.max_batch_size,
        d.allocated_peak_bytes,
        d.reserved_peak_bytes,
        d.device_total_bytes,
    ) {
        (Some(b), Some(al), Some(re), Some(tot)) => {
            line(&mut out, &t(
                lang,
                "  Largest batch found to run: {0} (max_memory_allocated {1}, max_memory_reserved {2}: modelled; nvidia-smi {3}: estimated)",
                &[&thousands(b as u128), &bytes(al), &bytes(re), &bytes(tot)],
            ));
        }
        _ => line(&mut out, &s(lang, "  Not even the smallest batch runs.")),
    }
    if let Some(o) = &d.out_of_memory_above {
        line(
            &mut out,
            &t(
                lang,
                "  At {0}: CUDA out of memory in step {1}, {2}, at {3} (tried to allocate {4}).",
                &[
                    &batch(d.max_batch_size.map(|b| b + 1).or(Some(1)), lang),
                    &o.step,
                    &phase(o.phase, lang),
                    &o.layer,
                    &bytes(o.tried_to_allocate_bytes),
                ],
            ),
        );
    }
    if d.max_batch_size.is_some() && d.out_of_memory_above.is_some() {
        line(&mut out, &s(lang, "  (Near the limit the allocator's answer is not monotonic: a larger batch may still run where a smaller one failed, as fragmentation allows in PyTorch.)"));
    }
    if let Some(def) = &a.default_conf {
        line(
            &mut out,
            &t(
                lang,
                "  {0} gives batch {1}; the default settings give {2}.",
                &[
                    &d.alloc_conf,
                    &batch(d.max_batch_size, lang),
                    &batch(def.max_batch_size, lang),
                ],
            ),
        );
    }
    line(&mut out, &s(lang, "Estimates: the CUDA context depends on the driver, the card and the CUDA version (--cuda-version, --cuda-context; docs/ARCHITECTURE.md has the table); cuDNN's workspaces on the plans cuDNN picks (estimated per convolution; --cudnn-workspace caps them)."));
    out
}

/// One row per card: the allocator's largest batch.
pub fn render_cards(outs: &[FitJson], devices: &[Option<DeviceAnswer>], lang: Lang) -> String {
    let Some(first) = devices.iter().flatten().next() else {
        return String::new();
    };
    let mut out = String::from("\n");
    out.push_str(&t(
        lang,
        "On each card, by what fails (PyTorch's caching allocator simulated, PYTORCH_CUDA_ALLOC_CONF: {0}):",
        &[&first.fit.alloc_conf],
    ));
    out.push('\n');
    let h = [
        s(lang, "card"),
        s(lang, "card total (PyTorch's, else nvidia-smi's)"),
        s(lang, "largest batch that runs"),
        s(lang, "reserved peak"),
    ];
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let mut tb = Table::new(&h, &[false, true, true, true]);
    for (o, d) in outs.iter().zip(devices) {
        let Some(d) = d else { continue };
        // The --gpu name: the labels start the planner's table's rows.
        let name = vramlab_memory::fit::GPUS
            .iter()
            .find(|g| Some(g.label) == o.gpu.as_deref())
            .map_or_else(|| o.gpu.clone().unwrap_or_default(), |g| g.name.to_string());
        tb.row(vec![
            name,
            if d.fit.card_total_source.starts_with("nominal") {
                format!("{} ({})", bytes(d.fit.card_total_bytes), s(lang, "nominal"))
            } else if d.fit.card_total_source.contains("nvidia-smi") {
                format!("{} (nvidia-smi)", bytes(d.fit.card_total_bytes))
            } else {
                bytes(d.fit.card_total_bytes)
            },
            batch(d.fit.max_batch_size, lang),
            d.fit.reserved_peak_bytes.map_or_else(|| "-".into(), bytes),
        ]);
    }
    out.push_str(&tb.render());
    line(&mut out, &s(lang, "Estimates: the CUDA context depends on the driver, the card and the CUDA version (--cuda-version, --cuda-context; docs/ARCHITECTURE.md has the table); cuDNN's workspaces on the plans cuDNN picks (estimated per convolution; --cudnn-workspace caps them)."));
    out
}
