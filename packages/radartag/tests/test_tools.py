import json

import pytest

from radartag.cli import main
from radartag.data import read_kwai_files
from radartag.synthetic import SyntheticKwaiConfig, write_synthetic_vertical
from radartag.tools import _break_cycles


def test_build_ontology_writes_official_json(tmp_path):
    root = write_synthetic_vertical(tmp_path / "k", "v", SyntheticKwaiConfig(num_users=40, num_parents=3,
                                                                             leaves_per_parent=3, feature_dim=8))  # fmt: skip
    # videos of the synthetic vertical carry leaves only; add parent tags so that child/parent pairs co-occur
    files = read_kwai_files(root, "v")
    parent_of = {}
    for child, ps in json.loads((root / "tag_parents_v.json").read_text(encoding="utf-8")).items():
        parent_of[files.tags.index(child)] = files.tags.index(ps[0])
    lines = []
    for pid, tags in files.videos["train"]:
        tags = sorted(set(tags) | {parent_of[t] for t in tags if parent_of.get(t, 99) < files.num_label_map_tags})
        lines.append(f"{pid}.mp4\t" + "\t".join(map(str, tags)))
    (root / "kwai_v_video_train_list.txt").write_text("\n".join(lines) + "\n")
    names = files.tags
    labelled = [[names[c], names[p], 1] for c, p in list(parent_of.items())[:4] if p < files.num_label_map_tags]
    labelled += [[names[p], names[c], 0] for c, p in list(parent_of.items())[:4] if p < files.num_label_map_tags]
    (tmp_path / "pairs.json").write_text(json.dumps(labelled, ensure_ascii=False))
    out = main(args=["build-ontology", "--dataset_root", str(root), "--vertical", "v", "--labelled_pairs",
                     str(tmp_path / "pairs.json"), "--out", str(tmp_path / "onto.json")])  # fmt: skip
    onto = json.loads(out.read_text(encoding="utf-8"))
    assert isinstance(onto, dict) and all(isinstance(v, list) for v in onto.values())
    found = {(c, p) for c, ps in onto.items() for p in ps}
    assert found and all(c in names and p in names for c, p in found)


def test_break_cycles_drops_weakest_edge():
    edges = {(0, 1): 0.9, (1, 2): 0.6, (2, 0): 0.8, (2, 3): 0.7}
    assert _break_cycles(edges) == {(0, 1): 0.9, (2, 0): 0.8, (2, 3): 0.7}


def test_extract_features_needs_something(tmp_path):
    with pytest.raises(ValueError, match="nothing to do"):
        main(args=["extract-features", "--dataset_root", str(tmp_path), "--vertical", "v"])


def test_tools_reject_blank_label_map_line(tmp_path):
    """Both tools read the label map like the loader: a blank line (it would shift later tag ids) is an error."""
    root = write_synthetic_vertical(tmp_path / "k", "v", SyntheticKwaiConfig(num_users=6, num_parents=2, follows=2,
                                                                            leaves_per_parent=2, feature_dim=8))  # fmt: skip
    path = root / "label_map_kwai_v.txt"
    lines = path.read_text(encoding="utf-8").split("\n")
    path.write_text("\n".join([lines[0], "", *lines[1:]]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"label_map_kwai_v\.txt' line 2 is blank"):
        main(args=["extract-features", "--dataset_root", str(root), "--vertical", "v", "--text_encoder",
                   str(tmp_path / "no_model")])  # fmt: skip
    (tmp_path / "pairs.json").write_text("[]")
    with pytest.raises(ValueError, match=r"label_map_kwai_v\.txt' line 2 is blank"):
        main(args=["build-ontology", "--dataset_root", str(root), "--vertical", "v", "--labelled_pairs",
                   str(tmp_path / "pairs.json"), "--out", str(tmp_path / "onto.json")])  # fmt: skip


def test_build_ontology_bad_input_named(tmp_path):
    """The builder reads the training list with the loader's checks (a tag id outside the label map used to end in an
    IndexError deep in the co-occurrence count) and names a malformed labelled pair."""
    root = write_synthetic_vertical(tmp_path / "k", "v", SyntheticKwaiConfig(num_users=8, num_parents=2,
                                                                            leaves_per_parent=2, feature_dim=8))  # fmt: skip
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([["leaf_0_0", "leaf_0_1"]]))
    args = ["build-ontology", "--dataset_root", str(root), "--vertical", "v", "--labelled_pairs", str(pairs)]
    with pytest.raises(ValueError, match=r"pairs\.json'.*entry \['leaf_0_0', 'leaf_0_1'\] is not \[child"):
        main(args=args)
    path = root / "kwai_v_video_train_list.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, "555.mp4\t99"]) + "\n")
    with pytest.raises(ValueError, match=rf"train_list\.txt' line {len(lines) + 1}: tag id outside the label map"):
        main(args=args)


def test_build_ontology_command_exposes_every_reconstruction_setting(monkeypatch, tmp_path):
    """The builder is a reconstruction (spec §3.8), so each of its settings is an option of the command too:
    threshold, self-training rounds and the self-training confidence reach build_ontology."""
    import radartag.tools

    seen = {}

    def record(*args):
        seen["args"] = args
        return tmp_path / "onto.json"

    monkeypatch.setattr(radartag.tools, "build_ontology", record)
    main(args=["build-ontology", "--dataset_root", str(tmp_path), "--vertical", "v", "--labelled_pairs", "p.json",
               "--threshold", "0.6", "--self_training_rounds", "2", "--confidence", "0.9"])  # fmt: skip
    assert seen["args"] == (str(tmp_path), "v", "p.json", None, 0.6, 2, 0.9)
