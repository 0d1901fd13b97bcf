"""Figures as PNG (matplotlib, no display needed): learning curves, Dice vs trainable parameters,
qualitative overlays."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def learning_curves(history, path, title=""):
    """Loss and Dice (or accuracy, for classifiers) per epoch, train and validation."""
    score = "dice" if "dice" in history or "accuracy" not in history else "accuracy"
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key in zip(axes, ("loss", score)):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + key)
            if values:
                ax.plot(range(1, len(values) + 1), values, style, label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def dice_vs_params(rows, path, paper=None, title="Dice vs trainable parameters", scale=1.0):
    """Scatter of mean Dice against trainable parameters, one labelled point per strategy; the
    paper's Dice (same strategy names, numbers only) as hollow markers. `scale` multiplies our Dice
    to the paper's units (100 for percent)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    paper = {k: v for k, v in (paper or {}).items() if isinstance(v, (int, float))}
    for r in rows:
        ax.scatter(r["trainable_params"] / 1e6, r["dice"] * scale, color="C0",
                   label="ours" if r is rows[0] else None)
        ax.annotate(r["run"], (r["trainable_params"] / 1e6, r["dice"] * scale), fontsize=8,
                    xytext=(3, 3), textcoords="offset points")
        if r["run"] in paper:
            ax.scatter(r["trainable_params"] / 1e6, paper[r["run"]], facecolors="none",
                       edgecolors="C3", label="paper" if "paper" not in ax.get_legend_handles_labels()[1] else None)
    ax.set_xlabel("trainable parameters (millions)")
    ax.set_ylabel("Dice (%)" if scale == 100 else "Dice")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def overlays(images, truths, preds, path, titles=None, max_rows=8, columns=4):
    """Outlines over the images: the reference in green, the prediction in orange (dashed), one panel
    per case with its Dice in the title, so a reader sees at once where the model follows the
    structure and where it does not. Masks are (H, W) binary or label maps (one outline per label).

    Args:
        images: uint8 (H, W, C) images.
        truths, preds: masks of the same size.
        path: the PNG to write.
        titles: per-case names.
        max_rows: at most this many cases (panels), `columns` to a row.
    """
    n = min(len(images), max_rows)
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(n):
        img = np.asarray(images[i])
        ax = axes.flat[i]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
        truth, pred = np.asarray(truths[i]).squeeze(), np.asarray(preds[i]).squeeze()
        for label in sorted((set(np.unique(truth)) | set(np.unique(pred))) - {0}):
            for mask, color, style in ((truth, "#2ca02c", "solid"), (pred, "#ff7f0e", "dashed")):
                if (mask == label).any():
                    ax.contour(mask == label, levels=[0.5], colors=color, linewidths=1.4, linestyles=style)
        t, p = truth > 0, pred > 0
        denom = t.sum() + p.sum()
        dice = 2 * (t & p).sum() / denom if denom else 1.0
        name = f"{titles[i]}: " if titles is not None else ""
        ax.set_title(f"{name}Dice {dice:.3f}", fontsize=8)
    fig.legend(handles=[plt.Line2D([], [], color="#2ca02c", label="reference"),
                        plt.Line2D([], [], color="#ff7f0e", linestyle="--", label="prediction")],
               loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def confusion_matrix(cm, class_names, path, title="", normalize=True):
    """Confusion matrix heat map (rows true, columns predicted) with counts and row fractions."""
    cm = np.asarray(cm, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0) if normalize else cm
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2, 1.1 * len(class_names) + 1.5))
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, f"{int(cm[i, j])}\n{frac[i, j]:.0%}" if normalize else f"{int(cm[i, j])}",
                    ha="center", va="center", fontsize=8, color="white" if frac[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def bland_altman(predicted, reference, path, title="", unit="mm", what="HC"):
    """Bland–Altman plot: difference (predicted - reference) against the pair's mean, with the bias
    and the 95 % limits of agreement (bias ± 1.96 sd). Pairs with a non-finite value are left out
    and counted in the title."""
    p, r = np.asarray(predicted, float), np.asarray(reference, float)
    ok = np.isfinite(p) & np.isfinite(r)
    mean, diff = (p[ok] + r[ok]) / 2, p[ok] - r[ok]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(mean, diff, s=14, color="C0")
    if len(diff):
        bias, sd = diff.mean(), diff.std(ddof=1) if len(diff) > 1 else 0.0
        for y, style, label in ((bias, "-", f"bias {bias:+.2f} {unit}"),
                                (bias + 1.96 * sd, "--", f"+1.96 sd {bias + 1.96 * sd:+.2f}"),
                                (bias - 1.96 * sd, "--", f"-1.96 sd {bias - 1.96 * sd:+.2f}")):
            ax.axhline(y, linestyle=style, color="C3", linewidth=1, label=label)
        ax.legend(fontsize=8)
    ax.set_xlabel(f"mean of predicted and reference {what} ({unit})")
    ax.set_ylabel(f"predicted - reference {what} ({unit})")
    missing = int((~ok).sum())
    ax.set_title(title + (f" ({missing} without a prediction)" if missing else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def dice_vs_fraction(rows, path, title="", paper=None):
    """Mean Dice against the fraction of the training set, one line per run with the sd (over seeds
    or folds) as error bars; `paper`: {run: {fraction: dice}} drawn as hollow markers."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    runs = list(dict.fromkeys(r["run"] for r in rows))
    for i, run in enumerate(runs):
        points = sorted((r["fraction"], r["dice"], r.get("dice_sd", float("nan"))) for r in rows if r["run"] == run)
        x, y, sd = (np.array(v, float) for v in zip(*points))
        ax.errorbar(x * 100, y, yerr=np.where(np.isfinite(sd), sd, 0), marker="o", capsize=3, label=run, color=f"C{i}")
        for fraction, value in ((paper or {}).get(run) or {}).items():
            ax.scatter(float(fraction) * 100, value, facecolors="none", edgecolors=f"C{i}")
    ax.set_xlabel("training images used (% of the training split)")
    ax.set_ylabel("Dice (0-1), mean ± sd")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
