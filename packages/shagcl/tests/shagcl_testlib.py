"""Helpers shared by shagcl's test modules."""

from __future__ import annotations

from shagcl.data import SGGDataModule, SyntheticFeaturesConfig
from shagcl.models import SHAGCLConfig


def synthetic_datamodule(root, protocol: str = "predcls", pooled: bool = False, **kw) -> SGGDataModule:
    """A datamodule on 32 generated images with synthetic features (16-d; ``pooled`` adds the pooled inputs), set
    up for fit: at most 32 pairs per image, 8 of them foreground, 2 validation images."""
    synthetic = SyntheticFeaturesConfig(feature_dim=16, pooled=pooled, **kw)
    dm = SGGDataModule(
        data_root=str(root),
        protocol=protocol,
        feature_source="synthetic",
        synthetic=synthetic,
        predicate_order="file",
        num_val_images=2,
        max_pairs=32,
        max_fg_pairs=8,
        generate_demo_data=True,
        demo_num_images=32,
    )
    dm.setup("fit")
    return dm


def tiny_config(**overrides) -> SHAGCLConfig:
    """A tiny model config (random word embeddings, simplified union features, no trainable box head); ``overrides``
    replace any field."""
    base = dict(
        num_obj_classes=5,
        num_predicates=6,
        feature_dim=16,
        hidden_dim=16,
        num_heads=2,
        key_dim=8,
        ffn_dim=32,
        obj_layers=2,
        edge_layers=1,
        word_dim=8,
        word_embeddings="random",
        rect_size=27,
        trainable_box_head=False,
        union_features="simplified",
    )
    return SHAGCLConfig(**{**base, **overrides})


def assert_test_recalls(metrics) -> None:
    """A ``test`` run logged every recall of spec §5 (R, mR, ng-R, ng-mR, zR at 20/50/100), each in [0, 1]."""
    for k in (20, 50, 100):
        for name in ("R", "mR", "ng-R", "ng-mR", "zR"):
            key = f"test/{name}@{k}"
            assert key in metrics and 0.0 <= float(metrics[key]) <= 1.0, (key, sorted(metrics))
