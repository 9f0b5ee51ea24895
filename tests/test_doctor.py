"""The pre-flight doctor: each trap named with its fix, a sound set-up clean, the caller's model untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cifarkit import adapt_vgg16, build_cnn, doctor, synthetic_cifar10
from cifarkit.cli import main
from cifarkit.device import cpu_has_int8_instructions, cpu_supports_bf16
from cifarkit.errors import EmptyDataError
from cifarkit.preprocess import IMAGENET_MEAN, IMAGENET_STD, make_record, set_preprocessing


def loader(n: int = 64, **kw: Any) -> Any:
    return synthetic_cifar10(n, seed=0).loader(batch_size=32, seed=0, **kw)


def sgd(model: nn.Module, lr: float = 0.01) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)


def codes(report: Any) -> list[str]:
    return [f.code for f in report.problems]


def test_a_sound_set_up_has_no_problems_and_nothing_is_touched() -> None:
    model = build_cnn(activation="relu")
    optimizer = sgd(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = doctor(model, loader(), optimizer=optimizer)
    assert report.ok and str(report).splitlines()[0] == "no problems found"
    # The one note a sound set-up can get depends on the CPU: int8 without VNNI/AMX (an AVX2-only one).
    expected_notes = [] if cpu_has_int8_instructions() else ["int8-without-vnni"]
    assert [f.code for f in report.notes] == expected_notes
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert optimizer.state == {} and all(p.grad is None for p in model.parameters())


def test_the_tutorial_network_has_no_nonlinearity() -> None:
    model = build_cnn()
    report = doctor(model, loader(), optimizer=sgd(model))
    assert codes(report) == ["no-nonlinearity"]
    assert "build_cnn(activation='relu')" in report.problems[0].fix and "1 problem(s) found" in str(report)

    class Functional(nn.Module):  # activations applied with F.relu in forward, not as modules
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3 * 32 * 32, 16), nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.nn.functional.relu(self.a(x.flatten(1))))

    assert doctor(Functional(), loader()).ok
    assert doctor(adapt_vgg16(strategy="append"), loader(32)).ok  # ReLUs elsewhere: not flagged


def test_unscaled_inputs() -> None:
    data = synthetic_cifar10(32, seed=0)
    as_bytes = [(data.images, data.labels)]
    as_floats = [(data.images.float(), data.labels)]  # 0-255 floats
    model = build_cnn(activation="relu")
    assert "inputs-not-scaled" in codes(doctor(model, as_bytes))
    assert "inputs-not-scaled" in codes(doctor(model, as_floats))
    assert doctor(model, [(data.images.float() / 255, data.labels)]).ok


def test_labels_one_based_or_out_of_range() -> None:
    x = torch.rand(8, 3, 32, 32)
    one_based = [(x, torch.tensor([1, 2, 3, 4, 5, 6, 7, 10]))]
    assert codes(doctor(build_cnn(activation="relu"), one_based)) == ["labels-one-based"]
    wide = [(x, torch.tensor([0, 1, 2, 3, 4, 5, 6, 12]))]
    model = build_cnn(activation="relu")
    report = doctor(model, wide, optimizer=sgd(model))
    assert codes(report) == ["labels-out-of-range"] and "num_classes=13" in report.problems[0].fix


def test_an_optimizer_built_on_another_model() -> None:
    report = doctor(build_cnn(activation="relu"), loader(), optimizer=sgd(build_cnn(activation="relu")))
    assert codes(report) == ["optimizer-not-on-model"] and "10 of the optimizer's parameters" in str(report)


def test_a_learning_rate_that_explodes() -> None:
    model = build_cnn(activation="relu")
    report = doctor(model, loader(), optimizer=sgd(model, lr=50.0))
    assert codes(report) == ["loss-explodes"] and "lr=50.0" in report.problems[0].message


def test_frozen_parameters_given_to_the_optimizer() -> None:
    model = build_cnn(activation="relu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for p in model.sequential[0].parameters():
        p.requires_grad_(False)
    report = doctor(model, loader(), optimizer=optimizer)
    assert codes(report) == ["frozen-params-in-optimizer"] and "sequential.0.weight" in report.problems[0].message


def test_eval_mode_batch_size_and_amp() -> None:
    model = build_cnn(activation="relu").eval()
    assert codes(doctor(model, loader())) == ["model-in-eval-mode"]
    assert not model.training  # the caller's mode is not changed
    big = synthetic_cifar10(20, seed=0).loader(batch_size=64)
    assert codes(doctor(build_cnn(activation="relu"), big)) == ["batch-larger-than-data"]
    dataset = TensorDataset(torch.rand(10, 3, 32, 32), torch.randint(0, 10, (10,)))
    assert codes(doctor(build_cnn(activation="relu"), DataLoader(dataset, batch_size=16))) == ["batch-larger-than-data"]
    assert ("amp-emulated" in codes(doctor(build_cnn(activation="relu"), loader(), amp=True))) != cpu_supports_bf16()
    with pytest.raises(EmptyDataError):
        doctor(build_cnn(), [])


def test_the_command_exits_1_on_problems_and_0_without(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--train-count", "128"]) == 1
    assert "no-nonlinearity" in capsys.readouterr().out
    assert main(["doctor", "--model", "cnn-relu", "--momentum", "0.9", "--train-count", "128"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.splitlines()[0] == "no problems found"
    assert ("int8-without-vnni" in out) == (not cpu_has_int8_instructions())  # the CPU's note, on AVX2 alone


def test_inputs_not_normalized_as_the_model_records() -> None:
    model = build_cnn(activation="relu")
    set_preprocessing(model, make_record(mean=IMAGENET_MEAN, std=IMAGENET_STD))  # as pretrained VGG16 has
    report = doctor(model, loader())
    assert codes(report) == ["inputs-not-normalized"] and "ImageNet's" in report.problems[0].message
    assert doctor(model, loader(normalize=(IMAGENET_MEAN, IMAGENET_STD))).ok
    data = synthetic_cifar10(32, seed=0)
    plain = [(data.images.float() / 255, data.labels)]  # a plain list in [0, 1]: not normalized
    assert codes(doctor(model, plain)) == ["inputs-not-normalized"]


@pytest.fixture(scope="module")
def pretrained_mobilenet(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import torchvision

    path = tmp_path_factory.mktemp("weights") / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    return path


def test_a_pretrained_network_fed_32_pixel_pictures_or_another_normalization(pretrained_mobilenet: Any) -> None:
    from cifarkit import adapt
    from cifarkit.preprocess import IMAGENET_MEAN, IMAGENET_STD

    model = adapt("mobilenet_v3_small", weights=pretrained_mobilenet)
    small = synthetic_cifar10(32).loader(batch_size=16, seed=0, normalize=(IMAGENET_MEAN, IMAGENET_STD))
    found = {f.code: f for f in doctor(model, small).problems}
    assert set(found) == {"input-too-small"}
    assert "224x224" in found["input-too-small"].message and "32x32" in found["input-too-small"].message
    assert "size=224" in found["input-too-small"].fix
    cifar = ((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    other = synthetic_cifar10(32).loader(batch_size=16, seed=0, normalize=cifar)
    codes = [f.code for f in doctor(model, other).problems]
    assert "normalization-differs" in codes and "inputs-not-normalized" not in codes
    big = torch.nn.functional.interpolate(synthetic_cifar10(8).images.float() / 255, size=224, mode="bilinear")
    batch = [((big - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None],
              torch.arange(8))]  # fmt: skip
    assert doctor(model, batch).ok  # the size and the normalization it was pretrained with: nothing to say
    assert "input-too-small" not in [f.code for f in doctor(adapt("mobilenet_v3_small"), small).problems]


@pytest.mark.parametrize("has_int8", [True, False])
def test_a_cpu_without_int8_instructions_gets_a_note(has_int8: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import cifarkit.training.preflight as preflight

    monkeypatch.setattr(preflight, "cpu_has_int8_instructions", lambda: has_int8)
    report = doctor(build_cnn(activation="relu"), synthetic_cifar10(32).loader(batch_size=16))
    codes = [n.code for n in report.notes]
    assert report.ok and codes == ([] if has_int8 else ["int8-without-vnni"])
    assert ("VNNI" in str(report)) is not has_int8


def test_the_int8_check_reads_the_cpu() -> None:
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    if not flags:
        pytest.skip("no /proc/cpuinfo")
    assert cpu_has_int8_instructions() == ("avx512_vnni" in flags or "amx_int8" in flags)
