import json

import pytest
import torch

from snps3.cli import main
from snps3.data import collate

TASKS = {"pretrain": "webvid", "retrieval": "msrvtt_7k", "qa": "msrvtt_qa", "mc": "msrvtt_mc"}


@pytest.mark.parametrize("task", list(TASKS))
def test_predict_writes_one_row_per_item(task, synthetic_root, tmp_path):
    out = tmp_path / "p.jsonl"
    cli = main(
        ["predict", "--config", "tiny", "--data.data_root", str(synthetic_root), "--data.dataset", TASKS[task],
         "--model.task", task, "--data.num_answers", "18", "--data.eval_batch_size", "2",
         "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
         "--predictions.path", str(out)]
    )  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ds = cli.datamodule.datasets["test"]
    assert len(rows) == len(ds) >= 4
    assert sorted(r["item_index"] for r in rows) == list(range(len(ds)))
    assert not any(r["unreadable"] for r in rows)
    model = cli.model.eval()
    has_arrays = task in ("pretrain", "retrieval")  # qa and mc write no tensor file
    assert out.with_suffix(".pt").exists() == has_arrays
    arrays = torch.load(out.with_suffix(".pt"), weights_only=True) if has_arrays else {}
    with torch.no_grad():
        for n, row in enumerate(rows):
            i = row["item_index"]
            batch = collate([ds[i]])
            if task == "qa":
                assert row["question"] == ds.rows[i]["caption"] and row["clip_name"] == ds.rows[i]["clip_name"]
                assert row["answer_index"] == int(model.qa_forward(batch).argmax(-1))
                answers = json.loads((synthetic_root / "msrvtt_qa_antmmf" / "answers.json").read_text())
                assert row["answer"] == answers[row["answer_index"]]
                continue
            if task == "mc":
                assert row["qid"] == ds.rows[i]["qid"] and row["clip_name"] == ds.rows[i]["clip_name"]
                assert row["option_index"] == int(model.mc_scores(batch).argmax(-1))
                assert row["option"] == ds.rows[i]["options"][row["option_index"]]
                continue
            clips = model.model.clip_embed(model.model.encode_visual(batch["frames"]))[0]
            texts = model.model.text_embed(model.model.encode_text(batch["input_ids"], batch["attention_mask"]))
            assert torch.allclose(arrays["clip_embed"][n], clips, atol=1e-5)
            if task == "retrieval":
                assert row["clip_name"] == ds.videos[i] and row["text_index"] == ds.lines_by_video[ds.videos[i]]
                assert row["captions"] == [ds.rows[t]["caption"] for t in row["text_index"]]
                k = len(row["text_index"])
                assert torch.allclose(arrays["text_embed"][n, :k], texts, atol=1e-5)
                assert arrays["text_embed"][n, k:].isnan().all()
            else:
                assert row["text_index"] in ds.group_lines[i] and row["clip_name"] == ds.groups[i][0][0]
                assert row["caption"] == ds.rows[row["text_index"]]["caption"]
                assert torch.allclose(arrays["text_embed"][n], texts[0], atol=1e-5)
    if task == "retrieval":  # one video has two caption lines: the others are padded to two
        assert arrays["text_embed"].shape[:2] == (len(ds), 2)
