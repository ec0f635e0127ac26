import json

from asdmllm.cli import main


def test_predict_writes_one_row_per_test_image(tmp_path):
    out = tmp_path / "p.jsonl"
    cli = main(
        args=["predict", "--config", "tiny", "--data.data_root", str(tmp_path / "data"), "--data.eval_batch_size", "8",
              "--trainer.default_root_dir", str(tmp_path), "--predictions.path", str(out)]
    )  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ds = cli.trainer.predict_dataloaders.dataset  # the test split of the generated SocialCounterfactuals data
    assert len(rows) == len(ds) > 8
    assert sorted(r["index"] for r in rows) == list(range(len(ds)))
    assert len({r["source_row"] for r in rows}) == len(ds)
    for row in rows:  # the identity matches the parquet row the item reads
        i = row["index"]
        source = ds._table[row["source_row"]]
        assert row["source_row"] == ds._rows[i] and row["counterfactual_set"] == source["counterfactual_set"]
        attrs = row["attributes"]
        assert source["caption"] == f"A photo of a {attrs['race']} {attrs['gender']} {row['concept']}"
        item = ds[i]
        assert row["reference"] == item["answer"] == row["concept"] and row["instruction"] == item["instruction"]
    assert len({r["answer"] for r in rows}) > 1  # the tiny random model answers differently for different images
    model = cli.model.eval()
    for row in rows[:3] + rows[-2:]:  # the greedy answer of the model for that image and instruction
        item = ds[row["index"]]
        assert row["answer"] == model.mllm.generate_answers(item["image"][None], [item["instruction"]])[0]
