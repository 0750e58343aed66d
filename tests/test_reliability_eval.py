"""Reliability of `gerbil eval` (issue 19): --all-checkpoints over damaged checkpoints counts and skips each
one in a line and still prints the curve; --limit 0 or negative is refused before any model is loaded."""
from __future__ import annotations

import pytest

from gerbil.cli import main
from gerbil.errors import GerbilError
from helpers import TINY, prose_store

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_with_checkpoints(tmp_path_factory, tokenizer):
    """The tiny model trained 6 steps on real prose, a checkpoint every 2 (steps 2, 4, 6)."""
    from gerbil.train import train
    from gerbil.train.config import TrainConfig

    root = tmp_path_factory.mktemp("curves")
    store = prose_store(root, tokenizer)
    r = train(TrainConfig(model=dict(TINY), data=str(store), seq_len=32, batch_tokens=256, micro_batch=8,
                          tokens=256 * 6, lr=1e-2, warmup_tokens=256, runs=str(root / "runs"), name="curve",
                          val_tokens=512, progress=False, checkpoint_every=256 * 2, eval_every=256 * 6,
                          keep_checkpoints=0))
    return r.run_dir


def test_all_checkpoints_skips_each_damaged_checkpoint_in_one_line_and_keeps_the_curve(run_with_checkpoints, capsys):
    from gerbil.runs.rundir import RunDir, weights_file

    run = RunDir(run_with_checkpoints)
    ckpts = run.list_checkpoints()
    assert [c.name for c in ckpts] == ["step-00000002", "step-00000004", "step-00000006"]
    truncated, flipped = weights_file(ckpts[0]), weights_file(ckpts[1])
    truncated.write_bytes(truncated.read_bytes()[:-10])  # the size check finds it
    data = bytearray(flipped.read_bytes())
    data[-5] ^= 0xFF  # same size: only the hash (or the load) finds it
    flipped.write_bytes(bytes(data))
    assert main(["eval", str(run.path), "--all-checkpoints", "--tasks", "winogrande", "--limit", "2",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].split()[:3] == ["step", "winogrande", "acc"] and out[1].split()[0] == "6"
    assert out[2] == "skipped 2 damaged checkpoints:"
    assert out[3].startswith("  step-00000002: ") and "bytes" in out[3]
    assert out[4].startswith("  step-00000004: ") and "sha256" in out[4] and len(out) == 5


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_eval_limit_must_be_positive(tmp_path, limit, capsys):
    for extra in ([], ["--all-checkpoints"]):
        assert main(["eval", str(tmp_path), "--limit", limit, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"gerbil eval: error: --limit: must be > 0, got {limit}"
    from gerbil.eval.curves import evaluate_checkpoints

    with pytest.raises(GerbilError, match="--limit must be positive"):
        evaluate_checkpoints(tmp_path, "winogrande", limit=int(limit))
