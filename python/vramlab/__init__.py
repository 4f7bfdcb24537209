"""vramlab in Python: how much GPU memory training a model takes, and which batch fits.

    import torch, torchvision, vramlab
    m = torchvision.models.resnet50()
    vramlab.memory(m, input_size=(3, 224, 224), batch_size=64, optimizer="adam")
    vramlab.fit(m, input_size=(3, 224, 224), gpu="rtx-4090", optimizer="adamw")

A model is a live ``torch.nn.Module`` (captured with torch.export in training mode), a
``torch.export.ExportedProgram``, a zoo name (``"resnet50"``, see ``vramlab.models()``) or a
path to a .pt2, .onnx or .toml model file. The numbers are the command-line program's: the
same planner runs in-process, and every function takes the CLI's options as keyword
arguments (``weight_decay=0.01`` is ``--weight-decay 0.01``, ``nesterov=True`` is
``--nesterov``). torch is needed only to capture a live module.
"""

import copy
import html
import json
import os

from . import _native
from ._optim import optimizer_options

__all__ = [
    "memory",
    "fit",
    "summary",
    "models",
    "gpus",
    "export",
    "VramlabError",
    "Memory",
    "Fit",
    "Summary",
]
__version__ = _native.__version__


class VramlabError(ValueError):
    """What vramlab refused, in the CLI's one line (the CLI exits with code 2)."""


class _Result:
    """A command's result: its JSON as ``to_dict()`` and item access, its table as repr."""

    def __init__(self, data, text, notes):
        self._data = data
        self.text = text
        #: What the model file could not say and vramlab assumed (the CLI's ``note:`` lines).
        self.notes = list(notes)

    def to_dict(self):
        """The command's ``--json`` output, as a new dict."""
        return copy.deepcopy(self._data)

    def __getitem__(self, key):
        return self._data[key]

    def __repr__(self):
        notes = "".join("note: %s\n" % n for n in self.notes)
        return notes + self.text.rstrip("\n")

    def _repr_html_(self):
        return "<pre>%s</pre>" % html.escape(repr(self))


class Memory(_Result):
    """``vramlab memory``: training memory by category, the peak and where it happens."""

    @property
    def peak_bytes(self):
        """The planned peak of the whole run, in bytes (the CLI's ``peak_bytes``)."""
        return self._data["peak_bytes"]

    @property
    def num_params(self):
        return self._data["num_params"]

    @property
    def steps(self):
        """Per training step: its peak, the phase and op of the peak, and the categories."""
        return copy.deepcopy(self._data["steps"])

    @property
    def device(self):
        """pytorch-cuda: the simulated caching allocator (allocated, reserved, the card)."""
        return copy.deepcopy(self._data.get("device"))


class Fit(_Result):
    """``vramlab fit``: the largest batch that fits the card, and the doubling procedure.

    With several cards (``gpu=["t4", "h100"]``) or ``gpus=N`` without a strategy (every
    strategy compared), ``to_dict()`` is the CLI's list, and ``len()``/``[i]`` give the
    per-card results."""

    def _one(self, key):
        if isinstance(self._data, list):
            raise KeyError(
                "%s: this fit compared %d cards or strategies; use fit[i] or to_dict()"
                % (key, len(self._data))
            )
        return self._data.get(key)

    def __len__(self):
        return len(self._data) if isinstance(self._data, list) else 1

    @property
    def max_batch_size(self):
        return self._one("max_batch_size")

    @property
    def recommended_batch(self):
        return self._one("recommended_batch")

    @property
    def budget_bytes(self):
        return self._one("budget_bytes")


class Summary(_Result):
    """``vramlab summary``: per layer, the output shape, parameters, MACs and saved bytes."""

    @property
    def num_params(self):
        return self._data["num_params"]

    @property
    def layers(self):
        return copy.deepcopy(self._data["layers"])


def _run(args):
    code, out, notes, error = _native.run([str(a) for a in args])
    if code != 0:
        raise VramlabError(error)
    return out, notes


def _command(cls, args):
    out, notes = _run(args + ["--json"])
    try:
        data = json.loads(out)
    except ValueError:
        # --help and the like print text, not a result.
        raise VramlabError("`vramlab %s` printed no result: %s" % (args[0], out.strip().splitlines()[0] if out.strip() else "nothing")) from None
    text, _ = _run(args)
    return cls(data, text, notes)


def _flag(name):
    return "--" + name.replace("_", "-")


def _options(options):
    """Keyword arguments as the CLI's options: True is a bare flag, None and False are left out."""
    args = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        if value is True:
            args.append(_flag(name))
        elif isinstance(value, (list, tuple)):
            args.append("%s=%s" % (_flag(name), ",".join(str(v) for v in value)))
        else:
            # `--batch-size=-1`: a negative value is read as the option's, and refused
            # by its name, not as an unknown argument.
            args.append("%s=%s" % (_flag(name), value))
    return args


def _shape(input_size):
    if input_size is None:
        return None
    if isinstance(input_size, str):
        return input_size
    try:
        dims = list(input_size)
    except TypeError:
        raise VramlabError("input_size: expected (C, H, W), e.g. (3, 224, 224), got %r" % (input_size,)) from None
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise VramlabError(
            "input_size: expected positive ints per image, e.g. (3, 224, 224), got %r" % (input_size,)
        )
    return "x".join(str(d) for d in dims)


class _Model:
    """The model as the CLI takes it: a name or a path, with a temporary .pt2 for a module."""

    def __init__(self, model, input_size):
        self.tmpdir = None
        self.input = _shape(input_size)
        self.notes = []
        if isinstance(model, (str, os.PathLike)):
            self.name = os.fspath(model)
            return
        try:
            from . import _capture
            import torch
        except ImportError:
            raise VramlabError(
                "model: expected a zoo name or a path to a .pt2, .onnx or .toml file (a torch "
                "module needs torch, which is not installed); got %s" % type(model).__name__
            ) from None

        try:
            self.tmpdir, self.name, self.notes = _capture.to_archive(model, input_size)
        except ValueError as e:
            raise VramlabError(str(e)) from None
        self.label = type(model).__name__
        # The archive holds the traced input's shape; --input would only restate it.
        self.input = None

    def named(self, text):
        """A message with the temporary archive's path as the module it came from."""
        if self.tmpdir is None:
            return text
        return text.replace(self.name, "%s (captured)" % self.label)

    def args(self):
        return [self.name] + (["--input", self.input] if self.input else [])

    def close(self):
        if self.tmpdir is not None:
            self.tmpdir.cleanup()
            self.tmpdir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _planned(cls, command, model, input_size, optimizer, options):
    with _Model(model, input_size) as m:
        args = [command] + m.args()
        opt_args, opt_notes = [], []
        if optimizer is not None:
            opt_args, opt_notes = optimizer_options(optimizer)
        try:
            r = _command(cls, args + opt_args + _options(options))
        except VramlabError as e:
            raise VramlabError(m.named(str(e))) from None
        r.notes = m.notes + opt_notes + [m.named(n) for n in r.notes]
        return r


def memory(model, input_size=None, batch_size=64, optimizer=None, **options):
    """Training memory by category, the peak and where it happens (``vramlab memory``).

    ``optimizer`` (default adam; none in ``mode="inference"``) is a name (sgd, adam, adamw,
    rmsprop, adagrad) or a torch.optim.Optimizer,
    whose class and first param group's settings are read. Other options as the CLI's:
    ``precision="amp-bf16"``, ``profile="pytorch-cpu"``, ``gpu="h100"``, ``num_classes=10``,
    ``gpus=8, strategy="fsdp"``, ``weight_decay=0.01`` ...
    """
    options["batch_size"] = batch_size
    return _planned(Memory, "memory", model, input_size, optimizer, options)


def fit(model, input_size=None, gpu=None, optimizer=None, **options):
    """The largest batch that fits a card, and what to change if none does (``vramlab fit``).

    ``gpu`` is a card from ``vramlab.gpus()``, or a list of them to compare (or pass
    ``memory="24GiB"``); ``fraction``, ``target_batch``, ``precision``, ``gpus=8`` ... as
    the CLI's options.
    """
    options["gpu"] = ",".join(gpu) if isinstance(gpu, (list, tuple)) else gpu
    return _planned(Fit, "fit", model, input_size, optimizer, options)


def summary(model, input_size=None, **options):
    """Per layer: output shape, parameters, MACs and bytes kept for backward (``vramlab summary``)."""
    return _planned(Summary, "summary", model, input_size, None, options)


def models():
    """The built-in models, as dicts (``vramlab models --json``)."""
    return json.loads(_run(["models", "--json"])[0])


def gpus():
    """The card catalog with nvidia-smi and PyTorch totals (``vramlab gpus --json``)."""
    return json.loads(_run(["gpus", "--json"])[0])


def export(model, path, input_size, weights=False):
    """Writes a live module as a .pt2 archive (torch.export, training mode) for the CLI;
    without ``weights`` the archive holds the tensors' shapes, not their bytes."""
    from . import _capture

    return _capture.export(model, path, input_size, weights=weights)
