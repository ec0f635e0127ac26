import numpy as np
import pytest
import torch

from mmzoo.features import H5Features, NpyFolderFeatures
from mmzoo.testing import write_h5_features, write_npy_features


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    return {"v1": rng.standard_normal((5, 4)).astype("float32"), "v2": rng.standard_normal((3, 4)).astype("float32")}


def test_h5_reads_items_and_slices(tmp_path, feats):
    f = H5Features(write_h5_features(tmp_path / "f.h5", feats))
    assert sorted(f.keys()) == ["v1", "v2"] and "v1" in f and len(f) == 2
    assert torch.equal(f["v1"], torch.from_numpy(feats["v1"]))
    assert torch.equal(f.read("v1", 1, 3), torch.from_numpy(feats["v1"][1:3]))
    assert f.shape("v2") == (3, 4)
    with pytest.raises(KeyError, match="'v9'"):
        f["v9"]


def test_h5_groups_need_dataset_key(tmp_path, feats):
    path = write_h5_features(tmp_path / "g.h5", feats, group_key="c3d_features")
    assert torch.equal(H5Features(path, dataset_key="c3d_features")["v2"], torch.from_numpy(feats["v2"]))
    with pytest.raises(KeyError, match="c3d_features"):
        H5Features(path)["v2"]


def test_h5_dataset_key_refuses_plain_datasets(tmp_path, feats):
    # with dataset_key set, an id naming a dataset would give that one array for every key
    path = write_h5_features(tmp_path / "f.h5", feats)
    with pytest.raises(KeyError, match="'v1' is a dataset, not a group holding 'f2d'"):
        H5Features(path, dataset_key="f2d")["v1"]


def test_h5_survives_pickling(tmp_path, feats):
    import pickle

    f = H5Features(write_h5_features(tmp_path / "f.h5", feats))
    f["v1"]
    g = pickle.loads(pickle.dumps(f))
    assert torch.equal(g["v2"], torch.from_numpy(feats["v2"]))


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        H5Features(tmp_path / "nope.h5")
    with pytest.raises(FileNotFoundError, match="nodir"):
        NpyFolderFeatures(tmp_path / "nodir")


def test_npy_and_npz_folders(tmp_path, feats):
    f = NpyFolderFeatures(write_npy_features(tmp_path / "npy", feats))
    assert f.keys() == ["v1", "v2"] and "v2" in f
    assert torch.equal(f.read("v1", 2), torch.from_numpy(feats["v1"][2:]))
    with pytest.raises(FileNotFoundError, match="v3"):
        f["v3"]
    z = NpyFolderFeatures(write_npy_features(tmp_path / "npz", feats, npz_key="feat"), suffix=".npz")
    assert torch.equal(z["v2"], torch.from_numpy(feats["v2"]))
    with pytest.raises(KeyError, match="feat"):
        NpyFolderFeatures(tmp_path / "npz", suffix=".npz", npz_key="other")["v1"]


def _cut_short(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_files_cut_short_raise_errors_naming_them(tmp_path, feats):
    h5 = write_h5_features(tmp_path / "f.h5", feats)
    _cut_short(h5)
    with pytest.raises(OSError, match=r"feature file '.*f\.h5' cannot be read as HDF5 \(.*truncated"):
        H5Features(h5)["v1"]
    for suffix, npz_key in ((".npy", None), (".npz", "feat")):
        folder = write_npy_features(tmp_path / suffix[1:], feats, npz_key=npz_key)
        _cut_short(folder / f"v1{suffix}", 0.8)
        for mmap in (True, False):
            reader = NpyFolderFeatures(folder, suffix=suffix, mmap=mmap)
            with pytest.raises(ValueError, match=rf"feature file '.*v1\{suffix}' cannot be read as \{suffix}"):
                reader["v1"]
            assert torch.equal(reader["v2"], torch.from_numpy(feats["v2"]))  # the others still read
