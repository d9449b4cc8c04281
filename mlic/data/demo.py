"""A synthetic corpus in the course's `helsinki` layout: 14 labels, imbalanced, correlated, learnable.

Each label has a drawn cue (sea: a blue band with waves at the bottom, portrait: a large face, ...), so a
model can learn it; the label frequencies and co-occurrences imitate the course corpus (people, female,
male and portrait common, baby, river and sea rare; portrait, female, male and baby imply people).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LABELS = ["baby", "bird", "car", "clouds", "dog", "female", "flower", "male", "night", "people",
          "portrait", "river", "sea", "tree"]
SIZE = 128
EMPTY_SHARE = 0.10
GRAYSCALE_SHARE = 0.02
# P(label | the image has a label); people-attributes are conditional on people.
P_PEOPLE = 0.5
P_GIVEN_PEOPLE = {"female": 0.5, "male": 0.45, "portrait": 0.3, "baby": 0.018}
P_SCENE = {"tree": 0.14, "clouds": 0.12, "dog": 0.07, "car": 0.07, "flower": 0.06, "night": 0.06,
           "bird": 0.05, "sea": 0.045, "river": 0.02}
BODY_COLOURS = {"dress": (220, 40, 160), "shirt": (20, 40, 150), "plain": (120, 120, 120)}
SKIN = [(241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36)]


def sample_labels(rng: np.random.Generator) -> set[str]:
    if rng.random() < EMPTY_SHARE:
        return set()
    while True:
        labels = {name for name, p in P_SCENE.items() if rng.random() < p}
        if rng.random() < P_PEOPLE:
            labels.add("people")
            labels |= {name for name, p in P_GIVEN_PEOPLE.items() if rng.random() < p}
        if labels:
            return labels


def _xy(rng, lo, hi):
    return int(rng.integers(lo, hi)), int(rng.integers(lo, hi))


def _figure(draw, rng, x, y, scale, body):
    head = int(6 * scale)
    skin = SKIN[rng.integers(len(SKIN))]
    draw.ellipse([x - head, y - head, x + head, y + head], fill=skin)
    if body == "dress":  # female: magenta dress
        draw.polygon([(x, y + head), (x - 3 * head, y + 6 * head), (x + 3 * head, y + 6 * head)], fill=BODY_COLOURS["dress"])
    elif body == "shirt":  # male: navy rectangle
        draw.rectangle([x - 2 * head, y + head, x + 2 * head, y + 6 * head], fill=BODY_COLOURS["shirt"])
    else:
        draw.rectangle([x - head, y + head, x + head, y + 5 * head], fill=BODY_COLOURS["plain"])


def render(labels: set[str], rng: np.random.Generator) -> Image.Image:
    base = rng.integers(90, 230, size=3)
    tilt = rng.integers(-40, 40, size=3)
    ramp = np.linspace(0, 1, SIZE)[:, None, None]
    pixels = base[None, None, :] + tilt[None, None, :] * ramp + rng.normal(0, 8, (SIZE, SIZE, 3))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 3)):  # distractors: grey blobs that mean nothing
        x, y = _xy(rng, 0, SIZE)
        r = int(rng.integers(4, 14))
        g = int(rng.integers(60, 200))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(g, g, g))
    _landscape(draw, labels, rng)
    _things(draw, labels, rng)
    _people(draw, labels, rng)
    if "night" in labels:
        img = _night(img, rng)
    return img


def _landscape(draw: ImageDraw.ImageDraw, labels: set[str], rng: np.random.Generator) -> None:
    if "sea" in labels:
        top = int(rng.integers(80, 100))
        draw.rectangle([0, top, SIZE, SIZE], fill=(10, 60, 160))
        for yy in range(top + 4, SIZE, 7):
            draw.line([(0, yy), (SIZE, yy + int(rng.integers(-2, 3)))], fill=(120, 170, 230), width=2)
    if "river" in labels:
        x0, x1 = int(rng.integers(0, 60)), int(rng.integers(68, 128))
        draw.line([(x0, 0), ((x0 + x1) // 2 + int(rng.integers(-20, 20)), 64), (x1, SIZE)], fill=(40, 190, 210), width=12)
    if "clouds" in labels:
        for _ in range(rng.integers(2, 4)):
            x, y = int(rng.integers(10, 118)), int(rng.integers(5, 35))
            w, h = int(rng.integers(14, 26)), int(rng.integers(6, 11))
            draw.ellipse([x - w, y - h, x + w, y + h], fill=(250, 250, 250))
    if "tree" in labels:
        x, y = int(rng.integers(15, 113)), int(rng.integers(40, 90))
        draw.rectangle([x - 3, y, x + 3, y + 30], fill=(100, 60, 20))
        draw.polygon([(x, y - 30), (x - 16, y + 5), (x + 16, y + 5)], fill=(20, 130, 30))
    if "flower" in labels:
        for _ in range(rng.integers(3, 6)):
            x, y = _xy(rng, 8, 120)
            draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=(230, 60, 200))
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(250, 230, 0))


def _things(draw: ImageDraw.ImageDraw, labels: set[str], rng: np.random.Generator) -> None:
    if "car" in labels:
        x, y = int(rng.integers(5, 80)), int(rng.integers(60, 105))
        draw.rectangle([x, y, x + 40, y + 14], fill=(210, 20, 20))
        draw.rectangle([x + 8, y - 9, x + 30, y], fill=(210, 20, 20))
        for wx in (x + 9, x + 31):
            draw.ellipse([wx - 5, y + 10, wx + 5, y + 20], fill=(10, 10, 10))
    if "dog" in labels:
        x, y = int(rng.integers(15, 100)), int(rng.integers(60, 110))
        draw.ellipse([x - 14, y - 7, x + 14, y + 7], fill=(150, 90, 40))
        draw.ellipse([x + 10, y - 16, x + 22, y - 4], fill=(150, 90, 40))
        draw.polygon([(x + 12, y - 14), (x + 14, y - 22), (x + 17, y - 14)], fill=(60, 30, 10))
    if "bird" in labels:
        for _ in range(rng.integers(1, 4)):
            x, y = int(rng.integers(10, 118)), int(rng.integers(8, 60))
            draw.line([(x - 8, y - 5), (x, y), (x + 8, y - 5)], fill=(15, 15, 15), width=3)


def _people(draw: ImageDraw.ImageDraw, labels: set[str], rng: np.random.Generator) -> None:
    if "people" in labels:
        bodies = [b for b, lab in (("dress", "female"), ("shirt", "male")) if lab in labels] or ["plain"]
        if "portrait" in labels:
            x, y = int(rng.integers(50, 78)), int(rng.integers(45, 70))
            r = int(rng.integers(24, 32))
            colours = [BODY_COLOURS[b] for b in bodies]  # both genders: a body of two halves
            draw.rectangle([x - r, y + r - 4, x + r, SIZE], fill=colours[0])
            draw.rectangle([x, y + r - 4, x + r, SIZE], fill=colours[-1])
            draw.ellipse([x - r, y - r, x + r, y + r], fill=SKIN[rng.integers(len(SKIN))])
            for ex in (x - r // 3, x + r // 3):
                draw.ellipse([ex - 3, y - r // 4 - 3, ex + 3, y - r // 4 + 3], fill=(20, 20, 20))
            draw.line([(x - r // 3, y + r // 2), (x + r // 3, y + r // 2)], fill=(150, 30, 30), width=3)
        else:
            for body in bodies:
                x, y = int(rng.integers(15, 113)), int(rng.integers(20, 70))
                _figure(draw, rng, x, y, float(rng.uniform(0.9, 1.3)), body)
    if "baby" in labels:  # a small figure with a big head and a yellow body
        x, y = int(rng.integers(20, 108)), int(rng.integers(70, 100))
        draw.rectangle([x - 6, y + 8, x + 6, y + 22], fill=(250, 220, 40))
        draw.ellipse([x - 9, y - 9, x + 9, y + 9], fill=SKIN[rng.integers(len(SKIN))])


def _night(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Darken everything and add stars."""
    arr = (np.asarray(img, dtype=np.float32) * 0.35).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = _xy(rng, 0, SIZE)
        draw.point([(x, y), (x + 1, y)], fill=(255, 255, 230))
    return img


def write_demo_data(out_dir: str | Path, images: int = 2000, seed: int = 0) -> Path:
    """Write `images` images and 14 annotation files; the same (images, seed) gives the same bytes."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = {name: [] for name in LABELS}
    for number in range(1, images + 1):
        labels = sample_labels(rng)
        img = render(labels, rng)
        if rng.random() < GRAYSCALE_SHARE:
            img = img.convert("L")
        img.save(out / "images" / f"im{number}.jpg", quality=int(rng.integers(85, 96)))
        for name in labels:
            members[name].append(number)
    for name, numbers in members.items():
        (out / "annotations" / f"{name}.txt").write_text("".join(f"{n}\n" for n in numbers))
    return out


def cache_home() -> Path:
    return Path(os.environ.get("MLIC_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlic"))


def demo_root(images: int = 2000, seed: int = 0) -> Path:
    """The embedded demo corpus, generated once into the cache (atomically: safe with many ranks)."""
    root = cache_home() / f"demo-{images}-{seed}"
    if (root / "annotations").is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp", dir=root.parent))
    write_demo_data(tmp, images, seed)
    try:
        tmp.rename(root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return root
