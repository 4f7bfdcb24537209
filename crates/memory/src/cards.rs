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
