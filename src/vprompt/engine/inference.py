"""Inference with a finished run: predictions with class names, and ONNX export."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from .._version import __version__
from ..data import build_transform
from ..data.datasets import open_image
from ..files import write_bytes
from .run import class_names, load_run, run_config


@torch.no_grad()
def predict(run_dir: str | Path, images: list[str | Path], top: int = 3) -> list[list[tuple[str, float]]]:
    """For each image, the ``top`` classes of the run's model as ``(class name, probability)``."""
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    config = run_config(run_dir)
    model = load_run(run_dir)
    names = class_names(run_dir)
    transform = build_transform(
        model.data_config, config.protocol or "vp", train=False, preprocess=config.preprocess
    )
    batch = torch.stack([transform(open_image(Path(p))) for p in images])
    probs = model(batch).softmax(-1)
    k = min(top, probs.shape[-1])
    values, indices = probs.topk(k, dim=-1)
    return [
        [(names[i], float(v)) for v, i in zip(vs.tolist(), ids.tolist(), strict=True)]
        for vs, ids in zip(values, indices, strict=True)
    ]


@contextlib.contextmanager
def _quiet_stdout():
    """Silence what the ONNX exporter prints (on a failure it dumps the whole graph to stdout, from C++ and
    Python alike): both ``sys.stdout`` and file descriptor 1 go to a discarded file meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with tempfile.TemporaryFile() as sink, contextlib.redirect_stdout(io.StringIO()):
            os.dup2(sink.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


#: the optional extra that provides the ONNX packages
EXPORT_EXTRA = "pip install 'vprompt[export]'  (onnx and onnxruntime)"


def onnx_metadata(run_dir: str | Path, model) -> dict[str, str]:
    """What a consumer of the ONNX file needs to feed it: classes, preprocessing, provenance."""
    config = run_config(run_dir)
    dc = model.data_config  # the method's input where it asks for one (vp-expansive: its inner size)
    transform = build_transform(dc, config.protocol or "vp", train=False, preprocess=config.preprocess)
    return {
        "vprompt.class_names": json.dumps(class_names(run_dir)),
        "vprompt.input_size": json.dumps(list(dc["input_size"])),
        "vprompt.mean": json.dumps(list(dc["mean"])),
        "vprompt.std": json.dumps(list(dc["std"])),
        "vprompt.interpolation": str(dc.get("interpolation", "bilinear")),
        "vprompt.preprocessing": " ".join(repr(transform).split()),
        "vprompt.input": "RGB images, float32, NCHW, after the preprocessing above",
        "vprompt.method": model.method.name,
        "vprompt.backbone": model.backbone.name,
        "vprompt.version": __version__,
    }


def export_onnx(run_dir: str | Path, path: str | Path, opset: int = 17) -> float | None:
    """Write the run's model (backbone, method and head) as ONNX with a dynamic batch axis.

    LoRA is merged into the weights first (``merge_and_unload``), so the graph is the bare backbone's.
    The file's metadata carries the class names, mean/std, input size and the preprocessing
    (``onnx_metadata``). Returns the largest difference between onnxruntime and the (unmerged) PyTorch
    model on a random batch of 3, or ``None`` when onnxruntime is not installed.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--onnx {path} is a folder; give a file name such as {path / 'model.onnx'}")
    try:
        import onnx
    except ImportError:
        raise RuntimeError(f"ONNX export needs the onnx package: {EXPORT_EXTRA}") from None
    model = load_run(run_dir)
    metadata = onnx_metadata(run_dir, model)
    x = torch.randn(3, *model.input_size)
    with torch.no_grad():
        expected = model(x)
    net = model.merge_and_unload() if model.method.can_merge else model
    example = torch.randn(2, *model.input_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), _quiet_stdout():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks that are constant here
        try:
            torch.onnx.export(
                net,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
        except Exception as e:  # the exporter's message carries the whole graph: keep its first line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"cannot export {model.method.name} to ONNX (opset {opset}): {first}") from None
    graph = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    write_bytes(path, graph.SerializeToString())
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    return float((got - expected).abs().max())
