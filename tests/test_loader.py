"""TensorLoader and the loader contract (the Loader protocol and its helpers)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cifarkit import ImageTensors, Loader, TensorLoader, synthetic_cifar10
from cifarkit.data.loader import check_not_empty, match_memory_format, set_epoch
from cifarkit.errors import EmptyDataError, InvalidOptionError, ShapeError


def small() -> ImageTensors:
    return synthetic_cifar10(100, seed=0)


def test_loader_batches_cover_the_data_once_per_epoch() -> None:
    data = small()
    loader = TensorLoader(data.images, data.labels, batch_size=32, seed=1)
    assert len(loader) == 4
    xs, ys = zip(*loader)
    assert [len(y) for y in ys] == [32, 32, 32, 4]
    x = torch.cat(xs)
    assert x.dtype == torch.float32 and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # the same images, reordered: compare as a multiset via sorted pixel sums
    assert torch.equal((x * 255).round().sum((1, 2, 3)).sort().values, data.images.float().sum((1, 2, 3)).sort().values)
    assert sorted(torch.cat(ys).tolist()) == sorted(data.labels.tolist())
    assert len(TensorLoader(data.images, data.labels, batch_size=32, drop_last=True)) == 3


def test_loader_conversion_matches_to_tensor() -> None:
    data = small()
    x, y = next(iter(TensorLoader(data.images, data.labels, batch_size=100, shuffle=False)))
    torch.testing.assert_close(x, data.images.float() / 255, rtol=0, atol=1e-7)
    assert torch.equal(y, data.labels)


def test_order_is_a_function_of_seed_and_epoch() -> None:
    data = small()
    a = TensorLoader(data.images, data.labels, batch_size=100, seed=5, augment=True)
    b = TensorLoader(data.images, data.labels, batch_size=100, seed=5, augment=True)
    a.set_epoch(3)
    b.set_epoch(3)
    (xa, ya), (xb, yb) = next(iter(a)), next(iter(b))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.set_epoch(4)
    assert not torch.equal(next(iter(b))[1], ya)
    # plain re-iteration moves to the next epoch
    c = TensorLoader(data.images, data.labels, batch_size=100, seed=5)
    first, second = next(iter(c))[1], next(iter(c))[1]
    assert not torch.equal(first, second)
    # a generator seeds the loader reproducibly
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert (
        TensorLoader(data.images, data.labels, generator=g1).seed
        == TensorLoader(data.images, data.labels, generator=g2).seed
    )


def test_augmentation_is_crop_and_flip() -> None:
    images = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    images[:, :, :, :16] = 255  # left half white
    loader = TensorLoader(images, torch.zeros(64, dtype=torch.long), batch_size=64, augment=True, seed=0)
    x, _ = next(iter(loader))
    assert x.shape == (64, 3, 32, 32)
    left_white = x[:, 0, 16, 0] == 1.0
    right_white = x[:, 0, 16, 31] == 1.0
    assert left_white.any() and right_white.any()  # some flipped, some not
    assert bool(((x == 0) | (x == 1)).all())  # only values of the source (and zero padding)
    white_columns = (x[:, 0, 16, :] == 1).sum(1)
    assert int(white_columns.min()) >= 12 and int(white_columns.max()) <= 20  # shifted by at most 4 px


def test_normalize_and_memory_format() -> None:
    data = small()
    loader = TensorLoader(data.images, data.labels, batch_size=10, shuffle=False, normalize=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
                          memory_format=torch.channels_last)  # fmt: skip
    x, _ = next(iter(loader))
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x, (data.images[:10].float() / 255 - 0.5) / 0.25)
    with pytest.raises(InvalidOptionError):
        TensorLoader(data.images, data.labels, normalize=((0.5, 0.5), (1, 1)))


def test_shards_follow_distributed_sampler_semantics() -> None:
    data = synthetic_cifar10(10, seed=0)
    base = TensorLoader(data.images, data.labels, batch_size=100, seed=7)
    sampler_like = []
    for rank in range(3):
        shard = base.shard(rank, 3)
        shard.set_epoch(2)
        assert len(shard) == 1 and shard.num_samples == 4
        sampler_like.append(next(iter(shard))[0])
    # padded to 12 = 4 per rank by repeating the start of the permutation
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(7 + 2))
    order = torch.cat([perm, perm[:2]])
    for rank, x in enumerate(sampler_like):
        torch.testing.assert_close(x, data.images[order[rank::3]].float() / 255)
    assert [base.shard(r, 3, drop_last=True).num_samples for r in range(3)] == [3, 3, 3]
    assert [base.shard(r, 3, pad=False).num_samples for r in range(3)] == [4, 3, 3]
    with pytest.raises(InvalidOptionError):
        base.shard(3, 3)


def test_loader_rejects_bad_input() -> None:
    with pytest.raises(ShapeError):
        TensorLoader(torch.zeros(2, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(EmptyDataError, match="empty"):
        TensorLoader(torch.zeros(0, 3, 32, 32, dtype=torch.uint8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(InvalidOptionError):
        TensorLoader(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), batch_size=0)
    floats = TensorLoader(torch.full((2, 3, 32, 32), 0.5), torch.zeros(2, dtype=torch.long))
    assert floats.images.dtype == torch.uint8


def test_tensor_loader_fulfils_the_loader_protocol_and_plain_iterables_do_not() -> None:
    loader = small().loader(seed=0)
    assert isinstance(loader, Loader)
    assert isinstance(loader.shard(0, 2), Loader) and isinstance(loader.with_options(batch_size=8), Loader)
    dataloader = DataLoader(TensorDataset(torch.zeros(4, 3, 32, 32), torch.zeros(4)), batch_size=2)
    for plain in ([(torch.zeros(1), torch.zeros(1))], dataloader, iter([])):
        assert not isinstance(plain, Loader)


def test_helpers_duck_type_the_contract() -> None:
    loader = small().loader(batch_size=10, seed=0)
    set_epoch(loader, 5)
    assert loader.epoch == 5
    converted = match_memory_format(loader, torch.device("cpu"), torch.channels_last)
    assert converted is not loader and converted.memory_format == torch.channels_last  # type: ignore[attr-defined]
    assert next(iter(converted))[0].is_contiguous(memory_format=torch.channels_last)
    assert match_memory_format(converted, torch.device("cpu"), torch.channels_last) is converted
    batches: Any = [(torch.zeros(1, 3, 2, 2), torch.zeros(1))]
    assert match_memory_format(batches, torch.device("cpu"), torch.channels_last) is batches

    class Sampler:
        epoch = -1

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

    class WithSampler(list[Any]):
        sampler = Sampler()

    data = WithSampler()
    set_epoch(data, 2)  # a DataLoader-like object: its sampler is told
    assert data.sampler.epoch == 2
    with pytest.raises(EmptyDataError, match="evaluate data is empty"):
        check_not_empty([], "evaluate data")
    check_not_empty(iter([]), "a generator has no length: nothing to check")


def test_shard_defaults_to_the_loaders_own_drop_last() -> None:
    loader = TensorLoader(torch.zeros(10, 3, 2, 2, dtype=torch.uint8), torch.arange(10), batch_size=1, drop_last=True)
    assert [loader.shard(r, 3).num_samples for r in range(3)] == [3, 3, 3]
    assert [loader.shard(r, 3, drop_last=False).num_samples for r in range(3)] == [4, 4, 4]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_loader_on_the_gpu_gives_the_cpu_loaders_batches() -> None:
    data = small()
    on_cpu = TensorLoader(data.images, data.labels, batch_size=32, seed=3, augment=True)
    on_gpu = TensorLoader(data.images, data.labels, batch_size=32, seed=3, augment=True, device="cuda")
    assert on_gpu.images.is_cuda
    for (xa, ya), (xb, yb) in zip(on_cpu, on_gpu, strict=True):
        assert xb.is_cuda and yb.is_cuda
        assert torch.equal(xa, xb.cpu()) and torch.equal(ya, yb.cpu())
