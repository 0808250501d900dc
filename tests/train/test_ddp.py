"""Distributed training (issue 12): two CPU processes with gloo take the same steps as one process
on the same global batches; only rank 0 writes; a distributed run resumes under the same and under
another world size; ``torchrun -m attnkit train g2p`` runs and resumes."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from attnkit.tasks.g2p import G2PTask
from attnkit.train import TrainConfig, Trainer, checkpoint

MODELS = {
    "rnn": {"hidden_dim": 16, "embed_dim": 8, "dropout": 0.0},
    "transformer": {"d_model": 16, "heads": 2, "ff_dim": 32, "encoder_layers": 1, "decoder_layers": 1, "dropout": 0.0},
}
# 120 words spread over the split (133 pronunciations): global batches of 13 rows, split 7 + 6, and a
# last one of 3
CONFIG = {"epochs": 3, "batch_size": 13, "lr": 3e-3, "warmup_steps": 2, "checkpoint_every": 4, "seed": 3}


def _trainer(model, out, **changes):
    task = G2PTask(model, MODELS[model], limit=120, valid_limit=4)
    return Trainer(task, TrainConfig(**{**CONFIG, **changes}), out, progress=False)


def _params(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _worker(rank, world, rdzv, model, out, steps, resume, result):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    try:
        trainer = _trainer(model, out)
        trainer.fit(resume=resume, max_steps=steps)
        torch.save({"params": _params(trainer), "losses": trainer.losses}, f"{result}.{rank}")
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path, model, out, steps, resume=False, world=2):
    rdzv = tmp_path / f"rdzv-{os.urandom(4).hex()}"
    result = tmp_path / "result"
    mp.spawn(_worker, args=(world, str(rdzv), model, str(out), steps, resume, str(result)), nprocs=world)
    return [torch.load(f"{result}.{r}") for r in range(world)]


def _close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if k.endswith("k_proj.bias"):
            # a bias added to every key shifts a query's scores alike: softmax ignores it, its gradient
            # is rounding noise, and Adam turns noise into steps of size lr whose signs are the noise's
            continue
        # atol: Adam divides each gradient by its running RMS, so an element whose gradient is near zero
        # turns the two runs' different summation order into a step difference of up to lr (3e-3); one
        # such element of the Transformer's ff.3.bias differs by 5.6e-5, every other element by < 1e-6
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4, msg=k)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("model", ["rnn", "transformer"])
def test_two_processes_take_the_steps_of_one_on_the_global_batch(tmp_path, model):
    single = _trainer(model, tmp_path / "one")
    per_epoch = len(single._epoch_batches(0))
    steps = per_epoch + 1  # past the end of epoch 1, its validation and checkpoint included
    ranks = _spawn(tmp_path, model, tmp_path / "ddp", steps)
    single.fit(max_steps=steps)
    for r in ranks:  # every process holds the same model, equal to one process's
        _close(r["params"], _params(single))
    torch.testing.assert_close(torch.tensor(ranks[0]["losses"]), torch.tensor(single.losses), rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    meta = checkpoint.read_meta(tmp_path / "ddp" / "last.safetensors")
    assert meta["progress"]["world_size"] == 2 and len(meta["progress"]["history"]) == 1
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        "best.safetensors",
        "config.json",
        "history.json",
        "last.safetensors",
    ]


def test_a_distributed_run_resumes_under_the_same_and_another_world_size(tmp_path):
    _spawn(tmp_path, "rnn", tmp_path / "run", 8)  # checkpoints at steps 4 and 8
    assert checkpoint.read_meta(tmp_path / "run" / "last.safetensors")["progress"]["step"] == 8
    shutil.copytree(tmp_path / "run", tmp_path / "run1")
    two = _spawn(tmp_path, "rnn", tmp_path / "run", 5, resume=True)  # 2 -> 2, over the epoch's end
    one = _trainer("rnn", tmp_path / "run1")  # 2 -> 1: the same global batches, now on one process
    one.fit(resume=True, max_steps=5)
    fresh = _trainer("rnn", tmp_path / "fresh")
    fresh.fit(max_steps=13)
    _close(two[0]["params"], _params(fresh))
    _close(_params(one), _params(fresh))
    torch.testing.assert_close(torch.tensor(one.losses), torch.tensor(fresh.losses[8:]), rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "run1" / "config.json").read_text())["world_size"] == 1


def test_torchrun_trains_and_resumes_through_python_m_attnkit(tmp_path):
    out = tmp_path / "run"
    tiny = ["--hidden-dim", "8", "--embed-dim", "4", "--limit", "30", "--valid-limit", "3", "--batch-size", "8"]
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(*flags):
        cmd = [*base, "-m", "attnkit", "train", "g2p", *flags, "--out", str(out), "--no-progress"]
        return subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=300)

    run = torchrun(*tiny, "--epochs", "1")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("parameters ->") == 1 and "2 processes" in run.stdout  # rank 0 alone speaks
    assert run.stdout.count("done after 1 epochs") == 1
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    again = torchrun("--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("done after 1 epochs") == 1


def test_a_process_without_rows_joins_with_a_share_of_zero():
    from attnkit.train.distributed import shard

    batch = (torch.arange(6).view(3, 2), (torch.arange(3),))
    part, share = shard(batch, lambda b: b[0].shape[0], 1, 2)
    assert part[0].tolist() == [[2, 3]] and part[1][0].tolist() == [1] and share == 1 / 3
    single = (torch.arange(2).view(1, 2), (torch.arange(1),))
    part, share = shard(single, lambda b: b[0].shape[0], 1, 2)  # rank 1 of 2, one row: the row, weighted 0
    assert part[0].tolist() == [[0, 1]] and share == 0.0
