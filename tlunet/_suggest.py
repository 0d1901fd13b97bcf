"""'Did you mean ...?' for names and folders the user typed: one place for the idea, so every error
about an unknown key, model, preset or data folder suggests in the same words.

The suggestions only ever add to a message; each message keeps its own list of valid choices.
"""

import difflib
import os

_CUTOFF = 0.6  # difflib's default: `lerning_rate` -> `learning_rate`, but `colour` suggests nothing


def _fold(text):
    # Case and -/_ are the commonest slips (`UNet`, `decoder-only`); compare without them.
    return text.lower().replace("-", "_")


def close_match(name, choices):
    """The valid choice nearest to `name` in spelling, or None when none is close (or `name` is
    not text: a number or list in a config has no spelling to correct)."""
    if not isinstance(name, str):
        return None
    folded = {}
    for choice in choices:
        if isinstance(choice, str):
            folded.setdefault(_fold(choice), choice)
    if _fold(name) in folded and folded[_fold(name)] != name:
        return folded[_fold(name)]  # differs only in case or -/_
    best = difflib.get_close_matches(_fold(name), list(folded), n=1, cutoff=_CUTOFF)
    return folded[best[0]] if best else None


def did_you_mean(name, choices):
    """' (did you mean 'X'?)' for an unknown `name`, or '' when no choice is close."""
    match = close_match(name, choices)
    return f" (did you mean {match!r}?)" if match is not None and match != name else ""


def did_you_mean_keys(names, choices):
    """The same for several unknown keys at once: ' (did you mean 'X'?)' for one, else
    ' (did you mean 'X' for 'x', 'Y' for 'y'?)' naming which suggestion fixes which key."""
    pairs = [(name, close_match(name, choices)) for name in names]
    pairs = [(name, match) for name, match in pairs if match is not None and match != name]
    if not pairs:
        return ""
    if len(names) == 1:
        return f" (did you mean {pairs[0][1]!r}?)"
    return f" (did you mean {', '.join(f'{match!r} for {name!r}' for name, match in pairs)}?)"


def did_you_mean_parent(root, inner, expected):
    """'; did you mean the folder PARENT?' when `root` looks like the inside of the layout rather
    than the folder holding it: `root` is named like one of `inner` (e.g. `images`), or its parent
    holds every entry of `expected`. '' otherwise.

    Phrased for Python and the command line alike: the library does not know which flag gave it.
    """
    path = os.path.normpath(os.fspath(root))
    parent = os.path.dirname(path) or os.path.dirname(os.path.abspath(path))
    inside = os.path.basename(path) in inner
    if inside or (expected and all(os.path.exists(os.path.join(parent, e)) for e in expected)):
        return f"; did you mean the folder {parent}?"
    return ""
