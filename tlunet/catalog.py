"""The names the `tlunet` command offers, written once to `tlunet_cli/catalog.json`.

The command line answers `--help`, `--version`, `models` and `experiment --list` without importing
TensorFlow (which takes seconds), so it cannot ask the registries at start-up. This module reads
them (models with their parameter counts, strategies, losses, augmentations, data kinds, layouts,
experiments, export formats) into one JSON file that ships with the command;
`tests/test_first_contact.py` fails when the file no longer matches the registries. After adding a
model, strategy, loss, augmentation, data kind, layout, experiment or export format, regenerate it:

    python -m tlunet.catalog
"""

import json
import os
import sys

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tlunet_cli", "catalog.json")


def _models():
    import tlunet
    from tlunet.finetune import trainable_params

    rows = []
    for name in tlunet.list_models():
        info = tlunet.get_model_info(name)
        model = tlunet.build_model(name, input_shape=info.reference_shape)
        rows.append({"name": name, "input": "x".join(map(str, info.reference_shape)),
                     "params": model.count_params(), "trainable": trainable_params(model),
                     "paper": info.paper, "description": info.description,
                     "pretrained_encoder": info.pretrained_encoder, "spatial_dims": info.spatial_dims})
    return rows


def build_catalog():
    """The catalog as a dict (builds every model once, at its paper's input shape)."""
    from tlunet.data.augment import AUGMENT_PRESETS
    from tlunet.data.kinds import kinds_of
    from tlunet.data.folders import LAYOUTS
    from tlunet.export import EXPORT_FORMATS
    from tlunet.finetune import PRESETS
    from tlunet.losses import LOSSES
    from tlunet.resources import find_config, list_experiments, read_config

    return {
        "models": _models(),
        "strategies": {name: {"description": s.description, "freezes": s.trainable is not None or bool(s.frozen)}
                       for name, s in PRESETS.items()},
        "losses": sorted(LOSSES),
        "augment": list(AUGMENT_PRESETS),
        "data_kinds": kinds_of("image", folders_only=True),
        "layouts": list(LAYOUTS),
        "experiments": list_experiments(),
        "profiles": {name: list(read_config(find_config(name)).get("profiles") or {}) for name in list_experiments()},
        "export_formats": {name: {"label": f.label, "suffixes": list(f.suffixes), "options": sorted(f.options)}
                           for name, f in EXPORT_FORMATS.items()},
    }


def write(path=PATH):
    """Writes the catalog to `path` (JSON, sorted keys within each entry, one trailing newline)."""
    text = json.dumps(build_catalog(), indent=1) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


if __name__ == "__main__":
    print(f"wrote {write(*sys.argv[1:2])}")
