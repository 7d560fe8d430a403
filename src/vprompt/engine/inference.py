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
from PIL import Image

from .._version import __version__
from ..data import build_transform
from ..data.datasets import image_files, open_image, to_rgb
from ..files import write_bytes
from ..model import TunedModel, load_adapter
from .run import load_run, run_config
from .rundir import CONFIG


def _predictor(model_or_run) -> tuple[TunedModel, dict[str, str]]:
    """The model (in eval mode) and its preprocessing, from a TunedModel, a run folder or an adapter."""
    if isinstance(model_or_run, TunedModel):
        model = model_or_run
    elif (Path(model_or_run) / CONFIG).is_file():
        model = load_run(model_or_run)
    else:
        model = load_adapter(model_or_run).eval()
    return model, model.preprocessing or {"protocol": "vp", "preprocess": "protocol"}


def _inputs(images) -> list[tuple[str | None, object]]:
    """``(path or None, path or PIL image)`` for each image; folders give their images, sorted."""
    if isinstance(images, str | os.PathLike | Image.Image):
        images = [images]
    found: list[tuple[str | None, object]] = []
    for item in images:
        if isinstance(item, Image.Image):
            found.append((None, item))
        else:
            found += [(str(p), p) for p in image_files(item)]
    return found


@torch.no_grad()
def predict(
    model_or_run, images, top: int = 5, batch_size: int = 32
) -> list[tuple[str | None, list[tuple[str, float]]]]:
    """The ``top`` classes of each image as ``(path, [(class name, probability), ...])``, best first.

    ``model_or_run``: a :class:`~vprompt.TunedModel`, a run folder or an adapter folder. ``images``: a
    PIL image, an image file or a folder (searched recursively for images, in path order), or a list of
    them; a PIL image's path is ``None``. Images are prepared as the model's training evaluated them
    (its protocol's evaluation transform, the backbone's mean and std).
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    model, preprocessing = _predictor(model_or_run)
    names = model.class_names or [f"class_{i}" for i in range(model.num_classes)]
    transform = build_transform(
        model.data_config, preprocessing["protocol"], False, preprocessing["preprocess"]
    )
    inputs = _inputs(images)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results = []
    try:
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start : start + batch_size]
            pictures = [to_rgb(x) if isinstance(x, Image.Image) else open_image(x) for _, x in chunk]
            probs = model(torch.stack([transform(p) for p in pictures]).to(device)).float().softmax(-1)
            values, indices = probs.topk(min(top, probs.shape[-1]), dim=-1)
            for (path, _), vs, ids in zip(chunk, values.tolist(), indices.tolist(), strict=True):
                results.append((path, [(names[i], v) for v, i in zip(vs, ids, strict=True)]))
    finally:
        model.train(was_training)
    return results


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
    """What a consumer of the ONNX file needs to feed it and read its output: class names (a list, and
    ``id2label`` as Hugging Face calls it), preprocessing, provenance."""
    config = run_config(run_dir)
    dc = model.data_config  # the method's input where it asks for one (vp-expansive: its inner size)
    transform = build_transform(dc, config.protocol or "vp", train=False, preprocess=config.preprocess)
    names = model.class_names
    return {
        "vprompt.class_names": json.dumps(names),
        "vprompt.id2label": json.dumps({str(i): n for i, n in enumerate(names)}),
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
