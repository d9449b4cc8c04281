"""A checkpoint's manifest: every file's size and SHA-256, written last, so that a checkpoint can prove it
is whole before anything in it is loaded, and nothing in it is loaded that could run code.

A checkpoint folder is trusted for what it can prove: files torn by a power cut (nothing reached the disk
before the rename), truncated, emptied or with flipped bits fail the hashes; a file that is not listed
fails; a pickle that holds more than tensors and plain containers fails the weights-only scan, even when
whoever planted it rewrote the manifest to match. Only DeepSpeed's own files cannot pass that scan (they
pickle DeepSpeed's classes): reading them is the opt-in `train.trust_checkpoint_pickles`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from mlic.disk import fsync_path

MANIFEST = "manifest.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")  # what accelerate and DeepSpeed read with torch.load
DEEPSPEED_SUFFIXES = ("_model_states.pt", "_optim_states.pt")  # DeepSpeed's engine state (pickles its classes)
_CHUNK = 1 << 20


def file_digest(path: Path, fsync: bool = False) -> str:
    """SHA-256 of the file (hashlib.file_digest is 3.11+); `fsync`: flush it to the disk on the way."""
    digest, buffer = hashlib.sha256(), bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as fh:
        while n := fh.readinto(buffer):
            digest.update(view[:n])
        if fsync:
            os.fsync(fh.fileno())
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path) -> int:
    """Hash and fsync every file of `folder`, write the manifest (fsynced) and fsync every folder in it.
    Returns the bytes the checkpoint holds."""
    paths = _files(folder)
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_digest(p, fsync=True)}
             for p in paths}
    with open(folder / MANIFEST, "w") as fh:
        json.dump({"algorithm": "sha256", "files": files}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    for sub in sorted({folder, *(p.parent for p in paths)}, key=lambda p: -len(p.parts)):
        fsync_path(sub)
    return sum(entry["size"] for entry in files.values())


def manifest_bytes(folder: Path) -> int | None:
    """The bytes a checkpoint's manifest lists (None without a readable manifest)."""
    try:
        return sum(entry["size"] for entry in json.loads((folder / MANIFEST).read_text())["files"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def damage(folder: Path, trust_pickles: bool = False) -> str | None:
    """What is wrong with the checkpoint `folder` (None: it is whole and safe to load), in a few words."""
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
        expected = {name: (int(e["size"]), str(e["sha256"])) for name, e in listed.items()}
    except FileNotFoundError:
        return f"it has no {MANIFEST} (an mlic older than checkpoint format 3 wrote it)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"its {MANIFEST} is unreadable ({type(exc).__name__})"
    present = {p.relative_to(folder).as_posix(): p for p in _files(folder)}
    for name in sorted(present.keys() - expected.keys()):
        return f"{name} is not in its manifest"
    for name, (size, sha) in sorted(expected.items()):
        path = present.get(name)
        if path is None:
            return f"{name} is missing"
        try:
            actual = path.stat().st_size
            if actual != size:
                return f"{name} has {actual} bytes, its manifest says {size}"
            if file_digest(path) != sha:
                return f"{name} does not match its hash (changed or damaged)"
        except OSError as exc:  # a bad sector (EIO), a file this user cannot read
            return f"{name} cannot be read ({exc.strerror or exc})"
    for name, path in sorted(present.items()):
        if not name.endswith(PICKLE_SUFFIXES) or (trust_pickles and name.endswith(DEEPSPEED_SUFFIXES)):
            continue  # safetensors and JSON run nothing when parsed; DeepSpeed's files were opted in
        problem = unsafe_pickle(path)
        if problem:
            return f"{name} {problem}"
    return None


def unsafe_pickle(path: Path) -> str | None:
    """Why loading `path` with torch.load could run code or fail (None: it holds only tensors, plain
    containers and numbers, what accelerate's weights-only load accepts). Tensors are memory-mapped, not read."""
    from accelerate.utils import load

    try:
        load(path, map_location="cpu", mmap=True)  # weights_only=True, with numpy's RNG state allowed
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or ValueError by what it finds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"holds objects that a weights-only load refuses ({first[:160]})"
    return None
