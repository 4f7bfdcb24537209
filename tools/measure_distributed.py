#!/usr/bin/env python3
"""Per-rank memory of distributed training on the CPU (torch.distributed, gloo).

Ground truth for issue 11.  Every rank runs exactly the training step of
../shared/oracle/torch_memory_oracle.py (zero_grad(set_to_none=True), forward,
F.cross_entropy, backward, step; two steps) on its own per-rank batch, with the
model wrapped by DDP, FSDP2 fully_shard or FSDP1 FullyShardedDataParallel, and
measured by the same two instruments:

  * the oracle's StorageTracker (a TorchDispatchMode registering every storage an
    aten op returns), subclassed here (DistTracker) to
      - unwrap DTensors (FSDP2 parameters, gradients and optimizer state) to their
        local shard, so the sharded storages are what is counted;
      - re-read the size of every live storage after each op in FSDP cases, because
        FSDP frees/re-allocates all-gathered parameters with storage.resize_(),
        which is not an aten op and which a dispatch mode never sees;
      - count FSDP2's sharded parameters (and their DTensor grads) as params/grads
        also while the module holds the unsharded parameters;
      - remember which phase and op created each storage (peak_other_by_origin);
      - run during the wrapper's construction too (phase "wrap"), so storages the
        wrapper allocates then (DDP's gradient buckets) are registered.
  * torch.profiler(profile_memory=True): the c10 CPU allocator's running total
    (alloc_peak), which also sees in-kernel scratch.

Usage:
  python tools/measure_distributed.py --case resnet18:ddp:sgd_momentum:2:2
      model:strategy:optimizer:per-rank-batch:world-size -> JSON list (one record per rank)
  python tools/measure_distributed.py --all --out crates/memory/tests/fixtures/pytorch-cpu-distributed.json
Strategies: ddp (bucket_cap_mb=25, gradient_as_bucket_view=False), ddp_gabv
(gradient_as_bucket_view=True), fsdp2 (fully_shard per block, then root,
reshard_after_forward=True), fsdp1 (FullyShardedDataParallel FULL_SHARD, one unit per block).

Options measured in session 6: ddp_unused (find_unused_parameters=True), ddp_static (static_graph=True),
ddp_unused_gabv (find_unused_parameters=True, gradient_as_bucket_view=True), fsdp2_noreshard
(reshard_after_forward=False everywhere), fsdp2_mp (MixedPrecisionPolicy(param_dtype=bf16,
reduce_dtype=fp32)), fsdp2_mp_bf16reduce (param_dtype=bf16, reduce_dtype=bf16), fsdp2_offload
(offload_policy=CPUOffloadPolicy()), fsdp2_offload_nopin (CPUOffloadPolicy(pin_memory=False)).
DDP and FSDP2 records also carry `alloc_full` per step / wrap (every new storage, all ops, all sizes:
"phase:op" -> {nbytes: count}) and `storage_dtypes_at_peak` (bytes by dtype of the live set at the peak).
"""
import argparse
import collections
import contextlib
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import weakref

ORACLE_DIR = os.environ.get("VRAMLAB_ORACLE_DIR", "/work/shared/oracle")
sys.path.insert(0, ORACLE_DIR)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

import torch_memory_oracle as oracle  # noqa: E402
from torch_memory_oracle import StorageTracker, allocator_stats, make_optimizer, nbytes  # noqa: E402

DTYPE = torch.float32


# ----------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------
def make_resnet18():
    import torchvision
    return torchvision.models.resnet18(weights=None, num_classes=10)


def make_vit_small():
    import torchvision
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=64, mlp_dim=128, num_classes=10)


def block_types():
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from torchvision.models.vision_transformer import EncoderBlock
    return (BasicBlock, Bottleneck, EncoderBlock)


# name -> (constructor, input shape, classes)
MODELS = {
    "resnet18": (make_resnet18, (3, 64, 64), 10),
    "vit_small": (make_vit_small, (3, 32, 32), 10),
    "simple_cnn": (oracle.SimpleCNN, (3, 32, 32), 10),
}
MODEL_NOTES = {
    "resnet18": "torchvision.models.resnet18(weights=None, num_classes=10)",
    "vit_small": "torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, "
                 "hidden_dim=64, mlp_dim=128, num_classes=10)",
    "simple_cnn": "SimpleCNN of ../shared/oracle/torch_memory_oracle.py",
}

STRATEGY_OPTIONS = {
    # true defaults: bucket_cap_mb=None means 25 MiB buckets with a 1 MiB first bucket;
    # an explicit bucket_cap_mb=25 makes the first bucket 25 MiB as well (torch 2.15 BucketCapacityConfig)
    "ddp": {"bucket_cap_mb": None, "bucket_bytes_cap": 25 * 2**20, "first_bucket_bytes_cap": 2**20,
            "gradient_as_bucket_view": False, "find_unused_parameters": False, "static_graph": False,
            "broadcast_buffers": True, "batched_grad_copy": False, "lazy_bucket_allocation": False},
    "ddp_gabv": {"bucket_cap_mb": None, "bucket_bytes_cap": 25 * 2**20, "first_bucket_bytes_cap": 2**20,
                 "gradient_as_bucket_view": True, "find_unused_parameters": False, "static_graph": False,
                 "broadcast_buffers": True, "batched_grad_copy": False, "lazy_bucket_allocation": False},
    "ddp_cap25": {"bucket_cap_mb": 25, "bucket_bytes_cap": 25 * 2**20, "first_bucket_bytes_cap": 25 * 2**20,
                  "gradient_as_bucket_view": False, "find_unused_parameters": False, "static_graph": False,
                  "broadcast_buffers": True, "batched_grad_copy": False, "lazy_bucket_allocation": False},
    "fsdp2": {"api": "torch.distributed.fsdp.fully_shard", "reshard_after_forward": True,
              "wrap": "each BasicBlock / EncoderBlock, then the root", "mesh": "init_device_mesh('cpu', (world_size,))"},
    # ---- DDP and FSDP2 options (fixtures/pytorch-cpu-distributed-options.json) ----
    "ddp_unused": {"bucket_cap_mb": None, "bucket_bytes_cap": 25 * 2**20, "first_bucket_bytes_cap": 2**20,
                   "gradient_as_bucket_view": False, "find_unused_parameters": True, "static_graph": False,
                   "broadcast_buffers": True, "batched_grad_copy": False, "lazy_bucket_allocation": False},
    "ddp_static": {"bucket_cap_mb": None, "bucket_bytes_cap": 25 * 2**20, "first_bucket_bytes_cap": 2**20,
                   "gradient_as_bucket_view": False, "find_unused_parameters": False, "static_graph": True,
                   "broadcast_buffers": True, "batched_grad_copy": False, "lazy_bucket_allocation": False},
    "ddp_unused_gabv": {"bucket_cap_mb": None, "bucket_bytes_cap": 25 * 2**20, "first_bucket_bytes_cap": 2**20,
                        "gradient_as_bucket_view": True, "find_unused_parameters": True, "static_graph": False,
                        "broadcast_buffers": True, "batched_grad_copy": False, "lazy_bucket_allocation": False},
    "fsdp2_noreshard": {"api": "torch.distributed.fsdp.fully_shard", "reshard_after_forward": False,
                        "wrap": "each BasicBlock / EncoderBlock, then the root (all reshard_after_forward=False)",
                        "mesh": "init_device_mesh('cpu', (world_size,))"},
    "fsdp2_mp": {"api": "torch.distributed.fsdp.fully_shard", "reshard_after_forward": True,
                 "wrap": "each BasicBlock / EncoderBlock, then the root", "mesh": "init_device_mesh('cpu', (world_size,))",
                 "mp_policy": "MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)",
                 "param_dtype": "bfloat16", "reduce_dtype": "float32", "output_dtype": None,
                 "cast_forward_inputs": True},
    "fsdp2_mp_bf16reduce": {"api": "torch.distributed.fsdp.fully_shard", "reshard_after_forward": True,
                            "wrap": "each BasicBlock / EncoderBlock, then the root",
                            "mesh": "init_device_mesh('cpu', (world_size,))",
                            "mp_policy": "MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16)",
                            "param_dtype": "bfloat16", "reduce_dtype": "bfloat16", "output_dtype": None,
                            "cast_forward_inputs": True},
    # extra (not in the brief): resnet18's BatchNorm refuses bf16 weights next to fp32 running stats on the
    # CPU, so every BatchNorm2d gets its own fully_shard unit first with param_dtype=None (stays fp32)
    "fsdp2_mp_bnfp32": {"api": "torch.distributed.fsdp.fully_shard", "reshard_after_forward": True,
                        "wrap": "each BatchNorm2d (mp_policy=MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)), "
                                "then each BasicBlock / EncoderBlock, then the root",
                        "mesh": "init_device_mesh('cpu', (world_size,))",
                        "mp_policy": "MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)",
                        "param_dtype": "bfloat16", "reduce_dtype": "float32", "output_dtype": None,
                        "cast_forward_inputs": True, "bn_units_fp32": True},
    "fsdp2_offload": {"api": "torch.distributed.fsdp.fully_shard", "reshard_after_forward": True,
                      "wrap": "each BasicBlock / EncoderBlock, then the root", "mesh": "init_device_mesh('cpu', (world_size,))",
                      "offload_policy": "CPUOffloadPolicy()", "pin_memory": True},
    "fsdp2_offload_nopin": {"api": "torch.distributed.fsdp.fully_shard", "reshard_after_forward": True,
                            "wrap": "each BasicBlock / EncoderBlock, then the root",
                            "mesh": "init_device_mesh('cpu', (world_size,))",
                            "offload_policy": "CPUOffloadPolicy(pin_memory=False)", "pin_memory": False},
    "fsdp1": {"api": "torch.distributed.fsdp.FullyShardedDataParallel", "sharding_strategy": "FULL_SHARD",
              "auto_wrap_policy": "ModuleWrapPolicy({BasicBlock, Bottleneck, EncoderBlock})",
              "use_orig_params": False, "device_id": "cpu"},
    "fsdp1_sgo": {"api": "torch.distributed.fsdp.FullyShardedDataParallel", "sharding_strategy": "SHARD_GRAD_OP",
                  "auto_wrap_policy": "ModuleWrapPolicy({BasicBlock, Bottleneck, EncoderBlock})",
                  "use_orig_params": False, "device_id": "cpu"},
}


# ----------------------------------------------------------------------------
# Tracker
# ----------------------------------------------------------------------------
def _local(t):
    try:
        from torch.distributed.tensor import DTensor
    except Exception:  # pragma: no cover
        return t
    while isinstance(t, DTensor):
        t = t._local_tensor
    return t


def _skey(t):
    return _local(t).untyped_storage()._cdata


class DistTracker(StorageTracker):
    def __init__(self, model=None, optimizer=None, batch=(), resync=False):
        self.wref = {}
        self.origin = {}
        self.key_dtype = {}
        self.cur_op = "existing"
        self.resync = resync
        self.fsdp_params = []     # FSDP2 FSDPParam objects
        self.extra_params = []    # FSDP1 flat params: _local_shard counts as params even while unsharded
        self.alloc_log = []       # (phase, op, nbytes) of every new storage
        super().__init__(model, optimizer, batch)

    def _new_peak(self):
        super()._new_peak()
        self.peak_origin = {k: self.origin.get(k) for k in self.peak_live}
        self.peak_dtype = {k: self.key_dtype.get(k) for k in self.peak_live} if hasattr(self, "key_dtype") else {}

    def _free(self, key):
        super()._free(key)
        self.wref.pop(key, None)
        self.origin.pop(key, None)
        self.key_dtype.pop(key, None)

    def register(self, t):
        if isinstance(t, torch.Tensor):
            t = _local(t)
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            return False
        new = super().register(t)
        if new:
            key = t.untyped_storage()._cdata
            self.wref[key] = weakref.ref(t.untyped_storage())
            self.origin[key] = f"{self.phase}:{self.cur_op}"
            self.key_dtype[key] = str(t.dtype)
            self.alloc_log.append((self.phase, self.cur_op, self.live[key]))
        return new

    def resync_sizes(self):
        """Storages resized in place with storage.resize_() (FSDP's free/alloc of
        unsharded parameters) never show up as an op: re-read every live size."""
        for k, r in list(self.wref.items()):
            st = r()
            if st is None or k not in self.live:
                continue
            nb = st.nbytes()
            if nb != self.live[k]:
                self.cur += nb - self.live[k]
                self.live[k] = nb

    def _fsdp_sharded(self):
        ps, gs = [], []
        for fp in self.extra_params:   # FSDP1 flat parameters: their sharded data, once lazily initialised
            ls = getattr(fp, "_local_shard", None)
            if ls is not None:
                ps.append(ls)
        for fp in self.fsdp_params:
            sp = fp.sharded_param
            ps.append(sp)
            if sp.grad is not None:
                gs.append(sp.grad)
        return ps, gs

    def category_tensors_all(self):
        out = super().category_tensors_all()
        ps, gs = self._fsdp_sharded()
        return out + ps + gs

    def category_keys(self):
        cat = {}

        def put(ts, c):
            for t in ts:
                if isinstance(t, torch.Tensor):
                    cat.setdefault(_skey(t), c)
        sp, sg = self._fsdp_sharded()
        if self.model is not None:
            params = list(self.model.parameters())
            put(params, "params")
            put(sp, "params")
            put(self.model.buffers(), "buffers")
            put([p.grad for p in params if p.grad is not None], "grads")
            put(sg, "grads")
        if self.optimizer is not None:
            for s in self.optimizer.state.values():
                put([v for v in s.values() if isinstance(v, torch.Tensor)], "opt_state")
        put(self.batch, "batch")
        return cat

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        in_keys = set()
        for a in tree_flatten((args, kwargs))[0]:
            if isinstance(a, torch.Tensor):
                try:
                    in_keys.add(_skey(a))
                except Exception:
                    pass
        self.cur_op = str(func)
        for o in tree_flatten(out)[0]:
            if isinstance(o, torch.Tensor):
                try:
                    k = _skey(o)
                except Exception:
                    continue
                if k in in_keys and k not in self.live:
                    continue
                self.register(o)
        if self.phase == "optimizer" and self.optimizer is not None:
            for s in self.optimizer.state.values():
                for v in s.values():
                    if isinstance(v, torch.Tensor):
                        self.register(v)
        if self.resync:
            self.resync_sizes()
        self.last_op = str(func)
        if self.cur > self.peak:
            self._new_peak()
        return out

    def peak_other_by_origin(self):
        end_cat = self.category_keys()
        res = collections.Counter()
        for k, (nb, ser) in self.peak_live.items():
            c = self.peak_cat.get(k)
            if c is None:
                same = k in self.live and self.serial.get(k) == ser
                c = "opt_state" if same and end_cat.get(k) == "opt_state" else "other"
            if c == "other" and nb:
                res[self.peak_origin.get(k) or "?"] += nb
        return dict(res.most_common())


INTERESTING = ("fsdp", "c10d", "chunk_cat", "split_with_sizes", "empty", "zeros", "cat", "new_", "flatten",
               "clone", "_to_copy", "copy")


def summarize_allocs(log):
    """phase:op -> {nbytes: count} for the ops that communication code uses."""
    res = collections.defaultdict(collections.Counter)
    for ph, op, nb in log:
        if any(s in op for s in INTERESTING):
            res[f"{ph}:{op}"][nb] += 1
    return {k: {str(n): c for n, c in sorted(v.items(), reverse=True)} for k, v in res.items()}


# ----------------------------------------------------------------------------
# One rank
# ----------------------------------------------------------------------------
def thread_alloc_stats(prof, step_names):
    """What the plain allocator total cannot say: allocations on threads other than the
    training thread (gloo's worker threads), and frees that were never reported (a
    buffer freed on a thread the profiler does not follow stays in the running total)."""
    from torch._C._profiler import _EventType
    evs, ranges = [], {}

    def walk(n, path):
        if n.tag == _EventType.Allocation:
            ef = n.extra_fields
            if ef.device.type == "cpu":
                evs.append((n.start_time_ns, ef.alloc_size, ef.ptr, n.start_tid, path[0] if path else "?"))
        elif n.name in step_names:
            ranges[n.name] = (n.start_time_ns, n.end_time_ns, n.start_tid)
        for c in n.children:
            walk(c, path + [n.name])
    for r in prof.profiler.kineto_results.experimental_event_tree():
        walk(r, [])
    evs.sort(key=lambda e: e[0])
    # allocations whose free was never reported: the same address is allocated again
    unreported = set()
    live = {}
    for i, (t, nb, ptr, tid, root) in enumerate(evs):
        if nb > 0:
            if ptr in live:
                unreported.add(live[ptr])
            live[ptr] = i
        else:
            live.pop(ptr, None)
    res = {}
    for name, (s, e, main_tid) in ranges.items():
        other = collections.defaultdict(collections.Counter)
        for t, nb, ptr, tid, root in evs:
            if s <= t <= e and tid != main_tid and nb > 0:
                other[root][nb] += 1
        unrep = [evs[i][1] for i in unreported if s <= evs[i][0] <= e]
        res[name] = {"other_thread_allocs": {k: {str(n): c for n, c in sorted(v.items(), reverse=True)}
                                             for k, v in other.items()},
                     "alloc_unreported_frees": len(unrep), "alloc_unreported_free_bytes": sum(unrep)}
    return res


def wrap_model(strategy, model, ws):
    import torch.distributed as dist
    info = {}
    if strategy.startswith("ddp"):
        from torch.nn.parallel import DistributedDataParallel as DDP
        o = STRATEGY_OPTIONS[strategy]
        kw = {"bucket_cap_mb": o["bucket_cap_mb"]} if o["bucket_cap_mb"] is not None else {}
        if o["find_unused_parameters"]:
            kw["find_unused_parameters"] = True
        if o["static_graph"]:
            kw["static_graph"] = True
        w = DDP(model, gradient_as_bucket_view=o["gradient_as_bucket_view"], **kw)
        return w, info
    if strategy.startswith("fsdp2"):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        o = STRATEGY_OPTIONS[strategy]
        fkw = {"reshard_after_forward": o["reshard_after_forward"]}
        if "mp_policy" in o:
            from torch.distributed.fsdp import MixedPrecisionPolicy
            fkw["mp_policy"] = MixedPrecisionPolicy(param_dtype=getattr(torch, o["param_dtype"]),
                                                    reduce_dtype=getattr(torch, o["reduce_dtype"]))
        if "offload_policy" in o:
            from torch.distributed.fsdp import CPUOffloadPolicy
            fkw["offload_policy"] = CPUOffloadPolicy(pin_memory=o["pin_memory"])
        info["fully_shard_kwargs"] = {k: repr(v) for k, v in fkw.items()}
        mesh = init_device_mesh("cpu", (ws,))
        units = []
        if o.get("bn_units_fp32"):
            from torch.distributed.fsdp import MixedPrecisionPolicy
            for name, m in model.named_modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    fully_shard(m, mesh=mesh, reshard_after_forward=o["reshard_after_forward"],
                                mp_policy=MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32))
                    units.append((name, m))
        for name, m in model.named_modules():
            if isinstance(m, block_types()):
                fully_shard(m, mesh=mesh, **fkw)
                units.append((name, m))
        fully_shard(model, mesh=mesh, **fkw)
        units.append(("<root>", model))
        info["units"] = units
        return model, info
    if strategy in ("fsdp1", "fsdp1_sgo"):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, ShardingStrategy
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy
        ss = ShardingStrategy.FULL_SHARD if strategy == "fsdp1" else ShardingStrategy.SHARD_GRAD_OP
        w = FSDP(model, sharding_strategy=ss,
                 auto_wrap_policy=ModuleWrapPolicy(set(block_types())), device_id=torch.device("cpu"))
        return w, info
    raise ValueError(strategy)


def fsdp2_units(info):
    """Per FSDP2 unit: its parameters unsharded and the padded shard per rank."""
    out, fps = [], []
    for name, m in info["units"]:
        st = m._get_fsdp_state()
        pg = st._fsdp_param_group
        if pg is None:
            out.append({"unit": name, "num_params": 0})
            continue
        fl = pg.fsdp_params
        fps += fl
        out.append({
            "unit": name,
            "num_tensors": len(fl),
            "numel": sum(fp._orig_size.numel() for fp in fl),
            "unsharded_bytes": sum(fp._orig_size.numel() * 4 for fp in fl),
            "padded_unsharded_bytes": sum(fp.padded_sharded_param_size.numel() * 4 for fp in fl) * pg.mesh_info.shard_mesh_size,
            "sharded_padded_bytes": sum(fp._sharded_param_data.untyped_storage().nbytes() for fp in fl),
            "sharded_local_bytes": sum(_local(fp.sharded_param).numel() * 4 for fp in fl),
        })
    return out, fps


def fsdp2_units_dtypes(info):
    """After the run (lazy init done): per unit the all-gather dtype and bytes in that dtype,
    the sharded parameter dtype/bytes, the reduce dtype and the sharded grad dtype."""
    out = []
    for name, m in info["units"]:
        pg = m._get_fsdp_state()._fsdp_param_group
        if pg is None:
            continue
        fl = pg.fsdp_params
        ws = pg.mesh_info.shard_mesh_size
        rec = {"unit": name}
        pd = [fp.param_dtype or fp.orig_dtype for fp in fl]
        rec["orig_dtypes"] = sorted({str(fp.orig_dtype) for fp in fl})
        rec["all_gather_dtypes"] = sorted({str(d) for d in pd})
        rec["reduce_dtypes"] = sorted({str(fp.unsharded_grad_dtype) for fp in fl})
        rec["unsharded_bytes_in_param_dtype"] = sum(fp._orig_size.numel() * d.itemsize for fp, d in zip(fl, pd))
        rec["padded_all_gather_bytes_in_param_dtype"] = sum(
            fp.padded_sharded_param_size.numel() * d.itemsize for fp, d in zip(fl, pd)) * ws
        rec["padded_reduce_scatter_input_bytes"] = sum(
            fp.padded_sharded_param_size.numel() * fp.unsharded_grad_dtype.itemsize for fp in fl) * ws
        rec["sharded_param_dtypes"] = sorted({str(_local(fp.sharded_param).dtype) for fp in fl})
        gd = {str(_local(fp.sharded_param.grad).dtype) for fp in fl if fp.sharded_param.grad is not None}
        rec["sharded_grad_dtypes"] = sorted(gd)
        rec["sharded_grad_bytes"] = nbytes([_local(fp.sharded_param.grad) for fp in fl
                                            if fp.sharded_param.grad is not None])   # distinct storages
        rec["sharded_grad_numel_bytes"] = sum(_local(fp.sharded_param.grad).numel() * _local(fp.sharded_param.grad).element_size()
                                              for fp in fl if fp.sharded_param.grad is not None)
        rec["sharded_param_storage_devices_pinned"] = sorted({
            (str(fp._sharded_param_data.device), bool(fp._sharded_param_data.is_pinned())
             if torch.cuda.is_available() else None) for fp in fl}, key=str)
        rec["offload_to_cpu"] = sorted({bool(getattr(fp, "offload_to_cpu", False)) for fp in fl})
        out.append(rec)
    return out


def dtype_bytes(tr, keys):
    """Bytes by dtype of the given tracker storage keys (dtype of the tensor that created it)."""
    res = collections.Counter()
    for k, nb in keys:
        res[tr.key_dtype.get(k, "?")] += nb
    return dict(res)


def full_alloc_counter(log):
    res = collections.defaultdict(collections.Counter)
    for ph, op, nb in log:
        res[f"{ph}:{op}"][nb] += 1
    return {k: {str(n): c for n, c in sorted(v.items(), reverse=True)} for k, v in res.items()}


def ddp_reducer_info(w):
    """What the Reducer exposes from Python (no tracker running)."""
    out = {}
    try:
        lum = w.reducer._get_local_used_map()
        out["local_used_map"] = {"dtype": str(lum.dtype), "numel": lum.numel(),
                                 "nbytes": lum.untyped_storage().nbytes(), "device": str(lum.device)}
    except Exception as e:
        out["local_used_map_error"] = repr(e)[:300]
    out["has_rebuilt_buckets_attr"] = bool(getattr(w, "_has_rebuilt_buckets", False))
    try:
        ld = w._get_ddp_logging_data()
        out["logging"] = {k: ld[k] for k in ("bucket_sizes", "rebuilt_bucket_sizes", "has_rebuilt_buckets",
                                             "find_unused_parameters", "static_graph", "gradient_as_bucket_view",
                                             "can_set_static_graph", "unused_parameter_size") if k in ld}
    except Exception as e:
        out["logging_error"] = repr(e)[:300]
    return out


def run_rank(model_name, strategy, optim_name, bs, ws, rank, steps=int(os.environ.get("DIST6_STEPS", "2"))):
    from torch.profiler import profile, ProfilerActivity, record_function
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=ws)
    ctor, shape, ncls = MODELS[model_name]
    rec = {"model": model_name, "model_def": MODEL_NOTES[model_name], "input_shape": list(shape), "batch": bs,
           "optimizer": optim_name, "num_classes": ncls, "dtype": "float32", "torch": torch.__version__,
           "world_size": ws, "rank": rank, "strategy": strategy, "options": STRATEGY_OPTIONS[strategy],
           "backend": "gloo"}
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    prof.__enter__()
    torch.manual_seed(0)
    model = ctor().to(DTYPE).train()
    g = torch.Generator().manual_seed(1 + rank)   # each rank its own data
    x = torch.randn(bs, *shape, dtype=DTYPE, generator=g)
    y = torch.randint(0, ncls, (bs,), dtype=torch.int64, generator=g)
    params = list(model.parameters())
    rec.update({"num_params": sum(p.numel() for p in params), "param_bytes": nbytes(params),
                "buffer_bytes": nbytes(list(model.buffers())),
                "batch_image_bytes": nbytes([x]), "batch_label_bytes": nbytes([y])})
    rec["batch_bytes"] = rec["batch_image_bytes"] + rec["batch_label_bytes"]
    del params  # FSDP replaces the parameters: hold no reference to the originals
    is_ddp = strategy.startswith("ddp")
    # extension: full allocation counters for the new strategies and the two baselines they are compared to
    extended = strategy not in ("ddp_gabv", "ddp_cap25", "fsdp1", "fsdp1_sgo")
    tr = DistTracker(model, None, (x, y), resync=strategy.startswith("fsdp"))
    tr.register_existing()
    live0 = tr.cur
    with record_function("vramlab_wrap"):
        with tr:
            tr.phase = "wrap"
            tr.reset_peak()
            wrapped, info = wrap_model(strategy, model, ws)
            tr.phase = "idle"
    gc.collect()
    tr.model = wrapped
    if strategy.startswith("fsdp2"):
        rec["fsdp_units"], tr.fsdp_params = fsdp2_units(info)
        if strategy != "fsdp2":
            rec["fully_shard_kwargs"] = info.get("fully_shard_kwargs")
    if strategy in ("fsdp1", "fsdp1_sgo"):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        tr.extra_params = [m._handle.flat_param for m in wrapped.modules()
                           if isinstance(m, FSDP) and m._handle is not None]
    opt = make_optimizer(optim_name, wrapped.parameters())
    tr.optimizer = opt
    tr.register_existing()
    cat = tr.category_keys()
    wrap_res = [nb for k, nb in tr.live.items() if cat.get(k) is None and tr.origin.get(k, "").startswith("wrap:")]
    rec["wrap_allocs_ordered"] = [[op, nb] for ph, op, nb in tr.alloc_log if ph == "wrap" and nb >= 1024]
    rec["wrap"] = {"live_before": live0, "peak": tr.peak, "peak_op": tr.peak_op, "live_after": tr.cur,
                   "live_after_breakdown": tr.breakdown(),
                   "residual_other_storages": sorted(wrap_res, reverse=True),
                   "residual_other_by_op": dict(collections.Counter(
                       tr.origin[k] for k in tr.live if cat.get(k) is None and tr.origin.get(k, "").startswith("wrap:"))),
                   "allocs_by_op": summarize_allocs(tr.alloc_log)}
    if extended:
        rec["wrap"]["alloc_full"] = full_alloc_counter(tr.alloc_log)
        rec["wrap_allocs_all_ordered"] = [[op, nb] for ph, op, nb in tr.alloc_log if ph == "wrap"]
        if is_ddp:
            rec["ddp_after_wrap"] = ddp_reducer_info(wrapped)
    local_params = [_local(p) for p in wrapped.parameters()]
    rec["local_param_bytes"] = nbytes(local_params)
    rec["local_num_params"] = sum(p.numel() for p in local_params)
    del local_params
    if is_ddp:
        model.register_forward_pre_hook(lambda m, a: setattr(tr, "phase", "forward"))
    names = [f"oracle_step{i + 1}" for i in range(steps)]
    for i in range(steps):
        gc.collect()
        tr.alloc_log = []
        step_rec = {}
        t0 = time.perf_counter()
        rf = record_function(names[i])
        rf.__enter__()
        with tr:
            tr.phase = "pre"
            step_rec["live_before"] = tr.cur
            step_rec["live_before_breakdown"] = tr.breakdown()
            tr.reset_peak()
            tr.phase = "zero_grad"
            opt.zero_grad(set_to_none=True)
            tr.phase = "ddp_pre_forward" if is_ddp else "forward"
            out = wrapped(x)
            tr.phase = "forward"
            loss = F.cross_entropy(out, y)
            tr.phase = "backward"
            loss.backward()
            tr.phase = "optimizer"
            opt.step()
            tr.phase = "post"
            del out
        rf.__exit__(None, None, None)
        step_rec["seconds"] = round(time.perf_counter() - t0, 3)
        missed = [t for t in tr.category_tensors_all() if _skey(t) not in tr.live]
        step_rec["untracked_tensors_after"] = len(missed)
        tr.register_existing()
        if tr.resync:
            tr.resync_sizes()
        step_rec["tracker_peak"] = tr.peak
        step_rec["peak_phase"] = tr.peak_phase
        step_rec["peak_op"] = tr.peak_op
        bd = tr.peak_breakdown()
        step_rec["peak_breakdown"] = bd
        assert sum(bd.values()) == tr.peak
        step_rec["peak_split"] = {"params_plus_grads": bd["params"] + bd["grads"], "buffers": bd["buffers"],
                                  "opt_state": bd["opt_state"], "batch": bd["batch"],
                                  "activations_temporaries": bd["other"]}
        step_rec["peak_other_by_origin"] = tr.peak_other_by_origin()
        if extended:
            _pd = collections.Counter()
            for k, (nb, ser) in tr.peak_live.items():
                _pd[tr.peak_dtype.get(k) or "?"] += nb
            step_rec["peak_bytes_by_dtype"] = dict(_pd)
            step_rec["live_after_bytes_by_dtype"] = dtype_bytes(tr, list(tr.live.items()))
            step_rec["alloc_full"] = full_alloc_counter(tr.alloc_log)
        step_rec["live_after"] = tr.cur
        step_rec["live_after_breakdown"] = tr.breakdown()
        cat = tr.category_keys()
        step_rec["live_after_other_by_origin"] = dict(collections.Counter(
            tr.origin.get(k, "?") for k, nb in tr.live.items() if cat.get(k) is None and nb))
        step_rec["live_after_other_sizes"] = sorted((nb for k, nb in tr.live.items() if cat.get(k) is None and nb),
                                                    reverse=True)
        grads = [p.grad for p in wrapped.parameters() if p.grad is not None]
        step_rec["grad_bytes_after"] = nbytes([_local(gr) for gr in grads])
        step_rec["grad_numel_bytes_after"] = sum(_local(gr).numel() * _local(gr).element_size() for gr in grads)
        if extended:
            step_rec["grad_dtypes_after"] = dict(collections.Counter(str(_local(gr).dtype) for gr in grads))
        step_rec["grad_storages_after"] = len({_skey(gr) for gr in grads})
        step_rec["grads_after"] = len(grads)
        step_rec["opt_state_bytes_after"] = nbytes(
            [_local(v) for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)])
        step_rec["loss"] = loss.detach().item()
        step_rec["allocs_by_op"] = summarize_allocs(tr.alloc_log)
        if is_ddp:  # DDP's pre-forward: bucket rebuild (step 2), in allocation order
            step_rec["ddp_pre_forward_allocs"] = [[op, nb] for ph, op, nb in tr.alloc_log if ph == "ddp_pre_forward"]
        if extended and is_ddp:
            step_rec["ddp_reducer"] = ddp_reducer_info(wrapped)
        rec[f"step{i + 1}"] = step_rec
        del loss, grads, missed   # hold no gradient into the next step
    if extended and strategy.startswith("fsdp2"):
        rec["fsdp_units_dtypes"] = fsdp2_units_dtypes(info)
    if strategy in ("fsdp1", "fsdp1_sgo"):
        rec["fsdp1_units"] = [{"numel_unsharded": fp._unpadded_unsharded_size.numel(),
                               "padded_unsharded_bytes": fp._padded_unsharded_size.numel() * 4,
                               "sharded_bytes": fp._local_shard.untyped_storage().nbytes()}
                              for fp in tr.extra_params]
    if is_ddp:
        try:
            ld = wrapped._get_ddp_logging_data()
            rec["ddp_logging"] = {k: ld[k] for k in ("bucket_sizes", "rebuilt_bucket_sizes",
                                                     "rebuilt_per_bucket_param_indices", "bucket_cap_bytes",
                                                     "gradient_as_bucket_view", "has_rebuilt_buckets",
                                                     "comm_hook") if k in ld}
            if extended:
                rec["ddp_logging"].update({k: ld[k] for k in ("find_unused_parameters", "static_graph",
                                                              "can_set_static_graph", "unused_parameter_size")
                                           if k in ld})
        except Exception as e:
            rec["ddp_logging_error"] = repr(e)
    prof.__exit__(None, None, None)
    st = allocator_stats(prof, set(names) | {"vramlab_wrap"})
    th = thread_alloc_stats(prof, set(names) | {"vramlab_wrap"})
    rec["wrap"].update(th.get("vramlab_wrap", {}))
    rec["wrap"].update({"alloc_" + k[6:] if k.startswith("alloc_") else k: v for k, v in st.get("vramlab_wrap", {}).items()})
    for i, n in enumerate(names):
        s = rec[f"step{i + 1}"]
        s.update(st.get(n, {}))
        s.update(th.get(n, {}))
        if "alloc_peak" in s:
            s["alloc_minus_tracker_peak"] = s["alloc_peak"] - s["tracker_peak"]
            s["alloc_live_before_minus_tracker"] = s["alloc_live_before"] - s["live_before"]
    dist.barrier()
    dist.destroy_process_group()
    return rec


# ----------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------
def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def launch(case, timeout=900):
    model_name, strategy, optim_name, bs, ws = case.split(":")
    ws = int(ws)
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="vramlab-dist-")
    procs = []
    for r in range(ws):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), WORLD_SIZE=str(ws),
                   OMP_NUM_THREADS="1")
        out = os.path.join(tmp, f"rank{r}.json")
        procs.append((subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", case, "--rank", str(r),
                                        "--json-out", out], env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True), out))
    recs, errs, errs_full = [], [], []
    deadline = time.time() + timeout
    for r, (p, out) in enumerate(procs):
        try:
            so, _ = p.communicate(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            so, _ = p.communicate()
            errs.append(f"rank {r}: timeout")
        if p.returncode != 0 or not os.path.exists(out):
            lines = [l for l in (so or "").splitlines() if l.strip()]
            errl = [l for l in lines if "Error" in l or "error" in l]
            errs_full.append(f"rank {r} rc={p.returncode}:\n" + "\n".join(lines[-40:]))
            errs.append(f"rank {r} rc={p.returncode}: " + (errl[-1] if errl else "\n".join(lines[-5:]))[-600:])
            sys.stderr.write((so or "")[-4000:])
        else:
            recs.append(json.load(open(out)))
    if errs:
        return [{"model": model_name, "strategy": strategy, "optimizer": optim_name, "batch": int(bs),
                 "world_size": ws, "rank": None, "options": STRATEGY_OPTIONS[strategy], "torch": torch.__version__,
                 "error": errs[0], "errors": errs, "error_output_tail": errs_full}]
    return recs


def all_cases():
    cases = []
    for m in ("resnet18", "vit_small", "simple_cnn"):
        for s in ("ddp", "ddp_gabv", "fsdp2", "fsdp1"):
            for o in ("sgd_momentum", "adam"):
                cases.append(f"{m}:{s}:{o}:2:2")
    for s in ("ddp", "ddp_gabv"):
        for o in ("sgd_momentum", "adam"):
            cases.append(f"resnet18:{s}:{o}:8:2")
    cases.append("resnet18:ddp_cap25:sgd_momentum:2:2")
    cases += ["resnet18:ddp:sgd_momentum:2:4", "resnet18:fsdp2:adam:2:4", "vit_small:ddp:sgd_momentum:2:4"]
    return cases


def key(r):
    return f"{r['model']}:{r['strategy']}:{r['optimizer']}:{r['batch']}:{r['world_size']}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--rank", type=int)
    ap.add_argument("--json-out")
    ap.add_argument("--case")
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--only", help="comma-separated substrings: run the --all cases that contain one")
    ap.add_argument("--out", default="crates/memory/tests/fixtures/pytorch-cpu-distributed.json")
    a = ap.parse_args()
    if a.worker:
        m, s, o, bs, ws = a.worker.split(":")
        rec = run_rank(m, s, o, int(bs), int(ws), a.rank)
        json.dump(rec, open(a.json_out, "w"))
        return
    if a.case:
        print(json.dumps(launch(a.case), indent=1))
        return
    if a.all:
        recs = json.load(open(a.out)) if os.path.exists(a.out) else []
        done = {key(r) for r in recs}
        for c in all_cases():
            if c in done or (a.only and not any(s in c for s in a.only.split(","))):
                continue
            t0 = time.time()
            rs = launch(c)
            recs += rs
            r0 = rs[0]
            if "error" in r0:
                print(f"{c}: ERROR {r0['error'][:300]} ({time.time() - t0:.0f}s)", flush=True)
            else:
                print(f"{c}: " + " | ".join(
                    f"r{r['rank']} pk1={r['step1']['tracker_peak']:,} pk2={r['step2']['tracker_peak']:,} "
                    f"al2={r['step2'].get('alloc_peak', 0):,}" for r in rs) + f" ({time.time() - t0:.0f}s)", flush=True)
            recs.sort(key=lambda r: (all_cases().index(key(r)) if key(r) in all_cases() else 999, r["rank"] or 0))
            with open(a.out, "w") as f:
                json.dump(recs, f, indent=1)
                f.write("\n")


if __name__ == "__main__":
    main()
