"""Held-out accuracy of the same run in fp32 and with amp=True (bf16 autocast).

The run of the training issue: build_cnn(activation="relu"), SGD(lr=0.01, momentum=0.9),
batch 64, 5 epochs on 10,000 built-in images (seed 0), evaluated on 2,000 images of seed 1.
Prints one JSON line; slow where the CPU has no native bf16 (bf16 is emulated there).
"""

from __future__ import annotations

import json
import time

import torch

import cifarkit


def run(amp: bool) -> dict[str, float]:
    torch.manual_seed(0)
    train = cifarkit.synthetic_cifar10(10_000, seed=0)
    test = cifarkit.synthetic_cifar10(2_000, seed=1)
    model = cifarkit.build_cnn(activation="relu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    start = time.perf_counter()
    history = cifarkit.train_loop(model, train.loader(batch_size=64, seed=0), epochs=5, optimizer=optimizer,
                                  eval_data=test.loader(batch_size=256, shuffle=False), amp=amp, device="cpu",
                                  progress=False)  # fmt: skip
    return {"eval_accuracy": history.epochs[-1].eval_accuracy or 0.0, "seconds": time.perf_counter() - start}


if __name__ == "__main__":
    fp32, bf16 = run(False), run(True)
    print(
        json.dumps(
            {"fp32": fp32, "amp_bf16": bf16, "difference_points": 100 * (bf16["eval_accuracy"] - fp32["eval_accuracy"])}
        )
    )
