"""Figures people would rather look at than read (matplotlib, Agg backend, PNG bytes out)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd


class _Pyplot:
    """matplotlib.pyplot (Agg), imported on first use: the code location loads in every run's
    process, and most runs draw nothing."""

    _module = None

    def __getattr__(self, name):
        if _Pyplot._module is None:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as pyplot

            _Pyplot._module = pyplot
        return getattr(_Pyplot._module, name)


plt = _Pyplot()


def PALETTE(i: int):
    return plt.get_cmap("tab10")(i)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def grid_heatmap(grid: pd.DataFrame, best: dict) -> bytes:
    """Objective over the (conf, iou) grid, best cell outlined."""
    piv = grid.pivot(index="conf", columns="iou", values="objective").sort_index()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    im = ax.imshow(piv.to_numpy(), cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(piv.columns)), [f"{v:g}" for v in piv.columns])
    ax.set_yticks(range(len(piv.index)), [f"{v:g}" for v in piv.index])
    ax.set_xlabel("NMS IoU")
    ax.set_ylabel("confidence")
    for (i, j), v in np.ndenumerate(piv.to_numpy()):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=7)
    bi, bj = list(piv.index).index(best["conf"]), list(piv.columns).index(best["iou"])
    ax.add_patch(plt.Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, ec="red", lw=2))
    ax.set_title("mean(recall, mAP50) on val")
    fig.colorbar(im, ax=ax)
    return _png(fig)


def label_distribution(boxes: pd.DataFrame, images: pd.DataFrame, classes) -> bytes:
    """Class counts, box centres and box sizes (normalised), like ultralytics' labels.jpg."""
    b = boxes.merge(images[["image_id", "width", "height"]], on="image_id")
    cx = (b.x_min + b.x_max) / 2 / b.width
    cy = (b.y_min + b.y_max) / 2 / b.height
    bw = (b.x_max - b.x_min) / b.width
    bh = (b.y_max - b.y_min) / b.height
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    counts = b["label"].value_counts().reindex(list(classes)).fillna(0)
    axes[0].bar(
        range(len(counts)), counts.to_numpy(), color=[PALETTE(i % 10) for i in range(len(counts))]
    )
    axes[0].set_xticks(range(len(counts)), list(counts.index), rotation=40, ha="right")
    axes[0].set_ylabel("instances")
    colors = b["label"].map({c: PALETTE(i % 10) for i, c in enumerate(classes)})
    axes[1].scatter(cx, cy, s=6, c=list(colors), alpha=0.6)
    axes[1].set(xlim=(0, 1), ylim=(1, 0), xlabel="x centre", ylabel="y centre", title="box centres")
    axes[2].scatter(bw, bh, s=6, c=list(colors), alpha=0.6)
    axes[2].set(xlim=(0, 1), ylim=(0, 1), xlabel="width", ylabel="height", title="box sizes")
    return _png(fig)


def draw_boxes(ax, img: np.ndarray, boxes: pd.DataFrame, classes, title: str = "") -> None:
    ax.imshow(img, cmap="gray", vmin=0, vmax=255)
    cmap = {c: PALETTE(i % 10) for i, c in enumerate(classes)}
    for r in boxes.itertuples(index=False):
        col = cmap.get(r.label, "yellow")
        ax.add_patch(
            plt.Rectangle(
                (r.x_min, r.y_min), r.x_max - r.x_min, r.y_max - r.y_min, fill=False, ec=col, lw=1.5
            )
        )
        text = r.label if not hasattr(r, "score") else f"{r.label} {r.score:.2f}"
        ax.text(r.x_min, r.y_min - 4, text, color=col, fontsize=6, va="bottom")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def mosaic(samples: list[tuple[np.ndarray, pd.DataFrame, str]], classes, cols: int = 4) -> bytes:
    rows = max(1, int(np.ceil(len(samples) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows))
    axes = np.atleast_1d(axes).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, (img, boxes, title) in zip(axes, samples):
        draw_boxes(ax, img, boxes, classes, title)
    return _png(fig)


def dataset_mosaic(images: pd.DataFrame, boxes: pd.DataFrame, classes, n: int = 8) -> bytes:
    """A few annotated images of a dataset with their boxes drawn (image path and split from `images`)."""
    from .labels import load_gray

    by_id = images.set_index("image_id")
    samples = []
    for image_id in boxes["image_id"].drop_duplicates().head(n):
        r = by_id.loc[image_id]
        samples.append(
            (
                load_gray(r["path"]),
                boxes[boxes.image_id == image_id],
                f"{str(image_id)[:16]} ({r['split']})",
            )
        )
    return mosaic(samples, classes)


def gt_vs_pred(panels: list[tuple[np.ndarray, pd.DataFrame, pd.DataFrame, str]], classes) -> bytes:
    """The study's "Labels | Predictions" figure: one row per image."""
    n = max(1, len(panels))
    fig, axes = plt.subplots(n, 2, figsize=(7, 3.4 * n))
    axes = np.atleast_2d(axes)
    for (img, gt, pred, title), (a, b) in zip(panels, axes):
        draw_boxes(a, img, gt, classes, f"{title}: labels")
        draw_boxes(b, img, pred, classes, f"{title}: predictions")
    return _png(fig)


def pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(5, 4))
    for i, (label, (r, p)) in enumerate(curves.items()):
        if len(r):
            ax.plot(r, np.maximum.accumulate(p[::-1])[::-1], label=label, color=PALETTE(i % 10))
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    if curves:
        ax.legend(fontsize=7, loc="lower left")
    return _png(fig)


def bar_compare(table: pd.DataFrame, value: str, title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(table["task"], table[value], color=[PALETTE(i % 10) for i in range(len(table))])
    ax.set_ylabel(value)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=25, ha="right")
    return _png(fig)


def confusion_heatmap(matrix: pd.DataFrame, title: str) -> bytes:
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    ax.imshow(matrix.to_numpy(), cmap="Blues")
    ax.set_xticks(range(n), list(matrix.columns), rotation=40, ha="right", fontsize=7)
    ax.set_yticks(range(n), list(matrix.index), fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(matrix.to_numpy()):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    ax.set_title(title, fontsize=9)
    return _png(fig)


def froc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], rates, title: str) -> bytes:
    """Sensitivity against false positives per image (log axis), the FROC operating rates marked; a
    curve named "... [IoU ...]" (the project's stricter hit rule) is dashed."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (label, (fppi, sens)) in enumerate(curves.items()):
        if len(fppi) > 1:
            ax.step(
                np.maximum(fppi, rates[0] / 2),
                sens,
                where="post",
                label=label,
                color=PALETTE(i % 10),
                lw=2.2 if label.startswith("(all)") else 1.2,
                ls="--" if "[IoU" in label else "-",
            )
    for r in rates:
        ax.axvline(r, color="0.85", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set(
        xlim=(rates[0] / 2, rates[-1] * 1.5),
        ylim=(0, 1.02),
        xlabel="false positives per image",
        ylabel="sensitivity",
        title=title,
    )
    ax.set_xticks(list(rates), [f"{r:g}" for r in rates])
    if curves:
        ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def paired_differences(table: pd.DataFrame, title: str) -> bytes:
    """The study report's paired comparisons: difference a - b with its 95% interval."""
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.55 * max(1, len(table))))
    y = np.arange(len(table))
    ax.errorbar(
        table["diff"],
        y,
        xerr=[table["diff"] - table["ci_low"], table["ci_high"] - table["diff"]],
        fmt="o",
        color="k",
        capsize=3,
    )
    ax.axvline(0, color="r", lw=1)
    ax.set_yticks(y, [f"{a} - {b}" for a, b in zip(table["a"], table["b"])], fontsize=8)
    ax.set_xlabel("AP50 difference (paired bootstrap 95% CI)")
    ax.set_title(title, fontsize=9)
    ax.invert_yaxis()
    return _png(fig)


def training_curves(results: pd.DataFrame, title: str) -> bytes:
    """Losses per epoch (and val mAP50 when validated) from ultralytics' results.csv."""
    results = results.rename(columns=lambda c: c.strip())
    losses = [c for c in results.columns if c.startswith("train/")]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, c in enumerate(losses):
        ax.plot(results["epoch"], results[c], label=c.split("/")[-1], color=PALETTE(i % 10))
    ax.set(xlabel="epoch", ylabel="training loss", title=title)
    if "metrics/mAP50(B)" in results and results["metrics/mAP50(B)"].notna().any():
        ax2 = ax.twinx()
        ax2.plot(results["epoch"], results["metrics/mAP50(B)"], "k--", label="val mAP50")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("val mAP50")
    ax.legend(fontsize=7, loc="upper right")
    return _png(fig)
