"""Tests of cifarkit.evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cifarkit import EvalResult, build_cnn, evaluate, predict, synthetic_cifar10
from cifarkit.errors import ClassIndexError, EmptyDataError, ImageReadError, InvalidOptionError, ShapeError


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


def test_the_default_loss_is_the_guarded_one_though_taken_per_chunk() -> None:
    data = synthetic_cifar10(40, seed=0)
    labels = data.labels.clone()
    labels[37] = 12  # in the last batch: the chunk's loss still finds it
    with pytest.raises(ClassIndexError, match=r"in \[0, 12\] but the logits have C=10"):
        evaluate(build_cnn(), [(data.images[i : i + 8], labels[i : i + 8]) for i in range(0, 40, 8)], device="cpu")


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


def test_topk_per_class_and_confusion_match_a_hand_count() -> None:
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    data = synthetic_cifar10(300, seed=4)
    result = evaluate(model, data.loader(batch_size=64, shuffle=False), device="cpu", topk=(1, 3, 5))
    with torch.no_grad():
        model.eval()
        out = model(data.images.float() / 255)
    pred, y = out.argmax(1), data.labels
    confusion = torch.zeros(10, 10, dtype=torch.int64)
    for t, p in zip(y.tolist(), pred.tolist()):
        confusion[t, p] += 1
    assert torch.equal(result.confusion, confusion)  # type: ignore[arg-type]
    for k in (1, 3, 5):
        hits = (out.topk(k, 1).indices == y[:, None]).any(1).float().mean()
        assert result.topk[k] == pytest.approx(float(hits))
    assert result.topk[1] == result.accuracy
    per_class = [float((pred[y == c] == c).float().mean()) for c in range(10)]
    assert result.per_class_accuracy == pytest.approx(per_class)
    loss, accuracy, count = result  # unpacking keeps working
    assert (loss, accuracy, count) == (result.loss, result.accuracy, 300)
    table = result.per_class_table(data.classes).splitlines()
    assert table[0].split() == ["class", "accuracy", "images"] and len(table) == 12
    assert "top-3" in repr(result) and "top-5" in repr(result)


def test_class_meter_counts_ties_as_argmax_does_and_skips_ignored_labels() -> None:
    from cifarkit.distributed import DistContext
    from cifarkit.evaluation.metrics import ClassMeter

    gen = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (500, 7), generator=gen).float()  # many ties
    labels = torch.randint(0, 7, (500,), generator=gen)
    labels[::9] = -100  # ignore_index-style: not counted
    meter = ClassMeter(7, topk=(1, 2, 5), device=torch.device("cpu"))
    for part in range(0, 500, 128):
        meter.add(logits[part : part + 128], labels[part : part + 128])
    counts = meter.totals(DistContext.single(torch.device("cpu")))
    keep = labels >= 0
    order = torch.sort(-logits[keep], dim=1, stable=True).indices  # ties: the lower index first, as argmax
    for k in (1, 2, 5):
        assert counts.topk_hits[k] == int((order[:, :k] == labels[keep][:, None]).any(1).sum())
    expected = torch.zeros(7, 7, dtype=torch.int64)
    for t, p in zip(labels[keep].tolist(), logits[keep].argmax(1).tolist()):
        expected[t, p] += 1
    assert torch.equal(counts.confusion, expected)
    assert counts.topk_hits[1] == int(expected.trace())


def test_topk_above_the_number_of_classes_is_named() -> None:
    model = build_cnn(num_classes=3)
    batches = [(torch.zeros(2, 3, 32, 32), torch.tensor([0, 2]))]
    assert evaluate(model, batches, device="cpu").topk.keys() == {1}  # default (1,) below 5 classes
    with pytest.raises(InvalidOptionError, match="top-5 accuracy, but the model has 3 classes"):
        evaluate(model, batches, device="cpu", topk=(1, 5))


def test_confusion_matrix_picture(tmp_path: Path) -> None:
    result = evaluate(build_cnn(), synthetic_cifar10(50, seed=0).loader(shuffle=False), device="cpu")
    out = result.plot_confusion(tmp_path / "confusion.png", classes=synthetic_cifar10(1).classes)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 300
    assert result.plot_confusion().axes  # type: ignore[union-attr]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_evaluate_on_cuda_agrees_with_the_cpu() -> None:
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    data = synthetic_cifar10(500, seed=2)
    on_cpu = evaluate(model, data.loader(batch_size=128, shuffle=False), device="cpu")
    on_gpu = evaluate(model, data.loader(batch_size=128, shuffle=False, device="cuda"), device="cuda")
    assert on_gpu.count == 500 and on_gpu.loss == pytest.approx(on_cpu.loss, rel=1e-3)
    assert abs(on_gpu.accuracy - on_cpu.accuracy) <= 2 / 500  # a float tie may flip a prediction
    assert int((on_gpu.confusion - on_cpu.confusion).abs().sum()) <= 4  # type: ignore[operator]


def expected(model: torch.nn.Module, x: torch.Tensor) -> tuple[list[int], list[float]]:
    """The answer computed by hand: eval mode, softmax over the logits of a (N, 3, 32, 32) batch."""
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)
    model.train()
    top_p, top_i = probs.max(1)
    return top_i.tolist(), top_p.tolist()


def test_predict_agrees_with_the_model_for_files_pil_images_and_tensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    data = synthetic_cifar10(3, seed=0)
    picture = Image.fromarray(data.images[0].permute(1, 2, 0).numpy())
    big = picture.resize((64, 48))
    path = tmp_path / "cat.png"
    big.save(path)  # PNG: lossless, so the file holds exactly `big`
    classes = [f"c{i}" for i in range(10)]
    preds = predict(
        model, [path, picture, data.images[1], data.images[1:3].float() / 255], classes=classes, device="cpu"
    )
    assert model.training  # the caller's mode is back

    big_t = torch.from_numpy(np.array(big)).permute(2, 0, 1).float()[None] / 255
    resized = torch.nn.functional.interpolate(
        big_t * 255, size=(32, 32), mode="bilinear", antialias=True, align_corners=False
    )
    resized = resized.round().clamp(0, 255) / 255  # the one picture path rounds to uint8 pixels
    x = torch.cat(
        [resized, data.images[0:1].float() / 255, data.images[1:2].float() / 255, data.images[1:3].float() / 255]
    )
    indices, probs = expected(model, x)
    assert [p.index for p in preds] == indices
    assert [p.probability for p in preds] == pytest.approx(probs, rel=1e-5)
    assert [p.label for p in preds] == [classes[i] for i in indices]
    assert predict(model, data.images[0], device="cpu")[0].label is None  # no class names given


def test_predict_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ImageReadError, match=r"notes\.png"):
        predict(build_cnn(), bad, device="cpu")
    with pytest.raises(ImageReadError, match=r"missing\.jpg"):
        predict(build_cnn(), tmp_path / "missing.jpg", device="cpu")
    with pytest.raises(ShapeError):
        predict(build_cnn(), torch.zeros(4, 32, 32), device="cpu")
    with pytest.raises(InvalidOptionError):
        predict(build_cnn(), 3.5, device="cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_predict_on_cuda_agrees_with_the_cpu() -> None:
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    images = synthetic_cifar10(8, seed=0).images
    on_cpu = predict(model, images, device="cpu")
    on_gpu = predict(model, images, device="cuda")
    assert next(model.parameters()).is_cuda
    assert [p.probability for p in on_gpu] == pytest.approx([p.probability for p in on_cpu], rel=1e-3)


def test_a_failing_evaluation_gives_back_grad_mode_and_every_modules_mode() -> None:
    model = build_cnn().train()
    model.sequential[0].eval()
    with pytest.raises(InvalidOptionError, match="topk"):
        evaluate(model, synthetic_cifar10(64).loader(batch_size=32), device="cpu", topk=(1, 50))
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert model.training and not model.sequential[0].training and model.sequential[1].training
