"""Every key an experiment config may hold, as typed sections: first those every task shares
(training, evaluation, the sweep, the model, the runs, a source task `pretrain`, and `Experiment`,
the base of each task's config), then each task's own (`ImageExperiment`, `VolumeExperiment`,
`ClassificationExperiment`) with its checks across keys."""

import dataclasses
import inspect
from types import MappingProxyType
from typing import Any, ClassVar

import tlunet
from tlunet._suggest import did_you_mean_keys
from tlunet.data.kinds import data_kind, kinds_of
from tlunet.finetune import BATCHNORM_POLICIES, get_strategy
from tlunet.models.classifier import FEATURE_INPUTS
from tlunet.postprocess import IMAGE_TTA, PostProcess
from tlunet.resources import ConfigError
from tlunet.runners.schema import (FLAG, FOLDS, FRACTION, FRACTIONS, OPTIONAL_FLAG, OPTIONAL_WHOLE, POSITIVE,
                                   PROBABILITY, SEEDS, SPLIT, WHOLE, Rule, Section, check_folder_name, check_known,
                                   check_mapping, check_value, frozen, key, merge, one_of, plain, refuse, sizes)
from tlunet.training import DISTRIBUTE, MIXED_PRECISION, check_lr_schedule
from tlunet.transfer import TRANSFER_METHODS


def _schedule_complaint(value):
    try:
        check_lr_schedule(value)
    except ValueError as e:
        return str(e)
    return None


LR_SCHEDULE = Rule(explain=_schedule_complaint)


@dataclasses.dataclass(frozen=True)
class Fitting(Section):
    """The keys every training section has: how long, in what batches, at what learning rate."""
    epochs: int = key(10, WHOLE)
    batch_size: int = key(8, WHOLE)
    learning_rate: float = key(1e-3, POSITIVE)
    patience: Any = key(None, OPTIONAL_WHOLE)
    lr_schedule: Any = key(None, LR_SCHEDULE)
    tensorboard: bool = key(False, FLAG)


@dataclasses.dataclass(frozen=True)
class Training(Fitting):
    """`training` of a segmentation config: how each run trains."""
    loss: Any = key("bce_dice")
    mixed_precision: Any = key(None, one_of(*MIXED_PRECISION))
    jit_compile: bool = key(False, FLAG)
    batchnorm: str = key("follow", one_of(*BATCHNORM_POLICIES))
    optimizer: Any = key("adam")
    distribute: Any = key(None, one_of(*DISTRIBUTE))
    gradient_accumulation: int = key(1, WHOLE)
    precise_bn: Any = key(None, OPTIONAL_FLAG)

    def fit_options(self):
        """The keyword arguments of `tlunet.train.run_stages` this section sets."""
        return {"loss": plain(self.loss), "optimizer": plain(self.optimizer), "jit_compile": self.jit_compile,
                "batchnorm": self.batchnorm, "patience": self.patience, "tensorboard": self.tensorboard,
                "gradient_accumulation": self.gradient_accumulation}


@dataclasses.dataclass(frozen=True)
class Evaluation(Section):
    """`evaluation`: the post-processing a run's test cases are scored with."""
    tta: Any = key(None, one_of(*IMAGE_TTA))
    threshold: float = key(0.5, PROBABILITY)


@dataclasses.dataclass(frozen=True)
class Sweep(Section):
    """`sweep`: the repeats of every run (seeds vary the initialisation and shuffling, never the split)."""
    seeds: Any = key(None, SEEDS)


@dataclasses.dataclass(frozen=True)
class FoldSweep(Sweep):
    """`sweep` with k-fold cross-validation (`folds: null`: one train/validation/test split)."""
    folds: Any = key(None, FOLDS)


@dataclasses.dataclass(frozen=True)
class DataBlock(Section):
    """A data block: `kind` (a registered data kind of the section's `TASK`), `root` where the kind reads a
    folder, `get` (how to get the data, for the message when it is missing), and the kind's own keys."""
    TASK: ClassVar[str] = "image"
    kind: str = key("hc18")
    limit: Any = key(None, OPTIONAL_WHOLE)

    @classmethod
    def parse(cls, raw, path, where, extra_keys=()):
        raw = check_mapping(path, where, raw)
        kind = raw.get("kind", cls.kind)
        try:
            spec = data_kind(kind, cls.TASK)
        except ValueError as e:
            raise refuse(path, f"{where}.{e}") from None
        known = {k for name in kinds_of(cls.TASK) for k in data_kind(name, cls.TASK).keys} | {"root", "get"}
        block = super().parse(raw, path, where, extra_keys=known | set(extra_keys))
        if spec.reads_folder and "root" not in raw:  # `root: null` is refused later, with `get` saying how to get it
            raise refuse(path, f"{where}.root is missing: kind {kind} reads a folder (pass --data FOLDER or --set "
                               f"{where}.root=FOLDER)")
        return block

    def to_block(self):
        """The block as the data loaders read it (a plain mapping)."""
        return self.to_dict()


@dataclasses.dataclass(frozen=True)
class Model:
    """A model block: a registered model's `name` and its builder's options (`classes`,
    `encoder_weights`, `filters`, ...)."""
    name: str
    options: Any = dataclasses.field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def parse(cls, raw, path, where):
        """The block from its mapping, checked against the model's builder (`check_model`)."""
        raw = check_mapping(path, where, raw)
        check_model(raw, path, where)
        return cls(raw["name"], frozen({k: v for k, v in raw.items() if k != "name"}))

    @property
    def classes(self):
        """The model's output classes (1: one foreground channel)."""
        return self.options.get("classes", 1)

    @property
    def encoder_weights(self):
        """The encoder weights the block names (None: random)."""
        return self.options.get("encoder_weights")

    def merged(self, over):
        """This block updated by the mapping `over` (a run's own model keys)."""
        over = dict(over or {})
        return Model(over.pop("name", self.name), frozen({**plain(self.options), **over}))

    def build(self, input_shape, *, leave_out=("encoder_weights",), **given):
        """`tlunet.build_model` with this block's options (less `leave_out`) and `given`."""
        options = {k: plain(v) for k, v in self.options.items() if k not in leave_out}
        return tlunet.build_model(self.name, input_shape=tuple(input_shape), **{**options, **given})

    def to_dict(self):
        """The block as a config mapping."""
        return {"name": self.name, **plain(self.options)}


def check_model(mcfg, path, where):
    """The model block names a registered model and only options its builder takes."""
    if "name" not in mcfg:
        raise refuse(path, f"{where} must be a mapping with a `name`")
    try:
        info = tlunet.get_model_info(mcfg["name"])
    except ValueError as e:
        raise refuse(path, f"{where}: {e}") from e
    allowed = set(inspect.signature(info.builder).parameters) - {"input_shape"}
    if not info.pretrained_encoder and mcfg.get("encoder_weights") is not None:
        raise refuse(path, f"{where}: {mcfg['name']} has no pretrained encoder; encoder_weights must be null. "
                           f"Received: {mcfg['encoder_weights']!r}")
    unknown = sorted(set(mcfg) - allowed - {"name", "encoder_weights"})
    if unknown:
        hint = did_you_mean_keys(unknown, allowed | {"encoder_weights"})  # `encoder_weigths` is a common slip
        raise refuse(path, f"unknown {where} keys {unknown}{hint} for {mcfg['name']}; valid: {sorted(allowed)}")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One entry of `runs`: its `name` and its own keys (strategy, stages, model, init, transfer, ...),
    kept as written (a run's config.yaml records them so)."""
    name: str
    given: Any

    def get(self, name, default=None):
        """The run's own value of `name`, or `default`."""
        return self.given.get(name, default)

    def model(self, base):
        """The run's model block: `base` with the run's own `model` keys."""
        return base.merged(plain(self.given.get("model")))

    def stages(self, training):
        """The run's training stages, each {strategy, epochs, learning_rate, lr_schedule, ...}: its own
        `stages`, or one stage of its `strategy` with the training section's settings."""
        base = {"epochs": training.epochs, "learning_rate": training.learning_rate,
                "lr_schedule": plain(training.lr_schedule)}
        if "stages" in self.given:
            return [{**base, **plain(s)} for s in self.given["stages"]]
        return [{"strategy": plain(self.given.get("strategy", "all")), **base}]

    def to_dict(self):
        """The run as written."""
        return plain(self.given)


def parse_runs(raw, path, allowed):
    """`runs`: a non-empty list of mappings with distinct plain-folder names and only `allowed` keys."""
    if not isinstance(raw, list) or not raw:
        raise refuse(path, f"`runs` must be a non-empty list of runs ({{name: ..., ...}}); got {type(raw).__name__}")
    for run in raw:
        if not isinstance(run, dict) or not run.get("name"):
            raise refuse(path, f"every entry of `runs` needs a `name`; got {run!r}")
        check_folder_name(path, "run name", run["name"])
        check_known(path, f"run {run['name']!r}", run, allowed)
    names = [str(r["name"]) for r in raw]
    if len(set(names)) != len(names):
        raise refuse(path, f"run names must differ (each is a folder); repeated: "
                           f"{sorted({n for n in names if names.count(n) > 1})}")
    return tuple(RunSpec(run["name"], frozen(run)) for run in raw)


def check_stages(cfg, run):
    """Each of a run's stages names a known strategy, a positive number of epochs and a learning rate."""
    where = f"run {run.name!r} stage"
    try:
        for stage in run.stages(cfg.training):
            if "name" in stage:
                check_folder_name(cfg.path, f"{where} name", stage["name"])
            get_strategy(stage["strategy"])
            check_value(cfg.path, where, "lr_schedule", stage.get("lr_schedule"), LR_SCHEDULE)
            check_value(cfg.path, where, "epochs", stage.get("epochs"), WHOLE)
            check_value(cfg.path, where, "learning_rate", stage.get("learning_rate"), POSITIVE)
    except (ValueError, KeyError) as e:
        if str(e).startswith(cfg.path):
            raise
        raise refuse(cfg.path, f"run {run.name!r}: {e}") from e


@dataclasses.dataclass(frozen=True)
class Pretrain:
    """`pretrain`: a source task trained once per experiment. `given` is the block as written (the
    main blocks' keys it changes); `data`, `model` and `training` are the main blocks with those
    changes."""
    given: Any
    data: Any
    model: Model
    training: Any

    def settings(self, seed):
        """What the source model is made from (compared with a saved source before reusing it)."""
        return {"seed": seed, "data": self.data.to_dict(), "model": self.model.to_dict(),
                "training": self.training.to_dict()}

    def to_dict(self):
        """The block as written."""
        return plain(self.given)


COMMON_KEYS = {"name", "task", "seed", "deterministic", "runs", "paper", "profile", "description"}
EXTRA_KEYS = ("paper", "description")  # kept as given, absent unless given


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A checked experiment config. The keys every task has are fields here; each task's subclass
    adds its sections as fields typed with their `Section` (or `Model`, `Pretrain`) class and sets
    `TASK`, `MODEL` (the default model block) and `RUN_KEYS` (the keys a run may set)."""
    TASK: ClassVar[str] = ""
    MODEL: ClassVar[dict] = {}
    RUN_KEYS: ClassVar[frozenset] = frozenset({"name"})
    name: str = ""
    path: str = ""
    profile: str = "default"
    seed: int = 0
    deterministic: bool = False
    runs: tuple = ()
    extras: Any = dataclasses.field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def sections(cls):
        """{key: parser class} of the task's sections."""
        return {f.name: f.type for f in dataclasses.fields(cls)
                if isinstance(f.type, type) and issubclass(f.type, (Section, Model, Pretrain))}

    @classmethod
    def defaults(cls):
        """The mapping every config starts from (its file, profile and overrides are laid over it)."""
        out = {"seed": 0, "deterministic": False, "runs": []}
        for name, section in cls.sections().items():
            if section is Model:
                out[name] = dict(cls.MODEL)
            elif section is not Pretrain:
                out[name] = section.default_dict()
        return out

    @classmethod
    def parse(cls, merged, path, profile="default"):
        """The config from `merged` (defaults, file, profile and overrides laid over each other)."""
        sections = cls.sections()
        check_known(path, "", merged, COMMON_KEYS | set(sections))
        if not merged.get("name"):
            raise refuse(path, "missing `name`")
        check_folder_name(path, "name", merged["name"])
        check_value(path, "", "seed", merged.get("seed"),
                    Rule("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)))
        check_value(path, "", "deterministic", merged.get("deterministic"), FLAG)
        values = {}
        for name, section in sorted(sections.items(), key=lambda item: item[1] is Pretrain):  # the source last
            if section is Pretrain:
                values[name] = cls.parse_pretrain(merged, path) if "pretrain" in merged else None
            else:
                values[name] = section.parse(merged.get(name), path, name)
        cfg = cls(name=merged["name"], path=path, profile=profile, seed=merged["seed"],
                  deterministic=merged["deterministic"], runs=parse_runs(merged.get("runs"), path, cls.RUN_KEYS),
                  extras=frozen({k: merged[k] for k in EXTRA_KEYS if k in merged}), **values)
        cfg.validate()
        return cfg

    @classmethod
    def parse_pretrain(cls, merged, path):
        """The `pretrain` block: only data, model and training, each the main block with its changes."""
        given = check_mapping(path, "pretrain", merged["pretrain"])
        check_known(path, "pretrain", given, {"data", "model", "training"})
        sections = cls.sections()
        parsed = {name: sections[name].parse(merge(merged[name], check_mapping(path, f"pretrain.{name}",
                                                                            given.get(name))),
                                             path, f"pretrain.{name}")
                  for name in ("data", "model", "training")}
        return Pretrain(frozen(dict(given)), **parsed)

    def validate(self):
        """Checks across keys, after each key's own (a task's config adds its own)."""

    @property
    def paper(self):
        """The `paper` mapping (their numbers and a note for the tables), or {}."""
        return plain(self.extras.get("paper")) or {}

    @property
    def seeds(self):
        """The sweep's seeds, or [None] (one repeat, seeded from the config's `seed`)."""
        return list(self.sweep.seeds or [None])

    def to_dict(self):
        """The config as a mapping: what a run's config.yaml records."""
        out = {"name": self.name, "task": self.TASK, "seed": self.seed, "deterministic": self.deterministic}
        for name in self.sections():
            value = getattr(self, name)
            if value is not None:
                out[name] = value.to_dict()
        return out | {"runs": [r.to_dict() for r in self.runs]} | plain(self.extras) | {"profile": self.profile}


def check_precise_bn(cfg):
    """`precise_bn` (resolved by `resolve_precise_bn`) is off where it cannot apply: under
    `distribute`, or with `batchnorm: freeze`."""
    blocks = [("training", cfg.training)] + ([("pretrain.training", cfg.pretrain.training)] if cfg.pretrain else [])
    for where, t in blocks:
        if t.precise_bn and t.distribute:
            raise ConfigError(f"{cfg.path}: {where}.precise_bn recomputes BatchNorm statistics in one process; it is "
                              f"not supported with distribute ({t.distribute!r}) yet: set one of them off")
        if t.precise_bn and t.batchnorm == "freeze":
            raise ConfigError(f"{cfg.path}: {where}.precise_bn recomputes the statistics of BatchNorm layers that "
                              "train; with batchnorm: freeze none does: set one of them off")


def check_not_frozen_random(cfg, run):
    """A paper's strategy that freezes part of a model is refused on random weights: frozen random
    layers are no one's transfer learning, and the result would carry the paper's name. Runs that
    start from the experiment's own source, and hand-written {trainable, frozen} strategies, are
    the user's to choose."""
    if run.get("init") == "pretrain" or run.get("transfer") not in (None, "scratch"):
        return
    model = run.model(cfg.model)
    if model.encoder_weights is not None:
        return
    for stage in run.stages(cfg.training):
        name = stage["strategy"]
        preset = get_strategy(name) if isinstance(name, str) else None
        if preset is not None and (preset.trainable is not None or preset.frozen):
            how = ("Give it pretrained weights (model.encoder_weights imagenet or a weights file) or train every "
                   "layer (strategy: all)." if tlunet.get_model_info(model.name).pretrained_encoder else
                   f"{model.name} has no pretrained encoder: train every layer (strategy: all), or start it from "
                   "a source model of the experiment (init: pretrain, as Cheng & Lam's X-Unet).")
            raise ConfigError(f"{cfg.path}: run {run.name!r}: strategy {name!r} freezes part of {model.name}, "
                              f"which starts from random weights (no model.encoder_weights). {how}")


@dataclasses.dataclass(frozen=True)
class SegmentationExperiment(Experiment):
    """The base of the segmentation tasks' configs: models trained through stages of fine-tuning
    strategies, perhaps from a source model (`pretrain`)."""
    RUN_KEYS = frozenset({"name", "strategy", "stages", "model", "transfer"})  # transfer: Wang 2020's methods
    model: Model = None
    training: Training = None
    pretrain: Pretrain = None

    def validate(self):
        """Every run's model and stages, `precise_bn`, the task's checks of each run, and no paper
        strategy that freezes random weights."""
        check_precise_bn(self)
        for run in self.runs:
            check_model(run.model(self.model).to_dict(), self.path, f"run {run.name!r} model")
            check_stages(self, run)
            self.check_transfer(run)
            self.check_run(run)
            check_not_frozen_random(self, run)

    def check_transfer(self, run):
        """A run's `transfer` names one of Wang et al. 2020's methods, and any but scratch has a source."""
        method = run.get("transfer")
        if method is not None and method not in TRANSFER_METHODS:
            raise refuse(self.path, f"run {run.name!r}: transfer {method!r} is not one of {sorted(TRANSFER_METHODS)}")
        if method not in (None, "scratch") and self.pretrain is None:
            raise refuse(self.path, f"run {run.name!r} uses transfer {method!r} but there is no `pretrain` block "
                                    "(the source task)")

    def check_run(self, run):
        """The task's own checks of one run."""

    def post_process(self):
        """The post-processing its test cases are scored with (`evaluation`)."""
        e = self.evaluation
        return PostProcess(threshold=e.threshold, tta=e.tta, largest_component=getattr(e, "largest_component", False))


# ---------------------------------------------------------------------------------- task: image
@dataclasses.dataclass(frozen=True)
class ImageData(DataBlock):
    """`data` of an image config: 2D images and masks, resized to `image_size` with `channels`, split by subject."""
    TASK = "image"
    kind: str = key("hc18")
    image_size: Any = key([256, 256], sizes(2))
    channels: int = key(1, WHOLE)
    split: Any = key([0.7, 0.15, 0.15], SPLIT)
    augment: Any = key(None)


@dataclasses.dataclass(frozen=True)
class ImageEvaluation(Evaluation):
    """`evaluation` of an image config: also the largest region, and the seeds' ensemble."""
    largest_component: bool = key(False, FLAG)
    ensemble: bool = key(False, FLAG)


@dataclasses.dataclass(frozen=True)
class ImageSweep(FoldSweep):
    """`sweep` of an image config: also the training-set fractions (the data-set-size question)."""
    fractions: Any = key([1.0], FRACTIONS)


@dataclasses.dataclass(frozen=True)
class ImageExperiment(SegmentationExperiment):
    """A `task: image` config (2D segmentation): Cheng & Lam 2021, Wang et al. 2023."""
    TASK = "image"
    MODEL = {"name": "mobilenetv2_unet", "classes": 1}
    RUN_KEYS = SegmentationExperiment.RUN_KEYS | {"init"}  # init: pretrain starts from the source model
    data: ImageData = None
    sweep: ImageSweep = None
    evaluation: ImageEvaluation = None

    def check_run(self, run):
        model = run.model(self.model)
        try:  # before any data is read; build_model would refuse the size only after loading it
            tlunet.models.check_spatial_size(model.name, self.data.image_size)
        except ValueError as e:
            raise refuse(self.path, f"data.image_size {list(self.data.image_size)} does not fit run {run.name!r}: "
                                    f"{e}") from e
        if self.evaluation.largest_component and model.classes != 1:
            raise refuse(self.path, f"evaluation.largest_component keeps one region of a one-class model; run "
                                    f"{run.name!r} has model.classes {model.classes!r}")
        if run.get("init") == "pretrain" and self.pretrain is None:
            raise refuse(self.path, f"run {run.name!r} has init: pretrain but no `pretrain` block")
        if run.get("init") == "pretrain" and run.get("transfer") is not None:
            raise refuse(self.path, f"run {run.name!r} gives both init: pretrain and transfer: "
                                    f"{run.get('transfer')}; `transfer` already says how the source is used")

    def validate(self):
        super().validate()
        if self.evaluation.ensemble and len(self.sweep.seeds or []) < 2:
            raise refuse(self.path, "evaluation.ensemble averages the models of the sweep's seeds; give two or more in "
                                    f"sweep.seeds (e.g. [0, 1, 2]). Received: sweep.seeds {self.sweep.to_dict()['seeds']!r}")


# ---------------------------------------------------------------------------------- task: volume
@dataclasses.dataclass(frozen=True)
class VolumeData(DataBlock):
    """`data` of a volume config: CT volumes, HU-windowed, trained on patches of `patch_size`."""
    TASK = "volume"
    kind: str = key("ct_phantom")
    window: Any = key([-1250.0, 250.0])
    target_spacing: Any = key(None)
    patch_size: Any = key([32, 128, 128], sizes(3))
    split: Any = key([0.7, 0.1, 0.2], SPLIT)


@dataclasses.dataclass(frozen=True)
class VolumeTraining(Training):
    """`training` of a volume config: also how patches are drawn and augmented."""
    batch_size: int = key(2, WHOLE)
    patches_per_volume: int = key(4, WHOLE)
    foreground_prob: float = key(0.33, FRACTION)
    augment: bool = key(True, FLAG)


@dataclasses.dataclass(frozen=True)
class VolumeEvaluation(Evaluation):
    """`evaluation` of a volume config: sliding windows over whole volumes, NSD's tolerance. On volumes
    `tta: flip` averages the volume's prediction with those of its mirrors along every axis."""
    overlap: float = key(0.5, Rule("a number in [0, 1)", lambda v: isinstance(v, (int, float)) and 0 <= v < 1))
    batch_size: int = key(2, WHOLE)
    nsd_tolerance_mm: float = key(1.0, POSITIVE)


@dataclasses.dataclass(frozen=True)
class VolumeSweep(FoldSweep):
    """`sweep` of a volume config: `train_on: fold` trains on one fold and tests on the rest."""
    train_on: str = key("rest", one_of("rest", "fold"))


@dataclasses.dataclass(frozen=True)
class VolumeExperiment(SegmentationExperiment):
    """A `task: volume` config (3D segmentation): Bressem et al. 2021, Wang et al. 2020."""
    TASK = "volume"
    MODEL = {"name": "unet3d", "classes": 1}
    data: VolumeData = None
    training: VolumeTraining = None
    evaluation: VolumeEvaluation = None
    sweep: VolumeSweep = None


# -------------------------------------------------------------------------- task: classification
INITS = ("dense", "sparse", "random")


@dataclasses.dataclass(frozen=True)
class FrameData(DataBlock):
    """`data` of a classification config: class-labelled frames, split by video."""
    TASK = "frames"
    kind: str = key("lung_us_videos")
    image_size: Any = key([128, 128], sizes(2))
    split: Any = key([0.6, 0.2, 0.2], SPLIT)


@dataclasses.dataclass(frozen=True)
class LineData(DataBlock):
    """`segmentation.data`: frames with line labels for the segmentation sources."""
    TASK = "lines"
    kind: str = key("lung_us_lines")
    n: int = key(120, WHOLE)
    image_size: Any = key([128, 128], sizes(2))


@dataclasses.dataclass(frozen=True)
class ClassifierTraining(Fitting):
    """`training` of a classification config: how each classifier trains."""
    epochs: int = key(20, WHOLE)
    batch_size: int = key(16, WHOLE)
    learning_rate: float = key(3e-4, POSITIVE)
    augment: Any = key(None)


@dataclasses.dataclass(frozen=True)
class LineTraining(ClassifierTraining):
    """`segmentation.training`: how each line-segmentation source trains."""
    epochs: int = key(20, WHOLE)
    batch_size: int = key(8, WHOLE)
    learning_rate: float = key(1e-3, POSITIVE)
    loss: Any = key("bce_dice")


@dataclasses.dataclass(frozen=True)
class Classifier(Section):
    """`classifier`: the head put on a segmentation network (`tlunet.models.seg_to_classifier`)."""
    inputs: str = key("both", one_of(*FEATURE_INPUTS))
    hidden: int = key(64, WHOLE)
    dropout: float = key(0.3, FRACTION)


@dataclasses.dataclass(frozen=True)
class Explain(Section):
    """`explain`: how many explanation figures (one per class) each run draws."""
    n: int = key(3, Rule("a whole number >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0))


@dataclasses.dataclass(frozen=True)
class SegmentationSource(Section):
    """`segmentation`: the line-segmentation source models (data, model, training)."""
    data: Any = None
    model: Any = None
    training: Any = None
    MODEL = {"name": "unet", "filters": [16, 32, 64, 128, 256]}

    @classmethod
    def default_dict(cls):
        return {"data": LineData.default_dict(), "model": dict(cls.MODEL), "training": LineTraining.default_dict()}

    @classmethod
    def parse(cls, raw, path, where, extra_keys=()):
        raw = check_mapping(path, where, raw)
        check_known(path, where, raw, {"data", "model", "training"})
        return cls(data=LineData.parse(raw.get("data"), path, f"{where}.data"),
                   model=Model.parse(raw.get("model") or dict(cls.MODEL), path, f"{where}.model"),
                   training=LineTraining.parse(raw.get("training"), path, f"{where}.training"))

    def to_dict(self):
        return {"data": self.data.to_dict(), "model": self.model.to_dict(), "training": self.training.to_dict()}


@dataclasses.dataclass(frozen=True)
class ClassificationExperiment(Experiment):
    """A `task: classification` config: Gare et al. 2022's reverse transfer."""
    TASK = "classification"
    RUN_KEYS = frozenset({"name", "init", "learning_rate"})
    classes: Any = ("covid", "pneumonia", "regular")
    data: FrameData = None
    segmentation: SegmentationSource = None
    classifier: Classifier = None
    training: ClassifierTraining = None
    explain: Explain = None
    sweep: Sweep = None

    @classmethod
    def parse(cls, merged, path, profile="default"):
        classes = merged.get("classes")
        if not isinstance(classes, list) or len(classes) < 2 or len(set(classes)) != len(classes):
            raise refuse(path, f"`classes` must list at least two distinct class names. Received: {classes!r}")
        cfg = super().parse({k: v for k, v in merged.items() if k != "classes"}, path, profile)
        return dataclasses.replace(cfg, classes=tuple(classes))

    @classmethod
    def defaults(cls):
        return super().defaults() | {"classes": list(cls.classes)}

    def validate(self):
        for run in self.runs:
            if run.get("init") not in INITS:
                raise refuse(self.path, f"run {run.name!r}: init must be one of {INITS}")
            if "learning_rate" in run.given:
                check_value(self.path, f"run {run.name!r}", "learning_rate", run.get("learning_rate"), POSITIVE)
        if list(self.segmentation.data.image_size) != list(self.data.image_size):
            # the classifier is the segmentation network plus a head: it sees frames at its size
            raise refuse(self.path, f"segmentation.data.image_size {list(self.segmentation.data.image_size)} and "
                                    f"data.image_size {list(self.data.image_size)} must be the same (the classifier "
                                    "reuses the segmentation network)")

    def to_dict(self):
        return {"classes": list(self.classes)} | super().to_dict()
