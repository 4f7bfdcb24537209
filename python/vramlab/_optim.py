"""A torch.optim.Optimizer's settings as the CLI's optimizer options (no torch needed)."""

# torch.optim class name -> the CLI's --optimizer, and the settings vramlab's plan depends on.
_KNOWN = {
    "SGD": ("sgd", ("momentum", "nesterov", "weight_decay")),
    "Adam": ("adam", ("amsgrad", "weight_decay")),
    "AdamW": ("adamw", ("amsgrad", "weight_decay")),
    "RMSprop": ("rmsprop", ("momentum", "centered", "weight_decay")),
    "Adagrad": ("adagrad", ("weight_decay",)),
}

# PyTorch's defaults that are not 0 or False (left out of the arguments, as the CLI's own).
_DEFAULTS = {("adamw", "weight_decay"): 0.01}

# Settings that change the optimizer's state or scratch, compared across param groups.
_STATEFUL = ("momentum", "nesterov", "amsgrad", "centered", "foreach", "fused")


def optimizer_options(optimizer):
    """(args, notes): ``--optimizer NAME`` and its options, from a name or an optimizer.

    An optimizer is read by its class name and ``param_groups`` (duck-typed, so torch is
    not imported here). Its parameters are assumed to be the model's.
    """
    if isinstance(optimizer, str):
        return ["--optimizer", optimizer], []
    # The class or the torch.optim class it derives from.
    cls = next((c.__name__ for c in type(optimizer).__mro__ if c.__name__ in _KNOWN), type(optimizer).__name__)
    if cls not in _KNOWN:
        raise ValueError(
            "optimizer: vramlab plans torch.optim.%s; got %s"
            % (", ".join(sorted(_KNOWN)), cls)
        )
    name, settings = _KNOWN[cls]
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, (list, tuple)) or not groups or not all(isinstance(x, dict) for x in groups):
        raise ValueError("optimizer: %s has no param_groups (a list of dicts)" % cls)
    g = groups[0]
    args = ["--optimizer", name]
    for key in settings:
        value = g.get(key)
        if key in ("nesterov", "amsgrad", "centered"):
            if value:
                args.append("--" + key)
            continue
        if value is None or value is False or value == _DEFAULTS.get((name, key), 0):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError("optimizer: %s's %s is %r, not a number" % (cls, key, value)) from None
        args.append("--%s=%r" % (key.replace("_", "-"), number))
    if g.get("fused"):
        args += ["--optimizer-impl", "fused"]
    elif g.get("foreach") is True:
        args += ["--optimizer-impl", "foreach"]
    elif g.get("foreach") is False:
        args += ["--optimizer-impl", "for-loop"]
    notes = []
    for i, other in enumerate(groups[1:], start=1):
        differs = [k for k in _STATEFUL if other.get(k) != g.get(k)]
        if differs:
            notes.append(
                "%s param group %d differs from group 0 in %s: planned with group 0's settings"
                % (cls, i, ", ".join(differs))
            )
    return args, notes
