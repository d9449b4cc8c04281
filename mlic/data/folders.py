"""Image folders of the benchmark layouts (COCO, VOC, Open Images): paths made when asked, one listing of the
folder instead of a stat per file."""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path

from mlic.data.datasets import DecodeFiles, Problem
from mlic.data.decode import DecodeSettings
from mlic.errors import some


class FolderPaths(Sequence):
    """`folder / names[i]`, made when asked: 9 M `Path` objects would cost gigabytes in every worker."""

    def __init__(self, folder: Path, names: Sequence[str]):
        self.folder, self.names = str(folder), names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        return Path(self.folder, self.names[i])


class DecodeFolder(DecodeFiles):
    """`DecodeFiles` over `folder / names[i]`, without a list of paths."""

    def __init__(self, folder: Path, names: Sequence[str], settings: DecodeSettings):
        self.paths, self.settings = FolderPaths(folder, names), settings


def listing(folder: Path) -> set[str]:
    with os.scandir(folder) as entries:
        return {e.name for e in entries}


def links(folder: Path) -> set[str]:
    """The names of the folder's symbolic links (from the listing's file types: no stat per file)."""
    with os.scandir(folder) as entries:
        return {e.name for e in entries if e.is_symlink()}


def unknown_labels(source: Path, label_names: Sequence[str], labels: Collection[str] | None) -> list[Problem]:
    return [Problem(f"{source}: unknown label {name!r} (known: {some(sorted(labels))})")
            for name in label_names if labels is not None and name not in labels]


def in_folder(folder: Path, name: str, listing: set[str]) -> bool:
    return name in listing or (("/" in name or os.sep in name) and (folder / name).is_file())
