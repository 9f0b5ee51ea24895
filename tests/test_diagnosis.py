"""Diagnoses of weights that do not fit a model: what differs, the likely cause, the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from cifarkit import adapt_vgg16, build_cnn, diagnose, load
from cifarkit.errors import StateDictMismatchError
from cifarkit.models.fitting import apply_state_dict, diagnose_state_dict


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def vggs() -> dict[str, nn.Module]:
    """One plain (ImageNet-head) VGG16 and one of each adaptation, built once: VGG16 is big."""
    return {"plain": torchvision.models.vgg16(), "replace": adapt_vgg16(), "append": adapt_vgg16(strategy="append")}


def test_diagnose_append_file_into_replace_model(vggs: dict[str, nn.Module]) -> None:
    saved = vggs["append"].state_dict()
    diag = diagnose(vggs["replace"], saved)
    assert diag.unexpected == ["classifier.add_linear.bias", "classifier.add_linear.weight"]
    assert [m[0] for m in diag.mismatched] == ["classifier.6.bias", "classifier.6.weight"]
    text = str(diag)
    assert (
        "strategy='append'" in text
        and "classifier.add_linear" in text
        and "size mismatch for classifier.6.weight" in text
    )


def test_diagnose_imagenet_head_into_adapted_model_and_back(vggs: dict[str, nn.Module]) -> None:
    imagenet = vggs["plain"].state_dict()
    diag = diagnose(vggs["replace"], imagenet)
    assert diag.mismatched == [("classifier.6.bias", (1000,), (10,)), ("classifier.6.weight", (1000, 4096), (10, 4096))]
    assert "un-adapted ImageNet head" in str(diag) and "adapt_vgg16(weights=path)" in str(diag)
    reverse = diagnose(vggs["plain"], vggs["replace"].state_dict())
    assert "saved after adapt_vgg16(strategy='replace')" in str(reverse)
    assert "saved from a 'replace'-adapted" in str(diagnose(vggs["append"], vggs["replace"].state_dict()))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_wrapper_prefixes_are_stripped_automatically(tmp_path: Path, prefix: str) -> None:
    model = build_cnn()
    wrapped = {prefix + k: v for k, v in model.state_dict().items()}
    diag = diagnose(build_cnn(), wrapped)
    assert diag.ok and "".join(diag.stripped_prefixes) == prefix
    assert "stripped automatically" in str(diag)
    path = tmp_path / "ddp.pt"
    torch.save(wrapped, path)
    assert same_weights(model, load(path, model=build_cnn()))


def test_diagnose_wrong_architecture_and_activation(vggs: dict[str, nn.Module]) -> None:
    diag = diagnose(vggs["replace"], build_cnn().state_dict())
    assert "wrong architecture" in str(diag) and "build_cnn()" in str(diag)
    assert "wrong architecture" in str(diagnose(build_cnn(), vggs["replace"].state_dict()))
    assert "activation=" in str(diagnose(build_cnn(), build_cnn(activation="relu").state_dict()))
    assert "num_classes=3" in str(diagnose(build_cnn(), build_cnn(3).state_dict()))
    assert diagnose(build_cnn(), build_cnn().state_dict()).ok


def test_strict_raises_with_the_diagnosis_and_non_strict_loads_what_matches(tmp_path: Path) -> None:
    source = build_cnn(3)
    path = tmp_path / "three.pt"
    torch.save(source.state_dict(), path)
    with pytest.raises(
        StateDictMismatchError, match=r"(?s)size mismatch for sequential.8.weight.*num_classes=3"
    ) as info:
        load(path, model=build_cnn())
    assert isinstance(info.value, RuntimeError)
    target = build_cnn()
    with pytest.warns(UserWarning, match="partially"):
        load(path, model=target, strict=False)
    assert torch.equal(target.sequential[0].weight, source.sequential[0].weight)
    assert target.sequential[8].weight.shape == (10, 64)
    assert diagnose(build_cnn(), path).mismatched  # a path works as well as a dict


def test_apply_state_dict_loads_only_when_everything_fits() -> None:
    source, target = build_cnn(), build_cnn()
    diag = apply_state_dict(target, source.state_dict(), strict=True, source="test")
    assert diag.ok and same_weights(source, target)
    before = build_cnn()
    untouched = build_cnn()
    untouched.load_state_dict(before.state_dict())
    with pytest.raises(StateDictMismatchError, match="cannot load three classes into CifarCNN"):
        apply_state_dict(untouched, build_cnn(3).state_dict(), strict=True, source="three classes")
    assert same_weights(before, untouched)  # a refused load changes nothing
    assert diagnose_state_dict(build_cnn(), build_cnn(3).state_dict()).mismatched


def test_a_torchvision_networks_appended_or_replaced_head_is_named() -> None:
    from cifarkit import adapt

    replaced, appended = adapt("resnet18", 5), adapt("resnet18", 5, strategy="append")
    text = str(diagnose(appended, replaced.state_dict()))
    assert "appended head at fc (strategy='append')" in text
    text = str(diagnose(replaced, appended.state_dict()))
    assert "the file has an appended head at fc" in text
    mobile = adapt("mobilenet_v3_small", 5, strategy="append")
    assert "appended head at classifier" in str(diagnose(adapt("mobilenet_v3_small", 5), mobile.state_dict()))
    import torchvision

    text = str(diagnose(replaced, torchvision.models.resnet18().state_dict()))
    assert "un-adapted ImageNet head" in text and "cifarkit.adapt(network, weights=path)" in text
