"""One training run from a config to a run directory, and the verbs that use a finished run.

summary = vprompt.train(backbone="offline:efficientnet_lite0", method="ap",
                        method_options={"site": "stage.4"}, data="fashion-mnist", img_size=64,
                        epochs=5, output="runs/ap")
model = vprompt.load_run("runs/ap")             # the TunedModel with the kept weights
vprompt.evaluate_run("runs/ap", split="test")   # {"accuracy": ..., ...}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .. import data as vdata
from .. import recipes
from ..backbones import create_backbone
from ..data.fingerprint import fingerprint
from ..methods import METHODS, MethodNotApplicable, method_config
from ..model import TunedModel, attach, load_adapter
from .config import (
    DataOptions,
    LoopOptions,
    ModelOptions,
    OptimOptions,
    TrainConfig,
    check_config,
    config_fields,
    data_location,
    make_config,
    read_yaml,
    recipe_note,
    to_dict,
    typed,
    val_choosers,
)
from .details import details_folder, item_paths, per_class_accuracy, write_details
from .distributed import Context, resolve_device, setup, teardown
from .heads import init_head
from .optim import effective_batch, peak_lr
from .precision import Precision
from .run_data import RunData, eval_loader, load_data, plan_data
from .rundir import ADAPTER, CONFIG, RunDir, environment, peak_memory_mib, provenance, reset_peak_memory
from .tracking import open_tracker
from .trainer import Trainer, evaluate, json_values

#: config keys that do not change a run's result (cache: speed only; resolved: derived from the others);
#: they may differ between a run and its resumption, and are left out of its checkpoint's option digests
RESUME_FREE = {"progress", "quiet", "details", "workers", "device", "root", "log", "cache", "resolved"}
#: a search's pause: train up to this epoch, checkpoint, and return without finishing (see paused_after)
_PAUSE: ContextVar[int | None] = ContextVar("vprompt_pause_after", default=None)


@contextlib.contextmanager
def paused_after(epoch: int | None):
    """Inside, :func:`train` trains up to epoch ``epoch`` (its checkpoint written), then returns
    ``{"paused": epoch, "metrics": [...]}`` without selecting, testing or writing a summary; a later
    ``train(..., resume=True)`` continues it exactly (an early-stopping search's rungs)."""
    token = _PAUSE.set(epoch)
    try:
        yield
    finally:
        _PAUSE.reset(token)


def diverged_note(diverged: dict[str, Any] | None) -> str:
    """``"diverged at epoch 2 step 5"`` (the training loss), or ``""`` for a run that did not diverge."""
    if not diverged:
        return ""
    where = f"diverged at epoch {diverged['epoch']} step {diverged['step']}"
    return where if diverged["what"] == "training loss" else f"{where} ({diverged['what']})"


Layer = TrainConfig | dict | str | Path | None


def run_options(*layers: Layer, method_flags: Callable[[str], dict] | None = None) -> dict[str, Any]:
    """A run's options as given, each layer on top of those before: a config object, a YAML file (a
    path), dicts (a run folder's own options, command-line flags, keywords). Method options, nested or
    written flat, are merged, not replaced. ``method_flags(method)`` gives the method's own command-line
    options, read once the method is known (perhaps from the recipe); they win. The one assembly of
    ``vprompt train``, ``vprompt sweep`` and :func:`train`; a dict, so that a recipe can still fill what
    is not given (a suite's, per dataset)."""
    known, values = config_fields(), {"method_options": {}}
    for layer in layers:
        if isinstance(layer, TrainConfig):
            layer = to_dict(layer)
        elif isinstance(layer, str | Path):
            layer = read_yaml(layer)
        layer = typed(dict(layer or {}))  # one clear error for a wrongly typed value
        layer.pop("resolved", None)  # written by runs for the record; derived, never read back
        flat = {k: layer.pop(k) for k in [k for k in layer if k not in known]}
        values |= {**layer, "method_options": {**values["method_options"], **layer["method_options"], **flat}}
    if method_flags is not None:
        method = make_config(recipes.apply(dict(values))).method
        if not method:
            raise ValueError("--method is required")
        values["method_options"] = {**values["method_options"], **method_flags(method)}
    return values


def as_config(*layers: Layer, method_flags: Callable[[str], dict] | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from :func:`run_options`' layers. Options that name a ``recipe`` take the
    recipe's values for whatever they do not give (explicit options win); a :class:`TrainConfig` as the
    first layer is complete as it is: its ``recipe`` is a label."""
    values = run_options(*layers, method_flags=method_flags)
    return make_config(values if isinstance(layers[0], TrainConfig) else recipes.apply(values))


def data_objects(config, overrides: dict[str, Any]):
    """``(config, overrides, source)``: data given as Python objects (a dataset, ``(train, val)``, a dict
    of splits) as its :class:`~vprompt.data.Source`, and the ``data`` option as its description."""
    source = None
    for holder in (overrides, config):
        data = holder.get("data") if isinstance(holder, dict) else getattr(holder, "data", None)
        if data is None or isinstance(data, str | os.PathLike):
            continue
        source = source or vdata.from_objects(data)
        if holder is overrides:
            overrides = {**overrides, "data": source.info.spec}
        else:
            spec = source.info.spec
            config = (
                replace(config, data=spec) if isinstance(config, TrainConfig) else {**config, "data": spec}
            )
    return config, overrides, source


def build_model(config: TrainConfig, num_classes: int, data_info=None) -> TunedModel:
    """The backbone with the method attached, for a task of ``num_classes`` classes (seeded).

    ``data_info`` (the dataset's :class:`~vprompt.data.DatasetInfo`) fills method defaults that depend on
    the data (vp-expansive's inner size) and gives the model its class names; the head is initialised as
    ``config.head_init`` says.
    """
    try:
        return _build_model(config, num_classes, data_info)
    except ValueError as e:  # a value that does not fit the model: named as its recipe's, if it is
        note = recipe_note(config, str(e))
        if note == str(e):
            raise
        raise (MethodNotApplicable if isinstance(e, MethodNotApplicable) else ValueError)(note) from None


def _build_model(config: TrainConfig, num_classes: int, data_info) -> TunedModel:
    seed, head_init, config = config.seed, config.head_init, config.section(ModelOptions)
    options = method_config(config.method, **config.method_options)  # unknown options: a clear error
    if data_info is not None:
        METHODS[config.method].for_data(options, data_info)
    backbone_classes = METHODS[config.method].task_head(options, num_classes)
    backbone = create_backbone(
        config.backbone,
        num_classes=backbone_classes,
        img_size=config.img_size,
        pretrained=not config.random_init,
        weights=config.weights,
        init_seed=seed,
        data_config=vdata.input_overrides(config.mean, config.std, config.interpolation, config.antialias),
    )
    torch.manual_seed(seed)  # the method's own initialisation
    model = attach(backbone, METHODS[config.method](options))
    init_head(model, head_init, seed)
    if data_info is not None:
        model.class_names = list(data_info.class_names)
    return model


def resolved_config(config: TrainConfig, model: TunedModel, data: RunData, ctx: Context) -> dict[str, Any]:
    """The config as run: every option (method defaults included) plus the switches derived from it."""
    bb = model.backbone
    values = to_dict(config)
    values["img_size"] = bb.input_size[-1]
    values["protocol"] = data.plan.protocol
    values["method_options"] = model.method.config.to_dict()
    dc = model.data_config
    values["resolved"] = {
        "data": data.describe(),
        "normalisation": {"mean": list(dc["mean"]), "std": list(dc["std"])},
        "input_size": list(bb.input_size),
        "data_input_size": list(dc["input_size"]),  # what the transforms deliver (the method's choice)
        "interpolation": dc.get("interpolation"),
        "antialias": dc.get("antialias", True),
        "preprocess": config.preprocess,
        "peak_lr": peak_lr(config.section(OptimOptions)),
        "lr_scaled_by_batch_over_256": config.lr_scale,
        "effective_batch_size": effective_batch(config.section(OptimOptions)),  # images per optimiser step
        "train_randomness": data.plan.randomness,  # why the training transform is random (None: it is not)
        "selection": config.selection,
        "seed": config.seed,
        "world_size": ctx.world,
        "per_process_batch": config.batch_size // ctx.world,
        "precision": Precision.choose(config.precision, ctx.device).name,
        "backbone_build_args": bb.build_args,
        "data_location": data_location(config),
        "data_fingerprint": {
            name: fingerprint(getattr(data, name))
            for name in ("train", "val", "test")
            if getattr(data, name) is not None
        },
        "provenance": provenance(),
    }
    recipe = recipes.record(values)
    if recipe is not None:
        values["resolved"]["recipe"] = recipe
    return values


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the defaults of options added since it was written (an older run did not
    have them, so it ran with what they default to)."""
    from dataclasses import fields as dc_fields

    from .config import default_of

    full = {name: default_of(f) for name, f in config_fields().items()} | saved
    method = METHODS.get(saved.get("method", ""))
    if method is not None and isinstance(saved.get("method_options"), dict):
        defaults = {f.name: default_of(f) for f in dc_fields(method.config_class)}
        full["method_options"] = defaults | saved["method_options"]
    return full


def config_differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Options ``wanted`` asks for that a run's saved (resolved) config does not have, as
    ``"key: saved → wanted"``. Options left unset (``None``) take whatever the run resolved them to;
    method options are compared only where ``wanted`` gives them (the saved config has the defaults too).
    """
    saved = with_defaults(saved)
    differ = []
    for key, value in wanted.items():
        if key in RESUME_FREE or value is None:
            continue
        if key == "method_options":
            mine = saved.get(key) or {}
            differ += [f"{key}.{k}: {mine.get(k)!r} → {v!r}" for k, v in value.items() if mine.get(k) != v]
        elif saved.get(key) != value:
            differ.append(f"{key}: {saved.get(key)!r} → {value!r}")
    return differ


def _same_data(saved: dict[str, Any], current: dict[str, Any]) -> bool:
    """The same dataset, also when named by a path relative to another working directory."""
    if saved.get("data") == current.get("data"):
        return True
    where = [(c.get("resolved") or {}).get("data_location", {}).get("data") for c in (saved, current)]
    return where[0] is not None and where[0] == where[1]


def check_resumable(saved: dict[str, Any], current: dict[str, Any]) -> None:
    saved = with_defaults(saved)
    differ = [k for k in current if k not in RESUME_FREE and k != "data" and saved.get(k) != current.get(k)]
    if not _same_data(saved, current):
        differ.append("data")
    if differ:
        details = ", ".join(f"{k}: {saved.get(k)!r} → {current.get(k)!r}" for k in differ)
        raise ValueError(f"cannot resume: the config differs from the interrupted run's ({details})")


def option_digests(resolved: dict[str, Any]) -> dict[str, str]:
    """A SHA-256 of each option of a resolved config that changes the result (the data by its location).
    A checkpoint holds them: a run resumes only with the options that trained it, whatever its
    ``config.yaml`` says now."""
    location = (resolved.get("resolved") or {}).get("data_location") or {}
    values = {**resolved, "data": location.get("data") or resolved.get("data")}
    return {
        k: hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest()
        for k, v in values.items()
        if k not in RESUME_FREE
    }


def check_trained_with(state: dict[str, Any], resolved: dict[str, Any], run: RunDir) -> None:
    """The checkpoint ``state`` was trained with the options ``resolved`` gives (checkpoints written
    before vprompt kept option digests carry none and are not checked)."""
    saved, now = state.get("options"), option_digests(resolved)
    if not isinstance(saved, dict):
        return
    differ = [f"{k} (now {resolved.get(k)!r})" for k in saved if saved[k] != now.get(k)]
    if differ:
        raise ValueError(
            f"cannot resume {run.path}: its checkpoint was trained with other {', '.join(differ)} than "
            f"{run / CONFIG} gives now; put the run's values back, or train anew in another --output"
        )


def train(
    config: TrainConfig | dict | str | Path | None = None,
    *,
    output: str | Path | None = None,
    resume: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Train and evaluate one run; returns its summary (also written to ``output/summary.json``).

    ``config`` is a :class:`TrainConfig`, a dict or a YAML file; keyword arguments override it.
    ``data`` is a dataset spec, or Python objects: a map-style dataset, ``(train, val)`` or a dict of
    splits (see :mod:`vprompt.data.sources.objects`); the run then records their description and
    fingerprint, and resuming or evaluating it needs them passed again (the same fingerprint).
    ``resume=True`` continues an interrupted run in ``output`` from its last checkpoint (and returns the
    summary of a finished one without training again).
    """
    config, overrides, source = data_objects(config, overrides)
    config = as_config(config, overrides)
    check_config(config)
    run = RunDir(output) if output is not None else None
    if run is not None and int(os.environ.get("RANK", "0")) == 0:
        run.claim()  # one process per run folder; refuses a folder of the user's own files
    try:
        return _train(config, run, resume, source)
    finally:
        if run is not None:
            run.release()


def _train(config: TrainConfig, run: RunDir | None, resume: bool, source) -> dict[str, Any]:
    if run is not None:
        if resume and run.finished:
            differ = config_differences(run.read_config(), to_dict(config))
            if differ:
                raise ValueError(
                    f"{run.path} holds a finished run with other options ({', '.join(differ)}); "
                    "delete it or choose another output folder"
                )
            return run.read_summary()
        if not resume and (run.has_checkpoint() or run.finished):
            raise FileExistsError(f"{run.path} already holds a run; pass --resume or choose another --output")
    data_options, loop = config.section(DataOptions), config.section(LoopOptions)
    plan = plan_data(data_options, source, val_choosers(loop))  # bad data fails here, before any model
    ctx = setup(config.device)
    trainer = None
    try:
        model = build_model(config, plan.info.num_classes, plan.info)
        model.preprocessing = {"protocol": plan.protocol, "preprocess": config.preprocess}
        data = load_data(data_options, plan, model.data_config, model.num_classes, config.seed)
        torch.manual_seed(config.seed + 1000 * ctx.rank)  # dropout; the data order has its own seeds
        trainer = Trainer(model, data, loop, config.section(OptimOptions), ctx, run)
        resolved = resolved_config(config, model, data, ctx)
        trainer.options = option_digests(resolved)
        if run is not None:
            if resume and run.has_checkpoint():
                check_resumable(run.read_config(), resolved)
                state = run.load_checkpoint()
                check_trained_with(state, resolved, run)
                trainer.load_state(state)
            elif ctx.main:
                run.write_config(resolved)
        trainer.tracker = open_tracker(config.log, run.path if run is not None else None, ctx.main)
        trainer.tracker.start(resolved, trainer.progress.updates)
        reset_peak_memory(ctx.device)
        pause = _PAUSE.get()
        if pause is not None:
            trainer.until = min(pause, config.epochs)
        progress = trainer.fit()
        if progress.epoch < config.epochs and progress.stopped_epoch is None and progress.diverged is None:
            return {"paused": progress.epoch, "metrics": progress.metrics, "compute": compute(trainer)}
        stopped = trainer.stopping  # diverged, and --nonfinite stop: nothing to select or evaluate
        selected = None if stopped else trainer.select()
        results: dict[str, Any] = {}
        throughput = None
        names = data.describe()["class_names"]
        for name in ("val", "test"):  # the test split is evaluated here, once, after selection
            dataset = getattr(data, name)
            if dataset is not None and stopped:
                results[f"{name}_accuracy"] = results[f"{name}_loss"] = None  # nothing to evaluate
            elif dataset is not None:
                r = trainer.evaluate(dataset, keep=config.details)
                results[f"{name}_accuracy"] = r["accuracy"]
                results[f"{name}_loss"] = r["loss"]
                results[f"{name}_top_k_accuracy"] = r["top_k_accuracy"]
                results[f"{name}_per_class_accuracy"] = per_class_accuracy(r["confusion"], names)
                results["top_k"] = r["top_k"]
                throughput = r["images_per_second"]
                if config.details and run is not None and ctx.main:
                    split = getattr(data.plan.splits, name)
                    write_details(details_folder(run.path, split), r, names, item_paths(dataset))
        results = json_values(results)  # a diverged run's NaN losses are no JSON values
        train_rates = [m["train_images_per_second"] for m in progress.metrics]
        summary = {
            "backbone": config.backbone,
            "method": config.method,
            "method_options": model.method.config.to_dict(),
            "data": config.data,
            "protocol": data.plan.protocol,
            "final": config.final,
            "splits": data.describe()["splits"],
            "sizes": data.describe()["sizes"],
            "selection": config.selection,
            "selected_epoch": selected,
            "epochs": config.epochs,
            "epochs_trained": progress.epoch,
            "augment": config.augment,
            "random_erasing": config.random_erasing,
            **trainer.tricks_summary(),
            "seed": config.seed,
            **results,
            "accuracy": results.get("test_accuracy", results.get("val_accuracy")),
            "trainable_parameters": model.trainable_parameters(),
            "trainable_parameters_without_head": model.trainable_parameters(head=False),
            "total_parameters": model.total_parameters(),
            "trainable_percent": 100.0 * model.trainable_parameters() / model.total_parameters(),
            "train_seconds": progress.train_seconds,
            "train_images_per_second": sum(train_rates) / len(train_rates) if train_rates else None,
            "eval_images_per_second": throughput,
            "peak_memory_mib": max(ctx.gather(peak_memory_mib(ctx.device))),
            "precision": trainer.precision.name,
            "diverged": progress.diverged,
            "compute": compute(trainer),
            "cache": trainer.cache_summary(),
            "last_block": model.backbone.cls_only_status(),
            "unread_rows": model.backbone.rows_status(),
            "world_size": ctx.world,
            **environment(ctx.device),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if run is not None and ctx.main:
            if progress.diverged is None:  # a diverged run's weights are no result: no adapter
                model.save_pretrained(run / ADAPTER)
            summary["run"] = str(run.path)
            run.write_summary(summary)
        trainer.tracker.finish(summary)
        ctx.barrier()
        return summary
    finally:
        if trainer is not None:
            trainer.tracker.close()
        teardown(ctx)


def compute(trainer: Trainer) -> dict[str, Any]:
    """What a run spent (for a sweep's accounting): seconds (training, cache builds and evaluation),
    images through forward+backward and through evaluation, and the epochs a divergence saved."""
    p = trainer.progress
    steps = trainer.optim.epochs * trainer.steps_per_epoch
    skipped = (steps - p.updates) / trainer.steps_per_epoch if trainer.stopping else 0.0
    return {
        "seconds": p.train_seconds + p.eval_seconds,
        "images_trained": p.images_trained,
        "images_evaluated": p.images_evaluated,
        "train_images_per_epoch": len(trainer.data.train),
        "epochs_run": p.updates / trainer.steps_per_epoch,
        "epochs_skipped_diverged": skipped,
        **trainer.cache_compute(),
    }


# ------------------------------------------------------------------------------------ finished runs


def run_config(run_dir: str | Path) -> TrainConfig:
    """The config a run was trained with, its data named by paths that work from any directory."""
    saved = RunDir(run_dir).read_config()
    location = (saved.get("resolved") or {}).get("data_location")
    config = as_config(saved, {})
    return replace(config, **location) if location else config


def load_run(run_dir: str | Path, device: str = "cpu") -> TunedModel:
    """The trained model of a run (backbone rebuilt from its recorded arguments, kept weights loaded),
    with its class names and preprocessing (from the run's config where its adapter predates them)."""
    run = RunDir(run_dir)
    adapter = run / ADAPTER
    if not adapter.is_dir():
        if run.finished and run.read_summary().get("diverged"):
            note = diverged_note(run.read_summary()["diverged"])
            raise FileNotFoundError(f"{run.path} has no {ADAPTER}/: the run {note} (NaN or infinite)")
        raise FileNotFoundError(f"{run.path} has no {ADAPTER}/: the run has not finished")
    model = load_adapter(adapter).to(device).eval()
    if model.class_names is None or model.preprocessing is None:
        config = run_config(run_dir)
        model.class_names = model.class_names or class_names(run_dir)
        model.preprocessing = model.preprocessing or {
            "protocol": config.protocol or vdata.default_protocol(config.data),
            "preprocess": config.preprocess,
        }
    return model


def class_names(run_dir: str | Path) -> list[str]:
    return RunDir(run_dir).read_config()["resolved"]["data"]["class_names"]


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 64,
    precision: str | None = None,
    details: bool = False,
    **data_overrides,
) -> dict[str, Any]:
    """Accuracy, top-k accuracy, per-class accuracy and the confusion matrix of a finished run on one
    split of its dataset (or another dataset: ``data=``, ``root=``), in ``precision`` (auto, fp32, bf16,
    fp16; default: the run's). ``details``: also write ``<run>/eval-<split>/`` (see :mod:`.details`). A run
    trained on Python objects needs them again as ``data=`` (the same forms as :func:`train`;
    ``{"test": dataset}`` for a new test set)."""
    config = run_config(run_dir)
    _, data_overrides, source = data_objects(None, data_overrides)
    config = replace(config, **{k: v for k, v in data_overrides.items() if v is not None})
    ctx = Context(device=resolve_device(device))
    model = load_run(run_dir, str(ctx.device))
    # one split, read like a validation split: evaluation transforms, no training split, nothing chosen
    only = replace(config.section(DataOptions), train_split="none", val_split=split, test_split="none")
    data = load_data(only, plan_data(only, source), model.data_config, model.num_classes, config.seed)
    loader = eval_loader(data.val, batch_size, ctx, config.workers)
    amp = Precision.choose(precision or config.precision, ctx.device)
    result = evaluate(model, loader, ctx, amp, keep=details)
    names = class_names(run_dir)
    result["per_class_accuracy"] = per_class_accuracy(result["confusion"], names)
    if details:
        folder = write_details(details_folder(run_dir, split), result, names, item_paths(data.val))
        result["details"] = str(folder)
        del result["predictions"]  # written to predictions.csv
    return {"split": split, "data": config.data, "precision": amp.name, **result}


__all__ = [
    "TrainConfig",
    "class_names",
    "evaluate_run",
    "load_run",
    "run_config",
    "train",
]
