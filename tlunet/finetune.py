"""Fine-tuning strategies as data: which layer groups train and which stay frozen.

A strategy names the groups that are trainable (everything else is frozen) and/or the groups that
are frozen. The papers' strategies are presets; `apply_strategy` applies any of them the way the
Keras transfer-learning guide says: frozen BatchNorm layers run in inference mode and keep their
statistics, and a compiled model is recompiled so training sees the new trainable set.
"""

import csv
import io
from dataclasses import dataclass, field

import keras
import numpy as np

from tlunet._suggest import did_you_mean
from tlunet.selection import check_selectors, group_of, iter_layers, matches

BATCHNORM_POLICIES = ("follow", "freeze")


@dataclass(frozen=True)
class Strategy:
    """Which layers train.

    Attributes:
        name: short name.
        trainable: selectors of the layers that train (None: all); every other layer is frozen.
        frozen: selectors frozen even if `trainable` selected them.
        description: one line.
        paper: source of the strategy.
        paper_trainable: the paper's trainable-parameter figure, as printed there.
    """

    name: str
    trainable: tuple = None
    frozen: tuple = ()
    description: str = ""
    paper: str = ""
    paper_trainable: str = ""


def _wang(name, trainable, description, paper_trainable=""):
    return Strategy(name, trainable=trainable, description=description,
                    paper="Wang et al. 2023", paper_trainable=paper_trainable)


PRESETS = {s.name: s for s in [
    Strategy("all", description="every layer trains (fine-tune all)"),
    _wang("scratch", None, "every layer trains, from random initialisation (build with "
          "encoder_weights=None)"),
    _wang("encoder", ("encoder",), "encoder trains, decoder and head frozen", "2.22M"),
    _wang("decoder", ("decoder", "head"), "decoder and head train, encoder frozen", "4.4M"),
    _wang("D-0", ("decoder_stage0",), "only decoder stage 0 (deepest) trains", "3.76M"),
    _wang("D-0,1", ("decoder_stage0", "decoder_stage1"), "decoder stages 0-1 train", "4.24M"),
    _wang("D-0,1,2", ("decoder_stage0", "decoder_stage1", "decoder_stage2"),
          "decoder stages 0-2 train", "4.36M"),
    _wang("D-2,3,4", ("decoder_stage2", "decoder_stage3", "decoder_stage4"),
          "decoder stages 2-4 train", "0.164M"),
    _wang("D-4", ("decoder_stage4",), "only decoder stage 4 (shallowest) trains", "0.00698M"),
    Strategy("frozen_encoder", frozen=("encoder",), paper="Cheng & Lam 2021",
             description="encoder frozen, rest trains (V-Unet stage 1; stage 2 is 'all')"),
    Strategy("frozen_bottleneck", frozen=("bottleneck",), paper="Cheng & Lam 2021",
             description="the two 1024-filter bottleneck convs frozen, rest trains (X-Unet)"),
]}

# The strategies each paper compares, in the paper's order.
PRESET_SETS = {
    "wang2023": ("scratch", "encoder", "decoder", "D-0", "D-0,1", "D-0,1,2", "D-2,3,4", "D-4"),
    "cheng2021_vunet": ("frozen_encoder", "all"),
    "cheng2021_xunet": ("all", "frozen_bottleneck"),
}


def get_strategy(strategy):
    """Resolves a preset name, a dict with `trainable`/`frozen` lists, or a `Strategy`."""
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, str):
        if strategy not in PRESETS:
            raise ValueError(f"Unknown strategy {strategy!r}{did_you_mean(strategy, PRESETS)}. "
                             f"Presets: {list(PRESETS)}; or pass "
                             "{'trainable': [...], 'frozen': [...]} with group names or 're:' regexes.")
        return PRESETS[strategy]
    if isinstance(strategy, dict):
        extra = set(strategy) - {"name", "trainable", "frozen", "description"}
        if extra:
            raise ValueError(f"Strategy dicts take keys name/trainable/frozen/description. "
                             f"Received extra keys: {sorted(extra)}")
        trainable = strategy.get("trainable")
        return Strategy(strategy.get("name", "custom"),
                        trainable=None if trainable is None else tuple(_as_list(trainable, "trainable")),
                        frozen=tuple(_as_list(strategy.get("frozen", ()), "frozen")),
                        description=strategy.get("description", ""))
    raise ValueError(f"`strategy` must be a preset name, a dict or a Strategy. Received: {strategy!r}")


def _as_list(value, argument):
    if isinstance(value, str):
        raise ValueError(f"`{argument}` must be a list of selectors. Received: {argument}={value!r}")
    return list(value)


def _set_trainable(model, strategy, batchnorm):
    if batchnorm not in BATCHNORM_POLICIES:
        raise ValueError(f"`batchnorm` must be one of {BATCHNORM_POLICIES}. "
                         f"Received: batchnorm={batchnorm!r}")
    if strategy.trainable is not None:
        check_selectors(model, strategy.trainable, "trainable")
    check_selectors(model, strategy.frozen, "frozen")
    model.trainable = True  # reset nested models too, then decide layer by layer
    for path, layer in iter_layers(model):
        train = strategy.trainable is None or any(matches(path, s) for s in strategy.trainable)
        train = train and not any(matches(path, s) for s in strategy.frozen)
        if batchnorm == "freeze" and isinstance(layer, keras.layers.BatchNormalization):
            train = False
        layer.trainable = train


def apply_strategy(model, strategy, *, batchnorm="follow", recompile=None):
    """Makes the layers `strategy` names trainable and freezes the rest.

    Args:
        model: a tlunet model (or any functional model with group-prefixed layer names).
        strategy: preset name (see `PRESETS`), {"trainable": [...], "frozen": [...]} or `Strategy`.
        batchnorm: "follow" — a BatchNormalization layer is frozen (inference mode, statistics kept)
            exactly when its group is; "freeze" — every BatchNormalization layer is frozen, as the
            Keras guide advises when fine-tuning with small batches.
        recompile: None — recompile if the model is compiled (a model not yet compiled needs
            nothing); True — require a compiled model and recompile it. Recompiling rebuilds the
            optimizer from its config, so its slot variables start fresh for the new variable set.

    Returns:
        The same model.

    Raises:
        ValueError: unknown preset, a selector that matches nothing, or `recompile=True` on a model
            that was never compiled.
        RuntimeError: the compile config cannot be rebuilt; nothing has been changed then.
    """
    strategy = get_strategy(strategy)
    compile_config = None
    if model.compiled:
        try:
            compile_config = model.get_compile_config()
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(
                f"Cannot recompile {model.name!r} automatically after changing trainable layers: its "
                f"compile arguments do not serialize ({e}). Register custom losses/metrics with "
                "keras.saving.register_keras_serializable, or apply the strategy before compile().") from e
    elif recompile:
        raise ValueError(f"recompile=True but model {model.name!r} was never compiled; compile it "
                         "after apply_strategy, or leave recompile=None.")
    _set_trainable(model, strategy, batchnorm)
    if compile_config is not None:
        model.compile_from_config(compile_config)
    return model


def count_params(weights):
    """Total number of values in a list of weight variables."""
    return int(sum(np.prod(w.shape) for w in weights))


def trainable_params(model):
    """Number of trainable parameters (BatchNorm moving statistics never count)."""
    return count_params(model.trainable_weights)


def params_by_group(model):
    """{group: {"trainable": n, "non_trainable": n}} in graph order."""
    out = {}
    for path, layer in iter_layers(model):
        if not layer.weights:
            continue
        entry = out.setdefault(group_of(path), {"trainable": 0, "non_trainable": 0})
        entry["trainable"] += count_params(layer.trainable_weights)
        entry["non_trainable"] += count_params(layer.non_trainable_weights)
    return out


@dataclass
class StrategyReport:
    """Trainable parameters per strategy on one model; `markdown()` and `to_csv()` render it."""

    model_name: str
    rows: list = field(default_factory=list)
    reference_name: str = ""
    reference_params: int = 0

    COLUMNS = ("strategy", "trainable_params", "trainable_pct", "paper_trainable", "fewer_than_reference_pct",
               "description")

    def markdown(self):
        """The report as a Markdown table, one row per strategy."""
        reference = self.reference_name if self.reference_params else "reference"
        lines = [f"| strategy | trainable params | % of model | paper | fewer than {reference} | description |",
                 "|---|---:|---:|---:|---:|---|"]
        for r in self.rows:
            fewer = "" if r["fewer_than_reference_pct"] is None else f"{r['fewer_than_reference_pct']:.2f}%"
            lines.append(f"| {r['strategy']} | {r['trainable_params']:,} | {r['trainable_pct']:.1f}% | "
                         f"{r['paper_trainable']} | {fewer} | {r['description']} |")
        return "\n".join(lines) + "\n"

    def to_csv(self):
        """The report as CSV text with the columns of `COLUMNS`."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return buf.getvalue()

    def write(self, stem):
        """Writes `{stem}.md` and `{stem}.csv`; returns the two paths."""
        paths = (f"{stem}.md", f"{stem}.csv")
        with open(paths[0], "w") as f:
            f.write(f"# Trainable parameters per strategy: {self.model_name}\n\n" + self.markdown())
        with open(paths[1], "w") as f:
            f.write(self.to_csv())
        return paths


def strategy_report(model, strategies, *, batchnorm="follow", reference_params=None,
                    reference_name="reference"):
    """Counts trainable parameters of `model` under each strategy, leaving the model as it was.

    Args:
        model: the model.
        strategies: preset names, a `PRESET_SETS` key, or strategy objects/dicts.
        batchnorm: BatchNorm policy, as in `apply_strategy`.
        reference_params: optional parameter count to compare against (e.g. the 31M plain U-Net,
            as Wang et al. 2023 do); adds "% fewer than reference".
        reference_name: label of that reference.

    Returns:
        `StrategyReport`.
    """
    if isinstance(strategies, str):
        if strategies not in PRESET_SETS:
            raise ValueError(f"Unknown preset set {strategies!r}. Valid: {list(PRESET_SETS)}")
        strategies = PRESET_SETS[strategies]
    saved = [(layer, layer.trainable) for _, layer in iter_layers(model, containers=True)]
    saved_top = model.trainable
    total = count_params(model.weights)
    report = StrategyReport(model.name, reference_name=reference_name,
                            reference_params=reference_params or 0)
    try:
        for s in strategies:
            s = get_strategy(s)
            _set_trainable(model, s, batchnorm)
            n = trainable_params(model)
            fewer = 100.0 * (1 - n / reference_params) if reference_params else None
            report.rows.append({"strategy": s.name, "trainable_params": n,
                                "trainable_pct": 100.0 * n / total, "paper_trainable": s.paper_trainable,
                                "fewer_than_reference_pct": fewer, "description": s.description})
    finally:
        model.trainable = saved_top
        for layer, flag in saved:
            layer.trainable = flag
    return report
