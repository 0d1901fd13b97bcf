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


def overlays(images, truths, preds, path, titles=None, max_rows=4):
    """Rows of image / truth / prediction for a few cases (images uint8 (H, W, C), masks (H, W))."""
    n = min(len(images), max_rows)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for i in range(n):
        img = np.asarray(images[i])[..., 0] if np.asarray(images[i]).shape[-1] == 1 else images[i]
        for j, (panel, name) in enumerate(((img, "image"), (truths[i], "truth"), (preds[i], "prediction"))):
            axes[i, j].imshow(panel, cmap="gray")
            axes[i, j].set_axis_off()
            label = name if titles is None or j else f"{titles[i]}"
            axes[i, j].set_title(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
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
