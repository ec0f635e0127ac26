import pytest
import torch

from shagcl.cli import main
from shagcl.data import VG150Dataset
from shagcl.testing import write_vg150


def test_extract_writes_a_cache_the_dataset_reads(tmp_path):
    write_vg150(tmp_path, n_images=4, n_test=2, n_obj_classes=3, n_predicates=4, with_images=True, max_obj=3)
    out = tmp_path / "cache.h5"
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        main(args=["extract", "--data_root", str(tmp_path), "--split", "test", "--output", str(out)])
    main(args=["extract", "--data_root", str(tmp_path), "--split", "test", "--output", str(out), "--random_weights",
               "--min_size", "64", "--max_size", "96", "--num_val_images", "0"])
    ds = VG150Dataset(tmp_path, "test", protocol="sgcls", feature_source="cached", feature_cache=str(out),
                      predicate_order="file", num_val_images=0)
    item = ds[0]
    n = len(item["boxes"])
    assert item["obj_feats"].shape == (n, 1024) and item["det_logits"].shape == (n, 4)
    assert item["union_feats"].shape == (n * (n - 1), 1024) and torch.isfinite(item["union_feats"]).all()
