//! A simulator of PyTorch's CUDA caching allocator (`c10/cuda/CUDACachingAllocator.cpp`,
//! `DeviceCachingAllocator`), driven by the planner's trace of every malloc and free.
//!
//! It answers what `torch.cuda.max_memory_allocated()` and `max_memory_reserved()` say,
//! how much of the reserved memory sits in cached blocks at the peak (fragmentation),
//! and whether a request fails with "CUDA out of memory" under a device limit. The
//! rules follow the allocator's functions, named in the comments: `round_size`,
//! `get_pool`, `get_allocation_size`, `get_free_block`, `should_split`,
//! `alloc_found_block`, `free_block`, `try_merge_blocks`, `alloc_block`,
//! `release_available_cached_blocks`, `release_cached_blocks`,
//! `garbage_collect_cached_blocks`, and the expandable-segment path
//! (`try_allocate_expandable_block`, `find_expandable_block`, `map_block`,
//! `unmap_block`). The settings of `PYTORCH_CUDA_ALLOC_CONF` are parsed as
//! `AllocatorConfig::parseArgs` parses them.
//!
//! One stream only (training on the default stream), no CUDA graphs, no IPC, no
//! `recordStream` events: a freed block is reusable at once, as on one stream.

use std::collections::BTreeSet;

use serde::Serialize;

/// All sizes are rounded to at least 512 bytes (`kMinBlockSize`).
pub const K_MIN_BLOCK_SIZE: u128 = 512;
/// The largest "small" allocation is 1 MiB (`kSmallSize`).
pub const K_SMALL_SIZE: u128 = 1 << 20;
/// Small allocations are packed in 2 MiB segments (`kSmallBuffer`).
pub const K_SMALL_BUFFER: u128 = 2 << 20;
/// Requests between 1 and 10 MiB get a 20 MiB segment (`kLargeBuffer`).
pub const K_LARGE_BUFFER: u128 = 20 << 20;
/// Below this, a large request uses a `kLargeBuffer` segment (`kMinLargeAlloc`).
pub const K_MIN_LARGE_ALLOC: u128 = 10 << 20;
/// Larger segments are rounded up to 2 MiB (`kRoundLarge`).
pub const K_ROUND_LARGE: u128 = 2 << 20;
const MIB: u128 = 1 << 20;
/// `kRoundUpPowerOfTwoIntervals`: 1 MiB, 2 MiB, ... 32 GiB and above.
const INTERVALS: usize = 16;

/// The settings of `PYTORCH_CUDA_ALLOC_CONF` (or `PYTORCH_ALLOC_CONF`) that change where
/// memory goes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AllocConf {
    /// `expandable_segments:True`: one segment per pool that grows by pages (2 MiB for
    /// the small pool, 20 MiB for the large one) instead of one cudaMalloc per segment.
    pub expandable_segments: bool,
    /// `max_split_size_mb`: blocks this large or larger are never split. `None`:
    /// unlimited (the default, `SIZE_MAX`).
    pub max_split_size: Option<u128>,
    /// `max_non_split_rounding_mb`: how much larger than an oversize request a cached
    /// oversize block may be (default `kLargeBuffer`).
    pub max_non_split_rounding: u128,
    /// `roundup_power2_divisions`, per power-of-two interval from 1 MiB (index 0) to
    /// 32 GiB and above (index 15); 0 or 1: plain 512-byte rounding.
    pub roundup_power2_divisions: [u64; INTERVALS],
    /// `garbage_collection_threshold`, in (0, 1); active only under a per-process memory
    /// fraction, as in PyTorch.
    pub garbage_collection_threshold: Option<f64>,
}

impl Default for AllocConf {
    fn default() -> Self {
        AllocConf {
            expandable_segments: false,
            max_split_size: None,
            max_non_split_rounding: K_LARGE_BUFFER,
            roundup_power2_divisions: [0; INTERVALS],
            garbage_collection_threshold: None,
        }
    }
}

fn is_pow2(v: u128) -> bool {
    v != 0 && v & (v - 1) == 0
}

fn log2_floor(v: u128) -> u32 {
    127 - v.leading_zeros()
}

impl AllocConf {
    /// Parses a `PYTORCH_CUDA_ALLOC_CONF` value such as
    /// `expandable_segments:True,max_split_size_mb:128` (`AllocatorConfig::lexArgs` and
    /// `parseArgs`). Options that do not change device memory (`release_lock_on_cudamalloc`,
    /// the `pinned_*` ones) are accepted and ignored.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut tokens: Vec<String> = Vec::new();
        let mut buf = String::new();
        for c in s.chars() {
            if matches!(c, ',' | ':' | '[' | ']') {
                if !buf.is_empty() {
                    tokens.push(std::mem::take(&mut buf));
                }
                tokens.push(c.to_string());
            } else if c != ' ' {
                buf.push(c);
            }
        }
        if !buf.is_empty() {
            tokens.push(buf);
        }
        let mut conf = AllocConf::default();
        let err = |m: String| format!("--alloc-conf: {m}");
        let value = |i: usize, key: &str| -> Result<&str, String> {
            if tokens.get(i).map(String::as_str) != Some(":") {
                return Err(err(format!("expected `:` after `{key}`")));
            }
            tokens
                .get(i + 1)
                .map(String::as_str)
                .ok_or_else(|| err(format!("expected a value after `{key}:`")))
        };
        let number = |v: &str, key: &str| -> Result<u128, String> {
            v.parse::<u128>()
                .map_err(|_| err(format!("`{key}` takes a whole number, got `{v}`")))
        };
        let boolean = |v: &str, key: &str| -> Result<bool, String> {
            match v {
                "True" => Ok(true),
                "False" => Ok(false),
                _ => Err(err(format!("`{key}` takes True or False, got `{v}`"))),
            }
        };
        let mut i = 0;
        while i < tokens.len() {
            let key = tokens[i].clone();
            match key.as_str() {
                "max_split_size_mb" | "max_non_split_rounding_mb" => {
                    let mb = number(value(i + 1, &key)?, &key)?;
                    // parseMaxSplitSize: at least kLargeBuffer / 1 MiB = 20.
                    if mb < K_LARGE_BUFFER / MIB {
                        return Err(err(format!("`{key}` must be at least 20, got {mb}")));
                    }
                    let bytes = mb
                        .checked_mul(MIB)
                        .ok_or_else(|| err(format!("`{key}` is too large")))?;
                    if key == "max_split_size_mb" {
                        conf.max_split_size = Some(bytes);
                    } else {
                        conf.max_non_split_rounding = bytes;
                    }
                    i += 3;
                }
                "garbage_collection_threshold" => {
                    let v = value(i + 1, &key)?;
                    let t: f64 = v.parse().map_err(|_| {
                        err(format!(
                            "`garbage_collection_threshold` takes a number in (0, 1), got `{v}`"
                        ))
                    })?;
                    if !(t > 0.0 && t < 1.0) {
                        return Err(err(format!(
                            "`garbage_collection_threshold` must be in (0, 1), got {v}"
                        )));
                    }
                    conf.garbage_collection_threshold = Some(t);
                    i += 3;
                }
                "expandable_segments" => {
                    conf.expandable_segments = boolean(value(i + 1, &key)?, &key)?;
                    i += 3;
                }
                "release_lock_on_cudamalloc" | "pinned_use_cuda_host_register" => {
                    boolean(value(i + 1, &key)?, &key)?;
                    i += 3;
                }
                "pinned_num_register_threads" => {
                    number(value(i + 1, &key)?, &key)?;
                    i += 3;
                }
                "backend" => {
                    let v = value(i + 1, &key)?;
                    if v != "native" {
                        return Err(err(format!(
                            "backend `{v}` is not modelled: only the native caching allocator is"
                        )));
                    }
                    i += 3;
                }
                "roundup_power2_divisions" => {
                    i = parse_divisions(&tokens, i, &mut conf.roundup_power2_divisions)
                        .map_err(err)?;
                }
                _ => {
                    return Err(err(format!(
                        "unknown option `{key}`: expected expandable_segments, max_split_size_mb, \
                         roundup_power2_divisions, garbage_collection_threshold, \
                         max_non_split_rounding_mb, backend"
                    )))
                }
            }
            // parseArgs: options are separated by commas.
            if i < tokens.len() {
                if tokens[i] != "," {
                    return Err(err(format!("expected `,` before `{}`", tokens[i])));
                }
                i += 1;
                if i == tokens.len() {
                    return Err(err("a trailing `,` with no option after it".into()));
                }
            }
        }
        Ok(conf)
    }

    /// `AllocatorConfig::roundup_power2_divisions(size)`: the divisions of the
    /// power-of-two interval that holds `size`.
    fn divisions(&self, size: u128) -> u64 {
        let index = (log2_floor(size.max(1)) as i64 - 20).clamp(0, INTERVALS as i64 - 1);
        self.roundup_power2_divisions[index as usize]
    }

    /// A short description for reports: the settings that differ from the default.
    pub fn describe(&self) -> String {
        let d = AllocConf::default();
        let mut parts = Vec::new();
        if self.expandable_segments {
            parts.push("expandable_segments:True".to_string());
        }
        if let Some(m) = self.max_split_size {
            parts.push(format!("max_split_size_mb:{}", m / MIB));
        }
        if self.max_non_split_rounding != d.max_non_split_rounding {
            parts.push(format!(
                "max_non_split_rounding_mb:{}",
                self.max_non_split_rounding / MIB
            ));
        }
        if self.roundup_power2_divisions != d.roundup_power2_divisions {
            let v = &self.roundup_power2_divisions;
            if v.iter().all(|x| *x == v[0]) {
                parts.push(format!("roundup_power2_divisions:{}", v[0]));
            } else {
                let list: Vec<String> = v
                    .iter()
                    .enumerate()
                    .map(|(i, x)| format!("{}:{x}", 1u64 << i))
                    .collect();
                parts.push(format!("roundup_power2_divisions:[{}]", list.join(",")));
            }
        }
        if let Some(t) = self.garbage_collection_threshold {
            parts.push(format!("garbage_collection_threshold:{t}"));
        }
        if parts.is_empty() {
            "default".into()
        } else {
            parts.join(",")
        }
    }
}

/// `parseRoundUpPower2Divisions`: either one power of two for every interval, or a list
/// `[256:1,512:2,>:8]` keyed by interval start in MiB (`>`: every interval from the last
/// one named). Returns the index of the token after the value.
fn parse_divisions(
    t: &[String],
    key_at: usize,
    out: &mut [u64; INTERVALS],
) -> Result<usize, String> {
    let tok = |i: usize| t.get(i).map(String::as_str);
    if tok(key_at + 1) != Some(":") {
        return Err("expected `:` after `roundup_power2_divisions`".into());
    }
    let pow2_or_zero = |v: &str| -> Result<u64, String> {
        let n: u64 = v
            .parse()
            .map_err(|_| format!("`roundup_power2_divisions` takes powers of two, got `{v}`"))?;
        if n != 0 && !n.is_power_of_two() {
            return Err(format!(
                "`roundup_power2_divisions`: {n} is not a power of two"
            ));
        }
        Ok(n)
    };
    let mut i = key_at + 2;
    match tok(i) {
        Some("[") => {
            let mut first = true;
            let mut last_index = 0usize;
            i += 1;
            loop {
                match tok(i) {
                    Some("]") => return Ok(i + 1),
                    None => return Err("`roundup_power2_divisions`: missing `]`".into()),
                    Some(interval) => {
                        if tok(i + 1) != Some(":") {
                            return Err(format!(
                                "`roundup_power2_divisions`: expected `:` after `{interval}`"
                            ));
                        }
                        let v = pow2_or_zero(
                            tok(i + 2).ok_or("`roundup_power2_divisions`: missing a value")?,
                        )?;
                        if interval == ">" {
                            out[last_index..].fill(v);
                        } else {
                            let mb: u64 = interval.parse().map_err(|_| {
                                format!("`roundup_power2_divisions`: interval `{interval}` is not a number of MiB")
                            })?;
                            if !mb.is_power_of_two() {
                                return Err(format!(
                                    "`roundup_power2_divisions`: interval {mb} is not a power of two"
                                ));
                            }
                            let index = (mb.ilog2() as usize).min(INTERVALS - 1);
                            if first {
                                out[..index].fill(v);
                                first = false;
                            }
                            out[index] = v;
                            last_index = index;
                        }
                        i += 3;
                        match tok(i) {
                            Some(",") => i += 1,
                            Some("]") => {}
                            _ => {
                                return Err("`roundup_power2_divisions`: expected `,` or `]`".into())
                            }
                        }
                    }
                }
            }
        }
        Some(v) => {
            let n = pow2_or_zero(v)?;
            if n == 0 {
                return Err("`roundup_power2_divisions` must be a power of two".into());
            }
            out.fill(n);
            Ok(i + 1)
        }
        None => Err("expected a value after `roundup_power2_divisions:`".into()),
    }
}

/// `roundup_power2_next_division`: rounds up to the next of `divisions` equal steps
/// between two powers of two (1200 with 4 divisions: 1280).
fn roundup_power2_next_division(size: u128, divisions: u64) -> u128 {
    if is_pow2(size) {
        return size;
    }
    let floor = 1u128 << log2_floor(size);
    let step = floor >> log2_floor(divisions as u128);
    if step == 0 {
        return floor << 1;
    }
    let round_floor = size & !(step - 1);
    if round_floor == size {
        size
    } else {
        round_floor + step
    }
}

/// A current value and its high-water mark since the last reset (`Stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stat {
    pub current: u128,
    pub peak: u128,
}

impl Stat {
    fn add(&mut self, v: u128) {
        self.current += v;
        self.peak = self.peak.max(self.current);
    }
    fn sub(&mut self, v: u128) {
        self.current -= v;
    }
}

/// `DeviceStats`, the part a memory report needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AllocStats {
    /// `allocated_bytes`: blocks handed out (`memory_allocated`).
    pub allocated_bytes: Stat,
    /// `reserved_bytes`: segments held (`memory_reserved`).
    pub reserved_bytes: Stat,
    /// Reserved bytes at the moment allocated bytes reached their peak.
    pub reserved_at_allocated_peak: u128,
    /// Segments from cudaMalloc now held (`segment`; expandable segments' pages do not
    /// count, as in PyTorch).
    pub segments: u64,
    /// `num_alloc_retries`: cudaMalloc retried after freeing every cached block.
    pub num_alloc_retries: u64,
    /// `num_ooms`: requests that failed.
    pub num_ooms: u64,
    /// `num_device_alloc` and `num_device_free`: cudaMalloc / cudaFree (map / unmap).
    pub num_device_alloc: u64,
    pub num_device_free: u64,
}

/// A request the allocator could not serve: PyTorch raises `OutOfMemoryError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutOfMemory {
    /// The request as the tensor asked for it.
    pub requested: u128,
    /// "Tried to allocate": the segment size the allocator asked the device for.
    pub tried_to_allocate: u128,
    pub allocated: u128,
    pub reserved: u128,
}

#[derive(Debug, Clone)]
struct Block {
    size: u128,
    ptr: u128,
    small: bool,
    allocated: bool,
    prev: Option<usize>,
    next: Option<usize>,
    /// The expandable segment it lies in.
    segment: Option<usize>,
    /// Backed by physical pages (always true outside expandable segments).
    mapped: bool,
    gc_count_base: u64,
}

/// An ordered map on a sorted vector: a pool holds tens of free blocks, and a planner
/// inserts and removes them thousands of times per simulation; a B-tree allocated and
/// freed a node on most of those (a fifth of `fit`'s time went to the heap).
#[derive(Debug, Clone)]
struct SortedMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for SortedMap<K, V> {
    fn default() -> Self {
        SortedMap(Vec::new())
    }
}

impl<K: Ord + Copy, V: Copy> SortedMap<K, V> {
    fn insert(&mut self, k: K, v: V) {
        match self.0.binary_search_by(|(x, _)| x.cmp(&k)) {
            Ok(i) => self.0[i].1 = v,
            Err(i) => self.0.insert(i, (k, v)),
        }
    }

    fn remove(&mut self, k: &K) -> Option<V> {
        let i = self.0.binary_search_by(|(x, _)| x.cmp(k)).ok()?;
        Some(self.0.remove(i).1)
    }

    /// Entries from the first key at or after `k`, in order.
    fn range_from(&self, k: K) -> std::slice::Iter<'_, (K, V)> {
        let i = self.0.partition_point(|(x, _)| *x < k);
        self.0[i..].iter()
    }

    fn iter(&self) -> std::slice::Iter<'_, (K, V)> {
        self.0.iter()
    }

    fn values(&self) -> impl DoubleEndedIterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

#[derive(Debug, Default)]
struct Pool {
    /// Free mapped blocks by (size, address): `BlockComparatorSize`, so the first entry
    /// at or after (size, 0) is the best fit.
    blocks: SortedMap<(u128, u128), usize>,
    /// Unmapped ranges of expandable segments by address (`BlockComparatorAddress`).
    unmapped: BTreeSet<(u128, usize)>,
    get_free_blocks_call_count: u64,
}

#[derive(Debug, Clone, Copy)]
struct ExpandableSegment {
    base: u128,
    page: u128,
}

/// The caching allocator of one device and one stream.
#[derive(Debug)]
pub struct CachingAllocator {
    conf: AllocConf,
    blocks: Vec<Block>,
    unused_slots: Vec<usize>,
    small: Pool,
    large: Pool,
    segments: Vec<ExpandableSegment>,
    /// `total_allocated_memory`: bytes obtained from the device.
    total_allocated_memory: u128,
    /// What the device can give this process in all (cudaMalloc fails past it).
    device_limit: Option<u128>,
    /// `allowed_memory_maximum` under `set_per_process_memory_fraction`.
    allowed_memory_maximum: Option<u128>,
    /// The address the next segment starts at (addresses only order equal-size blocks).
    next_address: u128,
    stats: AllocStats,
}

/// One segment of [`CachingAllocator::segments`]: its blocks' sizes and whether each is
/// allocated (`active_allocated`) or cached (`inactive`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentView {
    pub address: u128,
    pub size: u128,
    pub small: bool,
    pub blocks: Vec<(u128, bool)>,
}

/// Handle of an allocated block.
pub type BlockId = usize;

impl CachingAllocator {
    /// An allocator whose device can hand out `device_limit` bytes in all (None:
    /// unlimited), with `allowed_memory_maximum` set as
    /// `torch.cuda.set_per_process_memory_fraction` sets it.
    pub fn new(
        conf: AllocConf,
        device_limit: Option<u128>,
        allowed_memory_maximum: Option<u128>,
    ) -> Self {
        CachingAllocator {
            conf,
            blocks: Vec::new(),
            unused_slots: Vec::new(),
            small: Pool::default(),
            large: Pool::default(),
            segments: Vec::new(),
            total_allocated_memory: 0,
            device_limit,
            allowed_memory_maximum,
            next_address: 1 << 40,
            stats: AllocStats::default(),
        }
    }

    pub fn stats(&self) -> AllocStats {
        self.stats
    }

    pub fn conf(&self) -> &AllocConf {
        &self.conf
    }

    /// The address the next segment starts at. A replay of a recorded trace
    /// (`torch.cuda.memory._snapshot()`'s `segment_alloc` events) gives each segment the
    /// address the driver gave it, so that equal-size free blocks are chosen in the same
    /// order as PyTorch chose them (the pools order blocks by size, then address).
    pub fn set_next_segment_address(&mut self, address: u128) {
        self.next_address = address;
    }

    /// The segments from cudaMalloc now held, by address, with their blocks in address
    /// order (`torch.cuda.memory._snapshot()`'s `segments`; expandable segments are not
    /// listed).
    pub fn segments(&self) -> Vec<SegmentView> {
        let mut dead = vec![false; self.blocks.len()];
        for &i in &self.unused_slots {
            dead[i] = true;
        }
        let mut out: Vec<SegmentView> = (0..self.blocks.len())
            .filter(|&i| !dead[i] && self.blocks[i].prev.is_none())
            .filter(|&i| self.blocks[i].segment.is_none())
            .map(|head| {
                let mut blocks = Vec::new();
                let mut at = Some(head);
                while let Some(i) = at {
                    blocks.push((self.blocks[i].size, self.blocks[i].allocated));
                    at = self.blocks[i].next;
                }
                SegmentView {
                    address: self.blocks[head].ptr,
                    size: blocks.iter().map(|b| b.0).sum(),
                    small: self.blocks[head].small,
                    blocks,
                }
            })
            .collect();
        out.sort_by_key(|s| s.address);
        out
    }

    /// `resetPeakStats`: every peak becomes the current value.
    pub fn reset_peak_stats(&mut self) {
        self.stats.allocated_bytes.peak = self.stats.allocated_bytes.current;
        self.stats.reserved_bytes.peak = self.stats.reserved_bytes.current;
        self.stats.reserved_at_allocated_peak = self.stats.reserved_bytes.current;
    }

    /// `round_size`: at least 512 B, a multiple of 512 B, or the next power-of-two
    /// division where `roundup_power2_divisions` asks for it.
    pub fn round_size(&self, size: u128) -> u128 {
        if size < K_MIN_BLOCK_SIZE {
            return K_MIN_BLOCK_SIZE;
        }
        let divisions = self.conf.divisions(size);
        if divisions > 1 && size > K_MIN_BLOCK_SIZE * divisions as u128 {
            roundup_power2_next_division(size, divisions)
        } else {
            size.div_ceil(K_MIN_BLOCK_SIZE) * K_MIN_BLOCK_SIZE
        }
    }

    /// `get_allocation_size`: the segment a miss asks cudaMalloc for.
    pub fn allocation_size(size: u128) -> u128 {
        if size <= K_SMALL_SIZE {
            K_SMALL_BUFFER
        } else if size < K_MIN_LARGE_ALLOC {
            K_LARGE_BUFFER
        } else {
            size.div_ceil(K_ROUND_LARGE) * K_ROUND_LARGE
        }
    }

    fn pool(&mut self, small: bool) -> &mut Pool {
        if small {
            &mut self.small
        } else {
            &mut self.large
        }
    }

    fn max_split(&self) -> u128 {
        self.conf.max_split_size.unwrap_or(u128::MAX)
    }

    fn gc_active(&self) -> bool {
        self.allowed_memory_maximum.is_some() && self.conf.garbage_collection_threshold.is_some()
    }

    fn new_block(&mut self, b: Block) -> usize {
        if let Some(i) = self.unused_slots.pop() {
            self.blocks[i] = b;
            i
        } else {
            self.blocks.push(b);
            self.blocks.len() - 1
        }
    }

    /// `BlockPool::insert_into_blocks`: a free mapped block enters its pool.
    fn insert_free(&mut self, id: usize) {
        let (small, size, ptr) = (
            self.blocks[id].small,
            self.blocks[id].size,
            self.blocks[id].ptr,
        );
        let pool = self.pool(small);
        let count = pool.get_free_blocks_call_count;
        pool.blocks.insert((size, ptr), id);
        self.blocks[id].gc_count_base = count;
    }

    fn remove_free(&mut self, id: usize) {
        let (small, size, ptr) = (
            self.blocks[id].small,
            self.blocks[id].size,
            self.blocks[id].ptr,
        );
        self.pool(small).blocks.remove(&(size, ptr));
    }

    /// `malloc`: serves `orig_size` bytes or reports the out-of-memory error.
    pub fn malloc(&mut self, orig_size: u128) -> Result<BlockId, OutOfMemory> {
        let size = self.round_size(orig_size);
        // get_pool: requests up to kSmallSize go to the small pool.
        let small = size <= K_SMALL_SIZE;
        let alloc_size = Self::allocation_size(size);
        let mut found = self.get_free_block(small, size);
        if found.is_none() {
            if self.gc_active() {
                self.garbage_collect_cached_blocks();
            }
            found = self
                .alloc_block(small, size, alloc_size, false)
                .or_else(|| {
                    self.release_available_cached_blocks(small, size)
                        .then(|| self.alloc_block(small, size, alloc_size, false))
                        .flatten()
                })
                .or_else(|| {
                    self.release_cached_blocks();
                    self.alloc_block(small, size, alloc_size, true)
                });
        }
        let Some(block) = found else {
            self.stats.num_ooms += 1;
            return Err(OutOfMemory {
                requested: orig_size,
                tried_to_allocate: alloc_size,
                allocated: self.stats.allocated_bytes.current,
                reserved: self.stats.reserved_bytes.current,
            });
        };
        let split = self.should_split(block, size);
        Ok(self.alloc_found_block(block, size, split))
    }

    /// `get_free_block`: the smallest cached block of the pool that fits (best fit),
    /// except that blocks of `max_split_size` or more serve only requests of that size
    /// or more, and then only within `max_non_split_rounding` of the request.
    fn get_free_block(&mut self, small: bool, size: u128) -> Option<usize> {
        let gc = self.gc_active();
        let expandable = self.conf.expandable_segments;
        let max_split = self.max_split();
        let rounding = self.conf.max_non_split_rounding;
        let pool = if small {
            &mut self.small
        } else {
            &mut self.large
        };
        if gc {
            pool.get_free_blocks_call_count += 1;
        }
        let mut candidates = pool.blocks.range_from((size, 0)).map(|(_, id)| *id);
        let mut id = candidates.next()?;
        if self.blocks[id].segment.is_some() {
            if expandable {
                // Within an expandable segment a block's size for best fit is what it can
                // grow to: itself plus the unmapped range after it.
                let blocks = &self.blocks;
                let expandable_size = |b: usize| {
                    blocks[b].size
                        + blocks[b]
                            .next
                            .filter(|n| !blocks[*n].mapped)
                            .map_or(0, |n| blocks[n].size)
                };
                for next in candidates {
                    if blocks[id].segment.is_some() && expandable_size(next) < expandable_size(id) {
                        id = next;
                    } else {
                        break;
                    }
                }
            } else {
                // Expandable segments turned off: only ordinary blocks.
                id = std::iter::once(id)
                    .chain(candidates)
                    .find(|b| self.blocks[*b].segment.is_none())?;
            }
        }
        let block_size = self.blocks[id].size;
        if size < max_split && block_size >= max_split {
            return None;
        }
        if size >= max_split && block_size >= size.saturating_add(rounding) {
            return None;
        }
        self.remove_free(id);
        Some(id)
    }

    /// `should_split`: small-pool blocks (and every block of an expandable segment)
    /// split when at least 512 B remain; large-pool blocks when the request is under
    /// `max_split_size` and more than 1 MiB (`kSmallSize`) would remain.
    fn should_split(&self, id: usize, size: u128) -> bool {
        let b = &self.blocks[id];
        let remaining = b.size - size;
        if b.small || self.conf.expandable_segments {
            remaining >= K_MIN_BLOCK_SIZE
        } else {
            size < self.max_split() && remaining > K_SMALL_SIZE
        }
    }

    /// `alloc_found_block`: splits off the rest (which returns to the pool) and hands
    /// out the block; allocated bytes count the whole block.
    fn alloc_found_block(&mut self, id: usize, size: u128, split: bool) -> usize {
        let block = if split {
            let rest = id;
            let prev = self.blocks[rest].prev;
            let b = self.new_block(Block {
                size,
                ptr: self.blocks[rest].ptr,
                small: self.blocks[rest].small,
                allocated: false,
                prev,
                next: Some(rest),
                segment: self.blocks[rest].segment,
                mapped: true,
                gc_count_base: 0,
            });
            if let Some(p) = prev {
                self.blocks[p].next = Some(b);
            }
            let r = &mut self.blocks[rest];
            r.prev = Some(b);
            r.ptr += size;
            r.size -= size;
            self.insert_free(rest);
            b
        } else {
            id
        };
        self.blocks[block].allocated = true;
        let bytes = self.blocks[block].size;
        let before = self.stats.allocated_bytes.peak;
        self.stats.allocated_bytes.add(bytes);
        if self.stats.allocated_bytes.peak > before {
            self.stats.reserved_at_allocated_peak = self.stats.reserved_bytes.current;
        }
        block
    }

    /// `free` and `free_block`: the block returns to its pool, merged with free
    /// neighbours of the same segment.
    pub fn free(&mut self, id: BlockId) {
        debug_assert!(self.blocks[id].allocated, "free of a block not allocated");
        self.blocks[id].allocated = false;
        self.stats.allocated_bytes.sub(self.blocks[id].size);
        if let Some(p) = self.blocks[id].prev {
            self.try_merge_blocks(id, p);
        }
        if let Some(n) = self.blocks[id].next {
            self.try_merge_blocks(id, n);
        }
        self.insert_free(id);
    }

    /// `try_merge_blocks`: `dst` (in no pool set now) absorbs `src` when `src` is free
    /// and mapped alike.
    fn try_merge_blocks(&mut self, dst: usize, src: usize) -> u128 {
        let s = self.blocks[src].clone();
        if s.allocated || s.mapped != self.blocks[dst].mapped {
            return 0;
        }
        if s.mapped {
            self.remove_free(src);
        } else {
            let small = s.small;
            self.pool(small).unmapped.remove(&(s.ptr, src));
        }
        if self.blocks[dst].prev == Some(src) {
            self.blocks[dst].ptr = s.ptr;
            self.blocks[dst].prev = s.prev;
            if let Some(p) = s.prev {
                self.blocks[p].next = Some(dst);
            }
        } else {
            self.blocks[dst].next = s.next;
            if let Some(n) = s.next {
                self.blocks[n].prev = Some(dst);
            }
        }
        self.blocks[dst].size += s.size;
        self.unused_slots.push(src);
        s.size
    }

    /// `alloc_block`: a new segment of `alloc_size` from the device, or pages mapped into
    /// an expandable segment; fails past the fraction's maximum or the device's memory.
    fn alloc_block(
        &mut self,
        small: bool,
        size: u128,
        alloc_size: u128,
        is_retry: bool,
    ) -> Option<usize> {
        if is_retry {
            self.stats.num_alloc_retries += 1;
        }
        if self
            .allowed_memory_maximum
            .is_some_and(|max| self.total_allocated_memory + alloc_size > max)
        {
            return None;
        }
        if self.conf.expandable_segments {
            return self.try_allocate_expandable_block(small, size);
        }
        if self
            .device_limit
            .is_some_and(|limit| self.total_allocated_memory + alloc_size > limit)
        {
            return None;
        }
        self.total_allocated_memory += alloc_size;
        let ptr = self.next_address;
        self.next_address += alloc_size.div_ceil(K_ROUND_LARGE) * K_ROUND_LARGE;
        self.stats.reserved_bytes.add(alloc_size);
        self.stats.segments += 1;
        self.stats.num_device_alloc += 1;
        Some(self.new_block(Block {
            size: alloc_size,
            ptr,
            small,
            allocated: false,
            prev: None,
            next: None,
            segment: None,
            mapped: true,
            gc_count_base: 0,
        }))
    }

    /// `release_block`: cudaFree of a whole cached segment.
    fn release_block(&mut self, id: usize) {
        self.remove_free(id);
        let size = self.blocks[id].size;
        self.total_allocated_memory -= size;
        self.stats.reserved_bytes.sub(size);
        self.stats.segments -= 1;
        self.stats.num_device_free += 1;
        self.unused_slots.push(id);
    }

    /// `release_available_cached_blocks`: with `max_split_size` set, frees the smallest
    /// cached oversize block that covers the request, or else oversize blocks from the
    /// largest down until their sizes add up to it.
    fn release_available_cached_blocks(&mut self, small: bool, size: u128) -> bool {
        let Some(max_split) = self.conf.max_split_size else {
            return false;
        };
        if self.conf.expandable_segments {
            // PyTorch asserts here (release_block of an expandable block); the
            // combination is left to release_cached_blocks.
            return false;
        }
        let key = size.max(max_split);
        let pool = if small { &self.small } else { &self.large };
        if let Some((_, id)) = pool.blocks.range_from((key, 0)).next() {
            let id = *id;
            self.release_block(id);
            return true;
        }
        let descending: Vec<(u128, usize)> = pool
            .blocks
            .iter()
            .rev()
            .map(|((s, _), id)| (*s, *id))
            .take_while(|(s, _)| *s >= max_split)
            .collect();
        let mut released = 0;
        for (s, id) in descending {
            if released >= key {
                break;
            }
            released += s;
            self.release_block(id);
        }
        released >= key
    }

    /// `release_cached_blocks` (also `torch.cuda.empty_cache()`): frees every cached
    /// segment that is not split, in both pools, and unmaps the free pages of
    /// expandable segments.
    pub fn release_cached_blocks(&mut self) -> bool {
        for small in [false, true] {
            // release_blocks
            let free: Vec<usize> = self.pool(small).blocks.values().copied().collect();
            let mut to_unmap = Vec::new();
            for id in free {
                let b = &self.blocks[id];
                if b.segment.is_some() {
                    to_unmap.push(id);
                } else if b.prev.is_none() && b.next.is_none() {
                    self.release_block(id);
                }
            }
            for id in to_unmap {
                self.unmap_block(id);
                let b = &self.blocks[id];
                if b.prev.is_none() && b.next.is_none() && !b.mapped {
                    // release_expandable_segment: the whole range is unmapped.
                    let (ptr, small) = (b.ptr, b.small);
                    self.pool(small).unmapped.remove(&(ptr, id));
                    self.unused_slots.push(id);
                }
            }
        }
        true
    }

    /// `garbage_collect_cached_blocks`: past `garbage_collection_threshold` of the
    /// allowed memory, frees unsplit large cached blocks that have waited at least the
    /// average number of `get_free_block` calls, oldest first, until enough is freed.
    fn garbage_collect_cached_blocks(&mut self) {
        let (Some(max), Some(t)) = (
            self.allowed_memory_maximum,
            self.conf.garbage_collection_threshold,
        ) else {
            return;
        };
        let threshold = (t * max as f64) as u128;
        if self.total_allocated_memory <= threshold {
            return;
        }
        let target = self.total_allocated_memory - threshold;
        let count = self.large.get_free_blocks_call_count;
        let freeable = |s: &Self| -> Vec<(usize, u64)> {
            s.large
                .blocks
                .values()
                .filter(|id| {
                    let b = &s.blocks[**id];
                    b.prev.is_none() && b.next.is_none() && b.segment.is_none()
                })
                .map(|id| (*id, count - s.blocks[*id].gc_count_base))
                .collect()
        };
        let mut total_age: u64 = freeable(self).iter().map(|(_, a)| a).sum();
        let mut n = freeable(self).len() as u64;
        let mut reclaimed = 0u128;
        let mut freed_one = true;
        while reclaimed < target && freed_one && n > 0 {
            let age_threshold = total_age as f64 / n as f64;
            freed_one = false;
            for (id, age) in freeable(self) {
                if age as f64 >= age_threshold {
                    freed_one = true;
                    reclaimed += self.blocks[id].size;
                    total_age -= age;
                    n -= 1;
                    self.release_block(id);
                }
            }
        }
    }

    /// `try_allocate_expandable_block`: maps pages at the lowest address with room
    /// (`find_expandable_block`), merging them with the free block before them, until
    /// one free block holds `size`.
    fn try_allocate_expandable_block(&mut self, small: bool, size: u128) -> Option<usize> {
        let mut candidate = self.find_expandable_block(small, size);
        if !self.blocks[candidate].mapped {
            let len = self.blocks[candidate].size.min(size);
            if !self.map_block(candidate, len) {
                return None;
            }
        }
        while self.blocks[candidate].size < size {
            let remaining = size - self.blocks[candidate].size;
            let next = self.blocks[candidate].next?;
            let len = remaining.min(self.blocks[next].size);
            if !self.map_block(next, len) {
                return None;
            }
            candidate = next;
        }
        self.remove_free(candidate);
        Some(candidate)
    }

    /// `find_expandable_block`: the lowest unmapped range (or the free block just before
    /// it) with `size` bytes of free and unmapped space after it; else a new segment
    /// reserving address space for 9/8 of the device.
    fn find_expandable_block(&mut self, small: bool, size: u128) -> usize {
        let allocatable = |s: &Self, b: Option<usize>| b.filter(|b| !s.blocks[*b].allocated);
        let starts: Vec<usize> = self
            .pool(small)
            .unmapped
            .iter()
            .map(|(_, id)| *id)
            .collect();
        for c in starts {
            let c = allocatable(self, self.blocks[c].prev).unwrap_or(c);
            let mut bytes = 0;
            let mut b = Some(c);
            while bytes < size {
                match allocatable(self, b) {
                    Some(id) => {
                        bytes += self.blocks[id].size;
                        b = self.blocks[id].next;
                    }
                    None => break,
                }
            }
            if bytes >= size {
                return c;
            }
        }
        let page = if small {
            K_SMALL_BUFFER
        } else {
            K_LARGE_BUFFER
        };
        let device = self.device_limit.unwrap_or(1 << 100);
        let va = (device + device / 8).div_ceil(page).max(1) * page;
        let base = self.next_address.div_ceil(page) * page;
        self.next_address = base + va;
        self.segments.push(ExpandableSegment { base, page });
        let id = self.new_block(Block {
            size: va,
            ptr: base,
            small,
            allocated: false,
            prev: None,
            next: None,
            segment: Some(self.segments.len() - 1),
            mapped: false,
            gc_count_base: 0,
        });
        self.pool(small).unmapped.insert((base, id));
        id
    }

    /// `map_block`: backs the pages under the first `size` bytes of an unmapped range
    /// (whole pages), splitting off the rest of the range, and merges the mapped part
    /// with free neighbours. Fails when the device has no more pages.
    fn map_block(&mut self, id: usize, size: u128) -> bool {
        let seg = self.segments[self.blocks[id].segment.expect("an expandable block")];
        let ptr = self.blocks[id].ptr;
        let begin = (ptr - seg.base) / seg.page;
        let end = (ptr + size - seg.base).div_ceil(seg.page);
        let mapped = (end - begin) * seg.page;
        if mapped == 0
            || self
                .device_limit
                .is_some_and(|limit| self.total_allocated_memory + mapped > limit)
        {
            return false;
        }
        let small = self.blocks[id].small;
        self.pool(small).unmapped.remove(&(ptr, id));
        self.blocks[id].mapped = true;
        if mapped < self.blocks[id].size {
            let next = self.blocks[id].next;
            let rest = self.new_block(Block {
                size: self.blocks[id].size - mapped,
                ptr: ptr + mapped,
                small,
                allocated: false,
                prev: Some(id),
                next,
                segment: self.blocks[id].segment,
                mapped: false,
                gc_count_base: 0,
            });
            if let Some(n) = next {
                self.blocks[n].prev = Some(rest);
            }
            self.blocks[id].next = Some(rest);
            self.blocks[id].size = mapped;
            self.pool(small).unmapped.insert((ptr + mapped, rest));
        }
        if let Some(p) = self.blocks[id].prev {
            self.try_merge_blocks(id, p);
        }
        if let Some(n) = self.blocks[id].next {
            self.try_merge_blocks(id, n);
        }
        self.insert_free(id);
        self.total_allocated_memory += mapped;
        // map_block raises reserved bytes, not the segment count (a segment is a cudaMalloc).
        self.stats.reserved_bytes.add(mapped);
        self.stats.num_device_alloc += 1;
        true
    }

    /// `unmap_block`: gives back the whole pages inside a free block of an expandable
    /// segment; the partial pages at its ends stay as free mapped blocks.
    fn unmap_block(&mut self, id: usize) {
        let seg = self.segments[self.blocks[id].segment.expect("an expandable block")];
        let (ptr, size, small) = (
            self.blocks[id].ptr,
            self.blocks[id].size,
            self.blocks[id].small,
        );
        let begin = (ptr - seg.base).div_ceil(seg.page);
        let end = (ptr + size - seg.base) / seg.page;
        if begin >= end {
            return;
        }
        self.remove_free(id);
        let start = seg.base + begin * seg.page;
        let len = (end - begin) * seg.page;
        let before = start - ptr;
        if before > 0 {
            let prev = self.blocks[id].prev;
            let b = self.new_block(Block {
                size: before,
                ptr,
                small,
                allocated: false,
                prev,
                next: Some(id),
                segment: self.blocks[id].segment,
                mapped: true,
                gc_count_base: 0,
            });
            if let Some(p) = prev {
                self.blocks[p].next = Some(b);
            }
            self.blocks[id].prev = Some(b);
            self.insert_free(b);
        }
        let after = size - before - len;
        if after > 0 {
            let next = self.blocks[id].next;
            let b = self.new_block(Block {
                size: after,
                ptr: start + len,
                small,
                allocated: false,
                prev: Some(id),
                next,
                segment: self.blocks[id].segment,
                mapped: true,
                gc_count_base: 0,
            });
            if let Some(n) = next {
                self.blocks[n].prev = Some(b);
            }
            self.blocks[id].next = Some(b);
            self.insert_free(b);
        }
        {
            let b = &mut self.blocks[id];
            b.ptr = start;
            b.size = len;
            b.mapped = false;
        }
        if let Some(p) = self.blocks[id].prev {
            self.try_merge_blocks(id, p);
        }
        if let Some(n) = self.blocks[id].next {
            self.try_merge_blocks(id, n);
        }
        let p = self.blocks[id].ptr;
        self.pool(small).unmapped.insert((p, id));
        self.total_allocated_memory -= len;
        self.stats.reserved_bytes.sub(len);
        self.stats.num_device_free += 1;
    }
}

#[cfg(test)]
impl CachingAllocator {
    /// Every live block: allocated bytes, reserved bytes and the pools agree, and no two
    /// neighbouring free blocks of the same kind were left unmerged.
    fn check_invariants(&self) {
        let live: Vec<usize> = (0..self.blocks.len())
            .filter(|i| !self.unused_slots.contains(i))
            .collect();
        let allocated: u128 = live
            .iter()
            .filter(|i| self.blocks[**i].allocated)
            .map(|i| self.blocks[*i].size)
            .sum();
        assert_eq!(allocated, self.stats.allocated_bytes.current);
        let mapped: u128 = live
            .iter()
            .filter(|i| self.blocks[**i].mapped)
            .map(|i| self.blocks[*i].size)
            .sum();
        assert_eq!(mapped, self.stats.reserved_bytes.current);
        assert_eq!(mapped, self.total_allocated_memory);
        let free = live
            .iter()
            .filter(|i| !self.blocks[**i].allocated && self.blocks[**i].mapped)
            .count();
        assert_eq!(free, self.small.blocks.len() + self.large.blocks.len());
        for &i in &live {
            let b = &self.blocks[i];
            if let Some(n) = b.next {
                let nb = &self.blocks[n];
                assert_eq!(nb.prev, Some(i));
                assert_eq!(b.ptr + b.size, nb.ptr, "neighbours are contiguous");
                assert!(
                    b.allocated || nb.allocated || b.mapped != nb.mapped,
                    "two free neighbours left unmerged"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random trace of mallocs and frees of every size class, checked after each call.
    fn random_trace(conf: AllocConf, limit: Option<u128>) {
        let mut a = CachingAllocator::new(conf, limit, None);
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut live = Vec::new();
        for _ in 0..3000 {
            if next() % 5 < 3 || live.is_empty() {
                let size = match next() % 4 {
                    0 => next() % 4096 + 1,
                    1 => next() % (1 << 20) + 1,
                    2 => next() % (10 << 20) + 1,
                    _ => next() % (64 << 20) + 1,
                } as u128;
                if let Ok(b) = a.malloc(size) {
                    live.push(b);
                }
            } else {
                let i = (next() % live.len() as u64) as usize;
                a.free(live.swap_remove(i));
            }
            a.check_invariants();
        }
        for b in live {
            a.free(b);
        }
        a.check_invariants();
        a.release_cached_blocks();
        a.check_invariants();
        assert_eq!(a.stats().reserved_bytes.current, 0);
    }

    #[test]
    fn random_traces_keep_the_books_and_merge_every_free_neighbour() {
        random_trace(AllocConf::default(), None);
        random_trace(AllocConf::default(), Some(512 << 20));
        random_trace(AllocConf::parse("expandable_segments:True").unwrap(), None);
        random_trace(
            AllocConf::parse("expandable_segments:True").unwrap(),
            Some(512 << 20),
        );
        random_trace(
            AllocConf::parse("max_split_size_mb:20").unwrap(),
            Some(512 << 20),
        );
        random_trace(
            AllocConf::parse("roundup_power2_divisions:4").unwrap(),
            None,
        );
    }

    const M: u128 = MIB;

    fn alloc() -> CachingAllocator {
        CachingAllocator::new(AllocConf::default(), None, None)
    }

    #[test]
    fn small_requests_round_to_512_and_share_one_2_mib_segment() {
        let mut a = alloc();
        a.malloc(1).unwrap();
        a.malloc(1000).unwrap();
        a.malloc(K_SMALL_SIZE).unwrap();
        let s = a.stats();
        // 512 + 1024 + 1 MiB, split from one 2 MiB segment (should_split: >= 512 B left).
        assert_eq!(s.allocated_bytes.current, 512 + 1024 + M);
        assert_eq!(s.reserved_bytes.current, 2 * M);
        assert_eq!(s.segments, 1);
    }

    #[test]
    fn requests_between_1_and_10_mib_split_a_20_mib_segment() {
        let mut a = alloc();
        let x = a.malloc(3 * M).unwrap();
        assert_eq!(a.stats().reserved_bytes.current, 20 * M);
        // The 17 MiB rest went back to the large pool and serves the next request.
        a.malloc(5 * M).unwrap();
        assert_eq!(a.stats().reserved_bytes.current, 20 * M);
        assert_eq!(a.stats().allocated_bytes.current, 8 * M);
        // 12 MiB + 1 B: rounded to 12 MiB + 512, a segment of 14 MiB (kRoundLarge).
        a.malloc(12 * M + 1).unwrap();
        assert_eq!(a.stats().reserved_bytes.current, 34 * M);
        // Freed, the 3 MiB block merges back with nothing (its neighbour is in use).
        a.free(x);
        assert_eq!(a.stats().allocated_bytes.current, 5 * M + 12 * M + 512);
    }

    #[test]
    fn a_large_block_is_not_split_when_at_most_1_mib_would_remain() {
        let mut a = alloc();
        // 11.5 MiB: a 12 MiB segment; 0.5 MiB would remain, not more than kSmallSize,
        // so the whole block is handed out and counted as allocated.
        a.malloc(11 * M + M / 2).unwrap();
        assert_eq!(a.stats().allocated_bytes.current, 12 * M);
        assert_eq!(a.stats().reserved_bytes.current, 12 * M);
    }

    #[test]
    fn freed_blocks_are_reused_and_merged() {
        let mut a = alloc();
        let x = a.malloc(4 * M).unwrap();
        let y = a.malloc(4 * M).unwrap();
        a.free(x);
        a.free(y);
        // The segment is whole again: 20 MiB fits a 19 MiB request without cudaMalloc.
        a.malloc(19 * M).unwrap();
        let s = a.stats();
        assert_eq!(s.num_device_alloc, 1);
        assert_eq!(s.reserved_bytes.current, 20 * M);
        // 1 MiB remains: not more than kSmallSize, so no split.
        assert_eq!(s.allocated_bytes.current, 20 * M);
        assert_eq!(s.allocated_bytes.peak, 20 * M);
    }

    #[test]
    fn a_miss_frees_the_cache_and_retries_before_failing() {
        let mut a = CachingAllocator::new(AllocConf::default(), Some(40 * M), None);
        let x = a.malloc(30 * M).unwrap();
        a.free(x);
        // 32 MiB: the cached 30 MiB segment is too small and 30 + 32 > 40, so the
        // allocator frees its cache (release_cached_blocks) and retries.
        a.malloc(32 * M).unwrap();
        let s = a.stats();
        assert_eq!(s.reserved_bytes.current, 32 * M);
        assert_eq!(s.reserved_bytes.peak, 32 * M);
        assert_eq!(s.num_alloc_retries, 1);
        assert_eq!(s.num_device_free, 1);
        assert_eq!(s.num_ooms, 0);
    }

    #[test]
    fn out_of_memory_when_live_blocks_leave_no_room() {
        let mut a = CachingAllocator::new(AllocConf::default(), Some(40 * M), None);
        a.malloc(30 * M).unwrap();
        let e = a.malloc(11 * M).unwrap_err();
        assert_eq!(e.tried_to_allocate, 12 * M);
        assert_eq!(e.reserved, 30 * M);
        assert_eq!(a.stats().num_ooms, 1);
    }

    #[test]
    fn max_split_size_keeps_oversize_blocks_whole() {
        let conf = AllocConf::parse("max_split_size_mb:20").unwrap();
        let mut a = CachingAllocator::new(conf, None, None);
        let x = a.malloc(30 * M).unwrap();
        a.free(x);
        // A 4 MiB request may not split the cached 30 MiB block: a new 20 MiB segment.
        a.malloc(4 * M).unwrap();
        assert_eq!(a.stats().reserved_bytes.current, 50 * M);
        // An oversize request takes the 30 MiB block whole, being within 20 MiB of it.
        a.malloc(25 * M).unwrap();
        assert_eq!(a.stats().reserved_bytes.current, 50 * M);
        assert_eq!(a.stats().allocated_bytes.current, 4 * M + 30 * M);
    }

    #[test]
    fn release_available_cached_blocks_frees_oversize_blocks_largest_first() {
        let conf = AllocConf::parse("max_split_size_mb:20").unwrap();
        let mut a = CachingAllocator::new(conf, Some(64 * M), None);
        let x = a.malloc(30 * M).unwrap();
        let y = a.malloc(26 * M).unwrap();
        a.free(x);
        a.free(y);
        // 40 MiB: no cached block covers it and 56 + 40 > 64; the oversize blocks are
        // freed from the largest (30, then 26) and cudaMalloc succeeds without a retry.
        a.malloc(40 * M).unwrap();
        let s = a.stats();
        assert_eq!(s.reserved_bytes.current, 40 * M);
        assert_eq!(s.num_device_free, 2);
        assert_eq!(s.num_alloc_retries, 0);
    }

    #[test]
    fn expandable_segments_grow_one_segment_by_20_mib_pages() {
        let conf = AllocConf::parse("expandable_segments:True").unwrap();
        let mut a = CachingAllocator::new(conf, None, None);
        let x = a.malloc(3 * M).unwrap();
        assert_eq!(a.stats().reserved_bytes.current, 20 * M);
        // 30 MiB: the free 17 MiB after x is extended by one more page (37 MiB) instead of
        // a separate 30 MiB segment.
        let y = a.malloc(30 * M).unwrap();
        assert_eq!(a.stats().reserved_bytes.current, 40 * M);
        assert_eq!(a.stats().allocated_bytes.current, 33 * M);
        // Without expandable segments: 20 + 30 MiB.
        let mut b = alloc();
        b.malloc(3 * M).unwrap();
        b.malloc(30 * M).unwrap();
        assert_eq!(b.stats().reserved_bytes.current, 50 * M);
        // empty_cache unmaps every free page.
        a.free(y);
        a.release_cached_blocks();
        assert_eq!(a.stats().reserved_bytes.current, 20 * M);
        a.free(x);
        a.release_cached_blocks();
        assert_eq!(a.stats().reserved_bytes.current, 0);
    }

    #[test]
    fn expandable_segments_fail_when_no_page_is_left() {
        let conf = AllocConf::parse("expandable_segments:True").unwrap();
        let mut a = CachingAllocator::new(conf, Some(40 * M), None);
        a.malloc(30 * M).unwrap();
        assert_eq!(a.stats().reserved_bytes.current, 40 * M);
        // 10 MiB fit in the mapped pages' free rest; 11 MiB would need a third page.
        a.malloc(10 * M).unwrap();
        assert!(a.malloc(M + 1).is_err());
    }

    #[test]
    fn roundup_power2_divisions_round_to_the_next_division() {
        let conf = AllocConf::parse("roundup_power2_divisions:4").unwrap();
        let a = CachingAllocator::new(conf, None, None);
        // 5 MiB + 1 lies in [4, 8) MiB, whose quarter is 1 MiB: 6 MiB.
        assert_eq!(a.round_size(5 * M + 1), 6 * M);
        // 1200 B: not more than 512 * 4, so plain 512-byte rounding.
        assert_eq!(a.round_size(1200), 1536);
        assert_eq!(alloc().round_size(5 * M + 1), 5 * M + 512);
        assert_eq!(roundup_power2_next_division(1200, 4), 1280);
        let list = AllocConf::parse("roundup_power2_divisions:[256:1,512:2,>:8]").unwrap();
        assert_eq!(&list.roundup_power2_divisions[..8], &[1; 8]);
        assert_eq!(list.roundup_power2_divisions[8], 1);
        // `>` fills from the last interval named (512 MiB, index 9) on.
        assert_eq!(&list.roundup_power2_divisions[9..], &[8; 7]);
    }

    #[test]
    fn garbage_collection_frees_old_cached_blocks_under_a_fraction() {
        let conf = AllocConf::parse("garbage_collection_threshold:0.5").unwrap();
        let mut a = CachingAllocator::new(conf, None, Some(100 * M));
        let x = a.malloc(30 * M).unwrap();
        a.free(x);
        let y = a.malloc(40 * M).unwrap();
        a.free(y);
        // 50 MiB misses; 70 MiB reserved is past 50 % of 100, so the blocks of at least
        // average age go (the 30 MiB one: 2 calls old against 1.5), which is enough.
        a.malloc(50 * M).unwrap();
        assert_eq!(a.stats().reserved_bytes.current, 90 * M);
        // Without the threshold, the miss frees every cached block instead.
        let mut b = CachingAllocator::new(AllocConf::default(), None, Some(100 * M));
        let x = b.malloc(30 * M).unwrap();
        b.free(x);
        let y = b.malloc(40 * M).unwrap();
        b.free(y);
        b.malloc(50 * M).unwrap();
        assert_eq!(b.stats().reserved_bytes.current, 50 * M);
    }

    #[test]
    fn alloc_conf_errors_name_the_option() {
        assert!(AllocConf::parse("max_split_size_mb:10")
            .unwrap_err()
            .contains("at least 20"));
        assert!(AllocConf::parse("expandable_segments:yes")
            .unwrap_err()
            .contains("True or False"));
        assert!(AllocConf::parse("foo:1")
            .unwrap_err()
            .contains("unknown option `foo`"));
        assert!(AllocConf::parse("backend:cudaMallocAsync")
            .unwrap_err()
            .contains("not modelled"));
        assert!(AllocConf::parse("garbage_collection_threshold:1.5").is_err());
        assert!(AllocConf::parse("roundup_power2_divisions:3").is_err());
        let c = AllocConf::parse("expandable_segments:True, max_split_size_mb:128").unwrap();
        assert!(c.expandable_segments);
        assert_eq!(c.max_split_size, Some(128 * M));
        assert_eq!(
            c.describe(),
            "expandable_segments:True,max_split_size_mb:128"
        );
    }
}
