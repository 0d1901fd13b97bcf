"""Selecting layers by group name or regex, the one mechanism behind freezing and weight transfer.

A layer's *path* is its name, prefixed by the names of the nested models that hold it
(`encoder/block_12_add`). Its *group* is the first path component with any `_suffix` after a
known group name dropped: `decoder_stage2_conv1` -> `decoder_stage2`, `encoder/block1_conv1` ->
`encoder`.

A selector is either a group prefix — `"encoder"`, `"decoder"` (every decoder stage),
`"decoder_stage0"`, `"head"`, `"bottleneck"` — matching layers whose top-level name equals it or
starts with it plus "_", or `"re:<pattern>"`, a regex that must match the whole path.
"""

import re

import keras

_GROUP_RE = re.compile(r"^(encoder|bottleneck|decoder_stage\d+|head)(_|$)")


def iter_layers(model, prefix="", containers=False):
    """Yields (path, layer) for every layer of `model`, recursing into nested models.

    Nested models themselves are yielded (before their layers) only when `containers` is True.
    """
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        path = prefix + layer.name
        if isinstance(layer, keras.Model):
            if containers:
                yield path, layer
            yield from iter_layers(layer, path + "/", containers)
        else:
            yield path, layer


def group_of(path):
    """The group a layer path belongs to (see module docstring)."""
    top = path.split("/", 1)[0]
    m = _GROUP_RE.match(top)
    return m.group(1) if m else top


def groups(model):
    """Groups of `model` that hold weights, in graph order."""
    seen = {}
    for path, layer in iter_layers(model):
        if layer.weights:
            seen.setdefault(group_of(path), None)
    return list(seen)


def matches(path, selector):
    """Whether the layer at `path` is selected by `selector`."""
    if selector.startswith("re:"):
        return re.fullmatch(selector[3:], path) is not None
    top = path.split("/", 1)[0]
    return top == selector or top.startswith(selector + "_")


def check_selectors(model, selectors, argument):
    """Raises ValueError if a selector is malformed or selects no layer of `model`."""
    if isinstance(selectors, str):
        raise ValueError(f"`{argument}` must be a list of selectors, not a string. "
                         f"Received: {argument}={selectors!r}")
    paths = [path for path, _ in iter_layers(model)]
    for sel in selectors:
        if not isinstance(sel, str) or not sel:
            raise ValueError(f"Selectors are non-empty strings. Received: {argument} item {sel!r}")
        if sel.startswith("re:"):
            try:
                re.compile(sel[3:])
            except re.error as e:
                raise ValueError(f"Bad regex in `{argument}`: {sel!r} ({e})") from e
        if not any(matches(p, sel) for p in paths):
            raise ValueError(
                f"Selector {sel!r} in `{argument}` matches no layer of model {model.name!r}. "
                f"Its groups are {groups(model)}; use 're:<regex>' to match layer paths such as "
                f"{paths[:2]}.")
