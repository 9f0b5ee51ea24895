"""One cifarkit training run under torchrun; rank 0 writes the global images/s of epoch 2."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

import cifarkit


def main() -> None:
    out, n = Path(sys.argv[1]), int(sys.argv[2])
    torch.manual_seed(0)
    data = cifarkit.synthetic_cifar10(n, seed=0)
    history = cifarkit.train_loop(cifarkit.build_cnn(), data.loader(batch_size=64, seed=0), epochs=2, device="cpu",
                                  progress=False)  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:
        epoch = history.epochs[-1]  # epoch 1 is the warm-up
        out.write_text(json.dumps({"images_per_second": epoch.images_per_second, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
