"""The benchmark's --quick mode runs end to end (a smoke test: no assertion on timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


@pytest.mark.slow
def test_quick_benchmark_writes_a_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert {"machine", "variants", "targets", "rss_bytes_per_epoch"} <= set(figures)
    assert figures["machine"]["torch"] and figures["machine"]["cores"]
    for name, variant in figures["variants"].items():
        assert variant["images_per_second"] > 0, name
    assert "| variant | img/s | ratio |" in result.stdout
    best = figures["variants"]["cifarkit train_loop (defaults)"]["vs_best_same_precision"]
    assert best > 0 and figures["targets"][0]["what"].endswith("vs_best_same_precision >= 0.98")
    vgg = figures["vgg16"]["variants"]["VGG16 step, batch 32: cifarkit"]  # against the faster of 2 hand steps
    assert figures["vgg16"]["ratio"] == vgg["vs_best_same_precision"] > 0 and vgg["vs_max_per_round"] > 0
    assert vgg["best_loop"] in figures["vgg16"]["variants"] and "VGG16 step" not in str(list(figures["variants"]))
    assert "VGG16 step, batch 32: cifarkit: vs the faster hand step >= 0.97" in [t["what"] for t in figures["targets"]]
    assert "| VGG16 step (batch 32, fp32) |" in result.stdout
    fixed = figures["fixed_cost"]  # the one-layer model, and its two targets
    assert fixed["train_ratio"] > 0 and fixed["evaluate_ratio"] > 0 and "train_overhead_us_per_step" in fixed
    assert any(t["what"].startswith("one-layer model: train_loop >= 0.95x") for t in figures["targets"])
    assert "Fixed costs, one-layer model" in result.stdout
    assert figures["image_folder"]["files"] == 200 and figures["image_folder"]["files_per_second"] > 0
    assert figures["export"]["throughput_ratio"] > 0 and figures["export"]["latency_ratio"] > 0
    assert [t["what"] for t in figures["targets"][-5:-3]] == [
        "exported ONNX program: batch 256 throughput >= 1.0x eager PyTorch",
        "exported ONNX program: batch 1 latency >= 1.0x eager PyTorch",
    ]
    assert figures["finetune"]["phase2_ratio"] > 0 and figures["finetune"]["lr_find_ratio"] > 0
    assert figures["targets"][-1]["what"] == "lr_find sweep >= 0.97x the hand-written loop doing the same"
    assert "| cifarkit fine_tune, phase 2 |" in result.stdout
    assert "| onnxruntime, batch 256 |" in result.stdout


def test_a_round_runs_every_variant_twice_in_a_palindrome(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH.parent))
    import bench

    runs: list[str] = []
    now = [0.0]  # a fake clock: each run takes its variant's cost in seconds

    def variant(cost: float) -> bench.Runner:
        def run(n: int) -> int:
            now[0] += cost
            return n

        return run

    def timed(name: str, start: float, end: float) -> None:
        runs.append(name)

    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])  # undone after the test, however it ends
    figures = bench.measure({"a": variant(1.0), "b": variant(2.0), "c": variant(1.0)}, rounds=3, seconds=1.0,
                            baselines={"a": None}, bare="a", tutorial="a", same_precision={"c": ("a", "b")},
                            on_run=timed)  # fmt: skip
    assert len(runs) == 18 and all(runs[6 * r : 6 * r + 6] == runs[6 * r : 6 * r + 6][::-1] for r in range(3))
    assert sorted(runs[:3]) == ["a", "b", "c"]
    assert figures["a"]["ratio"] is None and figures["b"]["ratio"] == pytest.approx(0.5)
    assert figures["c"]["vs_best_same_precision"] == pytest.approx(1.0)


def test_a_target_and_its_loops_run_back_to_back_in_every_round(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH.parent))
    import bench

    runs: list[str] = []
    variants = {name: (lambda n: n) for name in "abcdef"}
    bench.measure(variants, rounds=8, seconds=0.01, baselines={"a": None}, bare="a", tutorial="a",
                  same_precision={}, on_run=lambda name, start, end: runs.append(name),
                  together=[("a", "b", "c"), ("d", "e")])  # fmt: skip
    assert len(runs) == 8 * 12
    orders = set()
    for r in range(8):
        this_round = runs[12 * r : 12 * r + 12]
        assert this_round == this_round[::-1]
        order = "".join(this_round[:6])
        assert sorted(order) == list("abcdef")
        assert abs(order.index("d") - order.index("e")) == 1
        abc = sorted(order.index(x) for x in "abc")
        assert abc[2] - abc[0] == 2  # the three in consecutive places
        orders.add(order)
    assert len(orders) > 1  # still shuffled: the groups' places and the order inside them change
    with pytest.raises(AssertionError):
        bench.measure(variants, rounds=1, seconds=0.01, baselines={"a": None}, bare="a", tutorial="a",
                      same_precision={}, together=[("a", "b"), ("b", "c")])  # fmt: skip


def test_the_best_loop_is_the_faster_over_the_run_not_the_faster_of_each_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(BENCH.parent))
    import bench

    runs: list[str] = []
    now = [0.0]
    # seconds a run, by round: "a" is steady, "b" is faster once and much slower twice, "c" matches "a"
    costs = {"a": [1.0, 1.0, 1.0, 1.0], "b": [0.8, 0.8, 2.0, 2.0], "c": [1.0, 1.0, 1.0, 1.0]}

    def variant(name: str) -> bench.Runner:
        def run(n: int) -> int:
            now[0] += costs[name][len(runs) // 6]  # 6 timed runs a round; calibration sees round 1's cost
            return n

        return run

    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    figures = bench.measure({k: variant(k) for k in costs}, rounds=4, seconds=1.0, baselines={"a": None}, bare="a",
                            tutorial="a", same_precision={"c": ("a", "b")},
                            on_run=lambda name, start, end: runs.append(name))  # fmt: skip
    assert len(runs) == 24
    c = figures["c"]
    assert c["best_loop"] == "a" and c["vs_best_same_precision"] == pytest.approx(1.0)
    # against the faster of each round: "b" in rounds 1-2 (0.8x), "a" in rounds 3-4 (1.0x)
    assert c["vs_max_per_round"] == pytest.approx(0.9)


@pytest.mark.slow
def test_the_gpu_table_runs_on_the_cpu_as_a_smoke_test(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, str(BENCH), "--gpu-variants", "--quick", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert "GPU cifarkit train_loop(amp=True)" in figures["variants"] and "nan_guard_share" in figures
    assert [t["what"].split(" >=")[0] for t in figures["targets"]] == [
        "GPU cifarkit train_loop(amp=True)", "GPU cifarkit default", "GPU cifarkit default", "GPU evaluate",
        "GPU one layer: train_loop", "GPU one layer: evaluate"]  # fmt: skip
    assert "NaN guard's host read" in result.stdout


def test_instruction_counts_come_from_callgrind_and_become_per_step_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """instructions.py: the count callgrind prints is read, the per-step figures are differences
    over a run that trains nothing, and a child process runs the variant it is named."""
    monkeypatch.syspath_prepend(str(BENCH.parent))
    import fixed_cost
    import instructions

    assert instructions.collected("==7== Events    : Ir\n==7== Collected : 1234567\n==7==\n") == 1_234_567
    with pytest.raises(RuntimeError, match="no instruction count"):
        instructions.collected("valgrind: command not found")
    seen: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(command)
        return subprocess.CompletedProcess(command, 0, "", f"==1== Collected : {1000 + len(seen)}\n")

    monkeypatch.setattr(instructions.subprocess, "run", fake_run)
    assert instructions.count(fixed_cost.TRAIN_OURS, 2) == 1001
    assert seen[0][:2] == ["valgrind", "--tool=callgrind"] and seen[0][-4:] == [
        "--child",
        fixed_cost.TRAIN_OURS,
        "--passes",
        "2",
    ]
    counts = {instructions.NOTHING: 100, fixed_cost.TRAIN_HAND: 1100, fixed_cost.TRAIN_OURS: 1150,
              fixed_cost.EVAL_HAND: 500, fixed_cost.EVAL_OURS: 520}  # fmt: skip
    steps = {fixed_cost.TRAIN_HAND: 10, fixed_cost.TRAIN_OURS: 10, fixed_cost.EVAL_HAND: 4, fixed_cost.EVAL_OURS: 4}
    figures = instructions.per_step(counts, steps)
    assert figures["instructions_per_step"][fixed_cost.TRAIN_OURS] == 105.0
    assert figures["train_added_per_step"] == 5.0 and figures["train_added_share"] == pytest.approx(0.05)
    assert figures["evaluate_added_per_step"] == 5.0 and figures["evaluate_added_share"] == pytest.approx(0.05)
    assert "+5.00%" in "\n".join(instructions.lines(figures))
    assert instructions.child(fixed_cost.TRAIN_OURS, 1, quick=True) == 2_048  # a real run, quick data
    assert instructions.child(instructions.NOTHING, 1, quick=True) == 0


def test_the_loop_and_evaluate_dispatch_no_more_operations_per_step_than_the_hand_loops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """op_count.py: counted operations, not timings. The loop's step and evaluate's batch do what
    the hand loops doing the same work do, no more (every aten call, the backward pass included);
    a cost added per step shows here on any machine."""
    monkeypatch.syspath_prepend(str(BENCH.parent))
    import op_count

    result = op_count.op_counts()
    train, evaluate = result["train"], result["evaluate"]
    assert 20 <= train["hand"]["per_step"] <= 60  # the counter saw the forward, backward and step
    assert train["cifarkit"]["per_step"] <= train["hand"]["per_step"]
    assert train["cifarkit"]["per_step_by_name"]["aten._foreach_norm"] == 1.0  # the norm stays measured
    assert evaluate["cifarkit"]["per_step"] <= evaluate["hand"]["per_step"]
    assert "| `evaluate`, per batch of 256 |" in "\n".join(op_count.lines(result))
