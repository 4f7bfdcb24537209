"""A live torch module to a .pt2 archive (torch.export in training mode) for the planner."""

import os
import tempfile
import warnings


class ExportFailed(ValueError):
    """torch.export could not capture the module (data-dependent control flow, ...)."""


# The example batch (2 images) is a real tensor: refused above this many values per image
# (3x8192x8192), so that a typo does not allocate gigabytes.
MAX_IMAGE_VALUES = 3 * 8192 * 8192


def _shape(input_size):
    dims = _dims(input_size)
    n = 1
    for d in dims:
        n *= d
    if n > MAX_IMAGE_VALUES:
        raise ValueError(
            "input_size %s: %d values per image, more than the %d a capture traces"
            % ("x".join(map(str, dims)), n, MAX_IMAGE_VALUES)
        )
    return dims


def _dims(input_size):
    if input_size is None:
        raise ValueError(
            "input_size: a torch module needs the shape of one image, e.g. input_size=(3, 224, 224)"
        )
    if isinstance(input_size, str):
        parts = input_size.lower().split("x")
        if not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError("input_size: expected CxHxW, e.g. 3x224x224, got %r" % input_size)
        return tuple(int(p) for p in parts)
    try:
        dims = tuple(input_size)
    except TypeError:
        raise ValueError("input_size: expected (C, H, W), e.g. (3, 224, 224), got %r" % (input_size,)) from None
    if len(dims) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise ValueError("input_size: expected 3 positive ints (C, H, W), e.g. (3, 224, 224), got %r" % (input_size,))
    return dims


def exported(model, input_size):
    """(ExportedProgram, notes): the module traced in train() mode on a batch of 2.

    The module's own mode is restored afterwards; tracing runs on fake tensors, so its
    weights and BatchNorm statistics are not changed.
    """
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return model, []
    if not isinstance(model, torch.nn.Module):
        raise ValueError(
            "model: expected a torch.nn.Module, a torch.export.ExportedProgram, a zoo name or a "
            "path to a .pt2, .onnx or .toml file; got %s" % type(model).__name__
        )
    shape = _shape(input_size)
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    x = torch.randn((2,) + shape, device=device, dtype=dtype)
    modes = [(m, m.training) for m in model.modules()]
    model.train()
    try:
        ep = torch.export.export(model, (x,))
    except Exception as e:  # torch raises many kinds; name the route that failed
        raise ExportFailed(
            "torch.export could not capture %s in train() mode: %s"
            % (type(model).__name__, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        ) from e
    finally:
        # Every submodule's own mode back (a frozen BatchNorm in eval stays in eval).
        for m, training in modes:
            m.training = training
    return ep, ["captured %s with torch.export in train() mode (batch 2; planned at the batch asked for)"
                % type(model).__name__]


def _without_weights(ep):
    """The program with its parameters, buffers and constants on the meta device: the
    archive then holds shapes and dtypes, not bytes (vramlab never reads them), and a
    large model saves in a second. Where torch keeps them elsewhere, the program as is."""
    import torch

    def meta(v):
        if isinstance(v, torch.nn.Parameter):
            return torch.nn.Parameter(v.detach().to("meta"), requires_grad=v.requires_grad)
        return v.detach().to("meta") if isinstance(v, torch.Tensor) else v

    try:
        ep._state_dict = {k: meta(v) for k, v in ep.state_dict.items()}
        ep._constants = {k: meta(v) for k, v in ep.constants.items()}
    except (AttributeError, TypeError):
        pass
    return ep


def _onnx(model, input_size, path):
    """The module traced by the TorchScript ONNX exporter in training mode."""
    import torch

    shape = _shape(input_size)
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    x = torch.randn((2,) + shape, device=device)
    modes = [(m, m.training) for m in model.modules()]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (x,), path, dynamo=False, training=torch.onnx.TrainingMode.TRAINING,
                do_constant_folding=False,
            )
    finally:
        for m, training in modes:
            m.training = training


def to_archive(model, input_size):
    """(TemporaryDirectory, path, notes): the module as a .pt2 in a temporary folder, or,
    where torch.export cannot capture it, as an ONNX file (TorchScript exporter)."""
    import torch

    tmp = tempfile.TemporaryDirectory(prefix="vramlab-")
    try:
        try:
            ep, notes = exported(model, input_size)
        except ExportFailed as e:
            path = os.path.join(tmp.name, "model.onnx")
            try:
                _onnx(model, input_size, path)
            except Exception as onnx_error:
                raise ValueError(
                    "%s; the ONNX exporter failed too: %s"
                    % (e, str(onnx_error).strip().splitlines()[0] if str(onnx_error).strip() else type(onnx_error).__name__)
                ) from onnx_error
            return tmp, path, [
                "%s; captured with the ONNX exporter instead (TorchScript tracing in training mode), "
                "which keeps only the branch the example batch took" % e
            ]
        path = os.path.join(tmp.name, "model.pt2")
        torch.export.save(_without_weights(ep), path)
        return tmp, path, notes
    except BaseException:
        tmp.cleanup()
        raise


def export(model, path, input_size, weights=False):
    """Writes the module as a .pt2 archive at ``path`` (the folder must exist); returns it.
    Without ``weights`` the archive holds every tensor's shape and dtype but not its bytes
    (all vramlab reads)."""
    import torch

    path = os.fspath(path)
    if not path.endswith(".pt2"):
        raise ValueError("%s: expected a path ending in .pt2" % path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError("%s: folder %s does not exist" % (path, folder))
    ep, _ = exported(model, input_size)
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, ".%s.part.pt2" % base[: -len(".pt2")])
    torch.export.save(ep if weights else _without_weights(ep), tmp)
    os.replace(tmp, path)
    return path
