"""Loading teachers saved exactly as RepDistiller's ``train_teacher.py`` saves them (spec §4.2).

The state_dict keys and shapes below are written out from RepDistiller's module definitions
(``models/resnet.py``: ResNet/BasicBlock, ``models/wrn.py``: WideResNet/NetworkBlock/BasicBlock), not from this
package's networks, so a renamed module in pckd breaks these tests. The checkpoint dict has the keys RepDistiller's
periodic save writes (``epoch``, ``model``, ``accuracy``, ``optimizer``); its final ``<arch>_last.pth`` has
``opt`` (an argparse Namespace), ``model`` and ``optimizer``.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict

import pytest
import torch

from pckd.models import PCKDConfig
from pckd.module import PCKDModule


def _bn(sd: OrderedDict, name: str, c: int) -> None:
    sd[f"{name}.weight"] = torch.rand(c)
    sd[f"{name}.bias"] = torch.randn(c)
    sd[f"{name}.running_mean"] = torch.randn(c)
    sd[f"{name}.running_var"] = torch.rand(c) + 0.5
    sd[f"{name}.num_batches_tracked"] = torch.tensor(1000)


def repdistiller_resnet_state(depth: int, filters: tuple[int, int, int, int], num_classes: int) -> OrderedDict:
    """Keys of RepDistiller ``ResNet(depth, filters, 'basicblock')``: conv1, bn1, layer{1,2,3}.{j}.{conv1,bn1,conv2,
    bn2,downsample.0,downsample.1}, fc (downsample where stride 2 or the width changes)."""
    n = (depth - 2) // 6
    sd: OrderedDict = OrderedDict()
    sd["conv1.weight"] = torch.randn(filters[0], 3, 3, 3)
    _bn(sd, "bn1", filters[0])
    inplanes = filters[0]
    for stage, planes in enumerate(filters[1:], start=1):
        stride = 1 if stage == 1 else 2
        for j in range(n):
            p = f"layer{stage}.{j}"
            cin = inplanes if j == 0 else planes
            sd[f"{p}.conv1.weight"] = torch.randn(planes, cin, 3, 3)
            _bn(sd, f"{p}.bn1", planes)
            sd[f"{p}.conv2.weight"] = torch.randn(planes, planes, 3, 3)
            _bn(sd, f"{p}.bn2", planes)
            if j == 0 and (stride != 1 or inplanes != planes):
                sd[f"{p}.downsample.0.weight"] = torch.randn(planes, inplanes, 1, 1)
                _bn(sd, f"{p}.downsample.1", planes)
        inplanes = planes
    sd["fc.weight"] = torch.randn(num_classes, filters[3])
    sd["fc.bias"] = torch.randn(num_classes)
    return sd


def repdistiller_wrn_state(depth: int, widen: int, num_classes: int) -> OrderedDict:
    """Keys of RepDistiller ``WideResNet(depth, num_classes, widen)``: conv1, block{1,2,3}.layer.{j}.{bn1,conv1,bn2,
    conv2,convShortcut}, bn1, fc (convShortcut only where in_planes != out_planes)."""
    n = (depth - 4) // 6
    ch = [16, 16 * widen, 32 * widen, 64 * widen]
    sd: OrderedDict = OrderedDict()
    sd["conv1.weight"] = torch.randn(ch[0], 3, 3, 3)
    for stage in (1, 2, 3):
        for j in range(n):
            p = f"block{stage}.layer.{j}"
            cin, cout = (ch[stage - 1] if j == 0 else ch[stage]), ch[stage]
            _bn(sd, f"{p}.bn1", cin)
            sd[f"{p}.conv1.weight"] = torch.randn(cout, cin, 3, 3)
            _bn(sd, f"{p}.bn2", cout)
            sd[f"{p}.conv2.weight"] = torch.randn(cout, cout, 3, 3)
            if cin != cout:
                sd[f"{p}.convShortcut.weight"] = torch.randn(cout, cin, 1, 1)
    _bn(sd, "bn1", ch[3])
    sd["fc.weight"] = torch.randn(num_classes, ch[3])
    sd["fc.bias"] = torch.randn(num_classes)
    return sd


def _optimizer_state(state: OrderedDict) -> dict:
    params = [torch.nn.Parameter(v.clone()) for k, v in state.items() if v.is_floating_point()]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()  # fills the momentum buffers, as in a saved run
    return opt.state_dict()


REFERENCE = {
    "resnet32x4": lambda k: repdistiller_resnet_state(32, (32, 64, 128, 256), k),
    "resnet8x4": lambda k: repdistiller_resnet_state(8, (32, 64, 128, 256), k),
    "resnet56": lambda k: repdistiller_resnet_state(56, (16, 16, 32, 64), k),
    "wrn_40_2": lambda k: repdistiller_wrn_state(40, 2, k),
    "wrn_16_1": lambda k: repdistiller_wrn_state(16, 1, k),
}


def _load(arch: str, path) -> PCKDModule:
    cfg = PCKDConfig(student_arch="resnet8", teacher_arch=arch, num_classes=100)
    return PCKDModule(cfg, method="kd", teacher_checkpoint=str(path))


@pytest.mark.parametrize("arch", sorted(REFERENCE))
def test_repdistiller_periodic_checkpoint_loads_strictly(arch, tmp_path):
    torch.manual_seed(0)
    state = REFERENCE[arch](100)
    path = tmp_path / f"{arch}_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    # train_teacher.py, regular saving: {'epoch', 'model', 'accuracy', 'optimizer'}
    torch.save(
        {"epoch": 240, "model": state, "accuracy": torch.tensor(75.61), "optimizer": _optimizer_state(state)}, path
    )
    module = _load(arch, path)
    loaded = module.teacher.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, msg=key)
    assert not module.teacher.training


def test_repdistiller_last_checkpoint_with_namespace_and_dataparallel_prefix(tmp_path):
    torch.manual_seed(0)
    state = REFERENCE["wrn_40_2"](100)
    path = tmp_path / "wrn_40_2_last.pth"
    # train_teacher.py, final save: {'opt': argparse.Namespace, 'model', 'optimizer'}; DataParallel adds 'module.'
    prefixed = OrderedDict((f"module.{k}", v) for k, v in state.items())
    torch.save({"opt": argparse.Namespace(model="wrn_40_2"), "model": prefixed, "optimizer": {}}, path)
    loaded = _load("wrn_40_2", path).teacher.state_dict()
    torch.testing.assert_close(loaded["fc.weight"], state["fc.weight"])


@pytest.mark.parametrize("change", ["drop", "extra", "shape", "wrong_arch"])
def test_repdistiller_checkpoint_mismatch_is_an_error(change, tmp_path):
    state = REFERENCE["resnet8x4"](100)
    arch = "resnet8x4"
    if change == "drop":
        state.pop("layer3.0.bn2.running_var")
    elif change == "extra":
        state["layer4.0.conv1.weight"] = torch.zeros(1)
    elif change == "shape":
        state["fc.weight"] = torch.zeros(10, 256)
    else:
        arch = "resnet32x4"  # a resnet8x4 checkpoint given for a resnet32x4 teacher: missing layers
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": state, "accuracy": 73.3, "optimizer": {}}, path)
    with pytest.raises(KeyError, match="model.teacher_checkpoint"):
        _load(arch, path)


def test_a_teacher_file_cut_short_names_the_option(tmp_path):
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": REFERENCE["resnet8x4"](100)}, path)
    path.write_bytes(path.read_bytes()[:5000])  # a copy or export that stopped part-way
    with pytest.raises(ValueError, match=r"model\.teacher_checkpoint '.*ckpt_epoch_240\.pth' cannot be read"):
        _load("resnet8x4", path)


def test_export_teacher_writes_the_repdistiller_format_whole_or_not_at_all(tmp_path, monkeypatch):
    from pckd.cli import main

    torch.manual_seed(0)
    state = REFERENCE["resnet8x4"](100)
    ckpt = tmp_path / "last.ckpt"  # a pckd run's checkpoint: the student becomes the teacher
    torch.save({"epoch": 7, "state_dict": {**{f"student.{k}": v for k, v in state.items()},
                                           "teacher.fc.weight": torch.zeros(1)}}, ckpt)  # fmt: skip
    out = tmp_path / "teachers" / "resnet8x4_vanilla" / "ckpt_epoch_240.pth"
    out.parent.mkdir(parents=True)
    assert main(["export-teacher", str(ckpt), str(out)]) == str(out)
    written = torch.load(out, weights_only=True)
    assert written["epoch"] == 7 and set(written["model"]) == set(state)
    loaded = _load("resnet8x4", out).teacher.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, msg=key)
    whole = out.read_bytes()
    save = torch.save

    def save_half_then_stop(obj, f):
        save(obj, f)
        with open(f, "r+b") as fh:
            fh.truncate(1000)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_half_then_stop)
    with pytest.raises(KeyboardInterrupt):
        main(["export-teacher", str(ckpt), str(out)])
    assert out.read_bytes() == whole and [p.name for p in out.parent.iterdir()] == [out.name]  # the old file stays
