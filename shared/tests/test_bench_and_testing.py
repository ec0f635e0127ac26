import json

import pytest
import torch

from mmzoo.bench import emit, measure, pick_device
from mmzoo.testing import load_script, moving_shapes_video, random_captions, repeated_index_reads


def test_measure_and_emit(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MMZOO_BENCH_SMOKE", raising=False)
    calls = []
    rec = measure(lambda: calls.append(1), items_per_call=4, device=torch.device("cpu"), warmup=2, iters=5)
    assert len(calls) == 7
    assert rec["device"] == "cpu" and rec["samples_per_s"] > 0 and rec["peak_mem_mb"] > 0
    monkeypatch.setenv("MMZOO_BENCH_OUT", str(tmp_path))
    emit({"bench": "x", **rec})
    line = json.loads(capsys.readouterr().out.strip())
    assert line["bench"] == "x"
    assert json.loads((tmp_path / "cpu.jsonl").read_text())["step_ms"] == rec["step_ms"]
    assert pick_device("cpu").type == "cpu"
    assert "smoke" not in rec


def test_measure_reports_the_median_of_an_even_number_of_calls(monkeypatch):
    import mmzoo.bench as bench

    monkeypatch.delenv("MMZOO_BENCH_SMOKE", raising=False)
    durations = iter([0.001, 0.004, 0.002, 0.010])  # seconds per timed call; the median is 3 ms
    clock = [0.0]

    def perf_counter():
        return clock[0]

    def step():
        clock[0] += next(durations)

    monkeypatch.setattr(bench.time, "perf_counter", perf_counter)
    rec = measure(step, items_per_call=6, device=torch.device("cpu"), warmup=0, iters=4)
    assert rec["step_ms"] == pytest.approx(3.0) and rec["samples_per_s"] == pytest.approx(2000.0)


def test_measure_smoke_mode_calls_once_and_says_so(monkeypatch):
    monkeypatch.setenv("MMZOO_BENCH_SMOKE", "1")
    calls = []
    rec = measure(lambda: calls.append(1), items_per_call=4, device=torch.device("cpu"), warmup=3, iters=10)
    assert len(calls) == 1 and rec["iters"] == 1 and rec["smoke"] is True
    monkeypatch.setenv("MMZOO_BENCH_SMOKE", "0")  # "0" switches it off
    assert "smoke" not in measure(lambda: None, items_per_call=1, device=torch.device("cpu"), warmup=0, iters=2)


def test_synthetic_inputs_are_deterministic():
    assert random_captions(3, seed=1) == random_captions(3, seed=1)
    assert random_captions(3, seed=1) != random_captions(3, seed=2)
    a, b = moving_shapes_video(4, seed=0), moving_shapes_video(4, seed=0)
    assert a.shape == (4, 3, 64, 64) and torch.equal(a, b)
    assert not torch.equal(a[0], a[-1])  # the shapes move


def test_run_in_triton_interpreter_sets_the_flag_and_reports_failures(tmp_path):
    from mmzoo.testing import run_in_triton_interpreter

    checks = tmp_path / "my_checks.py"
    checks.write_text("import os\n\ndef flag():\n    return os.environ.get('TRITON_INTERPRET')\n")
    assert run_in_triton_interpreter(checks, "print(my_checks.flag())", timeout=120).strip() == "1"
    with pytest.raises(AssertionError, match=r"my_checks\.py.*TRITON_INTERPRET=1[\s\S]*ZeroDivisionError"):
        run_in_triton_interpreter(checks, "1 / 0", timeout=120)


def test_load_script_imports_by_path(tmp_path):
    script = tmp_path / "pkg" / "repro.py"
    script.parent.mkdir()
    script.write_text("VALUE = 41\n\ndef bump(x):\n    return x + 1\n")
    module = load_script(script)
    assert module.__name__ == "pkg_repro" and module.bump(module.VALUE) == 42
    assert load_script(script, "other").__name__ == "other"
    with pytest.raises(FileNotFoundError, match="nothere.py"):
        load_script(tmp_path / "nothere.py")


def test_repeated_index_reads_flags_only_reads_whose_backward_accumulates():
    w = torch.randn(5, 3, requires_grad=True)
    twice, once = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2])
    with repeated_index_reads() as hits:
        w[twice]  # row 1 twice
        w[:, torch.tensor([2, 2])]  # column 2 twice
        w[twice, torch.tensor([0, 1, 2])]  # pairs (0,0) (1,1) (1,2): each element once
        w[once]
        w[torch.tensor([True, False, True, False, True])]
        w.detach()[twice]  # no gradient
        w.index_select(0, twice)  # sums its backward in a fixed order
        with torch.no_grad():
            w[twice]
    assert len(hits) == 2
    assert "w[twice]  # row 1 twice" in hits[0] and "column 2 twice" in hits[1]
    assert hits[0].startswith(__file__)
    with repeated_index_reads() as hits:  # the mode ends with the block
        pass
    w[twice]
    assert hits == []
    # the reason for the check: the accumulating backward of w[twice] and index_select's agree in value
    g = torch.randn(3, 3)
    (a,) = torch.autograd.grad(w[twice], w, g)
    (b,) = torch.autograd.grad(w.index_select(0, twice), w, g)
    torch.testing.assert_close(a, b)


def test_first_step_probe_records_the_training_state_and_stops():
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from mmzoo.testing import FirstStepProbe

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.body, self.frozen, self.drop = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1), torch.nn.Dropout(0.5)
            self.frozen.requires_grad_(False)
            self.drop.eval()  # left in eval mode, as a module loaded with from_pretrained would be

        def training_step(self, batch, batch_idx):
            return self.body(self.drop(batch[0])).sum() + self.frozen(batch[0]).sum().detach()

        def configure_optimizers(self):
            return torch.optim.SGD([{"params": [self.body.weight], "weight_decay": 0.1}, {"params": [self.body.bias]}])

    class Probe(FirstStepProbe):
        def extra(self, trainer, module):
            return {"weight": module.body.weight.detach().clone()}

        def after_step(self, trainer, module):
            return {"weight_after": module.body.weight.detach().clone()}

    probe = Probe()
    data = DataLoader(TensorDataset(torch.ones(8, 2)), batch_size=2)
    trainer = pl.Trainer(max_epochs=2, callbacks=[probe], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")  # fmt: skip
    module = Tiny()
    trainer.fit(module, data)
    seen = probe.seen
    assert trainer.global_step == 1  # one batch trained, then stopped
    assert seen["not_training"] == ["drop"] and seen["frozen"] == ["frozen.weight", "frozen.bias"]
    assert [(lr, wd, ids) for lr, wd, ids in seen["groups"]] == [
        (pytest.approx(1e-3), 0.1, [id(module.body.weight)]),
        (pytest.approx(1e-3), 0, [id(module.body.bias)]),
    ]
    assert seen["trainable"] == {id(module.body.weight), id(module.body.bias)} and seen["total"] == 8
    assert not seen["sanity_checking"] and not torch.equal(seen["weight"], seen["weight_after"])
