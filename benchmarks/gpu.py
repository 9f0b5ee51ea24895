"""The GPU variants of the benchmark: ``python benchmarks/bench.py --device cuda``.

Every runner takes a device, so the same code runs (slowly, as a smoke test) on the CPU; on a GPU
each runner ends with ``torch.cuda.synchronize()`` so that the time measured is the device's work,
not the launch queue's. Variants, side by side in one process as on the CPU:

- the tutorial loop on the GPU (PIL + ``ToTensor`` + ``DataLoader(batch_size=1)``);
- an idiomatic ``DataLoader(batch_size=64, pin_memory=True)`` loop;
- a bare fp32 loop with the data already on the GPU;
- the best hand-written loop: channels_last + bf16 autocast + data on the GPU + no host syncs;
- cifarkit's default, ``amp=True`` and ``compile=True``;
- ``evaluate`` against a bare ``inference_mode`` loop, and against one that converts uint8 pictures
  as ``evaluate`` does; ``evaluate`` with the loss taken per batch (a ``loss_fn`` of one's own);
- a VGG16 training step at 32 and at 224 pixels, bare and through cifarkit;
- the bare loop with the NaN guard's host read added, to price that sync;
- the one-layer model of ``benchmarks/fixed_cost.py``, trained and evaluated by cifarkit and by
  hand loops doing the same work: what the loop adds per step, where a step is almost free.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import fixed_cost  # benchmarks/fixed_cost.py: the one-layer model and its hand loops
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import cifarkit

Runner = Callable[[int], int]

BARE = "GPU bare loop (fp32, data on the GPU)"
BEST = "GPU best hand loop (channels_last + bf16 + data on the GPU)"
TUTORIAL = "GPU tutorial loop (PIL + ToTensor, batch 1)"
GUARDED = "GPU bare loop + NaN guard (one host read per step)"
UINT8_BARE = "GPU bare inference_mode from uint8 (channels_last), batch 256"
PER_BATCH = "GPU cifarkit evaluate, batch 256, the loss per batch (loss_fn=cross_entropy)"
BASELINES = {
    "GPU bare inference_mode, batch 256": None,
    "GPU cifarkit evaluate, batch 256": "GPU bare inference_mode, batch 256",
    UINT8_BARE: None,
    PER_BATCH: UINT8_BARE,  # what evaluate did before it took the default loss per chunk
    "GPU VGG16 step 32 px, batch 32: bare": None,
    "GPU VGG16 step 32 px, batch 32: cifarkit": "GPU VGG16 step 32 px, batch 32: bare",
    "GPU VGG16 step 224 px, batch 16: bare": None,
    "GPU VGG16 step 224 px, batch 16: cifarkit": "GPU VGG16 step 224 px, batch 16: bare",
}


#: Each compared pair runs back to back (see ``bench.measure``); the 224 px VGG16 pair only on a GPU.
TOGETHER = [
    (BARE, GUARDED, "GPU cifarkit train_loop (defaults)"),
    (BEST, "GPU cifarkit train_loop(amp=True)"),
    ("GPU bare inference_mode, batch 256", "GPU cifarkit evaluate, batch 256"),
    (UINT8_BARE, PER_BATCH),
    ("GPU VGG16 step 32 px, batch 32: bare", "GPU VGG16 step 32 px, batch 32: cifarkit"),
    ("GPU VGG16 step 224 px, batch 16: bare", "GPU VGG16 step 224 px, batch 16: cifarkit"),
]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_gpu_variants(device: torch.device, *, quick: bool, pil_dataset: Any) -> dict[str, Runner]:
    """The runners, each ``run(n) -> images processed``, all on ``device``."""
    data = cifarkit.synthetic_cifar10(4_000 if quick else 20_000, seed=0)
    labels_gpu = data.labels.to(device)
    floats_gpu = (data.images.float() / 255).to(device)
    floats_cl = floats_gpu.contiguous(memory_format=torch.channels_last)
    pil = pil_dataset(data.images, data.labels)

    def fresh(**kw: Any) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = cifarkit.build_cnn(**kw).to(device)
        return model, torch.optim.SGD(model.parameters(), lr=0.01)

    def tutorial(n: int) -> int:
        model, optim = fresh()
        sum_loss: Any = 0
        for img, target in DataLoader(torch.utils.data.Subset(pil, range(n)), batch_size=1):
            result_loss = F.cross_entropy(model(img.to(device)), target.to(device))
            optim.zero_grad()
            result_loss.backward()
            optim.step()
            sum_loss = sum_loss + result_loss
        sync(device)
        return n

    def idiomatic(n: int) -> int:
        model, optim = fresh()
        total = 0.0
        pin = device.type == "cuda"
        for img, target in DataLoader(torch.utils.data.Subset(pil, range(n)), batch_size=64, shuffle=True,
                                      pin_memory=pin):  # fmt: skip
            loss = F.cross_entropy(model(img.to(device, non_blocking=True)), target.to(device, non_blocking=True))
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += loss.item()  # what most scripts do: one sync per step
        return n

    def bare(n: int, *, best: bool = False, guard: bool = False) -> int:
        model, optim = fresh()
        x_all = floats_cl if best else floats_gpu
        if best:
            model = model.to(memory_format=torch.channels_last)
        total = torch.zeros((), device=device)
        perm = torch.randperm(n, device=device)
        for start in range(0, n, 64):
            idx = perm[start : start + 64]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=best):
                loss = F.cross_entropy(model(x_all[idx]), labels_gpu[idx])
            if guard and not bool(torch.isfinite(loss)):  # the host read the guard costs
                raise FloatingPointError
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            total += loss.detach()
        sync(device)
        return n

    def ours(**options: Any) -> Runner:
        def run(n: int) -> int:
            model, optim = fresh()
            loader = cifarkit.TensorLoader(data.images[:n], data.labels[:n], batch_size=64, seed=0, device=device)
            cifarkit.train_loop(model, loader, optimizer=optim, device=device, progress=False, **options)
            sync(device)
            return n

        return run

    eval_model = cifarkit.build_cnn().to(device)

    images_gpu = data.images.to(device)

    def bare_inference(n: int, *, from_uint8: bool = False) -> int:
        """``from_uint8``: the bare loop doing evaluate's input work too (uint8 to float, channels_last)."""
        eval_model.eval()
        correct = torch.zeros((), dtype=torch.int64, device=device)
        with torch.inference_mode():
            for start in range(0, n, 256):
                if from_uint8:
                    x = images_gpu[start : start + 256].to(torch.float32, memory_format=torch.channels_last)
                    x = x.mul_(1 / 255)
                else:
                    x = floats_gpu[start : start + 256]
                correct += (eval_model(x).argmax(1) == labels_gpu[start : start + 256]).sum()
        int(correct)
        return n

    def ours_evaluate(n: int, **options: Any) -> int:
        loader = cifarkit.TensorLoader(data.images[:n], data.labels[:n], batch_size=256, shuffle=False, device=device)
        cifarkit.evaluate(eval_model, loader, device=device, **options)
        return n

    def vgg(size: int, batch: int, *, through_cifarkit: bool) -> Runner:
        model = cifarkit.adapt_vgg16().to(device)
        x = torch.rand(batch, 3, size, size, device=device)
        y = torch.randint(0, 10, (batch,), device=device)

        def run(n: int) -> int:
            steps = max(1, n // batch)
            optim = torch.optim.SGD(model.parameters(), lr=0.001)
            if through_cifarkit:
                cifarkit.train_loop(model, [(x, y)] * steps, optimizer=optim, device=device, progress=False)
            else:
                for _ in range(steps):
                    loss = F.cross_entropy(model(x), y)
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
            sync(device)
            return steps * batch

        return run

    variants: dict[str, Runner] = {
        TUTORIAL: tutorial,
        "GPU idiomatic DataLoader(batch_size=64, pin_memory)": idiomatic,
        BARE: bare,
        GUARDED: lambda n: bare(n, guard=True),
        BEST: lambda n: bare(n, best=True),
        "GPU cifarkit train_loop (defaults)": ours(),
        "GPU cifarkit train_loop(amp=True)": ours(amp=True),
        "GPU cifarkit train_loop(compile=True)": ours(compile=True),
        "GPU bare inference_mode, batch 256": bare_inference,
        "GPU cifarkit evaluate, batch 256": ours_evaluate,
        UINT8_BARE: lambda n: bare_inference(n, from_uint8=True),
        PER_BATCH: lambda n: ours_evaluate(n, loss_fn=cifarkit.losses.cross_entropy),
        "GPU VGG16 step 32 px, batch 32: bare": vgg(32, 32, through_cifarkit=False),
        "GPU VGG16 step 32 px, batch 32: cifarkit": vgg(32, 32, through_cifarkit=True),
    }
    variants.update(one_layer_variants(device, data))
    if device.type == "cuda":  # seconds per step on a CPU: left out of the CPU smoke test
        variants["GPU VGG16 step 224 px, batch 16: bare"] = vgg(224, 16, through_cifarkit=False)
        variants["GPU VGG16 step 224 px, batch 16: cifarkit"] = vgg(224, 16, through_cifarkit=True)
    if quick:  # compiling takes minutes on a small CPU
        del variants["GPU cifarkit train_loop(compile=True)"]
    return variants


ONE_HAND, ONE_OURS = "GPU one layer: hand loop, same work", "GPU one layer: cifarkit train_loop"
ONE_EVAL_HAND, ONE_EVAL_OURS = "GPU one layer: hand inference, same figures", "GPU one layer: cifarkit evaluate"
BASELINES.update({ONE_HAND: None, ONE_OURS: ONE_HAND, ONE_EVAL_HAND: None, ONE_EVAL_OURS: ONE_EVAL_HAND})
TOGETHER += [(ONE_HAND, ONE_OURS), (ONE_EVAL_HAND, ONE_EVAL_OURS)]


def one_layer_variants(device: torch.device, data: Any) -> dict[str, Runner]:
    """The fixed-cost pair of ``benchmarks/fixed_cost.py`` on ``device``: a step that is almost free
    on a GPU, so whatever the loop adds per step shows."""
    images, labels = data.images.to(device), data.labels.to(device)
    train_model, eval_model = fixed_cost.one_layer().to(device), fixed_cost.one_layer().to(device)

    def hand(n: int) -> int:
        n = min(n, len(labels))  # calibrate may ask for more than there is
        train_model.train()
        optimizer = torch.optim.SGD(train_model.parameters(), lr=0.01)
        fixed_cost.hand_epoch(train_model, optimizer, images, labels, torch.randperm(n, device=device))
        return n

    def ours(n: int) -> int:
        n = min(n, len(labels))  # calibrate may ask for more than there is
        loader = cifarkit.TensorLoader(images[:n], labels[:n], batch_size=64, seed=0, device=device)
        optim = torch.optim.SGD(train_model.parameters(), lr=0.01)
        cifarkit.train_loop(train_model, loader, optimizer=optim, device=device, progress=False)
        sync(device)
        return n

    def hand_eval(n: int) -> int:
        n = min(n, len(labels))  # calibrate may ask for more than there is
        fixed_cost.hand_figures(eval_model, images[:n], labels[:n])
        return n

    def ours_eval(n: int) -> int:
        n = min(n, len(labels))  # calibrate may ask for more than there is
        loader = cifarkit.TensorLoader(images[:n], labels[:n], batch_size=256, shuffle=False, device=device)
        cifarkit.evaluate(eval_model, loader, device=device)
        return n

    return {ONE_HAND: hand, ONE_OURS: ours, ONE_EVAL_HAND: hand_eval, ONE_EVAL_OURS: ours_eval}


def check_gpu_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The GPU issue's targets, each measured side by side in this run."""
    v = results["variants"]

    def ratio(name: str, base: str, key: str = "images_per_second") -> float:
        return float(v[name][key] / v[base][key])

    rows = [
        ("GPU cifarkit train_loop(amp=True) >= 0.9x the best hand loop",
         v["GPU cifarkit train_loop(amp=True)"]["vs_best"], 0.9),
        ("GPU cifarkit default >= 0.9x the bare fp32 GPU loop", v["GPU cifarkit train_loop (defaults)"]["ratio"], 0.9),
        ("GPU cifarkit default >= 20x the tutorial loop on the same GPU",
         ratio("GPU cifarkit train_loop (defaults)", TUTORIAL), 20.0),
        ("GPU evaluate >= 1.0x bare inference", v["GPU cifarkit evaluate, batch 256"]["ratio"], 1.0),
        ("GPU one layer: train_loop >= 0.9x the hand loop doing the same work", v[ONE_OURS]["ratio"], 0.9),
        ("GPU one layer: evaluate >= 0.9x the hand inference loop", v[ONE_EVAL_OURS]["ratio"], 0.9),
    ]  # fmt: skip
    return [
        {"what": what, "measured": round(got, 2), "status": "met" if got >= goal else "missed"}
        for what, got, goal in rows
    ]


class UtilisationSampler:
    """Samples ``nvidia-smi``'s GPU utilisation every 0.2 s in a thread (nothing without nvidia-smi)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> UtilisationSampler:
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"]
        while not self._stop.is_set():
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout
                self.samples.append((time.perf_counter(), float(out.strip().splitlines()[0])))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            self._stop.wait(0.2)

    def mean_between(self, intervals: list[tuple[float, float]]) -> float | None:
        """Mean utilisation (%) of the samples taken inside any of ``intervals``."""
        inside = [u for t, u in self.samples if any(a <= t <= b for a, b in intervals)]
        return sum(inside) / len(inside) if inside else None


def gpu_facts(device: torch.device) -> dict[str, Any]:
    """Device name, torch and CUDA versions (what a GPU result file records)."""
    if device.type != "cuda":
        return {"gpu": None, "cuda": None}
    props = torch.cuda.get_device_properties(device)
    return {
        "gpu": props.name,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "bf16": torch.cuda.is_bf16_supported(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
    }
