"""``vprompt eval``, ``vprompt predict`` and ``vprompt export``: use a finished run."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from ..engine.config import choices_of

    p = sub.add_parser("eval", help="accuracy of a finished run on a split of its data (or another dataset)")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--data", default=None, help="another dataset spec with the same classes")
    p.add_argument("--root", default=None, help="data root (default: the run's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--precision",
        choices=choices_of("precision"),
        default=None,
        help="autocast of the evaluation (default: the run's precision option)",
    )
    p.add_argument(
        "--details",
        action="store_true",
        help="also write RUN/eval-<split>/: per-class accuracy, confusion matrix (CSV, PNG), each image's "
        "prediction (CSV)",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes (with their names) of images under a finished run")
    p.add_argument("run", type=Path, help="run directory (or an adapter folder)")
    p.add_argument(
        "images", nargs="+", type=Path, help="image files or folders (searched recursively, in path order)"
    )
    p.add_argument("--top", type=int, default=5, help="classes shown per image (default: 5)")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="text: one line per image; json: a list of {path, top: [{class, probability}]}; "
        "csv: columns path, rank, class, probability (one row per image and rank)",
    )
    p.add_argument("--output", type=Path, default=None, help="write to this file instead of printing")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a finished run's model (prompts included) to ONNX")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--onnx", type=Path, required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(func=cmd_export)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..engine import evaluate_run

    result = evaluate_run(
        args.run,
        split=args.split,
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
        details=args.details,
        data=args.data,
        root=args.root,
    )
    shown = {k: v for k, v in result.items() if k not in ("confusion", "per_class_accuracy", "details")}
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in shown.items()}))
    if args.details:
        print(f"per-class accuracy, confusion matrix and each image's prediction in {result['details']}")
    return 0


FORMATS = ("text", "json", "csv")


def format_predictions(results: list, kind: str) -> str:
    """``predict``'s results as text (a line per image), json or csv (see ``vprompt predict --help``)."""
    if kind == "json":
        rows = [
            json.dumps({"path": path, "top": [{"class": c, "probability": p} for c, p in ranked]})
            for path, ranked in results
        ]
        return "[\n" + ",\n".join(rows) + "\n]\n"
    if kind == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["path", "rank", "class", "probability"])
        for path, ranked in results:
            writer.writerows([path, rank, c, f"{p:.6f}"] for rank, (c, p) in enumerate(ranked, 1))
        return out.getvalue()
    return "".join(
        f"{path}: " + ", ".join(f"{c} {p:.2f}" for c, p in ranked) + "\n" for path, ranked in results
    )


def cmd_predict(args: argparse.Namespace) -> int:
    from ..engine.inference import predict
    from ..files import write_text

    results = predict(args.run, args.images, top=args.top)
    text = format_predictions(results, args.format)
    if args.output is None:
        print(text, end="")
    else:
        write_text(args.output, text)
        print(f"wrote {args.output} ({len(results)} images)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..engine.inference import export_onnx

    max_diff = export_onnx(args.run, args.onnx, opset=args.opset)
    check = (
        "not checked: onnxruntime is not installed"
        if max_diff is None
        else (f"max |onnxruntime - torch| on a test batch: {max_diff:.2e}")
    )
    print(f"wrote {args.onnx} ({check})")
    return 0
