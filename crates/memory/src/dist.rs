//! Many GPUs: what one rank holds under data parallelism and sharding.
//!
//! - `ddp`: PyTorch's DistributedDataParallel. Every rank holds all parameters,
//!   gradients and optimizer state, plus the reducer's gradient buckets: parameters in
//!   reverse registration order, a bucket closing once it reaches 1 MiB (the first) or
//!   `bucket_cap_mb` (25 MiB, the others), one flat tensor each, allocated when DDP wraps
//!   the model. With `gradient_as_bucket_view` the `.grad` tensors are views into the
//!   buckets instead of tensors of their own.
//! - `zero1`, `zero2`, `zero3`: DeepSpeed's ZeRO stages: optimizer state, then also
//!   gradients, then also parameters partitioned over the ranks (the ZeRO paper's model
//!   states: 2Ψ + 2Ψ + KΨ/N, 2Ψ + (2 + K)Ψ/N, (2 + 2 + K)Ψ/N in mixed precision, K = 12:
//!   the fp32 master partition and Adam's two fp32 moments). As DeepSpeed 0.19 does
//!   (docs/DEEPSPEED_ZERO.md): stages 1 and 2 flatten the parameter group and give each
//!   rank one partition of ceil(Ψ / 2W) x 2 elements, whose fp32 master is a copy even in
//!   fp32 training, and flatten the gradient partition into an fp32 tensor for the step;
//!   stage 3 partitions each parameter by its element count (ceil(numel / W)), its fp32
//!   partitions being the master in fp32 training.
//! - `fsdp` (FSDP2 `fully_shard`), `fsdp-grad-op` (SHARD_GRAD_OP: parameters stay
//!   gathered from forward to backward), `hybrid` (HYBRID_SHARD: sharded within a node,
//!   replicated across nodes): parameters, gradients and optimizer state sharded per
//!   parameter (dim 0 padded to the ranks); the parameters of the unit that runs are
//!   all-gathered (the next unit's too, prefetched), gradients reduce-scattered per unit.
//! - `fsdp1`: FSDP1 `FullyShardedDataParallel` FULL_SHARD with `use_orig_params=False`:
//!   one flat parameter per unit (padded to the ranks), so one flat shard of parameters,
//!   gradient and optimizer state per unit; in backward the unit's gradients are
//!   concatenated into the unsharded flat gradient (autograd's `cat`) while the unit is
//!   still gathered, then it reshards and reduce-scatters into a new flat shard.
//!
//! Units ([`units`]): by default one per torchvision block (a ResNet BasicBlock or
//! Bottleneck `layer1.0`, a ViT encoder layer, an EfficientNet MBConv `features.2.1`,
//! a DenseNet layer, ...), what is left in the root unit.
//!
//! NCCL's own buffers live outside PyTorch's allocator: an estimate
//! ([`DEFAULT_NCCL_BYTES`]) that `--nccl-buffer` replaces.

use serde::Serialize;
use vramlab_graph::Shaped;

/// NCCL's buffers per rank outside PyTorch's allocator (channels x peers x
/// NCCL_BUFFSIZE 4 MiB, plus its kernels' workspace): an estimate, 256 MiB.
pub const DEFAULT_NCCL_BYTES: u128 = 256 << 20;

/// DeepSpeed ZeRO's default `reduce_bucket_size` (elements).
pub const DEFAULT_REDUCE_BUCKET_ELEMS: u128 = 500_000_000;

/// DDP's `bucket_cap_mb` default, in MiB.
pub const DEFAULT_BUCKET_CAP_MB: u32 = 25;

/// DDP's first bucket cap (`dist._DEFAULT_FIRST_BUCKET_BYTES`).
pub const FIRST_BUCKET_BYTES: u128 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    Ddp,
    Zero1,
    Zero2,
    Zero3,
    Fsdp,
    Fsdp1,
    FsdpGradOp,
    Hybrid,
}

impl Strategy {
    pub const ALL: [Strategy; 8] = [
        Strategy::Ddp,
        Strategy::Zero1,
        Strategy::Zero2,
        Strategy::Zero3,
        Strategy::Fsdp,
        Strategy::Fsdp1,
        Strategy::FsdpGradOp,
        Strategy::Hybrid,
    ];

    pub fn parse(s: &str) -> Result<Self, String> {
        Strategy::ALL
            .iter()
            .copied()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown strategy `{s}`: expected {}",
                    Strategy::ALL.map(|x| x.name()).join(", ")
                )
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Ddp => "ddp",
            Strategy::Zero1 => "zero1",
            Strategy::Zero2 => "zero2",
            Strategy::Zero3 => "zero3",
            Strategy::Fsdp => "fsdp",
            Strategy::Fsdp1 => "fsdp1",
            Strategy::FsdpGradOp => "fsdp-grad-op",
            Strategy::Hybrid => "hybrid",
        }
    }

    /// What each rank keeps of the optimizer state: a shard (all but DDP).
    pub fn shards_state(self) -> bool {
        self != Strategy::Ddp
    }

    /// Gradients reduce-scattered to shards (ZeRO-2 and up, every FSDP strategy).
    pub fn shards_grads(self) -> bool {
        !matches!(self, Strategy::Ddp | Strategy::Zero1)
    }

    /// Parameters sharded between uses (ZeRO-3 and every FSDP strategy).
    pub fn shards_params(self) -> bool {
        matches!(
            self,
            Strategy::Zero3
                | Strategy::Fsdp
                | Strategy::Fsdp1
                | Strategy::FsdpGradOp
                | Strategy::Hybrid
        )
    }

    /// One flat parameter per unit (FSDP1 with `use_orig_params=False`).
    pub fn flat_params(self) -> bool {
        self == Strategy::Fsdp1
    }

    /// Gathered parameters freed after each unit's forward (and gathered again for its
    /// backward): all sharding strategies but SHARD_GRAD_OP.
    pub fn reshards_after_forward(self) -> bool {
        self.shards_params() && self != Strategy::FsdpGradOp
    }
}

/// Data-parallel training over `gpus` per node times `nodes`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Distributed {
    pub gpus_per_node: u32,
    pub nodes: u32,
    pub strategy: Strategy,
    /// DDP's `bucket_cap_mb` (25) in bytes.
    pub bucket_cap_bytes: u128,
    /// DDP's `gradient_as_bucket_view`.
    pub gradient_as_bucket_view: bool,
    /// DDP's `find_unused_parameters`: the reducer keeps a used-parameter map (an int32
    /// per parameter, and its copy for the allreduce) and builds its buckets with the
    /// caps at construction, never rebuilding them.
    pub find_unused_parameters: bool,
    /// DDP's `static_graph`: the same two maps; the buckets are rebuilt after the second
    /// iteration instead of the first (same sizes).
    pub static_graph: bool,
    /// FSDP2's `reshard_after_forward` (`None`: the strategy's own: True, but False for
    /// `fsdp-grad-op`): False keeps every unit's gathered parameters from its forward to
    /// its backward.
    pub reshard_after_forward: Option<bool>,
    /// FSDP2's `MixedPrecisionPolicy(param_dtype, reduce_dtype)`: bytes per element of
    /// the gathered parameters (and so of everything the model computes; `None`: the
    /// parameters' own, fp32), and of the gradient reduce-scatter (`None`: the
    /// param_dtype). Sharded parameters, gradients and optimizer state stay fp32.
    pub param_dtype_bytes: Option<u128>,
    pub reduce_dtype_bytes: Option<u128>,
    /// FSDP2's `CPUOffloadPolicy`: sharded parameters, gradients and optimizer state live
    /// in host memory and the optimizer steps on the CPU; the device holds a unit's shard
    /// copied in for its all-gather and its reduced gradient shard until it is copied out.
    /// For zero1-3, DeepSpeed's `offload_optimizer` (device cpu): the parameters stay, the
    /// gradient partitions and optimizer state go to the host, and a buffer of the largest
    /// parameter's size stays for the copies. (On a CPU mesh nothing moves.)
    pub cpu_offload: bool,
    /// DeepSpeed ZeRO's `reduce_bucket_size` (elements; default 5e8) and `overlap_comm`
    /// (`None`: DeepSpeed's default, off for stages 1 and 2, on for stage 3): with
    /// `contiguous_gradients` (on by default) gradients are copied into an IPG buffer
    /// of `reduce_bucket_size` elements in the model's dtype, two with `overlap_comm`;
    /// stages 1 and 2 allocate them at each backward and free them after, stage 3 keeps
    /// one from initialisation (DeepSpeed 0.19.6, `stage_1_and_2.py` and `stage3.py`).
    pub reduce_bucket_elems: u128,
    pub overlap_comm: Option<bool>,
    /// NCCL's buffers outside PyTorch's allocator (pytorch-cuda); `None`:
    /// [`DEFAULT_NCCL_BYTES`].
    pub nccl_bytes: Option<u128>,
    /// Units to shard by: module-name prefixes; empty: one per torchvision block.
    pub wrap: Vec<String>,
}

impl Distributed {
    pub fn new(gpus_per_node: u32, nodes: u32, strategy: Strategy) -> Self {
        Distributed {
            gpus_per_node,
            nodes,
            strategy,
            bucket_cap_bytes: (DEFAULT_BUCKET_CAP_MB as u128) << 20,
            gradient_as_bucket_view: false,
            find_unused_parameters: false,
            static_graph: false,
            reshard_after_forward: None,
            param_dtype_bytes: None,
            reduce_dtype_bytes: None,
            cpu_offload: false,
            reduce_bucket_elems: DEFAULT_REDUCE_BUCKET_ELEMS,
            overlap_comm: None,
            nccl_bytes: None,
            wrap: Vec::new(),
        }
    }

    /// Gathered parameters freed after each unit's forward (and gathered again for its
    /// backward).
    pub fn reshards_after_forward(&self) -> bool {
        self.strategy.shards_params()
            && self
                .reshard_after_forward
                .unwrap_or(self.strategy.reshards_after_forward())
    }

    /// DeepSpeed's IPG buffers: how many (stages 1 to 3; none for the others).
    pub fn ipg_buffers(&self) -> u128 {
        let overlap = self
            .overlap_comm
            .unwrap_or(self.strategy == Strategy::Zero3);
        match self.strategy {
            Strategy::Zero1 | Strategy::Zero2 => 1 + u128::from(overlap),
            Strategy::Zero3 => 1,
            _ => 0,
        }
    }

    /// FSDP2 with a lower `param_dtype` than the parameters' fp32.
    pub fn mixed_precision(&self) -> bool {
        self.param_dtype_bytes.is_some_and(|b| b < 4)
    }

    /// Bytes of the reducer's used-parameter maps (`local_used_map_` and
    /// `local_used_map_dev_`: an int32 per parameter each), kept from construction on
    /// under `find_unused_parameters` or `static_graph`.
    pub fn used_map_bytes(&self, params: usize) -> u128 {
        if self.strategy == Strategy::Ddp && (self.find_unused_parameters || self.static_graph) {
            4 * params as u128
        } else {
            0
        }
    }

    pub fn world_size(&self) -> u128 {
        self.gpus_per_node as u128 * self.nodes as u128
    }

    /// Ranks a shard group spans: the world, or one node under HYBRID_SHARD.
    pub fn shard_ranks(&self) -> u128 {
        if self.strategy == Strategy::Hybrid {
            self.gpus_per_node as u128
        } else {
            self.world_size()
        }
        .max(1)
    }
}

/// Bytes of one rank's shard of a parameter: dim 0 split in `ranks` equal chunks, the
/// last padded (FSDP2's per-parameter sharding; ZeRO partitions by element count).
pub fn shard_bytes(shape: &[usize], elem: u128, ranks: u128) -> u128 {
    let numel: u128 = shape.iter().map(|&d| d as u128).product();
    match shape.first() {
        Some(&d0) if d0 > 0 => {
            let rest = numel / d0 as u128;
            (d0 as u128).div_ceil(ranks) * rest * elem
        }
        _ => numel * elem,
    }
}

/// DDP's buckets: parameter indices in reverse order, grouped until a bucket reaches
/// its cap (1 MiB for the first, `cap` for the others). Returns each bucket's bytes.
pub fn ddp_buckets(param_bytes: &[u128], cap: u128) -> Vec<u128> {
    let mut buckets = Vec::new();
    let mut current = 0u128;
    for &b in param_bytes.iter().rev() {
        current += b;
        let limit = if buckets.is_empty() {
            FIRST_BUCKET_BYTES
        } else {
            cap
        };
        if current >= limit {
            buckets.push(current);
            current = 0;
        }
    }
    if current > 0 {
        buckets.push(current);
    }
    buckets
}

/// Module-name templates of torchvision's repeated blocks, most specific first: `#` is
/// a number, `x#` a word then a number, `x_#`/`x#-#` likewise, `*` any part.
const BLOCKS: &[&[&str]] = &[
    &["encoder", "layers", "encoder_layer_#"],
    &["features", "denseblock#", "denselayer#"],
    &["trunk_output", "block#", "block#-#"],
    &["layer#", "#"],
    &["layers", "#", "#"],
    &["stage#", "#"],
    &["features", "#", "#"],
    &["blocks", "#", "layers", "#"],
    &["features", "#"],
    &["inception*"],
    &["Mixed_*"],
    &["aux#"],
    &["AuxLogits"],
];

fn part_matches(template: &str, part: &str) -> bool {
    if template == "*" {
        return true;
    }
    if let Some(prefix) = template.strip_suffix('*') {
        return part.starts_with(prefix) && part.len() > prefix.len();
    }
    // Split the template at each `#`; every `#` matches one or more digits.
    let mut rest = part;
    let pieces: Vec<&str> = template.split('#').collect();
    for (k, piece) in pieces.iter().enumerate() {
        let Some(r) = rest.strip_prefix(piece) else {
            return false;
        };
        rest = r;
        if k + 1 < pieces.len() {
            let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                return false;
            }
            rest = &rest[digits..];
        }
    }
    rest.is_empty()
}

/// A layer name's unit: its torchvision block (`layer1.0`, `features.3.1`,
/// `encoder.layers.encoder_layer_0`, `features.denseblock1.denselayer2`,
/// `trunk_output.block1.block1-0`, `inception4a`, ...), or the root unit (`None`) for
/// stems and heads.
pub fn block_of(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    BLOCKS.iter().find_map(|t| {
        (parts.len() > t.len() && t.iter().zip(&parts).all(|(tp, p)| part_matches(tp, p)))
            .then(|| parts[..t.len()].join("."))
    })
}

/// Each node's unit index (0 is the root unit), units in first-use order, given
/// explicit prefixes or none (one unit per torchvision block).
pub fn units(g: &Shaped, wrap: &[String]) -> (Vec<usize>, usize) {
    let mut names: Vec<String> = Vec::new();
    let mut of_node = Vec::with_capacity(g.nodes().len());
    for n in g.nodes() {
        let unit = if wrap.is_empty() {
            block_of(&n.name)
        } else {
            wrap.iter()
                .filter(|w| n.name == **w || n.name.starts_with(&format!("{w}.")))
                .max_by_key(|w| w.len())
                .cloned()
        };
        of_node.push(match unit {
            None => 0,
            Some(u) => match names.iter().position(|x| *x == u) {
                Some(k) => k + 1,
                None => {
                    names.push(u);
                    names.len()
                }
            },
        });
    }
    (of_node, names.len() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_torchvisions_repeated_modules() {
        assert_eq!(block_of("layer1.0.conv1").as_deref(), Some("layer1.0"));
        assert_eq!(
            block_of("layer3.5.downsample.0").as_deref(),
            Some("layer3.5")
        );
        assert_eq!(
            block_of("encoder.layers.encoder_layer_11.mlp.0").as_deref(),
            Some("encoder.layers.encoder_layer_11")
        );
        assert_eq!(
            block_of("features.denseblock2.denselayer3.conv1").as_deref(),
            Some("features.denseblock2.denselayer3")
        );
        assert_eq!(
            block_of("trunk_output.block1.block1-0.f.a.0").as_deref(),
            Some("trunk_output.block1.block1-0")
        );
        assert_eq!(
            block_of("features.2.1.block.0.0").as_deref(),
            Some("features.2.1")
        );
        assert_eq!(block_of("features.0.0").as_deref(), Some("features.0"));
        assert_eq!(
            block_of("inception4a.branch1.conv").as_deref(),
            Some("inception4a")
        );
        for root in [
            "conv1",
            "bn1",
            "fc",
            "class_token",
            "encoder.ln",
            "heads.head",
            "layer1",
        ] {
            assert_eq!(block_of(root), None, "{root}");
        }
    }

    #[test]
    fn ddp_buckets_start_at_1_mib_then_25() {
        // 30 params of 1 MiB: reverse order, first bucket closes at 1 MiB, then every
        // 25 MiB, the rest in a last bucket.
        let mib = 1u128 << 20;
        let b = ddp_buckets(&vec![mib; 30], 25 * mib);
        assert_eq!(b, vec![mib, 25 * mib, 4 * mib]);
        assert_eq!(b.iter().sum::<u128>(), 30 * mib);
        // A single large parameter fills the first bucket alone.
        assert_eq!(ddp_buckets(&[100 * mib], 25 * mib), vec![100 * mib]);
    }

    #[test]
    fn shards_split_dim_0_and_pad_the_last() {
        assert_eq!(shard_bytes(&[10, 3], 4, 4), 3 * 3 * 4);
        assert_eq!(shard_bytes(&[8], 4, 8), 4);
        assert_eq!(shard_bytes(&[1, 197, 768], 4, 2), 197 * 768 * 4);
    }
}
