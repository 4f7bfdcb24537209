//! What a process really sees of each card in the catalog ([`crate::fit::GPUS`]): the
//! total nvidia-smi prints (the driver and ECC keep part of the label's size), its
//! source, and the compute capability that decides PyTorch's cuBLAS workspace.
//!
//! Where no published figure is known, the nominal size stands and is said to be
//! nominal: a budget never rests on a figure without saying which one.

use serde::Serialize;

const MIB: u128 = 1 << 20;

/// A card's memory as a process sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CardMemory {
    /// The catalog name (`--gpu`).
    pub name: &'static str,
    /// nvidia-smi's total in MiB, where a published output is known.
    pub nvidia_smi_total_mib: Option<u64>,
    /// Where that figure comes from (or why the nominal size stands).
    pub source: &'static str,
    /// Compute capability major: 9 and up (Hopper, Blackwell) get a 32 MiB cuBLAS
    /// workspace from PyTorch, older cards 8.125 MiB.
    pub compute_major: u32,
}

const MODAL: &str = "nvidia-smi, modal-labs/modal-client PR #2797";
const NOMINAL: &str = "nominal: no published nvidia-smi total known";

macro_rules! card {
    ($name:expr, $mib:expr, $source:expr, $cc:expr) => {
        CardMemory {
            name: $name,
            nvidia_smi_total_mib: $mib,
            source: $source,
            compute_major: $cc,
        }
    };
}

/// Per catalog card, in the catalog's order.
pub const CARDS: &[CardMemory] = &[
    card!("t4", Some(15360), MODAL, 7),
    card!("p100", None, NOMINAL, 6),
    card!("v100-16gb", None, NOMINAL, 7),
    card!(
        "v100-32gb",
        Some(32480),
        "nvidia-smi of Tesla V100-PCIE-32GB, blog.cachecha.com (nvidia-smi explained)",
        7
    ),
    card!(
        "a10",
        Some(23028),
        "nvidia-smi, modal-labs/modal-client PR #2797 (A10) and NVIDIA/DCGM issue #232 (A10G)",
        8
    ),
    card!("a40", None, NOMINAL, 8),
    card!("a100-40gb", Some(40960), MODAL, 8),
    card!("a100-80gb", Some(81920), MODAL, 8),
    card!(
        "h100",
        Some(81559),
        "nvidia-smi of H100 80GB HBM3 on a lent machine (vramlab issue 10); modal-labs/modal-client PR #2797",
        9
    ),
    card!("h100-nvl", None, NOMINAL, 9),
    card!(
        "h200",
        Some(143771),
        "nvidia-smi of H200 on a lent machine (vramlab issue 10)",
        9
    ),
    card!(
        "b200",
        Some(183359),
        "nvidia-smi, NVIDIA/TensorRT-LLM issue #10278",
        10
    ),
    card!("l4", Some(23034), MODAL, 8),
    card!("l40s", Some(46068), MODAL, 8),
    card!("rtx-a6000", None, NOMINAL, 8),
    card!("rtx-6000-ada", None, NOMINAL, 8),
    card!("gtx-1080-ti", None, NOMINAL, 6),
    card!("rtx-2080-ti", None, NOMINAL, 7),
    card!("titan-rtx", None, NOMINAL, 7),
    card!("rtx-3060", None, NOMINAL, 8),
    card!("rtx-3070", None, NOMINAL, 8),
    card!("rtx-3080", None, NOMINAL, 8),
    card!(
        "rtx-3090",
        Some(24576),
        "nvidia-smi, noonghunna/club-3090 issue #1128",
        8
    ),
    card!("rtx-4060", None, NOMINAL, 8),
    card!("rtx-4060-ti-16gb", None, NOMINAL, 8),
    card!("rtx-4070", None, NOMINAL, 8),
    card!("rtx-4080", None, NOMINAL, 8),
    card!(
        "rtx-4090",
        Some(24564),
        "nvidia-smi, RLinf/RLinf issue #255",
        8
    ),
    card!(
        "rtx-5090",
        Some(32607),
        "nvidia-smi, noonghunna/club-3090 issue #1261",
        12
    ),
];

/// What a PyTorch process sees as the card's total (`torch.cuda.get_device_properties(0)
/// .total_memory`, cudaMemGetInfo's total: nvidia-smi's total less what the driver keeps
/// back), in bytes, with its source: the figure `set_per_process_memory_fraction` takes
/// its share of and the caching allocator can at most reach. Published figures are
/// PyTorch's own printouts or its out-of-memory messages ("GPU 0 has a total capacity
/// of 79.11 GiB", two decimals of GiB, so within 5 MiB); they shrink a little with newer
/// drivers.
const PYTORCH_TOTALS: &[(&str, u128, &str)] = &[
    ("t4", 14909 * MIB, "out-of-memory message, 14.56 GiB on GCP (Zheng-Chong/CatVTON#133; 14.75 GiB on older drivers)"),
    ("p100", 16281 * MIB, "out-of-memory message, 15.90 GiB (rmokady/CLIP_prefix_caption#7)"),
    ("v100-16gb", 16159 * MIB, "out-of-memory message, 15.78 GiB (kchengiva/Shift-GCN#34)"),
    ("a100-40gb", 40339 * MIB, "deviceQuery, 42,298,834,944 B (bottlerocket-os/bottlerocket#3873)"),
    ("a100-80gb", 81152 * MIB, "out-of-memory message, 79.25 GiB (levihsu/OOTDiffusion#235)"),
    ("h100", 85_017_493_504, "measured on a lent H100 80GB HBM3: total_memory 85,017,493,504 B, driver 580.159 (vramlab issue 10; 79.11 GiB with driver 535, vllm-project/vllm#27508)"),
    ("h100-nvl", 95232 * MIB, "out-of-memory message, 93.00 GiB (ali-vilab/VACE#56)"),
    ("h200", 150_109_880_320, "measured on a lent H200: total_memory 150,109,880,320 B, driver 580.159 (vramlab issue 10)"),
    ("b200", 182630 * MIB, "device query, 178.35 GiB (pytorch/ao#4002)"),
    ("l40s", 45599 * MIB, "out-of-memory message, 44.53 GiB (Wan-Video/Wan2.1#205)"),
    ("rtx-6000-ada", 45496 * MIB, "out-of-memory message, 44.43 GiB (DINGYANB/MTVCrafter#21)"),
    ("rtx-2080-ti", 11018 * MIB, "out-of-memory message, 10.76 GiB (JDAI-CV/image-captioning#11)"),
    ("rtx-3060", 12042 * MIB, "out-of-memory message, 11.76 GiB (TencentARC/PhotoMaker#47)"),
    ("rtx-3070", 7967 * MIB, "out-of-memory message, 7.78 GiB (akshitac8/OW-DETR#46)"),
    ("rtx-3080", 10015 * MIB, "out-of-memory message, 9.78 GiB (zai-org/CogVideo#34)"),
    ("rtx-3090", 24125 * MIB, "out-of-memory message, 23.56 GiB, driver 580.126 (noonghunna/club-3090#58; 23.70 GiB on older drivers)"),
    ("rtx-4060", 7936 * MIB, "out-of-memory message, 7.75 GiB, laptop (ESRSchao/EdgeRegNet#2)"),
    ("rtx-4090", 24218 * MIB, "out-of-memory message, 23.65 GiB (tloen/llama-int8#7)"),
    ("rtx-5090", 32123 * MIB, "out-of-memory message, 31.37 GiB (Wan-Video/Wan2.1#465)"),
];

/// Streaming multiprocessors and the most resident threads per multiprocessor (NVIDIA's
/// specifications by compute capability: 2,048 on 6.x, 7.0, 8.0, 9.0 and 10.0; 1,024 on
/// 7.5; 1,536 on 8.6, 8.9 and 12.0): ATen's reduce kernel sizes its staging buffer by
/// them ([`crate::reduce_staging_bytes`]). The H100 entry is the SXM card's (132; the
/// PCIe card has 114).
const CORES: &[(&str, u32, u32)] = &[
    ("t4", 40, 1024),
    ("p100", 56, 2048),
    ("v100-16gb", 80, 2048),
    ("v100-32gb", 80, 2048),
    ("a10", 72, 1536),
    ("a40", 84, 1536),
    ("a100-40gb", 108, 2048),
    ("a100-80gb", 108, 2048),
    ("h100", 132, 2048),
    ("h100-nvl", 132, 2048),
    ("h200", 132, 2048),
    ("b200", 148, 2048),
    ("l4", 58, 1536),
    ("l40s", 142, 1536),
    ("rtx-a6000", 84, 1536),
    ("rtx-6000-ada", 142, 1536),
    ("gtx-1080-ti", 28, 2048),
    ("rtx-2080-ti", 68, 1024),
    ("titan-rtx", 72, 1024),
    ("rtx-3060", 28, 1536),
    ("rtx-3070", 46, 1536),
    ("rtx-3080", 68, 1536),
    ("rtx-3090", 82, 1536),
    ("rtx-4060", 24, 1536),
    ("rtx-4060-ti-16gb", 34, 1536),
    ("rtx-4070", 46, 1536),
    ("rtx-4080", 76, 1536),
    ("rtx-4090", 128, 1536),
    ("rtx-5090", 170, 1536),
];

/// The card's entry, by catalog name.
pub fn card_memory(name: &str) -> Option<&'static CardMemory> {
    CARDS.iter().find(|c| c.name == name)
}

impl CardMemory {
    /// The total a budget rests on: nvidia-smi's where known, else `nominal_bytes`.
    pub fn total_bytes(&self, nominal_bytes: u128) -> u128 {
        self.nvidia_smi_total_mib
            .map_or(nominal_bytes, |m| m as u128 * MIB)
    }

    /// Whether [`CardMemory::total_bytes`] is a published nvidia-smi figure.
    pub fn is_measured(&self) -> bool {
        self.nvidia_smi_total_mib.is_some()
    }

    /// The total a PyTorch process sees ([`PYTORCH_TOTALS`]) and its source, where one
    /// is published or measured.
    pub fn pytorch_total(&self) -> Option<(u128, &'static str)> {
        PYTORCH_TOTALS
            .iter()
            .find(|(n, _, _)| *n == self.name)
            .map(|&(_, bytes, src)| (bytes, src))
    }

    /// The figure a budget rests on, and which it is: PyTorch's total where known (what
    /// the caching allocator can reach), else nvidia-smi's, else `nominal_bytes`.
    pub fn budget(&self, nominal_bytes: u128) -> (u128, String) {
        if let Some((b, src)) = self.pytorch_total() {
            return (b, format!("the total PyTorch sees (total_memory): {src}"));
        }
        if self.is_measured() {
            return (
                self.total_bytes(nominal_bytes),
                format!(
                    "the total nvidia-smi shows ({}); PyTorch sees a few hundred MiB less, which the driver keeps",
                    self.source
                ),
            );
        }
        (
            nominal_bytes,
            "nominal size: no published total known".into(),
        )
    }

    /// The memory the CUDA context and libraries hold outside PyTorch's counters on this
    /// card's generation ([`crate::cuda_context_bytes`]).
    pub fn cuda_context_bytes(&self) -> u128 {
        crate::cuda_context_bytes(self.compute_major)
    }

    /// (streaming multiprocessors, threads per multiprocessor).
    pub fn cores(&self) -> (u32, u32) {
        CORES
            .iter()
            .find(|(n, _, _)| *n == self.name)
            .map_or((132, 2048), |&(_, sms, threads)| (sms, threads))
    }

    /// Sets what a plan on this card depends on: cuBLAS's workspace, the SMs, and the
    /// CUDA context unless one was given.
    pub fn configure(&self, cfg: &mut crate::PlanConfig) {
        cfg.cublas_workspace_bytes = self.cublas_workspace_bytes();
        (cfg.gpu_sms, cfg.gpu_max_threads_per_sm) = self.cores();
        if cfg.cuda_context_bytes.is_none() {
            cfg.cuda_context_bytes =
                Some(crate::cuda_context(self.compute_major, cfg.module_loading).bytes);
        }
    }

    /// PyTorch's cuBLAS workspace on this card.
    pub fn cublas_workspace_bytes(&self) -> u128 {
        crate::cublas_workspace_bytes(self.compute_major)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit::GPUS;

    #[test]
    fn every_catalog_card_has_an_entry_and_sees_at_most_its_label_plus_rounding() {
        assert_eq!(CARDS.len(), GPUS.len());
        for (g, c) in GPUS.iter().zip(CARDS) {
            assert_eq!(g.name, c.name);
            let total = c.total_bytes(g.memory_bytes);
            // nvidia-smi's total is near the label: within 8 % below it (ECC, driver),
            // or up to the label's decimal GB above it (A100's 81920 MiB for "80 GB").
            assert!(total * 100 >= g.memory_bytes * 92, "{}", g.name);
            assert!(total <= g.memory_bytes * 1074 / 1000, "{}", g.name);
            assert_eq!(
                c.is_measured(),
                !c.source.starts_with("nominal"),
                "{}",
                g.name
            );
        }
    }

    #[test]
    fn every_card_has_its_multiprocessors() {
        for c in CARDS {
            assert!(CORES.iter().any(|(n, _, _)| *n == c.name), "{}", c.name);
        }
        assert_eq!(CORES.len(), CARDS.len());
        assert_eq!(card_memory("t4").unwrap().cores(), (40, 1024));
        assert_eq!(card_memory("rtx-4090").unwrap().cores(), (128, 1536));
    }

    #[test]
    fn pytorch_totals_sit_below_nvidia_smis_where_both_are_known() {
        for (name, bytes, _) in PYTORCH_TOTALS {
            let c = card_memory(name).expect("a catalog card");
            if let Some(smi) = c.nvidia_smi_total_mib {
                // The driver keeps 250 to 750 MiB back from what nvidia-smi shows.
                let smi = smi as u128 * MIB;
                assert!(*bytes < smi && smi - bytes <= 1024 * MIB, "{name}");
            }
        }
        // The H200 measured here: what a budget rests on, and the generation's context.
        let h200 = card_memory("h200").unwrap();
        let (bytes, basis) = h200.budget(141 << 30);
        assert_eq!(bytes, 150_109_880_320);
        assert!(basis.contains("measured on a lent H200"), "{basis}");
        assert_eq!(h200.cuda_context_bytes(), 760 << 20);
        // No published figure: nvidia-smi's, said to be above PyTorch's; then nominal.
        let (_, basis) = card_memory("l4").unwrap().budget(24 << 30);
        assert!(basis.contains("nvidia-smi"), "{basis}");
        let (b, basis) = card_memory("a40").unwrap().budget(48 << 30);
        assert_eq!(b, 48 << 30);
        assert!(basis.starts_with("nominal"), "{basis}");
        assert_eq!(card_memory("t4").unwrap().cuda_context_bytes(), 666 << 20);
        // The table: a row per generation and loading, the Hopper lazy row measured.
        use crate::{cuda_context, ModuleLoading::*};
        assert!(cuda_context(9, Lazy).measured && !cuda_context(8, Lazy).measured);
        assert_eq!(cuda_context(10, Eager).bytes, (760 + 362) << 20);
        assert_eq!(cuda_context(7, Eager).bytes, (666 + 362) << 20);
        assert_eq!(crate::ModuleLoading::from_cuda_version("11.6"), Ok(Eager));
        assert_eq!(crate::ModuleLoading::from_cuda_version("11.7"), Ok(Lazy));
        assert_eq!(crate::ModuleLoading::from_cuda_version("13.0"), Ok(Lazy));
        assert_eq!(crate::ModuleLoading::from_cuda_version("11.6.2"), Ok(Eager));
        for bad in ["1.2", "12", "12.x", "12.4.1.0", "", "-11.6"] {
            assert!(
                crate::ModuleLoading::from_cuda_version(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn h100_and_h200_totals_are_the_lent_machines_nvidia_smi_figures() {
        let h100 = card_memory("h100").unwrap();
        assert_eq!(h100.total_bytes(80 << 30), 81_559 * MIB);
        assert_eq!(h100.cublas_workspace_bytes(), 32 << 20);
        assert_eq!(
            card_memory("h200").unwrap().total_bytes(141 << 30),
            143_771 * MIB
        );
        let t4 = card_memory("t4").unwrap();
        assert_eq!(t4.cublas_workspace_bytes(), 8_519_680);
        assert_eq!(card_memory("p100").unwrap().total_bytes(16 << 30), 16 << 30);
    }
}
