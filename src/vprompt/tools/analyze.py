"""Layer analysis: per site of a backbone, how close its features are to the final representation (linear
CKA) and how global they are (a ViT block's mean attention distance, any spatial site's effective
receptive field), to set next to the accuracy per site of ``vprompt sweep layers``.
Design notes: ``docs/design.md``, section ``vprompt/tools/analyze.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import (
    Attention,  # the same class as timm.layers.attention.Attention in newer timm
)
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..backbones.sites import Site, _chain
from ..engine.rundir import write_json, write_text
from .tables import markdown, write_csv

#: how a site's activation becomes one vector per image for CKA
POOLS = ("flatten", "mean")
#: the gradient-mass fractions whose radius the effective receptive field reports
ERF_FRACTIONS = (0.5, 0.9)
#: memory (bytes) the stored features of one pass over the data may take; more sites take more passes
FEATURE_MEMORY = 2 * 1024**3


# --------------------------------------------------------------------------------------------- CKA
def centered_gram(x: torch.Tensor) -> torch.Tensor:
    """``H X Xᵀ H`` (float64) of features ``x`` (n, ...) flattened per row, with ``H = I − 11ᵀ/n``."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    x = x - x.mean(0, keepdim=True)  # centring the columns centres the linear Gram matrix on both sides
    return x @ x.T


def cka(k: torch.Tensor, l: torch.Tensor) -> float:  # noqa: E741 - the papers' K and L
    """Linear CKA of two centred Gram matrices: ``⟨K, L⟩_F / (‖K‖_F ‖L‖_F)`` (Kornblith et al. 2019).
    ``nan`` when a representation is constant over the images."""
    if k.shape != l.shape:
        raise ValueError(
            f"CKA needs the same images on both sides, got Gram matrices {k.shape} and {l.shape}"
        )
    norm = torch.linalg.matrix_norm(k) * torch.linalg.matrix_norm(l)
    return float((k * l).sum() / norm) if norm > 0 else math.nan


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two representations of the same ``n`` images (rows; flattened per row)."""
    return cka(centered_gram(x), centered_gram(y))


def pooled(activation: torch.Tensor, layout: str, pool: str) -> torch.Tensor:
    """One vector per image: ``flatten`` keeps every value (all tokens, CLS and registers included; every
    position and channel), ``mean`` averages over the tokens or spatial positions."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if pool == "mean" and layout != "vector":
        axes = {"tokens": (1,), "nchw": (2, 3), "nhwc": (1, 2)}[layout]
        activation = activation.mean(axes)
    return activation.reshape(activation.shape[0], -1)


# ------------------------------------------------------------------------------ attention distance
def attention_weights(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``softmax(q kᵀ · scale)`` (batch, heads, N, N) of a timm ``Attention`` on its input ``x``, recomputed
    from its own ``qkv`` and q/k norms (the same maths as its forward; the model is not changed)."""
    if not isinstance(attn, Attention) or getattr(attn, "gate", None) is not None:
        raise ValueError(f"attention distance needs timm's plain Attention, not {type(attn).__name__}")
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


def patch_distances(grid: tuple[int, int], patch: tuple[float, float]) -> torch.Tensor:
    """Distances in pixels (float64) between the centres of every pair of patches of a ``grid`` (rows ×
    columns, row-major like the tokens) of patches ``patch`` (height, width) pixels large."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    ys = rows.reshape(-1).to(torch.float64) * patch[0]
    xs = cols.reshape(-1).to(torch.float64) * patch[1]
    return torch.sqrt((ys[:, None] - ys[None]) ** 2 + (xs[:, None] - xs[None]) ** 2)


class AttentionDistance:
    """Running per-head sums of a block's attention distance (Dosovitskiy et al. 2021) over images.

    The queries and keys are the patch tokens, the last ``grid_h · grid_w`` tokens; the tokens before
    them (CLS, registers, inserted prompts) are left out. Each query's weights over the patch keys are
    renormalised to sum to 1 (``distance``); ``distance_raw`` keeps them as they are (attention to the
    prefix then counts as distance 0), and ``prefix_mass`` is the attention the patch queries give the
    prefix tokens.
    """

    def __init__(self, grid: tuple[int, int], patch: tuple[float, float]):
        self.grid, self.distances = grid, patch_distances(grid, patch)
        self.sums: dict[str, torch.Tensor] = {}
        self.queries = 0

    def add(self, weights: torch.Tensor) -> None:
        """Add a batch of attention weights (batch, heads, N, N)."""
        patches = self.grid[0] * self.grid[1]
        if weights.shape[-1] < patches:
            raise ValueError(f"{weights.shape[-1]} tokens cannot hold a {self.grid} grid of patches")
        w = weights[..., -patches:, :].to(torch.float64)  # patch queries
        to_patches = w[..., -patches:]
        mass = to_patches.sum(-1)  # (batch, heads, queries)
        raw = (to_patches * self.distances.to(w.device)).sum(-1)
        parts = {"distance": raw / mass, "distance_raw": raw, "prefix_mass": 1 - mass}
        for key, value in parts.items():
            total = value.sum((0, 2)).cpu()
            self.sums[key] = self.sums[key] + total if key in self.sums else total
        self.queries += w.shape[0] * patches

    def result(self) -> dict[str, list[float]]:
        """Per head: the means over images and query patches."""
        return {key: (value / self.queries).tolist() for key, value in self.sums.items()}


# --------------------------------------------------------------------------- effective receptive field
def spatial_grid(site: Site, activation: torch.Tensor) -> tuple[int, int]:
    """The (rows, columns) of positions of a spatial activation (batch first)."""
    if site.layout == "nchw":
        return tuple(activation.shape[2:4])
    if site.layout == "nhwc":
        return tuple(activation.shape[1:3])
    if site.layout == "tokens" and site.grid is not None:
        return site.grid
    raise ValueError(f"site {site.name!r} ({site.layout}) has no spatial grid")


def centre_value(site: Site, activation: torch.Tensor) -> torch.Tensor:
    """The sum over images and channels of the activation at the central position (row ``h // 2``,
    column ``w // 2``; for tokens the central patch token, counted from the end past any prefix)."""
    h, w = spatial_grid(site, activation)
    r, c = h // 2, w // 2
    if site.layout == "nchw":
        return activation[:, :, r, c].sum()
    if site.layout == "nhwc":
        return activation[:, r, c, :].sum()
    return activation[:, activation.shape[1] - h * w + r * w + c, :].sum()


def mass_radii(
    mass: torch.Tensor, centre: tuple[float, float], fractions: Sequence[float] = ERF_FRACTIONS
) -> dict[float, float]:
    """For each fraction ``q``: the smallest distance (pixels) from ``centre`` (row, column) within which
    the pixels hold at least ``q`` of the total ``mass`` (H, W)."""
    rows, cols = torch.meshgrid(
        torch.arange(mass.shape[0], dtype=torch.float64),
        torch.arange(mass.shape[1], dtype=torch.float64),
        indexing="ij",
    )
    distance = torch.sqrt((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2).reshape(-1)
    order = torch.argsort(distance, stable=True)
    cumulative = torch.cumsum(mass.reshape(-1).to(torch.float64)[order], 0)
    total = float(cumulative[-1])
    if not total > 0:
        return {q: math.nan for q in fractions}
    radii = {}
    for q in fractions:
        index = int(
            torch.searchsorted(cumulative, torch.tensor(q * total * (1 - 1e-12), dtype=torch.float64))
        )
        radii[q] = float(distance[order[min(index, len(order) - 1)]])
    return radii


def input_centre(grid: tuple[int, int], size: tuple[int, int]) -> tuple[float, float]:
    """Where (pixel row, column) the central position of a ``grid`` over an image of ``size`` lies."""
    return tuple((g // 2 + 0.5) * s / g - 0.5 for g, s in zip(grid, size, strict=True))


# ------------------------------------------------------------------------------------------ driver
class _Stop(Exception):  # noqa: N818 - control flow, not an error
    pass


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def _point_key(site: Site) -> tuple[int, str]:
    return id(site.point.module), site.point.at


def _attention_module(site: Site) -> nn.Module | None:
    attn = getattr(site.module, "attn", None)
    if (
        site.layout == "tokens"
        and site.grid
        and site.name.startswith("block.")
        and isinstance(attn, Attention)
    ):
        return attn
    return None


def _images(data: Any, model, images: int, seed: int, root, split: str) -> Dataset:
    """A fixed, seeded subset of ``images`` items of ``data`` (a spec, a Dataset or a tensor of images)."""
    if isinstance(data, torch.Tensor):
        data = TensorDataset(data, torch.zeros(len(data), dtype=torch.long))
    elif isinstance(data, str):
        from .. import data as vdata

        preprocessing = getattr(model, "preprocessing", None) or {}
        data = vdata.load(
            data,
            root,
            split,
            model.data_config,
            protocol=preprocessing.get("protocol"),
            train=False,
            preprocess=preprocessing.get("preprocess", "protocol"),
        )
    n = len(data)
    if n == 0:
        raise ValueError("no images to analyse")
    if images <= 0:
        raise ValueError(f"images must be positive, got {images}")
    if images >= n:
        return data
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:images]
    return Subset(data, sorted(chosen.tolist()))


def _batches(dataset: Dataset, batch_size: int, device, dtype):
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = batch[0] if isinstance(batch, list | tuple) else batch
        yield x.to(device=device, dtype=dtype)


def layer_features(
    model: nn.Module,
    data: Any,
    *,
    sites: Sequence[str] | None = None,
    images: int = 256,
    erf_images: int = 32,
    pool: str = "flatten",
    batch_size: int = 32,
    root: str | Path | None = None,
    split: str = "test",
    seed: int = 0,
    memory: int = FEATURE_MEMORY,
) -> dict[str, Any]:
    """Per site of ``model`` (a :class:`~vprompt.Backbone`, or a trained :class:`~vprompt.TunedModel`
    whose hooked functions then shape the features): linear CKA to ``pre_logits`` and to the previous
    listed site, the mean attention distance of ViT blocks, and the effective receptive field's radii.

    ``data``: a data spec (read from ``root``, ``split``, with the model's evaluation transform), a
    ``Dataset`` of ``(image, label)`` or a tensor of images; ``images`` of them (a fixed seeded subset)
    give the CKA and attention statistics, the first ``erf_images`` of those the receptive fields (0: none).
    ``sites``: default ``embed`` and every ``block.N``; ``pre_logits`` is always added last.
    ``pool``: ``flatten`` (every value of the activation) or ``mean`` (over tokens / positions).
    Features of a pass over the data take at most ``memory`` bytes; more sites take more passes.
    Returns ``{"rows": [...], "grams": {site: centred Gram}, ...settings}``.
    """
    tuned = model if hasattr(model, "backbone") else None
    backbone = tuned.backbone if tuned is not None else model
    net = backbone.model  # the raw network: every layer computes all its tokens
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    names = list(sites) if sites else [s for s in backbone.sites if s == "embed" or s.startswith("block.")]
    chosen = [backbone.site(n) for n in dict.fromkeys([*names, "pre_logits"])]
    chosen.sort(key=lambda s: s.index)
    dataset = _images(data, tuned or backbone, images, seed, root, split)
    device, dtype = _device_dtype(backbone)
    size = tuple(backbone.input_size[1:])
    side = math.sqrt(size[0] * size[1])
    was_training = [(m, m.training) for m in (tuned, backbone) if m is not None]
    (tuned or backbone).eval()
    try:
        grams = _grams(net, chosen, dataset, batch_size, device, dtype, pool, memory, size)
        erf = _erf(net, chosen, dataset, erf_images, batch_size, device, dtype, size) if erf_images else {}
    finally:
        for m, mode in was_training:
            m.train(mode)
    attention = grams.pop("attention")
    rows = []
    previous = None
    for site in chosen:
        row: dict[str, Any] = {"site": site.name, "depth": site.index, "layout": site.layout}
        row["shape"] = "×".join(map(str, site.shape))
        row["cka_final"] = cka(grams[site.name], grams["pre_logits"])
        row["cka_previous"] = None if previous is None else cka(grams[site.name], grams[previous])
        previous = site.name
        if site.name in attention:
            heads = attention[site.name]
            for key, values in heads.items():
                row[f"attention_{key}"] = sum(values) / len(values)
            row["attention_distance_fraction"] = row["attention_distance"] / side
            row["attention_heads"] = heads
        if site.name in erf:
            for q, r in erf[site.name].items():
                row[f"erf_r{round(100 * q)}"] = r
                row[f"erf_r{round(100 * q)}_fraction"] = r / side
        rows.append(row)
    return {
        "backbone": backbone.name,
        "family": backbone.family.name,
        "input_size": list(backbone.input_size),
        "data": data if isinstance(data, str) else type(data).__name__,
        "split": split if isinstance(data, str) else None,
        "images": len(dataset),
        "erf_images": min(erf_images, len(dataset)),
        "pool": pool,
        "prompted": tuned is not None,
        "rows": rows,
        "grams": grams,
    }


def _grams(net, chosen, dataset, batch_size, device, dtype, pool, memory, size) -> dict[str, Any]:
    """Centred Gram matrices per site (and the attention distances of ViT blocks), in as few passes
    over the images as ``memory`` allows; a pass stops at the last site it needs."""
    n = len(dataset)
    per_image = {s.name: _pooled_size(s, pool) * torch.finfo(dtype).bits // 8 for s in chosen}
    groups: list[list[Site]] = [[]]
    used = 0
    seen: dict[tuple[int, str], str] = {}
    for site in chosen:
        if _point_key(site) in seen:
            continue
        cost = per_image[site.name] * n
        if groups[-1] and used + cost > memory:
            groups.append([])
            used = 0
        groups[-1].append(site)
        seen[_point_key(site)] = site.name
        used += cost
    grams: dict[str, Any] = {}
    attention: dict[str, dict] = {}
    for group in groups:
        features: dict[str, list[torch.Tensor]] = {s.name: [] for s in group}
        meters: dict[str, AttentionDistance] = {}
        handles = []
        last = group[-1].name
        for site in group:

            def record(act, site=site, store=features[site.name], stops=site.name == last):
                store.append(pooled(act.detach(), site.layout, pool).cpu())
                if stops:
                    raise _Stop

            handles.append(_chain(site.point, create=True).add(record))
            attn = _attention_module(site)
            if attn is not None:
                grid = site.grid
                patch = (size[0] / grid[0], size[1] / grid[1])
                meter = meters[site.name] = AttentionDistance(grid, patch)

                def measure(module, args, kwargs, _out, meter=meter):
                    if kwargs.get("attn_mask") is not None or len(args) > 1:
                        raise ValueError("attention distance: masked attention is not supported")
                    meter.add(attention_weights(module, args[0]))

                handles.append(attn.register_forward_hook(measure, with_kwargs=True))
        try:
            with torch.no_grad():
                for x in _batches(dataset, batch_size, device, dtype):
                    try:
                        net(x)
                    except _Stop:
                        pass
                    else:
                        raise RuntimeError(f"site {last!r} was not reached by the forward pass")
        finally:
            for h in handles:
                h.remove()
        for name, parts in features.items():
            grams[name] = centered_gram(torch.cat(parts))
        attention |= {name: meter.result() for name, meter in meters.items()}
    for site in chosen:  # sites at the same place (stage.N and its last block) share one activation
        grams.setdefault(site.name, grams[seen[_point_key(site)]])
        if seen[_point_key(site)] in attention:
            attention.setdefault(site.name, attention[seen[_point_key(site)]])
    grams["attention"] = attention
    return grams


def _pooled_size(site: Site, pool: str) -> int:
    shape = site.shape
    if pool == "mean" and site.layout != "vector":
        return shape[-1] if site.layout in ("tokens", "nhwc") else shape[0]
    return math.prod(shape)


def erf_mass(net: nn.Module, site: Site, batches) -> tuple[torch.Tensor, tuple[int, int]]:
    """The effective receptive field (Luo et al. 2016) of ``site`` of ``net`` over input ``batches``: the
    gradient of the central position's activation (summed over channels and images, see
    :func:`centre_value`) with respect to the input pixels, its absolute value summed over colour
    channels and images: ``(mass (H, W) float64, the site's grid)``. The site's hooked functions apply."""
    mass, grid = None, None

    def stop(act):
        raise _Stop(act)

    handle = _chain(site.point, create=True).add(stop)
    try:
        for x in batches:
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                try:
                    net(x)
                except _Stop as caught:
                    act = caught.args[0]
                else:
                    raise RuntimeError(f"site {site.name!r} was not reached by the forward pass")
                grid = spatial_grid(site, act)
                (grad,) = torch.autograd.grad(centre_value(site, act), x)
            part = grad.detach().abs().sum((0, 1)).to(torch.float64).cpu()
            mass = part if mass is None else mass + part
    finally:
        handle.remove()
    if mass is None:
        raise ValueError("no images for the effective receptive field")
    return mass, grid


def _erf(net, chosen, dataset, erf_images, batch_size, device, dtype, size) -> dict[str, dict]:
    """The receptive-field radii of every spatial site (``input`` and ``pre_logits`` have none)."""
    subset = Subset(dataset, range(min(erf_images, len(dataset))))
    result: dict[str, dict] = {}
    done: dict[tuple[int, str], str] = {}
    for site in chosen:
        if site.name in ("input", "pre_logits") or (site.layout == "tokens" and site.grid is None):
            continue
        if _point_key(site) in done:
            result[site.name] = result[done[_point_key(site)]]
            continue
        mass, grid = erf_mass(net, site, _batches(subset, batch_size, device, dtype))
        result[site.name] = mass_radii(mass, input_centre(grid, size))
        done[_point_key(site)] = site.name
    return result


def analyze_run(run_dir: str | Path, data: Any = None, device: str = "cpu", **options: Any) -> dict[str, Any]:
    """:func:`layer_features` of a finished run, prompted (its trained model) and unprompted (the same
    backbone after ``TunedModel.unload()``), with the CKA between the two at each site.

    ``data`` defaults to the run's own dataset (and ``root``)."""
    from ..engine.run import load_run, run_config

    model = load_run(run_dir, device)
    if data is None:
        config = run_config(run_dir)
        data = config.data
        options.setdefault("root", config.root)
    prompted = layer_features(model, data, **options)
    plain = layer_features(model.unload(), data, **options)
    rows = []
    for p, u in zip(prompted["rows"], plain["rows"], strict=True):
        row = {"site": p["site"], "depth": p["depth"], "layout": p["layout"], "shape": p["shape"]}
        row |= {f"{k}_prompted": v for k, v in p.items() if k not in row}
        row |= {f"{k}_plain": v for k, v in u.items() if k not in row}
        row["cka_prompted_plain"] = cka(prompted["grams"][p["site"]], plain["grams"][u["site"]])
        rows.append(row)
    settings = {k: v for k, v in prompted.items() if k not in ("rows", "grams")}
    return settings | {"run": str(run_dir), "rows": rows, "grams": {}}


#: the analysis values a layer sweep's rows take
SWEEP_KEYS = (
    "cka_final",
    "cka_previous",
    "attention_distance",
    "attention_distance_fraction",
    "erf_r50",
    "erf_r50_fraction",
    "erf_r90",
    "erf_r90_fraction",
)


def for_sweep(base: dict[str, Any], rows: list[dict], out: str | Path, **options: Any) -> dict[str, Any]:
    """The layer analysis of a layer sweep's backbone (as its runs build it) on its data's evaluation
    split, at the sweep's sites; its values go into ``rows`` (:data:`SWEEP_KEYS`), the whole result to
    ``<out>/layer-analysis.{json,csv,md}``. A saved analysis with the same settings is reused."""
    from ..backbones import create_backbone
    from ..engine.distributed import resolve_device

    split = next((r["split"] for r in rows if r.get("accuracy") is not None), None) or "test"
    options = {"split": split, "root": base.get("root"), **options}
    wanted = {
        "backbone": base["backbone"],
        "data": base["data"],
        "split": options["split"],
        "sites": [r["site"] for r in rows],
        **{k: options.get(k, v) for k, v in _DEFAULTS.items()},
    }
    saved_file = Path(out) / "layer-analysis.json"
    result = None
    if saved_file.is_file():
        import json

        saved = json.loads(saved_file.read_text())
        if saved.get("settings") == wanted:
            result = saved
    if result is None:
        backbone = create_backbone(
            base["backbone"],
            img_size=base.get("img_size"),
            pretrained=not base.get("random_init"),
            weights=base.get("weights"),
            init_seed=base.get("seed"),
        ).to(resolve_device(base.get("device") or "auto"))
        result = layer_features(backbone, base["data"], sites=wanted["sites"], **options)
        result["settings"] = wanted
        write(result, out)
    found = {r["site"]: r for r in result["rows"]}
    for row in rows:
        row |= {k: found.get(row["site"], {}).get(k) for k in SWEEP_KEYS}
    return result


#: layer_features' defaults that decide its result (a saved analysis is reused only when they match)
_DEFAULTS = {"images": 256, "erf_images": 32, "pool": "flatten", "seed": 0}


# ----------------------------------------------------------------------------------------- output
#: the table's columns: row key → header (those present in the rows are shown)
COLUMNS = {
    "site": "site",
    "shape": "shape",
    "cka_final": "CKA→pre_logits",
    "cka_previous": "CKA→previous",
    "attention_distance": "attn dist (px)",
    "attention_distance_fraction": "attn dist / image",
    "attention_prefix_mass": "attn to prefix",
    "erf_r50": "ERF r50 (px)",
    "erf_r90": "ERF r90 (px)",
    "erf_r50_fraction": "ERF r50 / image",
}


def table_columns(rows: list[dict]) -> dict[str, str]:
    """The columns of :data:`COLUMNS` (and their ``_prompted`` / ``_plain`` forms) the rows have."""
    keys = {k for r in rows for k, v in r.items() if v is not None}
    columns = {}
    for key, header in COLUMNS.items():
        for suffix, note in (("", ""), ("_prompted", " prompted"), ("_plain", " plain")):
            if key + suffix in keys:
                columns[key + suffix] = header + note
    if "cka_prompted_plain" in keys:
        columns["cka_prompted_plain"] = "CKA prompted↔plain"
    return columns


def _cell(value: Any) -> Any:
    return f"{value:.3f}" if isinstance(value, float) and not math.isnan(value) else value


def table(result: dict[str, Any]) -> str:
    """The result as a markdown table with a line saying what was measured."""
    rows = result["rows"]
    columns = table_columns(rows)
    how = (
        f"{result['backbone']} · {result['data']}"
        + (f" ({result['split']})" if result.get("split") else "")
        + f" · {result['images']} images (ERF: {result['erf_images']}) · features {result['pool']}"
        + (f" · run {result['run']}" if result.get("run") else "")
    )
    cells = [[_cell(r.get(k)) for k in columns] for r in rows]
    return f"{how}\n\n{markdown(list(columns.values()), cells)}"


def write(result: dict[str, Any], out: str | Path) -> dict[str, str]:
    """``<out>/layer-analysis.{json,csv,md}``; the JSON holds every value (per-head distances too)."""
    out = Path(out)
    stem = out / "layer-analysis"
    saved = _finite({k: v for k, v in result.items() if k != "grams"})
    write_json(stem.with_suffix(".json"), saved)
    headers = sorted({k for r in result["rows"] for k in r if not k.startswith("attention_heads")}, key=_key)
    write_csv(stem.with_suffix(".csv"), headers, [[r.get(h) for h in headers] for r in result["rows"]])
    write_text(stem.with_suffix(".md"), f"# Layer analysis\n\n{table(result)}\n")
    return {fmt: str(stem.with_suffix(f".{fmt}")) for fmt in ("json", "csv", "md")}


def _finite(value: Any) -> Any:
    """``value`` with every NaN replaced by ``None`` (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _key(header: str) -> tuple[int, str]:
    order = ["site", "depth", "layout", "shape"]
    return (order.index(header), "") if header in order else (len(order), header)
