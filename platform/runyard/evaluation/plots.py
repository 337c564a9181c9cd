"""Matplotlib figures saved as PNG (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion(cm: np.ndarray, title: str, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    im = ax.imshow(cm, cmap="Blues")
    ax.set(xlabel="predicted", ylabel="actual", title=title,
           xticks=range(len(cm)), yticks=range(len(cm)))
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                color="white" if v > cm.max() / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, out)


def fit(x: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, title: str, out: Path) -> None:
    order = np.argsort(x.ravel())
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x.ravel()[order], y_true.ravel()[order], label="target", lw=2)
    ax.plot(x.ravel()[order], y_pred.ravel()[order], label="prediction", lw=1.5, ls="--")
    ax.set(xlabel="x", ylabel="y", title=title)
    ax.legend()
    _save(fig, out)


def predicted_vs_target(y_true: np.ndarray, y_pred: np.ndarray, title: str, out: Path) -> None:
    """Each test sample's prediction against its target, with the line of perfect predictions:
    a regression on several inputs has no single x to draw the fit over."""
    y_true, y_pred = y_true.ravel(), y_pred.ravel()
    lo, hi = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, label="perfect")
    ax.scatter(y_true, y_pred, s=12, label="test samples")
    ax.set(xlabel="target", ylabel="prediction", title=title)
    ax.legend()
    _save(fig, out)


def masks(x: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, title: str,
          out: Path) -> None:
    """A grid, one column per sample: the input image, the true mask, the predicted mask."""
    from matplotlib.colors import ListedColormap

    colours = ListedColormap(["black", *plt.get_cmap("tab10").colors[:num_classes - 1]])
    image_grid([("input", x[:, 0], {"cmap": "gray"}),
                ("true mask", y_true, {"cmap": colours, "vmin": 0, "vmax": num_classes - 1}),
                ("predicted", y_pred, {"cmap": colours, "vmin": 0, "vmax": num_classes - 1})], title, out)


def image_grid(rows: list[tuple[str, np.ndarray, dict]], title: str, out: Path) -> None:
    """One row per (label, images (n, height, width), imshow style), one column per sample."""
    n = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), n, figsize=(1.5 * n + 0.8, 1.5 * len(rows) + 0.4), squeeze=False)
    for r, (label, images, style) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            ax.imshow(images[i], interpolation="nearest", **style)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label)
    fig.suptitle(title)
    _save(fig, out)


def detections(x: np.ndarray, true: list[np.ndarray], predicted: list[np.ndarray], num_classes: int,
               title: str, out: Path) -> None:
    """A row of test images with their true boxes (dashed) and the detections shown
    (solid, with their scores); one colour per class. Boxes are (class, x0, y0, x1, y1)
    rows in fractions of the image size, detections with a 6th column, the score."""
    from matplotlib.patches import Rectangle

    cmap = plt.get_cmap("tab10")
    n = len(x)
    fig, axes = plt.subplots(1, n, figsize=(1.9 * n + 0.6, 2.6), squeeze=False)
    for ax, image, t, p in zip(axes[0], x, true, predicted, strict=True):
        h, w = image.shape[-2:]
        ax.imshow(image[0], cmap="gray", interpolation="nearest")
        for row, style in [*((r, {"ls": "--", "lw": 1.0}) for r in t), *((r, {"ls": "-", "lw": 1.6}) for r in p)]:
            c, x0, y0, x1, y1 = row[:5]
            # Pixel i covers [i - 0.5, i + 0.5] in imshow's coordinates.
            ax.add_patch(Rectangle((x0 * w - 0.5, y0 * h - 0.5), (x1 - x0) * w, (y1 - y0) * h, fill=False,
                                   color=cmap(int(c) % 10), **style))
            if len(row) > 5:
                ax.text(x0 * w - 0.5, y0 * h - 0.8, f"{row[5]:.2f}", color=cmap(int(c) % 10), fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], color=cmap(c), label=f"class {c}") for c in range(num_classes)]
    handles += [plt.Line2D([], [], color="gray", ls="--", label="true"),
                plt.Line2D([], [], color="gray", label="detected")]
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def tile(images: np.ndarray, columns: int | None = None, gap: int = 1) -> np.ndarray:
    """Tile (N, C, H, W) images with pixels in [0, 1] into one (rows, cols) or RGB array,
    ``gap`` pixels apart (filled with 0.5 grey), row by row."""
    n, c, h, w = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.full((c, rows * (h + gap) - gap, columns * (w + gap) - gap), 0.5, np.float32)
    for i, img in enumerate(np.clip(images, 0, 1)):
        r, k = divmod(i, columns)
        grid[:, r * (h + gap): r * (h + gap) + h, k * (w + gap): k * (w + gap) + w] = img
    return grid[0] if c == 1 else grid[:3].transpose(1, 2, 0)


def save_grid(images: np.ndarray, out: Path, scale: int = 4) -> None:
    """A grid of images straight to PNG, each pixel ``scale`` x ``scale``: no figure, a few
    milliseconds, cheap enough for every epoch."""
    from matplotlib.image import imsave

    grid = tile(images)
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    imsave(out, grid, cmap="gray", vmin=0, vmax=1)


def samples(panels: list[tuple[str, np.ndarray]], title: str, out: Path) -> None:
    """Image grids side by side, one per (label, images) panel."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
    for ax, (label, images) in zip(axes[0], panels, strict=True):
        ax.imshow(tile(images), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set(title=label, xticks=[], yticks=[])
    fig.suptitle(title)
    _save(fig, out)


def graph_predictions(adjacency: np.ndarray, nodes: np.ndarray, pred: np.ndarray, actual: np.ndarray,
                      roles: np.ndarray, title: str, out: Path) -> None:
    """One graph, each node filled with its predicted class: labelled (train) nodes are
    squares, validation nodes triangles, test nodes circles; wrong predictions get a red ring."""
    import networkx as nx

    g = nx.from_numpy_array(adjacency)
    pos = nx.spring_layout(g, seed=0)
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    nx.draw_networkx_edges(g, pos, ax=ax, alpha=0.3)
    for role, shape in (("train", "s"), ("val", "^"), ("test", "o")):
        idx = np.flatnonzero(roles == role)
        wrong = pred[idx] != actual[idx]
        nx.draw_networkx_nodes(
            g, pos, nodelist=nodes[idx].tolist(), node_shape=shape, ax=ax, node_size=260,
            node_color=[cmap(int(c) % 10) for c in pred[idx]],
            edgecolors=["red" if w else "black" for w in wrong], linewidths=[2.5 if w else 0.6 for w in wrong],
        )
    nx.draw_networkx_labels(g, pos, ax=ax, font_size=7)
    handles = [plt.Line2D([], [], ls="", marker="o", color=cmap(c), label=f"predicted class {c}")
               for c in sorted({int(c) for c in pred})]
    handles += [plt.Line2D([], [], ls="", marker=m, mfc="white", mec="black", label=label)
                for m, label in (("s", "labelled (train)"), ("^", "validation"), ("o", "test"))]
    handles.append(plt.Line2D([], [], ls="", marker="o", mfc="white", mec="red", mew=2.5, label="wrong"))
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set(title=title)
    ax.axis("off")
    _save(fig, out)


def learning_curve(history: dict[str, list[tuple[int, float]]], title: str, out: Path) -> None:
    """One panel per metric kind (loss, acc, ...), train and val on the same axes."""
    kinds = sorted({k.split("/", 1)[1] for k in history if k.split("/", 1)[1] != "lr"})
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for split in ("train", "val"):
            points = history.get(f"{split}/{kind}")
            if points:
                ax.plot(*zip(*points, strict=True), label=split)
        ax.set(xlabel="epoch", ylabel=kind, title=f"{title}: {kind}")
        ax.legend()
    _save(fig, out)


def sweep(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str, out: Path,
          *, logx: bool = False, lines: bool = True, chance: float | None = None) -> None:
    """One value against a setting (capacity, epsilon, ...): one series of (x, y) points per
    label, joined in x order when ``lines``; ``chance`` draws the chance level."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        if points:
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", ls="-" if lines else "", label=label)
    if chance is not None:
        ax.axhline(chance, color="gray", ls=":", label="chance")
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out)


def _save(fig, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
