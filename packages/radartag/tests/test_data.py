import json

import numpy as np
import pytest
import torch

from radartag.data import (
    KwaiTagDataModule,
    build_split_graph,
    dense_labels,
    load_split_graph,
    read_kwai_files,
    read_label_map,
)
from radartag.models import FOLLOWED_BY, HAS_TAG, SUBTOPIC, SUPERTOPIC
from radartag.synthetic import SyntheticKwaiConfig, stamp_path, write_synthetic_vertical

CFG = SyntheticKwaiConfig(num_users=20, num_parents=3, leaves_per_parent=4, follows=3, feature_dim=8, seed=1)


@pytest.fixture()
def root(tmp_path):
    return write_synthetic_vertical(tmp_path / "kwai", "v", CFG)


def test_files_and_node_order(root):
    files = read_kwai_files(root, "v")
    label_map = (root / "label_map_kwai_v.txt").read_text(encoding="utf-8").splitlines()
    assert files.tags[: len(label_map)] == label_map
    assert len(files.tags) == len(label_map) + 1  # one ontology parent absent from the label map
    assert any(t == "美妆_0" for t in files.tags)  # non-ASCII names survive
    lines = (root / "kwai_v_video_train_list.txt").read_text().splitlines()
    assert any(line.split("\t")[0].endswith(".mp4") for line in lines)
    assert any("." not in line.split("\t")[0] for line in lines)
    g = build_split_graph(root, "v", "val", files)
    n_train, n_val = len(files.videos["train"]), len(files.videos["val"])
    assert g["video"].num_nodes == n_train + n_val and g["video"].num_train == n_train
    assert g["video"].pid.tolist() == [p for p, _ in files.videos["train"]] + [p for p, _ in files.videos["val"]]
    assert g["tag"].num_nodes == len(files.tags) and g["tag"].x.shape == (len(files.tags), 8)
    np.testing.assert_allclose(
        g["video"].x[0].numpy(), np.load(root / "video_feat" / f"{files.videos['train'][0][0]}.npy")
    )


def test_edge_counts_per_split(root):
    files = read_kwai_files(root, "v")
    parents = json.loads((root / "tag_parents_v.json").read_text(encoding="utf-8"))
    n_parent_edges = sum(len(p) for p in parents.values())
    for split in ("train", "val", "test"):
        g = build_split_graph(root, "v", split, files)
        n_train = g["video"].num_train
        assert g[SUBTOPIC].edge_index.shape[1] == n_parent_edges
        assert torch.equal(g[SUPERTOPIC].edge_index, g[SUBTOPIC].edge_index.flip(0))
        assert g[HAS_TAG].edge_index.shape[1] == sum(len(t) for _, t in files.videos["train"])
        assert (g[HAS_TAG].edge_index[0] < n_train).all()  # evaluation videos have no has_tag edges
        present = set(g["video"].pid.tolist())
        expect = sum(1 for p, cs in files.children.items() if p in present for c in cs if c in present)
        assert g[FOLLOWED_BY].edge_index.shape[1] == expect  # children outside the split dropped
        assert 999_999 not in present


def test_dense_labels_and_cache(root):
    g = load_split_graph(root, "v", "test")
    assert (root / "cache" / "v_test.pt").is_file()
    again = load_split_graph(root, "v", "test")
    assert torch.equal(again[HAS_TAG].edge_index, g[HAS_TAG].edge_index)
    files = read_kwai_files(root, "v")
    n_train = g["video"].num_train
    vids = torch.tensor([0, n_train])  # a training and an evaluation video
    y = dense_labels(g, vids, g["tag"].num_nodes)
    assert y[0].nonzero().flatten().tolist() == sorted(files.videos["train"][0][1])
    assert y[1].nonzero().flatten().tolist() == sorted(files.videos["test"][0][1])


def test_missing_files_and_bad_lines(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset_root"):
        read_kwai_files(tmp_path / "nope", "v")
    (root / "video_children_v.json").unlink()
    with pytest.raises(FileNotFoundError, match="video_children_v.json"):
        read_kwai_files(root, "v")
    (root / "video_children_v.json").write_text("{}")
    path = root / "kwai_v_video_val_list.txt"
    path.write_text(path.read_text() + "abc\t1\n")
    with pytest.raises(ValueError, match="line"):
        read_kwai_files(root, "v")


def test_overlapping_eval_videos_rejected(root):
    train = (root / "kwai_v_video_train_list.txt").read_text().splitlines()
    path = root / "kwai_v_video_test_list.txt"
    path.write_text(path.read_text() + train[0] + "\n")
    with pytest.raises(ValueError, match="overlap"):
        read_kwai_files(root, "v")


def test_datamodule_batches(tmp_path):
    dm = KwaiTagDataModule(str(tmp_path / "gen"), "v", batch_size=8, eval_batch_size=16, fanout=2,
                           generate_demo_data=True, demo=CFG)  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_videos == 8 and batch.labels.shape == (8, dm.num_tags)
    assert batch.video_x.shape[0] >= 8 and len(batch.blocks) == 2
    val = next(iter(dm.val_dataloader()))
    assert val.labels.sum() > 0


def test_label_map_line_index_is_tag_id(root):
    """Only \\n, \\r\\n, \\r break lines (not \\u2028, \\x1c-\\x1e, \\x85 as str.splitlines would); a blank line is an
    error naming the file and line (it would shift every later tag id)."""
    path = root / "label_map_kwai_v.txt"
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    odd = ["眼影\u2028教程", "粉底\x1c液", "a\x85b"]
    path.write_bytes(("\r\n".join(lines[:2] + odd + lines[2:]) + "\r\n").encode("utf-8"))
    assert read_label_map(path) == lines[:2] + odd + lines[2:]
    path.write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"label_map_kwai_v\.txt' line 3 is blank"):
        read_kwai_files(root, "v")
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")  # a trailing blank line would be tag id len(lines)
    with pytest.raises(ValueError, match=f"line {len(lines) + 1} is blank"):
        read_kwai_files(root, "v")
    path.write_text("\n".join(lines), encoding="utf-8")  # no final line end
    assert read_kwai_files(root, "v").tags[: len(lines)] == lines


def test_duplicate_pid_in_a_list_rejected(root):
    path = root / "kwai_v_video_val_list.txt"
    lines = path.read_text().splitlines()
    pid = lines[0].split("\t")[0].split(".")[0]
    path.write_text("\n".join([*lines, f"{pid}\t0"]) + "\n")
    with pytest.raises(
        ValueError, match=rf"val_list\.txt'.*pid {pid} is listed twice \(lines 1 and {len(lines) + 1}\)"
    ):
        read_kwai_files(root, "v")


def test_video_children_key_with_extension_named(root):
    path = root / "video_children_v.json"
    children = json.loads(path.read_text())
    key = next(iter(children))
    children[f"{key}.mp4"] = children.pop(key)
    path.write_text(json.dumps(children))
    with pytest.raises(ValueError, match=rf"video_children_v\.json'.*key '{key}\.mp4'"):
        read_kwai_files(root, "v")


def test_generator_rejects_more_follows_than_users(tmp_path):
    with pytest.raises(ValueError, match=r"data\.demo\.follows=6 needs data\.demo\.num_users > 6"):
        write_synthetic_vertical(tmp_path / "k", "v", SyntheticKwaiConfig(num_users=6, follows=6))


def test_json_values_that_are_not_lists_named(root):
    """A follow child list or a parent list written as a bare string would be read digit by digit / character by
    character (children [1, 0, 6, …], parent tags '美', '妆', …); both are errors naming the file and key."""
    path = root / "video_children_v.json"
    children = json.loads(path.read_text())
    key = next(iter(children))
    children[key] = str(children[key][0])
    path.write_text(json.dumps(children))
    with pytest.raises(ValueError, match=rf"video_children_v\.json'.*key '{key}' -> '\d+'.*list of integer child pids"):
        read_kwai_files(root, "v")
    path.write_text("{}")
    path = root / "tag_parents_v.json"
    parents = json.loads(path.read_text(encoding="utf-8"))
    child = next(iter(parents))
    parents[child] = parents[child][0]
    path.write_text(json.dumps(parents, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"tag_parents_v\.json'.*key '{child}'.*list of parent tag names"):
        read_kwai_files(root, "v")


def test_feature_of_another_width_named(root):
    """Every feature file must hold one vector of the first file's width; the error names the odd file."""
    files = read_kwai_files(root, "v")
    pid = files.videos["train"][1][0]
    np.save(root / "video_feat" / f"{pid}.npy", np.zeros((2, 8), np.float32))  # 16 values, not 8
    with pytest.raises(ValueError, match=rf"video_feat/{pid}\.npy' holds 16 values.*holds 8"):
        build_split_graph(root, "v", "train", files)
    np.save(root / "video_feat" / f"{pid}.npy", np.zeros(8, np.float32))
    np.save(root / "tag_feat_bert" / f"{files.tags[-1]}.npy", np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=rf"tag_feat_bert/{files.tags[-1]}\.npy' holds 5 values"):
        build_split_graph(root, "v", "train", files)


def test_cached_graph_is_rebuilt_when_its_files_change(root):
    """A rewritten ontology (e.g. by build-ontology) must not be served from a stale cache; unchanged files are."""
    import json
    import os

    g = load_split_graph(root, "v", "train")
    cache = root / "cache" / "v_train.pt"
    built = cache.stat().st_mtime_ns
    load_split_graph(root, "v", "train")
    assert cache.stat().st_mtime_ns == built  # served from the cache, not rewritten
    parents = root / "tag_parents_v.json"
    ontology = json.loads(parents.read_text(encoding="utf-8"))
    child = next(c for c, ps in ontology.items() if ps)
    dropped = len(ontology[child])
    ontology[child] = []
    parents.write_text(json.dumps(ontology), encoding="utf-8")
    st = parents.stat()
    os.utime(parents, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later write, even on a coarse clock
    again = load_split_graph(root, "v", "train")
    assert again[SUBTOPIC].edge_index.shape[1] == g[SUBTOPIC].edge_index.shape[1] - dropped


def test_a_cached_graph_cut_short_is_rebuilt_with_a_warning(root, caplog):
    g = load_split_graph(root, "v", "train")
    cache = root / "cache" / "v_train.pt"
    whole = cache.read_bytes()
    for damaged in (whole[: len(whole) // 2], b"", b"not a torch file"):
        cache.write_bytes(damaged)
        with caplog.at_level("WARNING"):
            again = load_split_graph(root, "v", "train")
        assert "v_train.pt: it cannot be read" in caplog.text
        caplog.clear()
        torch.testing.assert_close(again["video"].x, g["video"].x)
        assert torch.equal(again[HAS_TAG].edge_index, g[HAS_TAG].edge_index)
        assert torch.load(cache, weights_only=False)["graph"]["video"].x.shape == g["video"].x.shape  # whole again
    assert sorted(p.name for p in cache.parent.iterdir()) == ["v_train.pt"]  # no temporary left beside it


def test_a_graph_build_that_fails_writes_no_cache(root, monkeypatch):
    import radartag.data as data

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data.torch, "save", lambda obj, f: (open(f, "wb").write(b"half"), interrupted()))
    with pytest.raises(KeyboardInterrupt):
        load_split_graph(root, "v", "train")
    assert not (root / "cache" / "v_train.pt").exists()
    assert list((root / "cache").iterdir()) == []


def test_demo_vertical_is_rewritten_when_its_settings_change_and_the_graph_follows(tmp_path, caplog):
    root = tmp_path / "gen"

    def load(cfg):
        dm = KwaiTagDataModule(str(root), "v", generate_demo_data=True, demo=cfg)
        dm.prepare_data()
        return load_split_graph(root, "v", "train")

    first = load(CFG)
    label_map = root / "label_map_kwai_v.txt"
    written = label_map.stat().st_mtime_ns
    torch.testing.assert_close(load(CFG)["video"].x, first["video"].x)
    assert label_map.stat().st_mtime_ns == written  # same settings: the copy is reused, not written again
    noisier = SyntheticKwaiConfig(**{**CFG.__dict__, "noise": CFG.noise * 3})
    second = load(noisier)  # only the features change; the lists are the same draws
    assert label_map.read_text() and label_map.stat().st_mtime_ns != written
    assert not torch.allclose(second["video"].x, first["video"].x)
    expected = torch.stack(
        [torch.from_numpy(np.load(root / "video_feat" / f"{p}.npy")) for p in second["video"].pid.tolist()]
    )
    torch.testing.assert_close(second["video"].x, expected)  # the cached graph was rebuilt from the new files
    # a vertical without the stamp is the user's: left as it is, with a warning
    stamp_path(root, "v").unlink()
    with caplog.at_level("WARNING"):
        torch.testing.assert_close(load(CFG)["video"].x, second["video"].x)
    assert "without the synthetic generator's stamp" in caplog.text


def test_list_line_with_space_separated_tags_rejected(root):
    """'<pid>.mp4 3 5' (spaces, not tabs) would parse as pid <pid> with no tags: the video's labels would be lost
    without a word. The reader names the file and line instead; tab-separated lines still read as before."""
    path = root / "kwai_v_video_train_list.txt"
    lines = path.read_text().splitlines()
    pid, *tags = lines[0].split("\t")
    assert tags, "the generator gives every video at least one tag"
    before = read_kwai_files(root, "v").videos["train"][0]
    assert before == (int(pid.split(".")[0]), [int(t) for t in tags])
    lines[0] = " ".join([f"{pid.split('.')[0]}.mp4", *tags])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"train_list\.txt' line 1: expected '<pid>\.mp4<TAB><tag_id>…'"):
        read_kwai_files(root, "v")


def test_video_children_values_that_are_not_integer_pids_named(root):
    """int() would truncate 10601.7 to pid 10601 and read true as pid 1 (edges to videos the file never named)."""
    path = root / "video_children_v.json"
    children = json.loads(path.read_text())
    key = next(iter(children))
    for bad in (float(children[key][0]) + 0.5, True):
        path.write_text(json.dumps({**children, key: [*children[key], bad]}))
        with pytest.raises(ValueError, match=rf"video_children_v\.json'.*key '{key}'.*list of integer child pids"):
            read_kwai_files(root, "v")
    path.write_text(json.dumps({**children, key: [str(c) for c in children[key]]}))  # digit strings stay accepted
    assert read_kwai_files(root, "v").children[int(key)] == children[key]


def test_tag_named_twice_in_the_label_map_rejected(root):
    """A name on two lines would silently map to its later id (the ontology and the feature files see one tag);
    the error names the file and both lines, also when the names differ only by surrounding white space."""
    path = root / "label_map_kwai_v.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    for repeat in (lines[1], f"  {lines[1]} "):
        path.write_text("\n".join([*lines, repeat]) + "\n", encoding="utf-8")
        with pytest.raises(ValueError, match=rf"label_map_kwai_v\.txt': tag '{lines[1]}' is named on lines 2 and "
                                             rf"{len(lines) + 1}"):  # fmt: skip
            read_kwai_files(root, "v")


def test_tag_id_repeated_on_a_list_line_rejected(root):
    """'<pid>\\t3\\t3' would give the video two identical has_tag edges, which the sampler could draw twice."""
    path = root / "kwai_v_video_train_list.txt"
    lines = path.read_text().splitlines()
    tag = lines[2].split("\t")[1]
    lines[2] += f"\t{tag}"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"train_list\.txt' line 3: tag id {tag} is listed more than once"):
        read_kwai_files(root, "v")


def test_ontology_names_are_stripped_like_the_label_map(root):
    """'x ' in tag_parents names the label-map tag 'x' (both files strip names), not a new extra tag node; keys that
    collide once stripped, a parent listed twice and a blank name are errors naming the file and key."""
    path = root / "tag_parents_v.json"
    ontology = json.loads(path.read_text(encoding="utf-8"))
    before = read_kwai_files(root, "v")
    child, parent = "leaf_1_2", "美妆_0"  # a label-map leaf and a label-map parent it does not have yet
    assert parent not in ontology[child]
    padded = {(f" {k}\t" if k == child else k): v for k, v in ontology.items()}
    padded[f" {child}\t"] = [*ontology[child], f"{parent} "]
    path.write_text(json.dumps(padded, ensure_ascii=False), encoding="utf-8")
    files = read_kwai_files(root, "v")
    assert files.tags == before.tags  # no extra tag node for the padded names
    ids = {t: i for i, t in enumerate(files.tags)}
    assert sorted(files.parent_edges) == sorted([*before.parent_edges, (ids[child], ids[parent])])
    cases = [
        ({**ontology, f"{child} ": ["parent_2"]}, rf"keys '{child}' and '{child} ' name the same tag '{child}'"),
        ({**ontology, child: [*ontology[child], f" {ontology[child][0]}"]},
         rf"key '{child}' lists the parent '{ontology[child][0]}' more than once"),
        ({**ontology, child: [" "]}, rf"key '{child}' -> \[' '\]: a tag name is blank"),
    ]  # fmt: skip
    for bad, pattern in cases:
        path.write_text(json.dumps(bad, ensure_ascii=False), encoding="utf-8")
        with pytest.raises(ValueError, match=rf"tag_parents_v\.json': {pattern}"):
            read_kwai_files(root, "v")


def test_ontology_self_link_and_cycles_rejected(root):
    """Sub-topic links form a DAG (spec §3.8): a tag that is its own parent, or links that lead back to where they
    started, are errors naming the file, the tags and the lines of their keys; a DAG with shared ancestors passes."""
    path = root / "tag_parents_v.json"
    ontology = json.loads(path.read_text(encoding="utf-8"))
    before = read_kwai_files(root, "v")

    def write(value):  # one key per line: the key of entry i is on line i + 2
        rows = [f"{json.dumps(k, ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False)}" for k, v in value.items()]
        path.write_text("{\n" + ",\n".join(rows) + "\n}\n", encoding="utf-8")
        return {k: i + 2 for i, k in enumerate(value)}

    line = write({**ontology, "leaf_1_2": [*ontology["leaf_1_2"], " leaf_1_2"]})  # the same tag once stripped
    with pytest.raises(ValueError, match=rf"tag_parents_v\.json': key 'leaf_1_2' on line {line['leaf_1_2']} lists the "
                                         r"tag 'leaf_1_2' as its own parent"):  # fmt: skip
        read_kwai_files(root, "v")
    # a two-link cycle through a label-map parent, and a three-link one through the extra ontology-only tag; the
    # message may start the cycle at any of its tags
    extra = ontology["leaf_2_0"][0]
    assert extra not in before.tags[: before.num_label_map_tags]
    for added, cycle in (
        ({"parent_1": ["leaf_1_0"]}, ["leaf_1_0", "parent_1"]),
        ({"parent_1": [extra], extra: ["leaf_1_3"]}, ["leaf_1_3", "parent_1", extra]),
    ):
        line = write({**ontology, **added})
        with pytest.raises(ValueError, match=r"tag_parents_v\.json': the sub-topic links form a cycle ") as err:
            read_kwai_files(root, "v")
        messages = []
        for i in range(len(cycle)):
            tags = cycle[i:] + cycle[:i]
            chain = " -> ".join(f"'{t}'" for t in [*tags, tags[0]])
            keys = ", ".join(f"'{t}' on line {line[t]}" for t in tags)
            messages.append(f"cycle {chain} (keys {keys}); the tag ontology must be acyclic")
        assert any(m in str(err.value) for m in messages), (str(err.value), messages)
    write({**ontology, "美妆_0": ["parent_1"], "parent_1": [extra]})  # a deeper chain with shared ancestors
    files = read_kwai_files(root, "v")
    assert len(files.parent_edges) == len(before.parent_edges) + 2


def test_empty_split_lists_named(tmp_path):
    """An evaluation list without videos is an error naming the file when the stage that evaluates it is set up
    (Lightning would skip the loop, so the checkpoint monitor would never see a metric); a loop switched off
    (limit 0) or a stage that does not read it passes. An empty training list is named when the files are read."""
    from types import SimpleNamespace

    dm = KwaiTagDataModule(str(tmp_path / "gen"), "v", generate_demo_data=True, demo=CFG)
    dm.prepare_data()
    val = tmp_path / "gen" / "kwai_v_video_val_list.txt"
    val.write_text("")
    for stage in ("fit", "validate"):
        with pytest.raises(ValueError, match=r"kwai_v_video_val_list\.txt' lists no videos, so the val split has "
                                             r"nothing to evaluate.*trainer\.limit_val_batches=0"):  # fmt: skip
            KwaiTagDataModule(str(tmp_path / "gen"), "v", force_reload=True).setup(stage)
    dm = KwaiTagDataModule(str(tmp_path / "gen"), "v", force_reload=True)
    dm.setup("test")  # the test list has videos
    assert len(dm.test_dataloader().dataset) == len(read_kwai_files(tmp_path / "gen", "v").videos["test"]) > 0
    with pytest.raises(ValueError, match=r"kwai_v_video_val_list\.txt' lists no videos"):
        dm.val_dataloader()
    dm.trainer = SimpleNamespace(limit_val_batches=0)
    dm.setup("fit")  # validation switched off
    train = tmp_path / "gen" / "kwai_v_video_train_list.txt"
    train.write_text("")
    with pytest.raises(ValueError, match=r"kwai_v_video_train_list\.txt' lists no videos"):
        read_kwai_files(tmp_path / "gen", "v")


def test_demo_generator_refuses_settings_it_could_not_finish(tmp_path):
    """homophily 1 draws every followee among users sharing a favourite: with fewer of them than `follows` the draw
    looped forever; imitation with no followee failed inside numpy's choice."""
    tiny = dict(num_users=6, favourites=1, num_parents=3, leaves_per_parent=4, feature_dim=4, follows=3)
    with pytest.raises(ValueError, match=r"data\.demo\.homophily=1\.0: user \d+ shares a favourite tag with only"):
        write_synthetic_vertical(tmp_path, "movie", SyntheticKwaiConfig(**tiny, homophily=1.0))
    with pytest.raises(ValueError, match=r"data\.demo\.imitation=0\.6 needs data\.demo\.follows >= 1"):
        SyntheticKwaiConfig(**{**tiny, "follows": 0})
    write_synthetic_vertical(tmp_path / "ok", "movie", SyntheticKwaiConfig(**tiny, homophily=0.99))


def test_follow_file_with_a_repeated_child_or_two_keys_for_one_pid_is_refused(root):
    path = root / "video_children_v.json"
    children = json.loads(path.read_text(encoding="utf-8"))
    key = next(k for k, v in children.items() if v)
    bad = {**children, key: children[key] + children[key][:1]}
    path.write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(
        ValueError, match=rf"video_children_v.json.*key '{key}'.*child pid {children[key][0]} more than once"
    ):
        read_kwai_files(root, "v")
    bad = {**children, "0" + key: [children[key][0]]}
    path.write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"keys '{key}' and '0{key}' name the same pid {key}"):
        read_kwai_files(root, "v")
