import csv

import pytest
import torch

from asdmllm.data import (
    CMSC_CONCEPTS,
    CMSCDataset,
    DebiasDataModule,
    FairFaceDataset,
    SocialCounterfactualsDataset,
    collate,
    make_cmsc,
    make_fairface,
    make_socialcounterfactuals,
)

OCC = ["plumber", "nurse", "chef"]


@pytest.fixture(scope="module")
def scounter_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("scounter")
    return make_socialcounterfactuals(root, OCC, ["White", "Black"], ["male", "female"], n_sets=10, image_size=32)


def test_socialcounterfactuals_official_columns(scounter_root):
    import pyarrow.parquet as pq

    table = pq.read_table(scounter_root / "data" / "train-00000-of-00001.parquet")
    assert set(table.column_names) == {
        "image",
        "caption",
        "a1_type",
        "a1",
        "a2_type",
        "a2",
        "counterfactual_set",
        "a1a2",
    }
    assert table.column("caption")[0].as_py() == "A photo of a White male plumber"


def test_socialcounterfactuals_reader_batch(scounter_root):
    splits = {s: SocialCounterfactualsDataset(scounter_root, s, image_size=32) for s in ("train", "val", "test")}
    assert sum(len(d) for d in splits.values()) == 3 * 10 * 4
    assert not set(splits["train"].counterfactual_sets) & set(
        splits["test"].counterfactual_sets
    )  # no set shared across splits
    ds = splits["train"]
    assert ds.concepts == sorted(OCC) and ds.attribute_types == ["gender", "race"]
    assert ds.attribute_values == [["female", "male"], ["Black", "White"]]
    batch = collate([ds[i] for i in range(5)])
    assert batch["image"].shape == (5, 3, 32, 32) and batch["image"].dtype == torch.uint8
    assert batch["attributes"].shape == (5, 2) and batch["concept"].shape == (5,)
    assert batch["instruction"][0] == "What is the occupation of the person in the image?"
    assert batch["answer"][0] == ds.concepts[int(batch["concept"][0])]
    cap = SocialCounterfactualsDataset(scounter_root, "train", image_size=32, instruction_mode="caption")
    assert cap[0]["answer"].startswith("A photo of a ")


def test_counterfactual_sets_differ_only_in_attributes(scounter_root):
    ds = SocialCounterfactualsDataset(scounter_root, "all", image_size=32)
    first = [i for i in range(len(ds)) if ds.counterfactual_sets[i] == ds.counterfactual_sets[0]]
    assert len(first) == 4 and len({tuple(ds.attribute_ids[i].tolist()) for i in first}) == 4
    assert len({int(ds.concept_ids[i]) for i in first}) == 1


def test_missing_files_and_columns(tmp_path, scounter_root):
    with pytest.raises(FileNotFoundError, match="see README, Data preparation"):
        SocialCounterfactualsDataset(tmp_path / "nope", "train")
    import pyarrow.parquet as pq

    (tmp_path / "bad" / "data").mkdir(parents=True)
    table = pq.read_table(scounter_root / "data" / "train-00000-of-00001.parquet").drop(["a1a2"])
    pq.write_table(table, tmp_path / "bad" / "data" / "train-00000-of-00001.parquet")
    with pytest.raises(KeyError, match="a1a2"):
        SocialCounterfactualsDataset(tmp_path / "bad", "train")
    with pytest.raises(ValueError, match="families present"):
        SocialCounterfactualsDataset(scounter_root, "train", family="physical-race")


def test_corrupt_image_raise_and_skip(tmp_path, scounter_root):
    ds = SocialCounterfactualsDataset(scounter_root, "train", image_size=32)
    ds._table = [{"image": {"bytes": b"not a png", "path": None}}] * (max(ds._rows) + 1)  # corrupt every image
    with pytest.raises(ValueError, match="corrupt image"):
        ds[0]
    ds.on_corrupt = "skip"
    assert ds[0] is None
    assert collate([None, None])["image"].shape[0] == 0


@pytest.mark.parametrize("cell", [None, {"bytes": None, "path": None}])
def test_null_image_cell_is_a_corrupt_image_named_by_row(scounter_root, cell):
    """A parquet row whose image cell is null (or holds neither bytes nor a path) used to raise a bare AttributeError
    that named no row, under on_corrupt: skip too."""
    ds = SocialCounterfactualsDataset(scounter_root, "train", image_size=32)
    ds._table = [{"image": cell}] * (max(ds._rows) + 1)
    with pytest.raises(ValueError, match=f"corrupt image at .* row {ds._rows[0]} .*neither bytes nor a path"):
        ds[0]
    assert ds.describe(0)["image"] is None
    ds.on_corrupt = "skip"
    assert ds[0] is None


def test_cmsc_reader(tmp_path):
    root = make_cmsc(tmp_path / "CMSC", {"personality": ["pleasant", "unpleasant"], "education": ["arts"]}, n_sets=6)
    ds = CMSCDataset(root, "all", image_size=32)
    assert len(ds) == 3 * 6 * 8 and ds.attribute_types == ["age", "gender", "race"]
    assert ds.concept_groups == ["education", "personality", "personality"]
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["attributes"].shape == (3,)
    assert item["instruction"] in (
        "Which word best describes the personality of the person in the image?",
        "What best describes the education of the person in the image?",
    )


def test_fairface_reader(tmp_path):
    root = make_fairface(tmp_path / "ff", 6)
    with (root / "fairface_label_val.csv").open() as fh:
        assert next(csv.reader(fh)) == ["file", "age", "gender", "race", "service_test"]
    ds = FairFaceDataset(root, ["nurse", "chef"], ["occupation", "occupation"], image_size=32)
    assert len(ds) == 6 and ds[0]["concept"].item() == -1 and (ds.attribute_ids >= 0).all()
    with pytest.raises(FileNotFoundError, match="fairface_label_val.csv"):
        FairFaceDataset(tmp_path, ["nurse"], ["occupation"])
    (root / "val" / "1.jpg").write_bytes(b"broken")
    with pytest.raises(ValueError, match="1.jpg"):
        ds[0]


def test_datamodule_generates_and_lists_eval_sets(tmp_path):
    dm = DebiasDataModule(
        str(tmp_path / "d"),
        image_size=32,
        batch_size=4,
        eval_batch_size=8,
        num_workers=0,
        generate_demo_data=True,
        probe_fraction=0.5,
    )
    dm.demo.n_sets, dm.demo.fairface_images, dm.demo.cmsc_sets = 8, 5, 2
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    names = [i.name for i in dm.eval_sets("test")]
    assert names == ["socialcounterfactuals", "fairface", "cmsc"]
    ff = dm.eval_sets("test")[1]
    # the union of the 4 training occupations and the 18 CMSC concepts: chef is in both and is queried once
    assert len(ff.concepts) == len(set(ff.concepts)) == 4 + 18 - 1
    assert ff.concept_groups[ff.concepts.index("chef")] == "occupation"
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32)
    assert len(dm.probe_dataloader().dataset) == round(0.5 * len(dm.train_set))


def test_fairface_default_concepts_include_cmsc_without_a_cmsc_folder(tmp_path):
    """Spec §3.2: the FairFace query concepts are the union of the evaluated occupations and CMSC's concepts, also when
    no CMSC folder is evaluated (they used to be the occupations alone then)."""
    kwargs = dict(image_size=32, num_workers=0, generate_demo_data=True)
    dm = DebiasDataModule(str(tmp_path / "d"), **kwargs)
    dm.demo.n_sets, dm.demo.fairface_images, dm.demo.every_split = 3, 3, True
    dm.prepare_data()
    dm.setup("test")
    assert [i.name for i in dm.eval_sets("test")] == ["socialcounterfactuals", "fairface"]
    ff = dm.eval_sets("test")[1]
    cmsc = {c: g for g, cs in CMSC_CONCEPTS.items() for c in cs}
    assert set(ff.concepts) == set(dm.demo.occupations) | set(cmsc) and len(ff.concepts) == len(set(ff.concepts))
    assert all(
        g == ("occupation" if c in dm.demo.occupations else cmsc[c]) for c, g in zip(ff.concepts, ff.concept_groups)
    )
    custom = DebiasDataModule(str(tmp_path / "d"), questions={"occupation": "Which job?"}, **kwargs)
    custom.demo = dm.demo
    with pytest.raises(KeyError, match="data.questions has no question .*'education'"):
        custom.setup("test")  # the CMSC groups need questions too: named, not a bare KeyError


def test_every_split_puts_every_concept_in_every_split(tmp_path):
    root = make_socialcounterfactuals(tmp_path / "sc", OCC, ["White", "Black"], ["male", "female"], 5, every_split=True)
    for split in ("train", "val", "test"):
        assert SocialCounterfactualsDataset(root, split, image_size=32).concepts == sorted(OCC)
    assert len(SocialCounterfactualsDataset(root, "all", image_size=32)) == 3 * 5 * 4
    concepts = {"personality": ["pleasant", "unpleasant"], "education": ["arts"]}
    cmsc = make_cmsc(tmp_path / "CMSC", concepts, n_sets=3, every_split=True)
    for split in ("train", "val", "test"):
        assert len(CMSCDataset(cmsc, split, image_size=32)) == 3 * 8
    with pytest.raises(ValueError, match="at least 3 sets"):
        make_cmsc(tmp_path / "bad", concepts, n_sets=2, every_split=True)


def test_demo_data_regenerated_when_its_settings_change(tmp_path):
    dm = DebiasDataModule(str(tmp_path / "d"), image_size=32, num_workers=0, generate_demo_data=True)
    dm.demo.n_sets = 4
    dm.prepare_data()
    dm.demo.n_sets, dm.demo.every_split = 5, True
    dm.prepare_data()  # settings changed: rewritten
    ds = SocialCounterfactualsDataset(tmp_path / "d", "test", image_size=32)
    assert ds.concepts == sorted(dm.demo.occupations)
    shard = tmp_path / "d" / "data" / "train-00000-of-00001.parquet"
    written = shard.stat().st_mtime_ns
    dm.prepare_data()  # same settings: kept
    assert shard.stat().st_mtime_ns == written


def test_demo_data_generation_leaves_a_folder_of_shards_without_its_stamp_alone(tmp_path, caplog):
    """A data_root that already has parquet shards but no demo_data.json stamp is the user's data: with
    generate_demo_data it is used as it is (a warning says so), whatever the shards are called; no generated shard is
    written beside them. Deleting the shards lets the demo data be written (and stamped) again."""
    import json

    root = tmp_path / "d"
    dm = DebiasDataModule(str(root), image_size=32, num_workers=0, generate_demo_data=True)
    dm.demo.n_sets = 3
    dm.prepare_data()
    stamp = json.loads((root / "demo_data.json").read_text())
    assert stamp == {"demo": {**stamp["demo"], "n_sets": 3}, "image_size": 32, "seed": 0}
    generated = root / "data" / "train-00000-of-00001.parquet"
    user_shard = root / "data" / "train-00000-of-00061-abc.parquet"  # the hub's shard names
    generated.rename(user_shard)
    (root / "demo_data.json").unlink()
    written = user_shard.stat().st_mtime_ns
    dm.demo.n_sets = 4  # other settings: a stamped folder would be rewritten, this one is not
    with caplog.at_level("WARNING"):
        dm.prepare_data()
    assert sorted(p.name for p in (root / "data").iterdir()) == [user_shard.name]
    assert user_shard.stat().st_mtime_ns == written and not (root / "demo_data.json").exists()
    assert "without the demo data generator's stamp (demo_data.json)" in caplog.text
    assert (
        len(SocialCounterfactualsDataset(root, "all", image_size=32)) == 4 * 3 * 4
    )  # 4 occupations × the user's 3 sets
    user_shard.unlink()
    dm.prepare_data()
    assert generated.is_file() and json.loads((root / "demo_data.json").read_text())["demo"]["n_sets"] == 4
    assert len(SocialCounterfactualsDataset(root, "all", image_size=32)) == 4 * 4 * 4


def test_fairface_reader_rejects_unknown_labels_and_repeated_files(tmp_path):
    """An out-of-vocabulary label (here 'Latino', the release says 'Latino_Hispanic') or a blank cell would silently
    drop the image from that attribute's pools; a repeated file would count one face twice."""
    root = make_fairface(tmp_path / "ff", 4)
    label = root / "fairface_label_val.csv"
    rows = label.read_text().splitlines()
    fields = rows[1].split(",")
    bad = [rows[0], ",".join(fields[:3] + ["Latino"] + fields[4:]), *rows[2:]]
    label.write_text("\n".join(bad) + "\n")
    with pytest.raises(ValueError, match="race values \\['Latino'\\]"):
        FairFaceDataset(root, ["nurse"], ["occupation"], image_size=32)
    label.write_text("\n".join([*rows, rows[2]]) + "\n")
    with pytest.raises(ValueError, match="more than once"):
        FairFaceDataset(root, ["nurse"], ["occupation"], image_size=32)
    label.write_text("\n".join(rows) + "\n")
    assert len(FairFaceDataset(root, ["nurse"], ["occupation"], image_size=32)) == 4


def test_socialcounterfactuals_concept_ignores_attribute_order_in_caption(tmp_path):
    """The concept is the caption after its attribute words, whichever order they are written in: with 'A photo of
    a male White nurse' (a1 = White after a2 = male) a split on a2 alone would make 'White nurse' and 'Black nurse'
    two concepts, each with one race, so the race Skew of every pool would be undefined."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = make_socialcounterfactuals(tmp_path, ["nurse", "chef"], ["White", "Black"], ["male", "female"], 2, 32)
    shard = next((root / "data").glob("*.parquet"))
    table = pq.read_table(shard)
    rows = table.to_pydict()
    swapped = [f"A photo of a {g} {r} {c.split()[-1]}" for g, r, c in zip(rows["a2"], rows["a1"], rows["caption"])]
    pq.write_table(table.set_column(table.schema.get_field_index("caption"), "caption", pa.array(swapped)), shard)
    ds = SocialCounterfactualsDataset(root, "all", image_size=32)
    assert ds.concepts == ["chef", "nurse"]
    rows["caption"] = [
        c.replace(" male ", " female ") if a2 == "male" else c for c, a2 in zip(rows["caption"], rows["a2"])
    ]
    pq.write_table(pa.Table.from_pydict(rows, schema=table.schema), shard)
    with pytest.raises(ValueError, match="no concept after a2='male'"):  # 'female' is not the word 'male'
        SocialCounterfactualsDataset(root, "all", image_size=32)


def _rewrite_cells(shard, column: str, cells: dict[int, object]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(shard)
    values = table.column(column).to_pylist()
    for row, value in cells.items():
        values[row] = value
    index = table.schema.get_field_index(column)
    pq.write_table(table.set_column(index, column, pa.array(values, pa.string())), shard)


@pytest.mark.parametrize(
    ("reader", "column", "value"),
    [
        ("cmsc", "concept", ""),  # used to become a concept named ""
        ("cmsc", "counterfactual_set", " "),  # used to gather every such row into one set
        ("cmsc", "concept_group", None),  # used to ask for a question of group None
        ("scounter", "counterfactual_set", ""),
        ("scounter", "a1_type", None),  # used to fail with a bare TypeError
    ],
)
def test_counterfactual_readers_name_null_or_empty_label_cells(tmp_path, reader, column, value):
    if reader == "cmsc":
        root = make_cmsc(tmp_path / "CMSC", {"personality": ["pleasant", "unpleasant"]}, n_sets=2)
        read, what = (lambda: CMSCDataset(root, "all", image_size=32)), "CMSC"
    else:
        root = make_socialcounterfactuals(tmp_path / "sc", OCC, ["White", "Black"], ["male", "female"], 2)
        read, what = (lambda: SocialCounterfactualsDataset(root, "all", image_size=32)), "SocialCounterfactuals"
    size = len(read())
    _rewrite_cells(next((root / "data").glob("*.parquet")), column, {3: value, 5: value})
    with pytest.raises(
        ValueError, match=rf"{what} '.*': column '{column}' is null or empty in 2 rows \(first: \[3, 5\]"
    ):
        read()
    assert size > 5


def test_fairface_max_images_must_be_positive(tmp_path):
    """A negative cap used to be a negative slice bound, silently dropping the last images instead of keeping the first."""
    root = make_fairface(tmp_path / "ff", 4)
    assert len(FairFaceDataset(root, ["nurse"], ["occupation"], image_size=32, max_images=3)) == 3
    for bad in (-1, 0):
        with pytest.raises(ValueError, match=f"data.fairface_max_images={bad} must be a positive"):
            FairFaceDataset(root, ["nurse"], ["occupation"], image_size=32, max_images=bad)
        with pytest.raises(ValueError, match=f"data.fairface_max_images={bad} must be a positive"):
            DebiasDataModule(str(tmp_path / "d"), fairface_root=str(root), fairface_max_images=bad)


def test_cmsc_caption_mode_names_null_or_empty_captions_and_reads_non_ascii_ones(tmp_path):
    root = make_cmsc(tmp_path / "CMSC", {"personality": ["pleasant", "unpleasant"]}, n_sets=2)
    shard = next((root / "data").glob("*.parquet"))
    _rewrite_cells(shard, "caption", {1: "Un médecin 医生 👩‍⚕️"})
    ds = CMSCDataset(root, "all", image_size=32, instruction_mode="caption")
    assert ds[1]["answer"] == "Un médecin 医生 👩‍⚕️"
    _rewrite_cells(shard, "caption", {3: None, 5: ""})
    assert len(CMSCDataset(root, "all", image_size=32)) > 5  # concept_qa never reads the caption
    with pytest.raises(ValueError, match=r"CMSC \(data\.instruction_mode=caption\) '.*': column 'caption' is null or "
                       r"empty in 2 rows \(first: \[3, 5\]"):  # fmt: skip
        CMSCDataset(root, "all", image_size=32, instruction_mode="caption")
