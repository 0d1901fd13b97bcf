"""2D segmentation (`task: image`, the default): Wang et al. 2023 and Cheng & Lam 2021.

Each job builds its model from the zoo (from the weights it names, or from the experiment's
source model), trains through its stages, and is tested on its split's test cases; the table puts
the paper's numbers beside ours.
"""

import os

import numpy as np

from tlunet.data import experiment_splits, make_dataset, split_indices
from tlunet.data.hc18 import read_filled_annotation
from tlunet.data.io import read_image
from tlunet.data.kinds import load_image_set
from tlunet.plots import bland_altman, dice_vs_fraction, dice_vs_params, overlays
from tlunet.runners.base import Runner, is_finite
from tlunet.runners.config import distribution_scope, resolve_path
from tlunet.runners.results import (UNITS, finish_run, fmt, markdown_table, mean_text, paper_value,
                                    start_run, summary_row, write_config, write_csv)
from tlunet.runners.schema import plain
from tlunet.runners.sections import ImageExperiment
from tlunet.scoring import evaluate_cases
from tlunet.training import save_model, weights_digest
from tlunet.transfer import transfer_weights


MEASURES = ("dice", "miou", "pixel_accuracy", "hc_abs_error_mm", "df_mm", "adf_mm", "dice_full", "hausdorff_mm")


def load_images(cfg, block):
    """(images, masks, meta, groups, description) of a data block of `cfg` (`load_image_set`)."""
    return load_image_set(block.to_block(), root=resolve_path(cfg, block.get("root")), seed=cfg.seed)


class ImageRunner(Runner):
    CONFIG = ImageExperiment
    MEASURES = MEASURES

    def load(self):
        self.images, self.masks, self.meta, groups, self.source = load_images(self.cfg, self.cfg.data)
        return groups, self.source

    def make_splits(self, groups):
        d = self.cfg.data
        splits = experiment_splits(len(groups), list(d.split), self.cfg.seed, groups, self.cfg.sweep.folds)
        self.check_splits(splits, len(set(groups)))
        return splits

    def describe(self, groups, splits, total):
        d, (train, val, test) = self.cfg.data, splits[0]
        channels = {1: "1 channel (grey)", 3: "3 channels (RGB)"}.get(d.channels, f"{d.channels} channels")
        return (f"profile {self.cfg.profile}: {self.source}, {len(groups)} images of {len(set(groups))} subjects at "
                f"{'x'.join(map(str, d.image_size))}, {channels}; split by subject: {len(train)} train / {len(val)} "
                f"validation / {len(test)} test{' (fold 0)' if len(splits) > 1 else ''}; "
                f"{total} training run{'s' * (total > 1)}")

    def pretrain(self):
        """The source model of `init: pretrain` and `transfer` runs (e.g. X-Unet on grey salient-object
        images, a U-Net on lung-tumour patches), trained once."""
        p = self.cfg.pretrain

        def train():
            images, masks, _, groups, source = load_images(self.cfg, p.data)
            train_idx, val_idx = split_indices(len(images), (0.9, 0.1), seed=self.cfg.seed, groups=groups)
            if not len(val_idx):  # e.g. patches grouped by their two files: the watched 10% is drawn by image
                train_idx, val_idx = split_indices(len(images), (0.9, 0.1), seed=self.cfg.seed)
                source += f"; validation: 10% of the images, as its {len(set(groups))} groups are too few to hold one out"
            t, seed = p.training, self.cfg.seed
            with distribution_scope(self.cfg):
                model = p.model.build((*p.data.image_size, p.data.channels), leave_out=())
                history = self.fit_source(model, t, lambda: (
                    make_dataset(images[train_idx], masks[train_idx], t.batch_size, plain(p.data.augment), seed=seed),
                    make_dataset(images[val_idx], masks[val_idx], t.batch_size, shuffle=False),
                    make_dataset(images[train_idx], masks[train_idx], t.batch_size, seed=seed)))
            return model, {"source": source, "images": len(images), "epochs": len(history.get("loss", [])),
                           "val_dice": history.get("val_dice", [float("nan")])[-1],
                           "name": p.data.get("layout") or p.data.kind}

        return self.source_model(train, lambda model, info: (
            f"source model: {p.model.name} pre-trained on {info['source']} ({info['images']} images, "
            f"{info['epochs']} epochs, final val Dice {info['val_dice']:.3f})"))

    def build(self, job):
        """The job's model, and the note saying which weights it starts from."""
        shape, model_block = (*self.cfg.data.image_size, self.cfg.data.channels), job.spec.model(self.cfg.model)
        if job.spec.get("transfer") is not None:
            return self.transfer_model(job, shape, model_block.classes)
        model = model_block.build(shape, encoder_weights=job.weights)
        if job.spec.get("init") != "pretrain":
            return model, job.weights_note
        report = transfer_weights(self.source_model, model)
        source = self.cfg.pretrain.data.get("layout") or "the source task"
        return model, f"pre-trained on {source} ({len(report.copied)} layers copied)"

    def train_and_evaluate(self, job):
        run_dir, t = os.path.join(self.exp_dir, job.name), self.cfg.training
        images, masks = self.images, self.masks
        start_run(run_dir, job.seed)
        with distribution_scope(self.cfg):  # build, transfer and train under the strategy (after start_run's reset)
            model, note = self.build(job)
            write_config(run_dir, self.cfg, run=job.spec, fraction=job.fraction, fold=job.fold, run_seed=job.seed,
                         n_train=len(job.train), n_val=len(job.val), n_test=len(job.test), weights_used=note)
            # precise_bn: each stage ends with the BatchNorm statistics of its final weights, from the training images
            bn_data = make_dataset(images[job.train], masks[job.train], t.batch_size, seed=job.seed) \
                if t.precise_bn else None
            done = self.fit_stages(job, model, lambda: (
                make_dataset(images[job.train], masks[job.train], t.batch_size, plain(self.cfg.data.augment),
                             seed=job.seed),
                make_dataset(images[job.val], masks[job.val], t.batch_size, shuffle=False) if job.val else None),
                bn_data)
        self.write_history(job, done)
        save_model(model, os.path.join(run_dir, "model.keras"))
        cases = self.evaluate_model(model, run_dir, job.name, job.test)
        row = summary_row(job.spec, done, note, cases, MEASURES, fraction=job.fraction, fold=job.fold,
                          n_test=len(job.test), **job.seed_field,
                          **({"weights_sha1": weights_digest(model)} if t.distribute else {}))
        finish_run(run_dir, row, job.name)
        return row

    def row_text(self, row):
        return f"Dice {row['dice']:.3f}, trainable {row['trainable_params']:,}"

    def evaluate_model(self, model, run_dir, name, test):
        """Scores `model` on the `test` cases; metrics.csv and the figures (overlays; on HC18 the worst
        cases at full size and the Bland-Altman plot of HC). The per-case rows."""
        meta, full = [self.meta[i] for i in test], []
        cases, labels = evaluate_cases(model, self.images[test], self.masks[test], meta, self.cfg.post_process(),
                                       full_size=full)
        write_csv(os.path.join(run_dir, "metrics.csv"), cases)
        figures = os.path.join(run_dir, "figures")
        overlays(self.images[test][:8], self.masks[test][:8], labels[:8], os.path.join(figures, "overlays.png"),
                 [c["case"] for c in cases[:8]])
        if full:  # HC18 at the scan's own size: the worst cases and the agreement of HC
            worst = np.argsort([c["dice_full"] for c in cases])[:8]
            overlays([read_image(meta[i]["image"], channels=1) for i in worst],
                     [read_filled_annotation(meta[i]["annotation"]) for i in worst], [full[i] for i in worst],
                     os.path.join(figures, "worst_cases.png"),
                     [f"{cases[i]['case']} (ADF {cases[i]['adf_mm']:.1f} mm)" for i in worst])
            bland_altman([c["hc_pred_mm"] for c in cases], [c["hc_true_mm"] for c in cases],
                         os.path.join(figures, "bland_altman_hc.png"), f"{name}: HC on {len(cases)} test images")
        return cases

    def summary_lines(self, rows, source):
        paper, has_hc = self.cfg.paper, any(is_finite(r, "hc_abs_error_mm") for r in rows)
        paper_dice = lambda r: paper_value(paper, r["run"]) if r["fraction"] == 1 else "—"  # noqa: E731  (full sets)
        has_paper = any(paper_dice(r) != "—" for r in rows)
        table = markdown_table([
            ("run", "l", lambda r: r["run"]), ("fraction", "r", lambda r: f"{r['fraction']:g}"),
            ("trainable params", "r", lambda r: f"{r['trainable_params']:,}"),
            ("Dice (ours)", "r", lambda r: mean_text(r, "dice")), ("Dice (paper)" if has_paper else None, "r", paper_dice),
            ("mIoU", "r", lambda r: fmt(r["miou"])), ("pixel acc.", "r", lambda r: fmt(r["pixel_accuracy"])),
            ("HC MAE (mm)" if has_hc else None, "r", lambda r: fmt(r["hc_abs_error_mm"], 1, 2)),
            ("epochs", "r", lambda r: f"{r['epochs']:g}"), ("test cases", "r", lambda r: r["n_test"]),
            ("initial weights", "l", lambda r: r["weights"])], rows)
        lines = [f"Data: {source}. {UNITS}. Measures at the "
                 "model's input size" + ("; HC error from the probabilities resized to the scan's own size." if has_hc
                                         else "."), "", *table]
        challenge = [r for r in rows if is_finite(r, "adf_mm")]
        if challenge:
            tta = " with flip test-time augmentation" if self.cfg.evaluation.tta == "flip" else ""
            lines += ["", f"HC18 challenge measures at the scan's own size{tta}: probabilities resized to the original "
                      "size, thresholded, largest component, sub-pixel ellipse fit, CSV pixel size; mean ± sd over the "
                      "test images (over seeds, for repeated runs).", "", *markdown_table([
                          ("run", "l", lambda r: r["run"]), ("fraction", "r", lambda r: f"{r['fraction']:g}"),
                          ("DF (mm)", "r", lambda r: mean_text(r, "df_mm", 1, 2)),
                          ("ADF (mm)", "r", lambda r: mean_text(r, "adf_mm", 1, 2)),
                          ("Dice", "r", lambda r: mean_text(r, "dice_full")),
                          ("Hausdorff (mm)", "r", lambda r: mean_text(r, "hausdorff_mm", 1, 2)),
                          ("test cases", "r", lambda r: r["n_test"])], challenge)]
        if any(r.get("stages") == "ensemble" for r in rows):
            lines += ["", "A \"(ensemble)\" row is the mean probability of the seeds' models, tested as one model: "
                      "its ± is over folds (none with one fold); its trainable params and epochs are the members' sums."]
        return lines

    def after_summary(self, rows):
        cfg, paper = self.cfg, self.cfg.paper
        title = f"{cfg.name} ({cfg.profile})"
        if len({r["trainable_params"] for r in rows}) > 1:  # a Dice-vs-size plot needs sizes that differ
            scale = 100.0 if paper.get("dice_scale") == "percent" else 1.0
            dice_vs_params(rows, os.path.join(self.exp_dir, "dice_vs_params.png"), title=title,
                           paper={k: v / scale for k, v in (paper.get("dice") or {}).items() if isinstance(v, (int, float))})
        if len(cfg.sweep.fractions) > 1:
            repeats = "seeds" if cfg.sweep.seeds else "folds" if cfg.sweep.folds else None
            dice_vs_fraction(rows, os.path.join(self.exp_dir, "dice_vs_fraction.png"),
                             title + (f": mean ± sd over {repeats}" if repeats else ""))

