"""The retrieval evaluation's video token store: rows, dtype, where the tokens live, slab sizes, memory formula."""

from __future__ import annotations

import pytest
import torch

from rtqvl.token_store import VideoTokenStore, retrieval_eval_memory, slab_rows


def _batches(dtype=torch.float64, sizes=(3, 5, 1, 4)):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, 6, 4, generator=g).to(dtype) for n in sizes]


@pytest.mark.parametrize("location", ["pinned", "cpu", "device"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_store_returns_the_requested_rows_in_order(location, dtype):
    store = VideoTokenStore(location, slab_bytes=256)  # tiny slabs: rows spread over several of them
    batches = _batches(dtype)
    rows = [store.append(b) for b in batches]
    full = torch.cat(batches)
    assert torch.equal(torch.cat(rows), torch.arange(len(full))) and len(store) == len(full)
    if location != "device":
        assert len(store.parts) > 2
    want = torch.tensor([12, 0, 7, 7, 3, 11, 2])  # across slabs / batches, repeated, unsorted
    got = store.fetch(want, "cpu")
    assert got.dtype == dtype and torch.equal(got, full[want])
    with pytest.raises(IndexError):
        store.fetch(torch.tensor([len(full)]), "cpu")


def test_store_location_decides_where_tokens_live(monkeypatch):
    with pytest.raises(ValueError, match=r"model\.eval_token_store='gpu'"):
        VideoTokenStore("gpu")
    assert VideoTokenStore("pinned").pin == torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert VideoTokenStore("pinned").pin  # page-locked wherever CUDA is there
    assert not VideoTokenStore("cpu").pin and not VideoTokenStore("device").pin
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not VideoTokenStore("pinned").pin  # plain host memory without CUDA
    # "device" keeps each batch where it was computed (no copy); host locations copy into their own slabs
    x = torch.randn(2, 3, 4)
    dev, host = VideoTokenStore("device"), VideoTokenStore("cpu")
    dev.append(x)
    host.append(x)
    assert dev.parts[0].data_ptr() == x.data_ptr()
    assert host.parts[0].data_ptr() != x.data_ptr() and host.parts[0].device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_store_keeps_cuda_tokens_in_pinned_host_memory():
    x = torch.randn(5, 7, 8, device="cuda")
    store = VideoTokenStore("pinned")
    store.append(x[:2])
    store.append(x[2:])
    assert all(p.device.type == "cpu" and p.is_pinned() for p in store.parts)
    got = store.fetch(torch.tensor([4, 1]), "cuda")
    assert got.device.type == "cuda" and torch.equal(got, x[[4, 1]])
    dev = VideoTokenStore("device")
    dev.append(x)
    assert dev.parts[0].device.type == "cuda"


def test_slabs_are_powers_of_two_and_the_formula_matches_the_store():
    row = 6 * 4 * 8  # float64 rows of 6 × 4
    for stored, pending in ((0, 3), (3, 5), (40, 1), (10_000, 1)):
        cap = 1 << (min(1024, max(pending, stored, 1) * row) - 1).bit_length()  # power of two ≤ the largest slab
        n = slab_rows(stored, pending, row, slab_bytes=1024)
        assert n * row <= cap < (n + 1) * row
    store = VideoTokenStore("cpu", slab_bytes=1 << 30)
    items, width, tokens, batch = 13, 4, 6, 4
    for start in range(0, items, batch):
        store.append(torch.zeros(min(batch, items - start), tokens, width))
    mem = retrieval_eval_memory(3 * items, items, tokens, width, eval_batch_size=batch)  # 3 captions per video
    assert mem["host_tokens_GB"] * 1e9 == pytest.approx(items * tokens * width * 4)
    assert mem["host_allocated_GB"] * 1e9 == pytest.approx(store.allocated_bytes)
    for p in store.parts:  # each slab a power-of-two number of bytes minus less than one row
        size = p.numel() * p.element_size()
        assert (1 << (size - 1).bit_length()) - size < tokens * width * 4
    # two processes each hold the padded half (7 of 13 videos); the previous layout held one sequence per text (39)
    # on each device
    half = retrieval_eval_memory(3 * items, items, tokens, width, world_size=2, eval_batch_size=batch)
    assert half["host_tokens_GB"] * 1e9 == pytest.approx(7 * tokens * width * 4)
    assert half["device_tokens_previous_GB"] * 1e9 == pytest.approx(3 * items * tokens * width * 4)
