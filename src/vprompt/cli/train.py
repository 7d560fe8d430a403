"""``vprompt train``: train and evaluate one run.

Every field of :class:`~vprompt.engine.TrainConfig` is an option (``--lr``, ``--selection``, ...);
the method's own options (``--site``, ``--num-prompts`` ...) are read once the method is known.
``--config FILE.yaml`` gives defaults for all of them; options on the command line win.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .options import add_dataclass_options, given


def register(sub: argparse._SubParsersAction) -> None:
    from ..engine.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train and evaluate a method on a dataset (method options such as --site go after --method)",
        description="Train and evaluate one run. Method options (e.g. --site block.9 for ap) are accepted "
        "too: `vprompt methods --options` lists them.",
    )
    p.add_argument("--config", type=Path, default=None, help="YAML file of options (the command line wins)")
    p.add_argument("--output", type=Path, default=None, help="run directory (default: runs/<time>-<method>)")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN",
        help="continue an interrupted run: `--resume RUN` reads RUN's own config (no other options "
        "needed); a bare --resume continues the run in --output with the options given",
    )
    p.set_defaults(func=cmd_train, train_fields=add_dataclass_options(p, TrainConfig, title="run options"))
    p.set_defaults(accepts_method_options=True)


def method_options(method: str, extra: list[str]) -> dict:
    """Parse the method's own options from ``extra`` (unknown ones are a clear error)."""
    from ..methods import METHODS

    parser = argparse.ArgumentParser(
        prog=f"vprompt train --method {method}", add_help=False, allow_abbrev=False
    )
    names = add_dataclass_options(parser, METHODS.choose(method).config_class)
    args, rest = parser.parse_known_args(extra)
    if rest:
        valid = ", ".join("--" + n.replace("_", "-") for n in names) or "(none)"
        raise ValueError(f"unknown option {' '.join(rest)} for method {method!r}; its options are: {valid}")
    return given(args, names)


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from ..engine import train
    from ..engine.run import as_config, run_config, to_dict

    own = None
    if isinstance(args.resume, str):
        if args.output is not None and Path(args.output) != Path(args.resume):
            raise ValueError(f"--resume {args.resume} and --output {args.output} name different runs")
        args.output = Path(args.resume)
    by_name = isinstance(args.resume, str)
    if by_name or (args.resume and args.output is not None and (Path(args.output) / "config.yaml").is_file()):
        own = to_dict(run_config(args.output))  # the run's own options; anything given goes on top
    flags = given(args, args.train_fields)
    config = as_config(own, args.config, flags, method_flags=lambda method: method_options(method, extra))
    output = args.output or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.method}"
    args.interrupt_hint = (
        f"the last finished epoch is kept; continue it with: vprompt train --resume {output}"
    )
    summary = train(config, output=output, resume=bool(args.resume))
    if int(os.environ.get("RANK", "0")) != 0 or config.quiet:
        return 0  # torchrun: one report, from the main process; --quiet: none
    keys = ("val_accuracy", "test_accuracy", "top_k", "val_top_k_accuracy", "test_top_k_accuracy")
    keys += ("trainable_parameters", "train_seconds", "peak_memory_mib")
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items() if k in keys}
    print(json.dumps(shown))
    print(f"run written to {output}")
    if summary.get("diverged"):
        from ..engine.run import diverged_note

        print(
            f"the run {diverged_note(summary['diverged'])}: the loss became NaN or infinite; recorded in "
            f"{output / 'summary.json'} (no adapter). Train again with a lower --lr (or --grad-clip)"
        )
        return 1
    return 0
