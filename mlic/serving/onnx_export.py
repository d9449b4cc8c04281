"""`mlic export MODEL_DIR --onnx FILE`: an exported model folder as one ONNX file that runs without mlic or
torch (onnxruntime, TensorRT, a browser), giving the same probabilities as `mlic predict`.

The graph's contract (also in the file's `metadata_props`, as JSON strings under `mlic.*`):
- input `images`: uint8, N x 3 x S x S (NCHW, RGB, 0..255), N dynamic. S is `data.cache_size` for a run that
  used the image cache (the default; mlic's evaluation starts from those squares): decode to 8-bit RGB and
  make the S x S square by the run's `data.resize` with PIL's bilinear filter (squash:
  `img.resize((S, S), Image.BILINEAR, reducing_gap=None)`; crop: `ImageOps.fit`; pad: `ImageOps.pad` onto
  `data.background`; `mlic.input` says which). For a run with the cache off, S is the model's input size and the
  caller's steps are torchvision's antialiased uint8 resize (crop: the shorter side, then the centre crop),
  as training did.
- inside the graph: /255, the antialiased resize to the model's size where it differs from S (with
  `data.resize=crop`, to size / crop_pct and the centre crop; ONNX Resize with antialias: opset 18 or later),
  mean/std normalisation, the network, a sigmoid.
- output `probabilities`: float32, N x C, in the order of `mlic.label_names`; label c is predicted where
  probability >= `mlic.thresholds`[c] (the tuned thresholds of `mlic predict`).
uint8 rather than float because that is what the training saw (8-bit pixels, cached as uint8) and a quarter
of the bytes; a caller holding float pixels in 0..1 passes `round(x * 255)` cast to uint8.

onnx, onnxscript and onnxruntime are the optional `onnx` extra: imported inside the functions only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlic.config import config_from_dict
from mlic.data.transforms import DeviceTransform
from mlic.disk import tensor_bytes, writing
from mlic.errors import MlicError
from mlic.models.export import INFERENCE, load_exported

INPUT, OUTPUT = "images", "probabilities"
TOLERANCE = 1e-4  # max |onnxruntime - torch| the check accepts, on probabilities
CHECK_BATCHES = (1, 3)  # neither is the export's example batch (2): proves the batch axis is dynamic
INSTALL = "pip install 'mlic[onnx]'"


class ProbabilityModel(nn.Module):
    """uint8 images -> probabilities: mlic's own eval transform (`DeviceTransform` without augmentation)
    before the network, so the graph cannot drift from what `mlic predict` does."""

    def __init__(self, model: nn.Module, transform: DeviceTransform):
        super().__init__()
        self.model, self.transform = model, transform

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(self.transform(images)))


def input_side(meta: dict) -> int:
    """The side of the graph's input squares: where mlic's evaluation starts for this run."""
    if meta.get("cached", True):  # models exported before `cached` was recorded used the cache
        return config_from_dict(meta["config"]).data.cache_size
    return int(meta["preprocess"]["size"])


def input_contract(meta: dict, side: int) -> dict:
    """How a caller makes the `images` input from a decoded 8-bit RGB image (see the module docstring)."""
    mode, crop_pct = meta["preprocess"].get("interpolation", "bilinear"), meta["preprocess"].get("crop_pct", 1.0)
    resize, background = _resize(meta), config_from_dict(meta["config"]).data.background
    if meta.get("cached", True) and resize == "crop":
        prepare = (f"PIL ImageOps.fit(img, ({side}, {side}), Image.BILINEAR, centering=(0.5, 0.5)) unless already "
                   f"{side}x{side} (data.resize=crop: the shorter side to {side}, centre crop)")
    elif meta.get("cached", True) and resize == "pad":
        prepare = (f"PIL ImageOps.pad(img, ({side}, {side}), Image.BILINEAR, color={background!r}, centering=(0.5, 0.5)) "
                   f"unless already {side}x{side} (data.resize=pad: letterboxed)")
    elif meta.get("cached", True):
        prepare = f"PIL Image.resize(({side}, {side}), Image.BILINEAR, reducing_gap=None) unless already {side}x{side}"
    elif resize == "crop":
        prepare = (f"torchvision v2.functional.resize(uint8 CHW tensor, {math.floor(side / crop_pct)}, interpolation={mode}, "
                   f"antialias=True) (the shorter side), then v2.functional.center_crop(..., [{side}, {side}])")
    else:
        prepare = (f"torchvision v2.functional.resize(uint8 CHW tensor, [{side}, {side}], "
                   f"interpolation={mode}, antialias=True)")
        if resize == "pad":
            prepare = (f"PIL ImageOps.pad(img, ({side}, {side}), Image.BILINEAR, color={background!r}) (letterboxed), "
                       "then " + prepare)
    return {"name": INPUT, "dtype": "uint8", "layout": "NCHW", "channels": "RGB", "range": [0, 255],
            "shape": ["N", 3, side, side], "resize": resize, "prepare": prepare,
            "float_pixels": "x in 0..1: pass round(x * 255) as uint8"}


def metadata_props(meta: dict, side: int) -> dict[str, str]:
    """What a deployment needs beside the weights: names, decision thresholds, the input's recipe."""
    pre = meta["preprocess"]
    return {
        "mlic.label_names": json.dumps(meta["label_names"]),
        "mlic.thresholds": json.dumps([float(t) for t in meta["thresholds"]]),
        "mlic.input": json.dumps(input_contract(meta, side)),
        "mlic.preprocess": json.dumps({"in_graph": True, "size": pre["size"], "mean": pre["mean"], "std": pre["std"],
                                       "interpolation": pre.get("interpolation", "bilinear"),
                                       "crop_pct": pre.get("crop_pct", 1.0)}),
        "mlic.output": json.dumps({"name": OUTPUT, "dtype": "float32", "shape": ["N", len(meta["label_names"])],
                                   "activation": "sigmoid", "decision": "probability >= thresholds[label]"}),
        "mlic.architecture": meta["architecture"]["name"],
    }


def probability_model(model_dir: str | Path) -> tuple[ProbabilityModel, dict, int]:
    """(the graph's body in torch, eval mode; the model's meta; the input side)."""
    model, meta = load_exported(model_dir, INFERENCE)
    pre = meta["preprocess"]
    # cache off: the caller's per-image steps already made the input square (resize, crop or pad) at the model's size
    transform = DeviceTransform.evaluating(pre, _resize(meta) if meta.get("cached", True) else "squash")
    return ProbabilityModel(model, transform).eval(), meta, input_side(meta)


def _resize(meta: dict) -> str:
    """data.resize of the run (folders exported before it: squash)."""
    return config_from_dict(meta["config"]).data.resize


def _require(*modules: str, what: str) -> None:
    """Fail before the slow part, naming the extra, when the optional packages are absent."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MlicError(f"{what} needs {', '.join(missing)} (not installed): {INSTALL}")


def write_onnx(wrapper: ProbabilityModel, meta: dict, side: int, path: Path, opset: int) -> None:
    """torch's dynamo exporter (torch.export, then onnxscript) with a dynamic batch axis; one file unless
    the weights pass protobuf's 2 GB limit (then FILE.data beside it)."""
    if opset < 18 and side != wrapper.transform.size:
        raise MlicError(f"--opset {opset}: the graph resizes {side} -> {wrapper.transform.size} with antialiasing, "
                        "which ONNX Resize has from opset 18; use --opset 18 or later")
    example = torch.zeros(2, 3, side, side, dtype=torch.uint8)
    with torch.no_grad():
        program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, opset_version=opset,
                                    verbose=False)
    program.model.metadata_props.update(metadata_props(meta, side))
    program.model.doc_string = (f"mlic {meta['architecture']['name']}: {INPUT} uint8 N x 3 x {side} x {side} RGB "
                                f"-> {OUTPUT} N x {len(meta['label_names'])} (sigmoid); see metadata_props mlic.*")
    needs = tensor_bytes(wrapper.state_dict().values())
    try:
        with writing(f"the ONNX model {path}", path.parent, needs, point="onnx"):
            path.parent.mkdir(parents=True, exist_ok=True)
            program.save(str(path))
    except MlicError:
        path.unlink(missing_ok=True)  # a truncated model would load as a broken one
        raise


def check_onnx(path: Path, wrapper: ProbabilityModel, side: int) -> float:
    """Max |onnxruntime - torch| over random batches of `CHECK_BATCHES` images (probabilities)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    for n in CHECK_BATCHES:
        images = rng.integers(0, 256, size=(n, 3, side, side), dtype=np.uint8)
        (got,) = session.run([OUTPUT], {INPUT: images})
        with torch.inference_mode():
            want = wrapper(torch.from_numpy(images)).numpy()
        if got.shape != want.shape:
            raise MlicError(f"{path}: onnxruntime gave shape {got.shape} for a batch of {n}, torch {want.shape}")
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def _file_size(path: Path) -> int:
    extra = path.with_name(path.name + ".data")  # external weights, past 2 GB only
    return path.stat().st_size + (extra.stat().st_size if extra.is_file() else 0)


def export_onnx_command(model_dir: str, onnx_path: str, opset: int = 18, check: bool = True) -> int:
    _require("onnx", "onnxscript", what="mlic export --onnx")
    if check:
        _require("onnxruntime", what="checking the exported file (--no-check skips it)")
    path = Path(onnx_path)
    wrapper, meta, side = probability_model(model_dir)
    write_onnx(wrapper, meta, side, path, opset)
    line = f"{path}: {_file_size(path) / 2**20:.1f} MiB, input {INPUT} uint8 Nx3x{side}x{side}, opset {opset}"
    if check:
        diff = check_onnx(path, wrapper, side)
        if not diff <= TOLERANCE:  # `not <=`: a NaN fails too
            path.unlink()
            raise MlicError(f"{path}: onnxruntime differs from torch by {diff:.2e} (> {TOLERANCE:g}) on random images; "
                            "file removed (--no-check keeps it)")
        line += f"; onnxruntime vs torch, batches of {' and '.join(map(str, CHECK_BATCHES))}: max |diff| {diff:.1e}"
    print(line)
    return 0
