"""Lazy readers for pre-extracted per-video feature files.

Two layouts cover the feature-based tasks:

* :class:`H5Features`: one HDF5 file whose top-level datasets (or groups holding one dataset) are keyed by
  video id, e.g. ``f["v_QOlSCBRmfWY"]`` of shape (T, D).
* :class:`NpyFolderFeatures`: a folder with one ``<video_id>.npy`` (or ``.npz``, with a named array) per video.

Both open files on first access and read one item at a time, never the whole file. The HDF5 handle is
reopened after a ``fork`` (DataLoader workers), which h5py handles do not survive.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

__all__ = ["H5Features", "NpyFolderFeatures", "open_h5"]


def open_h5(path: str | os.PathLike, what: str = "HDF5 file"):
    """``h5py.File(path, "r")``, with an OSError naming ``what`` and the file when it cannot be opened (h5py's own
    message, e.g. "truncated file", names neither; a file cut short by an interrupted write reads so)."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise OSError(f"{what} {str(path)!r} cannot be read as HDF5 ({err}); a write that was cut short leaves such "
                      "a file: write it again") from err  # fmt: skip


class H5Features:
    """Features in one HDF5 file keyed by video id.

    Args:
        path: the ``.h5``/``.hdf5`` file.
        dataset_key: when each video id names a *group*, the dataset inside it to read (e.g. ``"c3d_features"``);
            ``None`` when the id names the dataset itself.
        dtype: torch dtype of returned tensors.

    ``feats[video_id]`` returns a tensor (T, D); ``feats.keys()`` lists the ids; ``video_id in feats`` checks one.

    Raises:
        FileNotFoundError: the file does not exist.
        ImportError: h5py is not installed (``pip install mmzoo[h5]``).
        KeyError: on access, an id not in the file, a group without ``dataset_key``, or a dataset where
            ``dataset_key`` expects a group.
    """

    def __init__(self, path: str | os.PathLike, dataset_key: str | None = None, dtype: torch.dtype = torch.float32):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"feature file {str(self.path)!r} does not exist")
        try:
            import h5py  # noqa: F401
        except ImportError as err:
            raise ImportError("reading HDF5 features needs h5py: pip install 'mmzoo[h5]'") from err
        self.dataset_key = dataset_key
        self.dtype = dtype
        self._file = None
        self._pid: int | None = None

    def _handle(self):
        if self._file is None or self._pid != os.getpid():
            self._file = open_h5(self.path, "feature file")
            self._pid = os.getpid()
        return self._file

    def keys(self) -> list[str]:
        return list(self._handle().keys())

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._handle()

    def __len__(self) -> int:
        return len(self._handle())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def shape(self, video_id: str) -> tuple[int, ...]:
        """The stored shape of one item, without reading its values."""
        return tuple(self._node(video_id).shape)

    def _node(self, video_id: str):
        f = self._handle()
        if video_id not in f:
            raise KeyError(f"{str(self.path)!r}: no features for video id {video_id!r}")
        node = f[video_id]
        if hasattr(node, "keys"):  # a group
            if self.dataset_key is None or self.dataset_key not in node:
                raise KeyError(
                    f"{str(self.path)!r}: {video_id!r} is a group with keys {list(node.keys())}; "
                    f"set dataset_key to one of them (got {self.dataset_key!r})"
                )
            node = node[self.dataset_key]
        elif self.dataset_key is not None:  # every key would otherwise read this one array
            raise KeyError(
                f"{str(self.path)!r}: {video_id!r} is a dataset, not a group holding {self.dataset_key!r}; "
                "with dataset_key set every video id must name a group"
            )
        return node

    def read(self, video_id: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of one video's features (only those rows are read from disk)."""
        node = self._node(video_id)
        arr = node[slice(start, stop)] if node.ndim > 0 else node[()]
        return torch.as_tensor(np.asarray(arr)).to(self.dtype)

    def __getitem__(self, video_id: str) -> torch.Tensor:
        return self.read(video_id)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self):  # picklable for DataLoader workers: the handle is reopened there
        state = dict(self.__dict__)
        state["_file"] = None
        state["_pid"] = None
        return state


class NpyFolderFeatures:
    """Features in a folder of ``<video_id>.npy`` or ``<video_id>.npz`` files.

    Args:
        root: the folder.
        suffix: ``".npy"`` or ``".npz"``.
        npz_key: the array name inside each ``.npz`` (``None``: the file's only array).
        mmap: memory-map ``.npy`` files so slicing reads only the rows asked for.
        dtype: torch dtype of returned tensors.

    Raises:
        FileNotFoundError: the folder does not exist; on access, the item's file does not exist.
        KeyError: on access, an ``.npz`` without ``npz_key``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        suffix: str = ".npy",
        npz_key: str | None = None,
        mmap: bool = True,
        dtype: torch.dtype = torch.float32,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"feature folder {str(self.root)!r} does not exist")
        if suffix not in (".npy", ".npz"):
            raise ValueError(f"suffix must be '.npy' or '.npz', got {suffix!r}")
        self.suffix, self.npz_key, self.mmap, self.dtype = suffix, npz_key, mmap, dtype

    def path(self, video_id: str) -> Path:
        return self.root / f"{video_id}{self.suffix}"

    def keys(self) -> list[str]:
        return sorted(p.name[: -len(self.suffix)] for p in self.root.iterdir() if p.name.endswith(self.suffix))

    def __contains__(self, video_id: str) -> bool:
        return self.path(video_id).is_file()

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def read(self, video_id: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of one video's features."""
        p = self.path(video_id)
        if not p.is_file():
            raise FileNotFoundError(f"{str(self.root)!r}: no feature file {p.name!r} for video id {video_id!r}")
        try:
            if self.suffix == ".npy":
                arr = np.load(p, mmap_mode="r" if self.mmap else None)
            else:
                with np.load(p) as z:
                    names = list(z.keys())
                    key = self.npz_key if self.npz_key is not None else (names[0] if len(names) == 1 else None)
                    if key is None or key not in names:
                        raise KeyError(f"{str(p)!r}: arrays {names}; set npz_key to one of them (got {self.npz_key!r})")
                    arr = z[key]
            if arr.ndim > 0:
                arr = arr[slice(start, stop)]
            return torch.as_tensor(np.array(arr)).to(self.dtype)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:  # numpy's messages do not name the file
            raise ValueError(f"feature file {str(p)!r} cannot be read as {self.suffix} ({err}); a write that was cut "
                             "short leaves such a file: write it again") from err  # fmt: skip

    def __getitem__(self, video_id: str) -> torch.Tensor:
        return self.read(video_id)
