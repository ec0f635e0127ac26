import pytest

from asdmllm.cli import main
from asdmllm.cmsc import CMSCBuildConfig, build_cmsc, build_tiny_text2image_pipeline
from asdmllm.data import CMSCDataset


def test_build_cmsc_tiny_pipeline_resumable(tmp_path, monkeypatch):
    pipe = build_tiny_text2image_pipeline()
    cfg = CMSCBuildConfig(
        out=str(tmp_path / "CMSC"),
        concepts={"personality": ["pleasant"], "education": ["arts"]},
        genders=["man", "woman"],
        ages=["young"],
        races=["White", "Black"],
        sets_per_concept=1,
        image_size=32,
        num_inference_steps=2,
        shard_size=5,
    )
    out = build_cmsc(pipe, cfg, progress=False)
    ds = CMSCDataset(out, "all", image_size=32)
    assert len(ds) == 2 * 4 and sorted(ds.concepts) == ["arts", "pleasant"]
    assert len(list((out / "data").glob("train-*.parquet"))) == 2  # 8 images / shard_size 5
    # resumable: existing sets are skipped (the pipeline is not called again), a stale temp file is removed
    (out / "sets" / ".half.parquet.123.partial").write_bytes(b"partial")
    calls = []
    monkeypatch.setattr(type(pipe), "__call__", lambda *a, **k: calls.append(1))
    build_cmsc(pipe, cfg, progress=False)
    assert not calls and not [p for p in (out / "sets").iterdir() if not p.name.endswith(".parquet")]
    assert len(CMSCDataset(out, "all", image_size=32)) == 8


def test_build_cmsc_missing_pipeline_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="diffusers text-to-image"):
        main(args=["build-cmsc", "--pipeline", str(tmp_path / "sdxl"), "--out", str(tmp_path / "o")])


def test_build_cmsc_rerun_refuses_sets_of_other_attributes_and_merges_only_asked_concepts(tmp_path):
    pipe = build_tiny_text2image_pipeline()
    cfg = CMSCBuildConfig(out=str(tmp_path / "CMSC"), concepts={"personality": ["pleasant"], "education": ["arts"]},
                          genders=["man"], ages=["young"], races=["White"], sets_per_concept=1, image_size=32,
                          num_inference_steps=1)  # fmt: skip
    out = build_cmsc(pipe, cfg, progress=False)
    # a rerun with another race list would keep the old sets and mix one-race sets with two-race ones
    cfg.races = ["White", "Black"]
    with pytest.raises(ValueError, match=r"personality_pleasant_0\.parquet was generated with other genders"):
        build_cmsc(pipe, cfg, progress=False)
    # a concept left out of the run stays in sets/ but not in the merged shards
    cfg.races, cfg.concepts = ["White"], {"education": ["arts"]}
    build_cmsc(pipe, cfg, progress=False)
    assert (out / "sets" / "personality_pleasant_0.parquet").exists()
    assert CMSCDataset(out, "all", image_size=32).concepts == ["arts"]
