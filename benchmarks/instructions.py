"""What cifarkit adds per step, counted in instructions instead of seconds: each variant of
``fixed_cost.py`` (the one-layer model trained by ``train_loop`` and by the hand loop doing the
same work, evaluated by ``evaluate`` and by the hand loop computing the same figures) runs once,
on one thread, under ``valgrind --tool=callgrind``, which counts every instruction the process
executes. A count does not depend on the machine's other tenants, so it resolves a difference of
0.1% where wall-clock rounds on a shared VM spread by 10-40%; it says nothing of cache misses,
page faults or waiting, which only the timings in ``fixed_cost.py`` see.

Per step = (the variant's count - the count of a run that builds everything and trains nothing)
divided by its steps. Needs valgrind (``apt-get install -y valgrind``); about 15 minutes on 2 cores.

    python benchmarks/instructions.py          # writes results/instructions.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
if str(HERE) not in sys.path:  # the shared measuring code and the variants, next to this file
    sys.path.insert(0, str(HERE))
import bench  # noqa: E402
import fixed_cost  # noqa: E402

PASSES = 2  # whole passes over fixed_cost.PICTURES per variant
NOTHING = "nothing: build the data, the models and the variants"
COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def child(variant: str, passes: int, quick: bool = False) -> int:
    """Run ``variant`` (or nothing) for ``passes`` passes; return the pictures."""
    variants, size = fixed_cost.make_variants(quick)
    return 0 if variant == NOTHING else variants[variant](passes * size)


def collected(stderr: str) -> int:
    """The instruction count callgrind reports when the program ends ("Collected : N")."""
    found = COLLECTED.findall(stderr)
    if not found:
        msg = f"no instruction count in valgrind's output:\n{stderr[-2000:]}"
        raise RuntimeError(msg)
    return int(found[-1])


def count(variant: str, passes: int) -> int:
    """Instructions of one whole process that runs ``variant`` under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.out",
                   sys.executable, __file__, "--child", variant, "--passes", str(passes)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800, check=False)
    if done.returncode != 0:
        msg = f"{variant!r} failed under valgrind (exit {done.returncode}):\n{done.stderr[-2000:]}"
        raise RuntimeError(msg)
    return collected(done.stderr)


def per_step(counts: dict[str, int], steps: dict[str, int]) -> dict[str, Any]:
    """Instructions per step (or batch) of each variant, and what cifarkit adds to the hand loop's."""
    each = {name: (counts[name] - counts[NOTHING]) / steps[name] for name in steps}
    pairs = {
        "train": (fixed_cost.TRAIN_OURS, fixed_cost.TRAIN_HAND),
        "evaluate": (fixed_cost.EVAL_OURS, fixed_cost.EVAL_HAND),
    }
    return {
        "instructions_per_step": each,
        **{f"{what}_added_per_step": each[ours] - each[hand] for what, (ours, hand) in pairs.items()},
        **{f"{what}_added_share": each[ours] / each[hand] - 1 for what, (ours, hand) in pairs.items()},
    }


def lines(result: dict[str, Any]) -> list[str]:
    return [
        "",
        "Instructions (callgrind, one thread), one-layer model:",
        f"- train_loop adds {result['train_added_per_step']:,.0f} instructions per step to the hand loop's "
        f"({result['train_added_share']:+.2%})",
        f"- evaluate adds {result['evaluate_added_per_step']:,.0f} instructions per batch of 256 "
        f"({result['evaluate_added_share']:+.2%})",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--passes", type=int, default=PASSES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "instructions.json")
    args = parser.parse_args(argv)
    if args.child is not None:
        import torch

        torch.set_num_threads(1)  # one thread: the count is the work, not the threads' spinning
        child(args.child, args.passes)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install -y valgrind", file=sys.stderr)
        return 2
    batches = {fixed_cost.TRAIN_HAND: fixed_cost.TRAIN_BATCH, fixed_cost.TRAIN_OURS: fixed_cost.TRAIN_BATCH,
               fixed_cost.EVAL_HAND: fixed_cost.EVAL_BATCH, fixed_cost.EVAL_OURS: fixed_cost.EVAL_BATCH}  # fmt: skip
    steps = {name: PASSES * math.ceil(fixed_cost.PICTURES / batch) for name, batch in batches.items()}
    runs = [NOTHING, *batches]
    with ThreadPoolExecutor(max_workers=2) as pool:  # two one-thread processes on the two cores
        counts = dict(zip(runs, pool.map(count, runs, [PASSES] * len(runs)), strict=True))
    result = {"counts": counts, "steps": steps, **per_step(counts, steps), "machine": bench.machine()}
    args.out.write_text(json.dumps(result, indent=2))
    print("\n".join(lines(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
