"""``vprompt sweep layers|tune|suite``: many runs from one set of run options (see :mod:`vprompt.tools.sweep`).

Every sweep takes ``vprompt train``'s run options (and ``--config FILE.yaml``), an ``--output`` folder
that names the sweep (running it again reuses finished runs and resumes interrupted ones) and
``--engine local|ray``. The exit status is 1 when a run failed (the others still ran).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args, get_type_hints

from .options import add_dataclass_options, given

FAMILIES = ("vtab1k", "fgvc", "vp")


def register(sub: argparse._SubParsersAction) -> None:
    from ..methods.ap import APConfig

    p = sub.add_parser(
        "sweep",
        help="many runs: AP layer preference, lr × wd tuning on validation + multi-seed final, whole suites",
        description="Sweeps over many runs. Finished runs are reused, interrupted ones resumed, failed ones "
        "reported without stopping the others.",
    )
    kinds = p.add_subparsers(dest="sweep", metavar="SWEEP", required=True)

    k = kinds.add_parser(
        "layers",
        allow_abbrev=False,
        help="AP (or AAP) at each site of a backbone: accuracy and cost per depth",
    )
    _common(k, skip=("method",))
    k.add_argument(
        "--method",
        default="ap",
        help="the site method to move through the network: ap (default) or aap; its own options "
        "(e.g. aap's --hidden) may follow",
    )
    k.add_argument("--sites", nargs="+", default=None, help="sites to try (default: embed and every block.N)")
    shapes = get_args(get_type_hints(APConfig)["shape"])
    k.add_argument("--shape", choices=shapes, default="full", help="prompt shape (default: full)")
    _seed_options(k, "runs per site", "the run's --seed alone")
    k.add_argument(
        "--analyze",
        action="store_true",
        help="also analyse the backbone's features per site (linear CKA, attention distance, receptive "
        "field: vprompt analyze layers) on the evaluation split; adds columns and a row of panels",
    )
    k.add_argument(
        "--analyze-images", type=int, default=256, help="images for --analyze (default: 256; 32 for the ERF)"
    )
    k.set_defaults(func=cmd_layers, accepts_method_options=True)

    k = kinds.add_parser(
        "tune", allow_abbrev=False, help="lr × wd grid on validation, then final runs with several seeds"
    )
    _common(k, skip=("lr", "weight_decay", "final"))
    _grid(k)
    k.set_defaults(func=cmd_tune, accepts_method_options=True)

    k = kinds.add_parser(
        "suite",
        allow_abbrev=False,
        help="one method over a benchmark family (fixed or tuned hyper-parameters)",
    )
    k.add_argument("family", choices=FAMILIES, help="benchmark family")
    _common(k, skip=("lr", "weight_decay", "data", "final"))
    k.add_argument("--datasets", nargs="+", default=None, help="a subset of the family's datasets")
    k.add_argument(
        "--fixed",
        action="store_true",
        help="no tuning: each dataset's own lr and weight decay (the recipe's per-dataset values, or the config's)",
    )
    _grid(k, tune_note=" (more than one lr × wd combination: tune each dataset on validation)")
    k.set_defaults(func=cmd_suite, accepts_method_options=True)


def _common(p: argparse.ArgumentParser, skip: tuple[str, ...]) -> None:
    from ..engine.config import TrainConfig

    p.add_argument(
        "--config", type=Path, default=None, help="YAML file of run options (the command line wins)"
    )
    p.add_argument(
        "--output", type=Path, required=True, help="the sweep's folder (re-run it to continue the sweep)"
    )
    e = p.add_argument_group("engine")
    e.add_argument("--engine", choices=("local", "ray"), default="local", help="local (default) or ray")
    e.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (auto, or HEAD_IP:6379); default: start a local Ray",
    )
    e.add_argument("--cpus-per-run", type=float, default=1, help="Ray CPUs per run (default: 1)")
    e.add_argument(
        "--gpus-per-run",
        type=float,
        default=None,
        help="Ray GPUs per run (default: 1 if the cluster has GPUs)",
    )
    e.add_argument(
        "--no-shared-cache",
        dest="shared_cache",
        action="store_false",
        help="every run builds its own frozen-prefix cache (default: runs that would build the same one "
        "share it: in memory, or in the sweep's folder on Ray)",
    )
    fields = add_dataclass_options(p, TrainConfig, skip=skip, title="run options (as for vprompt train)")
    p.set_defaults(train_fields=fields)


def _grid(p: argparse.ArgumentParser, tune_note: str = "") -> None:
    p.add_argument(
        "--lr",
        nargs="+",
        default=None,
        metavar="X",
        help=f"learning rates, by spaces or commas (default: the recipe's grid, else the config's){tune_note}",
    )
    p.add_argument(
        "--weight-decay",
        dest="wd",
        nargs="+",
        default=None,
        metavar="X",
        help="weight decays, by spaces or commas (default: the recipe's grid, else the config's)",
    )
    p.add_argument("--wd", dest="wd", nargs="+", help=argparse.SUPPRESS)  # the old spelling
    _seed_options(p, "final runs", "the recipe's seeds, else 5")
    s = p.add_argument_group("search")
    s.add_argument(
        "--search",
        choices=("grid", "asha"),
        default="grid",
        help="grid (default): every point trained in full, the official protocol; asha: successive "
        "halving, Optuna's SuccessiveHalvingPruner stopping points at rungs (pip install "
        "'vprompt[search]'; docs/guide.md, 'A sweep's savings')",
    )
    s.add_argument(
        "--asha-grace", type=int, default=1, help="epochs before the first rung: min_resource (default: 1)"
    )
    s.add_argument(
        "--asha-reduction",
        type=int,
        default=4,
        help="reduction_factor: at a rung a point goes on if in the top 1/N of the points asked so far, "
        "in an order drawn from --seed (default: 4)",
    )


def _seed_options(p: argparse.ArgumentParser, runs: str, default: str) -> None:
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seeds",
        type=seed_values,
        default=None,
        metavar="N|S,S,...",
        help=f"{runs}: N for seeds 0..N-1, or the seeds by commas (0,1,2) (default: {default})",
    )
    seeds.add_argument(
        "--seed-list", type=int, nargs="+", default=None, metavar="S", help=f"{runs} with these seeds"
    )


def seed_values(text: str) -> int | list[int]:
    """``"3"`` → 3 (seeds 0, 1, 2); ``"0,1,2"`` → [0, 1, 2]; ``"7,"`` → [7]."""
    try:
        if "," in text:
            return [int(v) for v in text.split(",") if v.strip()]
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count N or seeds by commas, got {text!r}") from None


def floats(values: list[str] | None) -> list[float] | None:
    """``["0.1,0.01", "1e-3"]`` → ``[0.1, 0.01, 0.001]``."""
    if values is None:
        return None
    try:
        return [float(v) for text in values for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise ValueError(f"not a number list: {' '.join(values)}") from e


def _config(args: argparse.Namespace, extra: list[str], **fixed) -> dict:
    """The run options as given (YAML, then the command line, then method options): a dict, so that a
    recipe can fill the rest per dataset."""
    from ..engine.run import run_options
    from .train import method_options

    flags = given(args, args.train_fields)
    return run_options(args.config, flags, fixed, method_flags=lambda method: method_options(method, extra))


def _seeds(args: argparse.Namespace):
    return args.seed_list if args.seed_list is not None else args.seeds


def _executor(args: argparse.Namespace):
    from ..tools.executors import Executor

    return Executor(
        args.engine,
        address=args.address,
        cpus=args.cpus_per_run,
        gpus=args.gpus_per_run,
        share_caches=args.shared_cache,
    )


def _search(args: argparse.Namespace):
    from ..tools.search import Asha

    return Asha(args.asha_grace, args.asha_reduction) if args.search == "asha" else None


def _finish(out: Path, text_file: Path, failures: list, compute: dict | None = None) -> int:
    from ..tools.compute import compute_line

    print(text_file.read_text())
    if compute:
        print(compute_line(compute))
    print(f"written to {out}")
    if failures:
        print(f"{len(failures)} run(s) failed; see {out / 'failures.json'} and each run's error.txt")
    return 1 if failures else 0


def cmd_layers(args: argparse.Namespace, extra: list[str]) -> int:
    from ..tools import sweep

    if any(a == "--site" or a.startswith("--site=") for a in extra):
        raise ValueError("sweep layers gives every run its site from --sites; --site is not an option here")
    config = _config(args, extra, method=args.method)
    result = sweep.layers(
        config,
        args.output,
        sites=args.sites,
        shape=args.shape,
        method=args.method,
        seeds=_seeds(args),
        executor=_executor(args),
        analyze=_analysis(args),
    )
    return _finish(args.output, Path(result["files"]["md"]), result["failures"], result["compute"])


def _analysis(args: argparse.Namespace) -> dict | None:
    if not args.analyze:
        return None
    return {"images": args.analyze_images, "erf_images": min(32, args.analyze_images)}


def cmd_tune(args: argparse.Namespace, extra: list[str]) -> int:
    from ..tools import sweep

    config = _config(args, extra)
    result = sweep.tune(
        config,
        args.output,
        lrs=floats(args.lr),
        wds=floats(args.wd),
        seeds=_seeds(args),
        executor=_executor(args),
        search=_search(args),
    )
    return _finish(args.output, args.output / "result.md", result["failures"], result["compute"])


def cmd_suite(args: argparse.Namespace, extra: list[str]) -> int:
    from ..tools import sweep

    config = _config(args, extra)
    result = sweep.suite(
        args.family,
        config,
        args.output,
        datasets=args.datasets,
        lrs=floats(args.lr),
        wds=floats(args.wd),
        seeds=_seeds(args),
        fixed=args.fixed,
        executor=_executor(args),
        search=_search(args),
    )
    return _finish(args.output, args.output / "suite.md", result["failures"], result["compute"])
