"""Runs `gerbil.train.train` under torchrun for tests/test_distributed.py (one process per rank, gloo).

    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_driver.py CONFIG_JSON [KILL_RANK KILL_STEP]

With KILL_RANK/KILL_STEP, that rank kills itself with SIGKILL at that training step (a crashed GPU or
node): torchrun then stops the whole job.
"""
import json
import os
import signal
import sys

import torch

torch.set_num_threads(1)
import gerbil.train.loop as T  # noqa: E402

cfg = T.TrainConfig.from_dict(json.loads(sys.argv[1]))
if len(sys.argv) > 3:
    kill_rank, kill_step, calls = int(sys.argv[2]), int(sys.argv[3]), [0]
    real = T.train_step

    def step(*a, **k):
        calls[0] += 1
        if calls[0] == kill_step and int(os.environ.get("RANK", "0")) == kill_rank:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)

    T.train_step = step
T.train(cfg)
