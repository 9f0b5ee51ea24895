"""Device operations per step and per batch: ``fixed_cost.py``'s four variants (the one-layer
model trained and evaluated by cifarkit and by the hand loops doing the same work), every aten
call counted with a ``TorchDispatchMode``, the backward pass included.

A count does not depend on the machine's other tenants, so it shows what the loop adds where a
timing cannot resolve it. Per step (or batch): a call over 4,096 pictures less a call over 2,048,
over the extra steps; per call: what is left of the shorter call (the setup, the figures taken
once per epoch or per call).

    python benchmarks/op_count.py          # prints the table; writes results/op_count.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import cifarkit

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the variants' hand loops, next to this file
    sys.path.insert(0, str(HERE))
import fixed_cost as fc  # noqa: E402

PICTURES = 2_048


class CountOps(TorchDispatchMode):
    """Counts every aten operation dispatched while it is active, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def counted(run: Callable[[], object]) -> Counter[str]:
    with CountOps() as mode:
        run()
    return mode.counts


def op_counts() -> dict[str, Any]:
    """Operations per step (per batch) and per call, for the four variants."""
    data = cifarkit.synthetic_cifar10(2 * PICTURES, seed=0)
    sets = {n: (data.images[:n], data.labels[:n]) for n in (PICTURES, 2 * PICTURES)}
    model = fc.one_layer()

    def hand_train(n: int) -> None:
        net = fc.one_layer()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        fc.hand_epoch(net, optimizer, *sets[n], torch.randperm(n, generator=torch.Generator().manual_seed(0)))

    def ours_train(n: int) -> None:
        net = fc.one_layer()
        loader = cifarkit.TensorLoader(*sets[n], batch_size=fc.TRAIN_BATCH, seed=0)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        cifarkit.train_loop(net, loader, optimizer=optimizer, device="cpu", progress=False)

    def hand_evaluate(n: int) -> None:
        fc.hand_figures(model, *sets[n])

    def ours_evaluate(n: int) -> None:
        cifarkit.evaluate(model, cifarkit.TensorLoader(*sets[n], batch_size=fc.EVAL_BATCH, shuffle=False), device="cpu")

    ours_evaluate(PICTURES)  # the first call's one-time work (imports, placing the model) is no call's

    def split(run: Callable[[int], None], batch: int) -> dict[str, Any]:
        """Per step: the operations of a call over twice the pictures, less those of a call
        over ``PICTURES``, over the extra steps; per call: the rest of the shorter call."""
        short, long = counted(lambda: run(PICTURES)), counted(lambda: run(2 * PICTURES))
        steps = PICTURES // batch
        per_step = (sum(long.values()) - sum(short.values())) / steps
        extra = long.copy()
        extra.subtract(short)
        return {"per_step": per_step, "per_call": sum(short.values()) - steps * per_step,
                "per_step_by_name": {k: v / steps for k, v in sorted(extra.items()) if v}}  # fmt: skip

    return {
        "pictures": PICTURES,
        "train": {"cifarkit": split(ours_train, fc.TRAIN_BATCH), "hand": split(hand_train, fc.TRAIN_BATCH)},
        "evaluate": {"cifarkit": split(ours_evaluate, fc.EVAL_BATCH), "hand": split(hand_evaluate, fc.EVAL_BATCH)},
    }


def lines(result: dict[str, Any]) -> list[str]:
    """The Markdown table of the counts."""
    rows = [
        ("`train_loop`, per step (batch 64)", "train", "per_step"),
        ("`train_loop`, per call of one epoch (setup, once-per-epoch figures)", "train", "per_call"),
        ("`evaluate`, per batch of 256", "evaluate", "per_step"),
        ("`evaluate`, per call (setup, the figures of the gathered logits)", "evaluate", "per_call"),
    ]
    out = ["| one-layer model | cifarkit | the hand loop doing the same |", "|---|---|---|"]
    for label, what, per in rows:
        places = 1 if per == "per_step" else 0
        ours, hand = (result[what][side][per] for side in ("cifarkit", "hand"))
        out.append(f"| {label} | {ours:.{places}f} ops | {hand:.{places}f} ops |")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "op_count.json")
    args = parser.parse_args(argv)
    result = op_counts()
    args.out.write_text(json.dumps(result, indent=2))
    print("\n".join(lines(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
