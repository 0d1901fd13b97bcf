"""Reverse transfer (`task: classification`): Gare et al. 2022.

1. A segmentation U-Net of lung-ultrasound structures (the phantom's pleural line, A- and B-lines;
   a real frame's pleural line, rib line and rib shadow: `segmentation.data`) is trained once per
   label kind the runs need: dense (painted regions) and/or sparse (1-px traces).
2. Each run turns one of them, or the same architecture untrained, into a classifier
   (`seg_to_classifier`) and trains it on class-labelled frames, split by video.
3. Tested per frame and per video (the majority vote of its frames): metrics.json, predictions.csv,
   the confusion matrix and explanation figures (segmentation overlay + Grad-CAM).
"""

import json
import os

import keras
import numpy as np

from tlunet import evaluation as ev
from tlunet.data import make_classification_dataset, make_dataset, split_indices, stratified_split
from tlunet.data.kinds import load_frames, load_line_set
from tlunet.data.lines import PHANTOM_CLASSES
from tlunet.explain import explain_figure
from tlunet.finetune import trainable_params
from tlunet.models import seg_to_classifier
from tlunet.plots import confusion_matrix, learning_curves
from tlunet.progress import EpochProgress
from tlunet.runners.base import Runner
from tlunet.runners.config import resolve_path
from tlunet.runners.results import cached_source, finish_run, fmt, markdown_table, mean_text, start_run, write_config, write_csv
from tlunet.runners.schema import plain
from tlunet.runners.sections import ClassificationExperiment, SegmentationSource
from tlunet.training import compile_model, fit, save_model


def per_class_dice(pred, masks, class_names):
    """{class name: mean Dice over the frames where the class is in the mask or the prediction}
    of label maps `pred` and `masks` (labels 1.. are `class_names`); NaN for a class in neither."""
    return {name: float(np.nanmean([ev.dice(p == c, m == c) for p, m in zip(pred, masks)
                                    if (m == c).any() or (p == c).any()] or [float("nan")]))
            for c, name in enumerate(class_names, start=1)}


class ClassificationRunner(Runner):
    CONFIG = ClassificationExperiment
    PLANS_WEIGHTS = False

    @property
    def MEASURES(self):  # noqa: N802  (the base class's name)
        return ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "video_accuracy",
                *(f"recall_{n}" for n in self.cfg.classes), *(f"f1_{n}" for n in self.cfg.classes))

    def data_blocks(self):
        return {"data": self.cfg.data.to_block(), "segmentation.data": self.cfg.segmentation.data.to_block()}

    def load(self):
        d = self.cfg.data
        self.frames, self.labels, groups, self.source = load_frames(
            d.to_block(), resolve_path(self.cfg, d.get("root")), self.cfg.seed, list(self.cfg.classes))
        self.groups = groups
        return groups, self.source

    def make_splits(self, groups):
        splits = [stratified_split(self.labels, groups, list(self.cfg.data.split), self.cfg.seed)]
        self.check_splits(splits, len(set(groups)))
        return splits

    def describe(self, groups, splits, total):
        train, val, test = splits[0]
        return f"data: {self.source}; {len(train)}/{len(val)}/{len(test)} frames train/val/test, split by video"

    def prepare(self):
        """The line-segmentation sources the runs start from, each trained once."""
        self.sources = {kind: self.train_segmentation(kind) for kind in ("dense", "sparse")
                        if any(r.get("init") == kind for r in self.cfg.runs)}

    def plan(self, ready, splits, groups):
        jobs = super().plan(ready, splits, groups)
        test, t = jobs[0].test, self.cfg.training
        self.test_images = np.concatenate([x for x, _ in make_classification_dataset(
            [self.frames[i] for i in test], self.labels[test], tuple(self.cfg.data.image_size), t.batch_size,
            shuffle=False).as_numpy_iterator()])
        return jobs

    def train_segmentation(self, kind):
        """The line-segmentation model for `kind` ("dense"/"sparse"), trained once and reused; (model,
        info: source, class names, per-class validation Dice)."""
        s, seed = self.cfg.segmentation, self.cfg.seed
        run_dir = os.path.join(self.exp_dir, f"segmentation_{kind}")

        def train():
            lines = self.line_set(kind)
            images, masks = lines.images, lines.masks
            train_idx, val_idx = split_indices(len(images), (0.85, 0.15), seed=seed, groups=lines.groups)
            keras.utils.set_random_seed(seed)
            model = s.model.build((*s.data.image_size, 1), leave_out=(), classes=len(lines.class_names) + 1)
            t = s.training
            compile_model(model, loss=plain(t.loss), learning_rate=t.learning_rate)
            fit(model, make_dataset(images[train_idx], masks[train_idx], t.batch_size, plain(t.augment), seed=seed),
                make_dataset(images[val_idx], masks[val_idx], t.batch_size, shuffle=False), run_dir=run_dir,
                epochs=t.epochs, verbose=self.verbose, lr_schedule=plain(t.lr_schedule), patience=t.patience,
                tensorboard=t.tensorboard, callbacks=[self.progress(f"{kind}-label segmentation", t.epochs)])
            pred = np.argmax(model.predict(images[val_idx].astype(np.float32) / 255, verbose=0), axis=-1)
            return model, {"source": lines.description, "classes": list(lines.class_names),
                           "val_dice": per_class_dice(pred, masks[val_idx], lines.class_names)}

        model, info = cached_source(run_dir, train, settings={"seed": seed, "kind": kind, **s.to_dict()},
                                    defaults=SegmentationSource.default_dict())
        self.log(f"{kind}-label segmentation on {info['source']}: val Dice "
                 + ", ".join(f"{k} {v:.3f}" for k, v in info["val_dice"].items()))
        return model, info

    def line_set(self, kind):
        """The segmentation sources' frames with `kind` labels (`tlunet.data.kinds.load_line_set`)."""
        s = self.cfg.segmentation
        return load_line_set(s.data.to_block(), resolve_path(self.cfg, s.data.get("root")), self.cfg.seed, kind)

    def line_names(self):
        """The names of the segmentation sources' labels 1.. (as the sources recorded them)."""
        recorded = [info.get("classes") for _, info in self.sources.values() if info.get("classes")]
        return tuple(recorded[0]) if recorded else PHANTOM_CLASSES

    def line_classes(self):
        """The number of labels of the segmentation sources' output (background included)."""
        if self.sources:
            return next(iter(self.sources.values()))[0].output_shape[-1]
        return len(self.line_set("dense").class_names) + 1  # random-init runs only: the sources' shape, untrained

    def progress(self, label, epochs):
        return EpochProgress(label, epochs, disable=bool(self.verbose))

    def build(self, job):
        """The classifier of a job: a segmentation source (or its architecture, untrained) with a head;
        and the source's per-class validation Dice."""
        init, names = job.spec.get("init"), self.cfg.classes
        if init == "random":
            s = self.cfg.segmentation
            source, seg_dice = s.model.build((*self.cfg.data.image_size, 1), leave_out=(),
                                             classes=self.line_classes()), {}
        else:
            source, seg_dice = self.sources[init][0], self.sources[init][1]["val_dice"]
        c = self.cfg.classifier
        model = seg_to_classifier(source, len(names), inputs=c.inputs, hidden=c.hidden, dropout=c.dropout,
                                  weights="random" if init == "random" else "keep")
        model.compile(optimizer=keras.optimizers.Adam(job.spec.get("learning_rate", self.cfg.training.learning_rate)),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model, seg_dice

    def train_and_evaluate(self, job):
        run_dir, t, size = os.path.join(self.exp_dir, job.name), self.cfg.training, tuple(self.cfg.data.image_size)
        start_run(run_dir, job.seed)
        write_config(run_dir, self.cfg, run=job.spec, run_seed=job.seed)
        model, seg_dice = self.build(job)
        frames, labels = self.frames, self.labels
        bar = self.progress(job.label, t.epochs)
        history = fit(model, make_classification_dataset([frames[i] for i in job.train], labels[job.train], size,
                                                         t.batch_size, plain(t.augment), seed=job.seed),
                      make_classification_dataset([frames[i] for i in job.val], labels[job.val], size, t.batch_size,
                                                  shuffle=False),
                      run_dir=run_dir, epochs=t.epochs, monitor="val_accuracy", lr_schedule=plain(t.lr_schedule),
                      tensorboard=t.tensorboard, patience=t.patience, verbose=self.verbose, callbacks=[bar])
        bar.close()
        learning_curves(history, os.path.join(run_dir, "figures", "learning_curves.png"), job.spec.name)
        m = self.test(model, job, run_dir)
        save_model(model, os.path.join(run_dir, "model.keras"))
        init, names = job.spec.get("init"), self.cfg.classes
        row = {"run": job.spec.name, "init": init, "stages": "all", "trainable_params": trainable_params(model),
               "weights": "random init" if init == "random" else f"{init}-label segmentation model",
               "seg_val_dice": float(np.nanmean(list(seg_dice.values()))) if seg_dice else float("nan"),
               **{key: m[key] for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "video_accuracy")},
               "epochs": len(history.get("loss", [])), "n_test_frames": len(job.test),
               "n_test_videos": m["n_test_videos"], **{f"recall_{n}": m["per_class"][n]["recall"] for n in names},
               **{f"f1_{n}": m["per_class"][n]["f1"] for n in names}, **job.seed_field}
        finish_run(run_dir, row, job.name)
        return row

    def test(self, model, job, run_dir):
        """Frame and video (majority vote of its frames) measures on the test frames; metrics.json,
        predictions.csv and the figures. The measures."""
        test, names, groups, labels = job.test, list(self.cfg.classes), self.groups, self.labels
        probs = model.predict(self.test_images, batch_size=self.cfg.training.batch_size, verbose=0)
        m = ev.classification_metrics(labels[test], probs, names)
        votes = ev.majority_vote(probs, [groups[i] for i in test])
        truth = {groups[i]: labels[i] for i in test}
        videos = sorted(votes)
        m["video_accuracy"] = float(np.mean([votes[v] == truth[v] for v in videos]))
        with open(os.path.join(run_dir, "metrics.json"), "w") as f:
            json.dump(m, f, indent=1)
        write_csv(os.path.join(run_dir, "predictions.csv"),
                  [{"frame": j, "video": groups[i], "true": names[labels[i]], "predicted": names[int(p.argmax())],
                    **{f"p_{n}": float(p[k]) for k, n in enumerate(names)}} for j, (i, p) in enumerate(zip(test, probs))])
        figures = os.path.join(run_dir, "figures")
        confusion_matrix(m["confusion"], names, os.path.join(figures, "confusion.png"), f"{job.spec.name} (test frames)")
        if self.cfg.classifier.inputs != "features":  # the first test frame of each class, up to explain.n figures
            firsts = [labels[test].tolist().index(k) for k in range(len(names)) if k in labels[test]]
            for j in firsts[:self.cfg.explain.n]:
                k = int(labels[test[j]])
                explain_figure(model, self.test_images[j], os.path.join(figures, f"explain_{names[k]}.png"), names,
                               true_label=k, line_names=self.line_names())
        return m | {"n_test_videos": len(videos)}

    def row_text(self, row):
        return (f"accuracy {row['accuracy']:.3f}, balanced {row['balanced_accuracy']:.3f}, macro AUC "
                f"{row['macro_auc']:.3f}, video accuracy {row['video_accuracy']:.3f}")

    def summary_lines(self, rows, source):
        names, seeds = self.cfg.classes, self.cfg.sweep.seeds
        measure = lambda key: lambda r: mean_text(r, key)  # noqa: E731
        table = markdown_table([
            ("run", "l", lambda r: r["run"]), ("initialised from", "l", lambda r: r["init"]),
            ("seg. val Dice", "r", lambda r: fmt(r["seg_val_dice"])),
            ("trainable params", "r", lambda r: f"{r['trainable_params']:,}"), ("accuracy", "r", measure("accuracy")),
            ("balanced acc.", "r", measure("balanced_accuracy")), ("macro F1", "r", measure("macro_f1")),
            ("macro AUC", "r", measure("macro_auc")), *((f"recall {n}", "r", measure(f"recall_{n}")) for n in names),
            ("video acc. (majority)", "r", measure("video_accuracy")),
            ("epochs", "r", lambda r: f"{r['epochs']:g}"),
            ("test frames / videos", "r", lambda r: f"{r['n_test_frames']} / {r['n_test_videos']}")], rows)
        lines = [f"Data: {source}.", "", *table]
        if seeds and len(seeds) > 1:
            lines += ["", f"Mean ± sd (population sd) over {len(seeds)} seeds ({', '.join(map(str, seeds))}): each seed "
                          "initialises and shuffles the classifier anew; the data, the split and the segmentation "
                          "sources are the same."]
        return lines
