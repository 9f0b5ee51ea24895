"""A worker started by tests/test_distributed.py, with the environment torchrun would set."""

from __future__ import annotations

import atexit
import gc
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from cifarkit import EMA, adapt, build_cnn, evaluate, fine_tune, synthetic_cifar10, train_loop
from cifarkit.distributed import context
from cifarkit.errors import DistributedError


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = synthetic_cifar10(512, seed=0).loader(batch_size=32, seed=11)
    eval_data = synthetic_cifar10(200, seed=1).loader(batch_size=64, shuffle=False)
    if mode == "train":
        history = train_loop(model, data, epochs=2, optimizer=optimizer, eval_data=eval_data, progress=False,
                             device="cpu", checkpoint=out / "ck.pt")  # fmt: skip
        torch.save(model.state_dict(), out / f"rank{rank}.pt")
        result = evaluate(model, eval_data, device="cpu")  # each rank its shard, counts summed over ranks
        figures = {"confusion": result.confusion.tolist(), "topk": result.topk, "count": result.count,
                   "ece": result.ece, "nll": result.nll}  # fmt: skip
        (out / f"rank{rank}.json").write_text(
            json.dumps({"history": history.to_dict(), "threads": torch.get_num_threads(), "evaluate": figures})
        )
    elif mode == "resume":  # a second launch: continue the checkpoint of "train" to 3 epochs
        history = train_loop(model, data, epochs=3, optimizer=optimizer, progress=False, device="cpu",
                             checkpoint=out / "ck.pt")  # fmt: skip
        torch.save(model.state_dict(), out / f"resumed{rank}.pt")
        (out / f"resumed{rank}.json").write_text(json.dumps({"history": history.to_dict()}))
    elif mode == "nccl":  # one rank over NCCL on the one GPU there is (NCCL refuses two ranks on one GPU)
        ctx = context(True, torch.device("cuda"))  # forms the NCCL group, as evaluate(distributed=True) would
        # A group of one rank trains as one process does (no DDP wrapper): the same figures.
        history = train_loop(model, data, epochs=1, optimizer=optimizer, eval_data=eval_data, progress=False,
                             device="cuda")  # fmt: skip
        summed = evaluate(model, eval_data, device="cuda", distributed=True)  # its counts all-reduced over NCCL
        plain = evaluate(model, eval_data, device="cuda", distributed=False)
        (out / "nccl.json").write_text(json.dumps({
            "history": history.to_dict(), "backend": dist.get_backend(), "device": str(ctx.device),
            "summed": [summed.count, summed.confusion.tolist()], "plain": [plain.count, plain.confusion.tolist()],
        }))  # fmt: skip
    elif mode == "finetune":  # two phases; the features unfreeze between epochs 1 and 2
        torch.manual_seed(0)
        net = adapt("mobilenet_v3_small")
        torch.save(net.state_dict(), out / f"start{rank}.pt")

        def after_phase_one(epoch: int, history: object) -> None:
            if epoch == 0:
                torch.save(net.state_dict(), out / f"frozen{rank}.pt")

        history = fine_tune(net, synthetic_cifar10(256, seed=0).loader(batch_size=32, seed=11), epochs=1,
                            freeze_epochs=1, device="cpu", progress=False, callbacks=[after_phase_one])  # fmt: skip
        torch.save(net.state_dict(), out / f"tuned{rank}.pt")
        (out / f"tuned{rank}.json").write_text(json.dumps({"history": history.to_dict()}))
    elif mode in ("elastic", "whole"):  # under torchrun --max-restarts: rank 1 dies once, after a checkpoint
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

        class KillOnce:
            def on_epoch_start(self, epoch: int, history: object) -> None:
                if mode == "elastic" and rank == 1 and restart == 0 and epoch == 1:
                    deadline = time.monotonic() + 120
                    while not (out / "ck.pt").exists() and time.monotonic() < deadline:
                        time.sleep(0.05)  # rank 0 writes epoch 1's checkpoint; die once it is there
                    os.kill(os.getpid(), signal.SIGKILL)

        history = train_loop(model, data, epochs=3, optimizer=optimizer, progress=False, device="cpu",
                             checkpoint=out / "ck.pt", callbacks=[KillOnce()])  # fmt: skip
        if rank == 0:
            torch.save(model.state_dict(), out / "model.pt")
            (out / "history.json").write_text(json.dumps({"history": history.to_dict(), "restart": restart}))
    elif mode == "ema":  # every rank must hold the same average, batch norms included
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                  torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 10))  # fmt: skip
        ema = EMA(0.9)
        train_loop(net, data, epochs=2, lr=0.05, eval_data=eval_data, progress=False, device="cpu", callbacks=[ema])
        torch.save({k: v.clone() for k, v in net.state_dict().items()}, out / f"ema{rank}.pt")
    elif mode == "plain":  # the ten-line reproduction, with cifarkit's setup of the group
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        context(True, torch.device("cpu"))
        total = torch.ones(1)
        torch.distributed.all_reduce(total)
        if rank == 1 and restart == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        torch.distributed.barrier()
        if rank == 0:
            (out / "plain.json").write_text(json.dumps({"sum": float(total), "restart": restart}))
    elif mode == "missing":  # a peer that never arrives
        try:
            context(True, torch.device("cpu"))
        except DistributedError as exc:
            (out / f"missing{rank}.json").write_text(json.dumps({"message": str(exc)}))
            sys.exit(1)
    elif mode == "die":
        # Only cifarkit's own collection at exit may free the failed run's reference cycles.
        gc.disable()

        def after_teardown() -> None:  # registered before cifarkit's handler, so it runs after it
            alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
            report = {"ddp_alive": alive, "initialized": dist.is_initialized()}
            (out / f"exit{rank}.json").write_text(json.dumps(report))

        atexit.register(after_teardown)

        def die_on_rank1(epoch: int, history: object) -> None:
            if rank == 1:
                os._exit(3)  # a crash: no goodbye to the other rank

        try:
            train_loop(
                model, data, epochs=3, optimizer=optimizer, progress=False, device="cpu", callbacks=[die_on_rank1]
            )
        except DistributedError as exc:
            (out / "rank0.json").write_text(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
            sys.exit(1)


if __name__ == "__main__":
    main()
