"""3D segmentation (`task: volume`): Bressem et al. 2021 and Wang et al. 2020.

Patch training on volumes, whole-volume sliding-window evaluation (Dice, NSD, HD95 in mm with the
voxel spacing), and Wang 2020's transfer methods from a source model pre-trained once per experiment.
"""

import os

import numpy as np

from tlunet import evaluation as ev
from tlunet.data import experiment_splits, make_patch_dataset
from tlunet.data.kinds import load_volumes
from tlunet.inference import sliding_window_predict
from tlunet.plots import overlays
from tlunet.runners.base import Runner
from tlunet.runners.config import distribution_scope, resolve_path
from tlunet.runners.results import (UNITS, finish_run, fmt, markdown_table, mean_text, paper_value,
                                    start_run, summary_row, write_config, write_csv)
from tlunet.runners.sections import VolumeExperiment
from tlunet.training import save_model


MEASURES = ("dice", "nsd", "hd95_mm")


def evaluate_volumes(model, cases, evaluation, post):
    """Whole-volume sliding-window predictions post-processed by `post` (a `PostProcess`); per case
    Dice, NSD at the tolerance (mm) and HD95 (mm) with the case's spacing. Returns (rows, predicted masks)."""
    rows, preds = [], []
    for c in cases:
        # on volumes flip TTA averages the mirrors along every axis (sliding_window_predict's tta)
        prob = sliding_window_predict(model, c["image"], overlap=evaluation.overlap, tta=post.tta == "flip",
                                      batch_size=evaluation.batch_size, progress=f"{c['case']}: windows")
        pred, true = post.labels(prob).astype(bool), c["mask"] > 0
        rows.append({"case": c["case"], "dice": ev.dice(pred, true),
                     "nsd": ev.normalized_surface_dice(pred, true, evaluation.nsd_tolerance_mm, c["spacing"]),
                     "hd95_mm": ev.hd95(pred, true, c["spacing"]), "lesion_voxels": int(true.sum()),
                     "predicted_voxels": int(pred.sum())})
        preds.append(pred)
    return rows, preds


def slice_overlays(cases, preds, path, max_rows=3):
    """Image / truth / prediction on the axial slice with the most lesion, for a few cases."""
    images, truths, predicted, titles = [], [], [], []
    for c, p in list(zip(cases, preds))[:max_rows]:
        z = int(np.argmax(c["mask"].reshape(len(c["mask"]), -1).sum(axis=1)))
        images.append((c["image"][z][..., None] * 255).astype(np.uint8))
        truths.append(c["mask"][z])
        predicted.append(p[z])
        titles.append(f"{c['case']} slice {z}")
    overlays(images, truths, predicted, path, titles)


def patches(training, data, cases, seed, train):
    """Patches of `cases` at the data block's patch size: random (foreground-biased, augmented) to
    train on, fixed ones otherwise."""
    return make_patch_dataset([c["image"] for c in cases], [c["mask"] for c in cases], tuple(data.patch_size),
                              batch_size=training.batch_size, patches_per_volume=training.patches_per_volume,
                              foreground_prob=training.foreground_prob, seed=seed,
                              augment=bool(training.augment) and train, fixed=not train)


class VolumeRunner(Runner):
    CONFIG = VolumeExperiment
    MEASURES = MEASURES

    def weights_shape(self):
        return (*self.cfg.data.patch_size, 1)

    def load(self):
        self.cases, self.source = load_volumes(self.cfg.data.to_block(),
                                               resolve_path(self.cfg, self.cfg.data.get("root")), seed=self.cfg.seed)
        return [c["case"] for c in self.cases], self.source

    def make_splits(self, groups):
        splits = experiment_splits(len(groups), list(self.cfg.data.split), self.cfg.seed, folds=self.cfg.sweep.folds,
                                   train_on=self.cfg.sweep.train_on, validation=False)
        self.check_splits(splits, len(groups), validation=False)
        return splits

    def describe(self, groups, splits, total):
        return f"data: {self.source}; patches {tuple(self.cfg.data.patch_size)}"

    def pretrain(self):
        """The source-task model (Wang et al. 2020: non-COVID lung lesions), trained once, at the pre-train
        block's own patch size (convolution weights do not depend on it)."""
        p, seed = self.cfg.pretrain, self.cfg.seed

        def train():
            cases, desc = load_volumes(p.data.to_block(), resolve_path(self.cfg, p.data.get("root")), seed=seed)
            n_val = max(1, len(cases) // 10)
            with distribution_scope(self.cfg):
                model = p.model.build((*p.data.patch_size, 1))
                history = self.fit_source(model, p.training, lambda: (
                    patches(p.training, p.data, cases[n_val:], seed, True),
                    patches(p.training, p.data, cases[:n_val], seed + 99, False),
                    patches(p.training, p.data, cases[n_val:], seed, False)))
            return model, {"source": desc, "epochs": len(history.get("loss", [])),
                           "val_dice": history.get("val_dice", [float("nan")])[-1]}

        return self.source_model(train, lambda model, info: (
            f"source model: {model.name} pre-trained on {info['source']}: {info['epochs']} epochs, "
            f"final val Dice {info['val_dice']:.3f}"))

    def build(self, job):
        """The job's model, and the note saying which weights it starts from."""
        shape, method, model_block = (*self.cfg.data.patch_size, 1), job.spec.get("transfer"), job.spec.model(self.cfg.model)
        if method is None:
            return model_block.build(shape, encoder_weights=job.weights), job.weights_note
        return self.transfer_model(job, shape, model_block.classes)

    def train_and_evaluate(self, job):
        cfg, run_dir = self.cfg, os.path.join(self.exp_dir, job.name)
        train, val = [self.cases[i] for i in job.train], [self.cases[i] for i in job.val]
        start_run(run_dir, job.seed)
        with distribution_scope(cfg):  # build, transfer and train under the strategy (after start_run's reset)
            model, note = self.build(job)
            write_config(run_dir, cfg, run=job.spec, fold=job.fold, run_seed=job.seed, weights_used=note,
                         train_cases=[c["case"] for c in train], test_cases=[self.cases[i]["case"] for i in job.test])
            # precise_bn: statistics of each stage's final weights, from training patches (no augmentation)
            bn_data = patches(cfg.training, cfg.data, train, job.seed, False) if cfg.training.precise_bn else None
            done = self.fit_stages(job, model, lambda: (
                patches(cfg.training, cfg.data, train, job.seed, True),
                patches(cfg.training, cfg.data, val, cfg.seed + 99, False) if val else None), bn_data)
        self.write_history(job, done)
        test_cases = [self.cases[i] for i in job.test]
        rows, preds = evaluate_volumes(model, test_cases, cfg.evaluation, cfg.post_process())
        write_csv(os.path.join(run_dir, "metrics.csv"), rows)
        slice_overlays(test_cases, preds, os.path.join(run_dir, "figures", "overlays.png"))
        save_model(model, os.path.join(run_dir, "model.keras"))
        row = summary_row(job.spec, done, note, rows, MEASURES, fold=job.fold, transfer=job.spec.get("transfer") or "—",
                          n_train=len(job.train), n_test=len(job.test), **job.seed_field)
        finish_run(run_dir, row, job.name)
        return row

    def row_text(self, row):
        return f"Dice {row['dice']:.3f}, NSD {row['nsd']:.3f}, trainable {row['trainable_params']:,}"

    def summary_lines(self, rows, source):
        cfg, paper = self.cfg, self.cfg.paper
        has_paper = any(paper_value(paper, r["run"]) != "—" for r in rows)  # no column of dashes
        table = markdown_table([
            ("run", "l", lambda r: r["run"]), ("transfer", "l", lambda r: r["transfer"]),
            ("trainable params", "r", lambda r: f"{r['trainable_params']:,}"),
            ("Dice (ours)", "r", lambda r: mean_text(r, "dice")),
            ("Dice (paper)" if has_paper else None, "r", lambda r: paper_value(paper, r["run"])),
            (f"NSD@{cfg.evaluation.nsd_tolerance_mm:g} mm", "r", lambda r: fmt(r["nsd"])),
            ("HD95 (mm)", "r", lambda r: fmt(r["hd95_mm"], 1, 1)), ("epochs", "r", lambda r: f"{r['epochs']:g}"),
            ("train (per fold) / test cases (all folds)", "r", lambda r: f"{r['n_train']:g} / {r['n_test']}"),
            ("folds", "r", lambda r: r["folds"]), ("initial weights", "l", lambda r: r["weights"])], rows)
        return [f"Data: {source}. {UNITS}.", "", *table, "", f"Dice: mean ± sd (population sd) over {self._spread(rows)}."]

    def _spread(self, rows):
        seeds = self.cfg.sweep.seeds if len(self.cfg.sweep.seeds or []) > 1 else None
        folds = max(r.get("folds", 1) for r in rows) if rows else 1
        if not seeds:
            return f"the {folds} folds" if folds > 1 else "the test cases"
        return ((f"the {folds} × {len(seeds)} runs of {folds} folds and " if folds > 1 else "the runs of ")
                + f"{len(seeds)} seeds ({', '.join(map(str, seeds))}; each initialises the model and draws the training "
                "patches anew; the split and the source model are the same)")
