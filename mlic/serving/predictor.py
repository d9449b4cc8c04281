"""`mlic.load_model(MODEL_DIR).predict(images)`: an exported model in users' own Python code.

Images are seen as the run's evaluation saw them: decoded as training decoded (upright, 8-bit sRGB,
transparency on `data.background`), then, for a run that trained from the image cache (the default),
made the cache's squares (`data.cache_size`, by `data.resize`) and resized and normalised on the device; for a
run without the cache, through the per-image torchvision path. `mlic predict` is this, on a folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mlic.config import config_from_dict
from mlic.data.cache import Square
from mlic.data.decode import DecodeSettings, decode_image, decoded_rgb
from mlic.data.transforms import DeviceTransform, per_image_evaluating
from mlic.errors import MlicError
from mlic.models.export import INFERENCE, load_exported

ImageInput = str | Path | Image.Image | torch.Tensor | np.ndarray


@dataclass
class Predictions:
    """Per image (rows, in input order) and label (columns, `label_names` order)."""

    label_names: list[str]
    probabilities: np.ndarray  # float32 (N, C)
    decisions: np.ndarray  # bool (N, C): probability >= the label's threshold
    thresholds: np.ndarray  # float (C,): the tuned thresholds the model was exported with

    def __len__(self) -> int:
        return len(self.probabilities)

    def labels(self) -> list[list[str]]:
        """The names of the labels decided positive, per image."""
        return [[self.label_names[c] for c in np.flatnonzero(row)] for row in self.decisions]

    def as_dicts(self) -> list[dict[str, float]]:
        """Per image: label name -> probability."""
        return [dict(zip(self.label_names, map(float, row))) for row in self.probabilities]


class Predictor:
    """An exported model ready to predict: on `device` (default: the GPU when there is one), in batches."""

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any], device: str | torch.device | None = None,
                 batch_size: int = 64, workers: int = 4):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.meta = model.to(self.device).eval(), meta
        self.batch_size, self.workers = batch_size, workers
        self.label_names: list[str] = list(meta["label_names"])
        self.thresholds = np.asarray(meta["thresholds"], dtype=np.float64)
        cfg = config_from_dict(meta["config"])
        self.settings = DecodeSettings.from_config(cfg.data)
        pre = meta["preprocess"]
        self.cached = meta.get("cached", True)
        self.square = Square.of_data(cfg.data)  # folders from before data.resize: squash
        if self.cached:  # uint8 squares in, resized and normalised on the device, as the run evaluated
            self.transform = DeviceTransform.evaluating(pre, cfg.data.resize).to(self.device)
        else:
            self.per_image = per_image_evaluating(pre, cfg.data)

    def predict(self, images: ImageInput | Iterable[ImageInput], batch_size: int | None = None) -> Predictions:
        """Probabilities and decisions for `images`: a path, a PIL image, a uint8 tensor (3, H, W) or a batch
        of them (N, 3, H, W), an (H, W, 3) uint8 array, or a list mixing these. An unreadable file raises
        a DataError naming it."""
        items = _as_list(images)
        size = batch_size or self.batch_size
        probs = np.zeros((len(items), len(self.label_names)), dtype=np.float32)
        with ThreadPoolExecutor(max(1, self.workers)) as pool:  # decoding and resizing release the GIL
            for start in range(0, len(items), size):
                chunk = list(pool.map(self.prepare, items[start:start + size]))
                probs[start:start + len(chunk)] = self._forward(torch.stack(chunk))
        return Predictions(self.label_names, probs, probs >= self.thresholds, self.thresholds)

    def prepare(self, image: ImageInput) -> torch.Tensor:
        """One image as the model's input pipeline takes it: for a cached run the uint8 (3, S, S) square
        of side `data.cache_size` (what the cache stored; the ONNX export takes the same), else the
        normalised float tensor of the per-image path."""
        rgb = self._rgb(image)
        if self.cached:
            return torch.from_numpy(self.square(rgb))
        return self.per_image(rgb)

    @torch.inference_mode()
    def _forward(self, batch: torch.Tensor) -> np.ndarray:
        x = batch.to(self.device, non_blocking=True)
        if self.cached:
            x = self.transform(x)
        return torch.sigmoid(self.model(x).float()).cpu().numpy()

    def _rgb(self, image: ImageInput) -> Image.Image:
        if isinstance(image, str | Path):
            return decode_image(image, self.settings).image
        if isinstance(image, Image.Image):
            return decoded_rgb(image, self.settings)
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if array.dtype != np.uint8:
            raise MlicError(f"an image tensor or array must be uint8 (0-255), not {array.dtype}")
        if isinstance(image, torch.Tensor):  # torchvision's layout: channels first
            if array.ndim != 3 or array.shape[0] not in (1, 3):
                raise MlicError(f"an image tensor must be (3, H, W) or (1, H, W), not {tuple(array.shape)}")
            array = array.transpose(1, 2, 0)
        if array.ndim == 2 or array.shape[-1] == 1:
            array = np.repeat(array.reshape(array.shape[0], array.shape[1], 1), 3, axis=2)
        if array.ndim != 3 or array.shape[-1] != 3:
            raise MlicError(f"an image array must be (H, W, 3) or (H, W), not {tuple(array.shape)}")
        return Image.fromarray(np.ascontiguousarray(array), "RGB")


def _as_list(images) -> list:
    """One image or many, as a list of single images (a 4-d tensor or array is a batch)."""
    if isinstance(images, str | Path | Image.Image):
        return [images]
    if isinstance(images, torch.Tensor | np.ndarray):
        if images.ndim == 4:
            return list(images)
        return [images]
    if isinstance(images, Sequence | Iterable):
        return list(images)
    raise MlicError(f"cannot predict on {type(images).__name__}: give paths, PIL images or uint8 tensors")


def load_model(model_dir: str | Path, device: str | torch.device | None = None, batch_size: int = 64,
               workers: int = 4) -> Predictor:
    """The exported model of a run (`RUN/model`), ready to `predict` on `device` (default: the GPU when
    there is one, else the CPU). No pickle, no network. A folder that is not as a run exported it (config.json,
    weights, an architecture that would need the network) is a `ModelFolderError`, one line naming each problem."""
    model, meta = load_exported(model_dir, INFERENCE)
    return Predictor(model, meta, device, batch_size, workers)
