"""evaluate: loss and accuracy against a hand count, any loader, the caller's mode kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cifarkit import EvalResult, build_cnn, evaluate, synthetic_cifar10
from cifarkit.errors import EmptyDataError


def test_evaluate_matches_a_manual_count_and_restores_mode() -> None:
    torch.manual_seed(0)
    model = build_cnn().train()
    data = synthetic_cifar10(300, seed=2)
    result = evaluate(model, data.loader(batch_size=128, shuffle=False), device="cpu")
    assert model.training
    with torch.no_grad():
        model.eval()
        out = model(data.images.float() / 255)
    assert result.count == 300
    assert result.accuracy == pytest.approx(float((out.argmax(1) == data.labels).float().mean()))
    assert result.loss == pytest.approx(float(nn.functional.cross_entropy(out, data.labels)), rel=1e-5)
    _, _, count = result
    assert count == 300


def test_any_iterable_of_batches_and_any_loss() -> None:
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    data = synthetic_cifar10(64, seed=0)
    x = data.images.float() / 255
    loader = DataLoader(TensorDataset(x, data.labels), batch_size=10)  # uneven last batch of 4
    as_list = [(x[i : i + 16], data.labels[i : i + 16]) for i in range(0, 64, 16)]
    a = evaluate(model, loader, device="cpu", channels_last=False)
    b = evaluate(model, as_list, device="cpu", channels_last=False)
    assert a.count == b.count == 64
    assert a.loss == pytest.approx(b.loss, rel=1e-6) and a.accuracy == b.accuracy  # weighted by batch size
    summed = evaluate(model, as_list, device="cpu", loss_fn=lambda out, y: nn.functional.cross_entropy(out, y) * 2)
    assert summed.loss == pytest.approx(2 * b.loss, rel=1e-5)


def test_empty_or_used_up_data_is_an_empty_data_error() -> None:
    with pytest.raises(EmptyDataError, match="evaluate data is empty"):
        evaluate(build_cnn(), [], device="cpu")
    batches = iter([(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))])
    evaluate(build_cnn(), batches, device="cpu")
    with pytest.raises(EmptyDataError, match="yielded no batches"):
        evaluate(build_cnn(), batches, device="cpu")  # the generator is used up


def test_eval_result_reads_as_a_tuple_and_shows_as_a_table() -> None:
    result = EvalResult(0.25, 0.5, 4000)
    assert tuple(result) == (0.25, 0.5, 4000)
    assert repr(result).splitlines() == [
        "  loss  accuracy  images",
        "------  --------  ------",
        "0.2500    50.00%   4,000",
    ]
    assert '<td style="text-align:right">50.00%</td>' in result._repr_html_()
