"""python -m vramlab: the planning commands in-process, and ``export`` for the CLI.

    python -m vramlab export torchvision.models:resnet50 resnet50.pt2 --input 3x224x224
    python -m vramlab memory resnet50.pt2 --batch-size 64
    python -m vramlab fit resnet50.pt2 --gpu rtx-4090

``export MODULE:BUILDER OUT.pt2 --input CxHxW`` imports MODULE, calls BUILDER() for the
model (a class or a function taking no arguments) and writes it with torch.export in
training mode. Any other command is the CLI's: memory, fit, summary, models, gpus.
"""

import argparse
import importlib
import os
import sys

from . import _native
from ._capture import export


USAGE = "usage: python -m vramlab export MODULE:BUILDER OUT.pt2 --input CxHxW\n       python -m vramlab {memory,fit,summary,models,gpus} ..."


def _export(argv):
    p = argparse.ArgumentParser(
        prog="python -m vramlab export",
        description="Write a model as a torch.export archive (.pt2, training mode) for vramlab's CLI.",
        epilog="Example: python -m vramlab export torchvision.models:resnet50 resnet50.pt2 --input 3x224x224",
    )
    p.add_argument("builder", metavar="MODULE:BUILDER", help="e.g. torchvision.models:resnet50 or mymodels:Net")
    p.add_argument("out", metavar="OUT.pt2", help="where to write the archive")
    p.add_argument("--input", required=True, metavar="CxHxW", help="one image's shape, e.g. 3x224x224")
    p.add_argument("--weights", action="store_true", help="keep the weights' bytes (vramlab needs only their shapes)")
    a = p.parse_args(argv)
    if a.builder.count(":") != 1:
        print("error: %s: expected MODULE:BUILDER, e.g. torchvision.models:resnet50" % a.builder, file=sys.stderr)
        return 2
    module_name, attr = a.builder.split(":")
    if not module_name or not attr:
        print("error: %s: expected MODULE:BUILDER, e.g. torchvision.models:resnet50" % a.builder, file=sys.stderr)
        return 2
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except (ImportError, TypeError, ValueError) as e:
        print("error: %s: cannot import %s: %s" % (a.builder, module_name, e), file=sys.stderr)
        return 2
    build = getattr(module, attr, None)
    if not callable(build):
        print("error: %s: %s has no callable %s" % (a.builder, module_name, attr), file=sys.stderr)
        return 2
    try:
        model = build()
    except TypeError as e:
        print("error: %s: %s() must take no arguments: %s" % (a.builder, attr, e), file=sys.stderr)
        return 2
    try:
        path = export(model, a.out, a.input, weights=a.weights)
    except (ValueError, OSError) as e:
        print("error: %s" % str(e).strip().splitlines()[0], file=sys.stderr)
        return 2
    print("wrote %s: vramlab memory %s --batch-size 64" % (path, path))
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if sys.stdout is None:
        print("error: standard output is closed: nothing could be printed", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if argv[0] == "export":
        return _export(argv[1:])
    code, out, notes, error = _native.run(argv)
    for n in notes:
        print("note: %s" % n, file=sys.stderr)
    sys.stdout.write(out)
    if code != 0:
        print("error: %s" % error, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
