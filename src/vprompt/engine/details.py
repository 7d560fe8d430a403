"""What an evaluation shows beyond accuracy, written into ``<run>/eval-<split>/``.

```text
metrics.json     accuracy, top-k accuracy (k = 5, or the number of classes when fewer), loss, images,
                 per-class accuracy
per_class.csv    class, images, correct, accuracy (%)
confusion.csv    one row per true class, one column per predicted class: image counts
confusion.png    the same, each row as a share of its class (matplotlib)
predictions.csv  each image: index (in the split), path (image files only), label, prediction,
                 confidence (its softmax probability), correct, label_id, prediction_id, top_k_ids
```
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from ..files import ensure_dir, write_bytes, write_text
from .rundir import EVAL_PREFIX

#: the k of top-k accuracy (fewer when the task has fewer classes: top-k is then stated with its k)
TOP_K = 5


def per_class_accuracy(confusion: list[list[int]], names: list[str]) -> dict[str, float | None]:
    """``class name → accuracy (%)`` from a confusion matrix (rows: true class); ``None`` for a class
    without images in the split."""
    return {
        name: 100.0 * row[i] / sum(row) if sum(row) else None
        for i, (name, row) in enumerate(zip(names, confusion, strict=True))
    }


def item_paths(dataset) -> list[str] | None:
    """The image file of each item of ``dataset``, where its items are image files (else ``None``)."""
    from ..data.fingerprint import base_and_indices

    base, indices = base_and_indices(dataset)
    samples = getattr(base, "samples", None)
    if samples is None:
        return None
    return [str(samples[i].path) for i in indices]


def details_folder(run: Path, split: str) -> Path:
    return Path(run) / (EVAL_PREFIX + re.sub(r"[^\w.-]", "_", split))


def _csv(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def write_details(folder: Path, result: dict[str, Any], names: list[str], paths: list[str] | None) -> Path:
    """Write ``folder`` (see the module's docstring) from an evaluation ``result`` that kept its
    predictions; returns the folder."""
    folder = ensure_dir(Path(folder), "evaluation folder")
    confusion = result["confusion"]
    scalars = ("accuracy", "top_k", "top_k_accuracy", "loss", "images")
    metrics = {k: result[k] for k in scalars} | {"per_class_accuracy": per_class_accuracy(confusion, names)}
    write_text(folder / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    rows = [["class", "images", "correct", "accuracy"]]
    for i, name in enumerate(names):
        total, right = sum(confusion[i]), confusion[i][i]
        rows.append([name, total, right, 100.0 * right / total if total else ""])
    write_text(folder / "per_class.csv", _csv(rows))
    write_text(
        folder / "confusion.csv",
        _csv([["true \\ predicted", *names]] + [[n, *r] for n, r in zip(names, confusion, strict=True)]),
    )
    header = ["index", "path", "label", "prediction", "confidence", "correct", "label_id", "prediction_id"]
    rows = [[*header, "top_k_ids"]]
    for index, (label, prediction, confidence, top) in enumerate(result["predictions"]):
        path = paths[index] if paths is not None else ""
        ids = " ".join(map(str, top))
        rows.append(
            [
                index,
                path,
                names[label],
                names[prediction],
                f"{confidence:.6f}",
                int(label == prediction),
                label,
                prediction,
                ids,
            ]
        )
    write_text(folder / "predictions.csv", _csv(rows))
    title = (
        f"{folder.name[len(EVAL_PREFIX) :]}: accuracy {result['accuracy']:.2f}% on {result['images']} images"
    )
    write_bytes(folder / "confusion.png", confusion_png(confusion, names, title))
    return folder


def confusion_png(confusion: list[list[int]], names: list[str], title: str) -> bytes:
    """The confusion matrix as a PNG: rows (true classes) as shares of their images, counts written in
    the cells of small matrices, class names on the axes up to 60 classes."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(confusion, dtype=float)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n = len(names)
    side = min(max(4.0, 0.28 * n + 2.5), 30.0)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class's images", shrink=0.8)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    if n <= 60:
        ax.set_xticks(range(n), names, rotation=90, fontsize="small")
        ax.set_yticks(range(n), names, fontsize="small")
    if n <= 20:
        for (i, j), count in np.ndenumerate(counts.astype(int)):
            colour = "white" if shares[i, j] > 0.5 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize="x-small", color=colour)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()
