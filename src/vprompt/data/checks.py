"""Verify a prepared dataset: files present, labels in range, split sizes, images decodable.

``check_dataset(..., full=True)`` is what ``vprompt data check`` runs (decodes every image);
``preflight`` is the cheap version a training run calls at start (decodes only a sample, raises on problems).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .datasets import DataError, ImageListDataset
from .sources import DatasetInfo, Source, resolve


@dataclass
class SplitReport:
    split: str
    size: int | None = None
    expected: int | None = None
    labels_seen: int | None = None
    decoded: int = 0


@dataclass
class CheckReport:
    """The outcome of a check: per-split facts and a list of problems (empty when the data is fine)."""

    info: DatasetInfo
    splits: list[SplitReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        i = self.info
        lines = [f"{i.spec}: {i.num_classes} classes, root {i.root or '-'}"]
        for s in self.splits:
            size = "missing" if s.size is None else f"{s.size}"
            if s.expected is not None:
                size += f" (expected {s.expected})"
            seen = "" if s.labels_seen is None else f", {s.labels_seen} classes present"
            lines.append(f"  {s.split:<10} {size} images{seen}, {s.decoded} decoded")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("OK")
        return "\n".join(lines)


def _default_splits(info: DatasetInfo) -> list[str]:
    # trainval is its own file for VTAB-1k; elsewhere it is train + val, already covered
    # a folder's pool ``all`` is train + val + test, already covered
    return [
        s
        for s in info.splits
        if (s != "trainval" or info.family == "vtab1k") and not (s == "all" and "train" in info.splits)
    ]


def check_dataset(
    spec: str | Source,
    root: str | os.PathLike | None = None,
    splits: list[str] | None = None,
    full: bool = True,
    sample: int = 8,
    expected_sizes: dict[str, int] | None = None,
    *,
    allow_outside_root: bool = False,
) -> CheckReport:
    """Check a dataset and return a :class:`CheckReport` (never raises for bad data, only lists it).

    ``full`` decodes every image; otherwise ``sample`` evenly spaced images per split. ``expected_sizes``
    overrides ``info.expected_sizes`` (VTAB-1k: train 800, val 200, trainval 1000; test must be non-empty).
    A missing root or unknown spec still raises (nothing to check). ``allow_outside_root`` accepts list
    entries outside the dataset folder (see :func:`~vprompt.data.load`).
    """
    source = resolve(spec, root, allow_outside_root=allow_outside_root)
    info = source.info
    spec = info.spec if isinstance(spec, Source) else spec
    expected = info.expected_sizes if expected_sizes is None else expected_sizes
    report = CheckReport(info)
    for split in splits or _default_splits(info):
        entry = SplitReport(source.canonical_split(split), expected=expected.get(split))
        report.splits.append(entry)
        try:
            ds = source.dataset(split)
        except (DataError, FileNotFoundError, ValueError) as e:
            report.problems.append(str(e))
            continue
        entry.size = len(ds)
        if entry.size == 0:
            report.problems.append(f"{spec} [{split}]: split is empty")
            continue
        if entry.expected is not None and entry.size != entry.expected:
            report.problems.append(f"{spec} [{split}]: {entry.size} images, expected {entry.expected}")
        targets = getattr(ds, "targets", None)
        if targets is not None:
            entry.labels_seen = len(set(targets))
            bad = [t for t in targets if not 0 <= t < info.num_classes]
            if bad:
                report.problems.append(
                    f"{spec} [{split}]: label {bad[0]} out of range [0, {info.num_classes})"
                )
        if isinstance(ds, ImageListDataset):
            missing = [s.path for s in ds.samples if not s.path.is_file()]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                report.problems.append(f"{missing[0]}: image file is missing{more}")
        n = len(ds)
        indices = (
            range(n)
            if full
            else sorted({round(k * (n - 1) / max(sample - 1, 1)) for k in range(min(sample, n))})
        )
        for index in indices:
            if isinstance(ds, ImageListDataset) and not ds.samples[index].path.is_file():
                continue  # already reported above
            try:
                ds[index]
                entry.decoded += 1
            except (DataError, FileNotFoundError) as e:
                report.problems.append(str(e))
    report.problems = list(dict.fromkeys(report.problems))  # a pool's problem shows in every split: once
    return report


def check_num_classes(info: DatasetInfo, head_classes: int) -> None:
    """Raise ValueError when a classifier head's class count does not match the dataset's."""
    if head_classes != info.num_classes:
        raise ValueError(
            f"{info.spec} has {info.num_classes} classes but the head has {head_classes} outputs"
        )


def preflight(
    spec: str | Source,
    root: str | os.PathLike | None,
    splits: list[str],
    head_classes: int | None = None,
    sample: int = 4,
    expected_sizes: dict[str, int] | None = None,
    *,
    allow_outside_root: bool = False,
) -> DatasetInfo:
    """The cheap check a training run calls first: split files, sizes, label range, a decoded sample.

    Raises :class:`DataError` listing every problem found; returns the dataset's info when all is well.
    """
    report = check_dataset(
        spec,
        root,
        splits=splits,
        full=False,
        sample=sample,
        expected_sizes=expected_sizes,
        allow_outside_root=allow_outside_root,
    )
    if head_classes is not None:
        check_num_classes(report.info, head_classes)
    if report.problems:
        raise DataError(
            f"{report.info.spec if isinstance(spec, Source) else spec}: " + "; ".join(report.problems)
        )
    return report.info


def split_files(source, splits: list[str]) -> dict[str, list[tuple[str, str]]]:
    """``split → [(class name, image path), ...]`` for the splits of a file-based source (else empty)."""
    from .fingerprint import base_and_indices

    listing = {}
    for split in splits:
        base, indices = base_and_indices(source.dataset(split))
        samples = getattr(base, "samples", None)
        if samples is None:
            continue
        listing[split] = [(source.info.class_names[samples[i].label], str(samples[i].path)) for i in indices]
    return listing
