"""One process per local stage (archspec.train.distributed) against the single-process runner:
the same config and seed give the same losses per decoder, the same weights, optimizer and
schedule state after each step (compared with allclose, rtol 1e-5; on the CPU they come out
bitwise equal); resuming across the two runners; the CLI, torchrun and the error paths.

Four local stages, four processes. Every distributed run has a deadline and every rank a
communication timeout of 60 s, so a deadlock fails the test instead of hanging it.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from archspec.errors import UserError
from archspec.train.config import load_config
from archspec.train.distributed import train_distributed
from archspec.train.loop import load_run, read_log, train

from .conftest import LABELS, MICRO, ROOT, run_cli

TIMEOUT = 60  # seconds a rank waits for a message; and each run's deadline
# @pytest.mark.distributed: each test that starts ranks; the error paths refused before any
# process starts (and the loss-scale unit test) run in the quick loop.


@pytest.fixture(autouse=True)
def dist_timeout(monkeypatch):
    monkeypatch.setenv("ARCHSPEC_DIST_TIMEOUT", str(TIMEOUT))


def write_config(tmp_path, method, optimizer, name="run.yaml", **overrides):
    (tmp_path / "micro.yaml").write_text(MICRO)
    data = {"spec": "micro.yaml", "method": method,
            "data": {"kind": "synthetic", "size": 8, "channels": 1, "num_samples": 100},  # 80 train: 10 steps
            "batch": 8, "epochs": 1, "optimizer": {"name": optimizer, "lr": 0.05, "lr_scaling": "none",
                                                   "weight_decay": 1e-4},
            "schedule": {"warmup_steps": 2}, "decoders": {"hidden": 16, "out_dim": 16}, "temperature": 0.5,
            "augment": {"scale": [0.5, 1.0], "blur_p": 0.5},
            "device": "cpu", "threads": 1, "checkpoint_every": 100, "tensorboard": False, **overrides}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def max_diff(a, b, rtol=1e-5, atol=1e-7) -> float:
    """Largest absolute difference between two nested structures of tensors / numbers, which
    must have the same keys and shapes."""
    if isinstance(a, dict):
        assert list(a) == list(b)
        return max([max_diff(a[k], b[k], rtol, atol) for k in a], default=0.0)
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        return max([max_diff(x, y, rtol, atol) for x, y in zip(a, b)], default=0.0)
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol)
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    if isinstance(a, float):
        assert a == pytest.approx(b, rel=rtol, abs=atol)
        return abs(a - b)
    assert a == b
    return 0.0


def compare_runs(one, stage, step, rtol=1e-5, atol=1e-7):
    """The logs and the step-``step`` checkpoints of two runs: the same numbers."""
    log_one, log_stage = read_log(one), read_log(stage)
    numbers = lambda r: {k: v for k, v in r.items() if k not in ("images_per_s", "step_s")}  # noqa: E731
    assert [list(r) for r in log_one] == [list(r) for r in log_stage]
    diff = {"losses": max_diff([numbers(r) for r in log_one], [numbers(r) for r in log_stage], rtol, atol)}
    a = torch.load(one / "checkpoints" / f"step-{step:07d}.pt", weights_only=True)
    b = torch.load(stage / "checkpoints" / f"step-{step:07d}.pt", weights_only=True)
    assert list(a) == list(b)
    for key in a:
        diff[key] = max_diff(a[key], b[key], rtol, atol)
    return diff


@pytest.mark.distributed
@pytest.mark.parametrize("method, optimizer, entry", [
    ("gim", "sgd", "function"), ("loco", "lars", "cli"), ("simclr", "adam", "function")])
def test_a_distributed_step_equals_a_single_process_step(tmp_path, method, optimizer, entry):
    path = write_config(tmp_path, method, optimizer)
    cfg = load_config(path)
    train(cfg, tmp_path / "one", max_steps=3, progress=False)
    if entry == "cli":
        result = run_cli("train", str(path), "--out", str(tmp_path / "stage"), "--max-steps", "3",
                         "--processes", "stage", "--no-progress")
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"max_steps: step 3/10 of {method} on micro")
    else:
        result = train_distributed(cfg, tmp_path / "stage", max_steps=3, progress=False, deadline_s=TIMEOUT)
        assert (result.status, result.step, result.total_steps) == ("max_steps", 3, 10)
    diff = compare_runs(tmp_path / "one", tmp_path / "stage", 3)
    print(method, optimizer, "max abs difference:", diff)
    labels = LABELS[-1:] if method == "simclr" else LABELS
    assert [k[5:] for k in read_log(tmp_path / "stage")[0] if k.startswith("loss/")] == labels
    summary = json.loads((tmp_path / "stage" / "summary.json").read_text())
    assert summary["processes"] == 4 and summary["backend"] == "gloo"
    assert list(summary["max_rss_bytes"]) == LABELS
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == ["checkpoints", "config.yaml", "log.jsonl",
                                                                     "summary.json"]
    model, state = load_run(tmp_path / "stage")  # what archspec eval and plot read
    assert state["step"] == 3 and list(model.decoders) == labels


@pytest.mark.distributed
def test_resume_across_runners(tmp_path):
    """Two single-process steps, two distributed ones from that checkpoint, then one single-process
    step from the distributed checkpoint: the same as five steps in one go."""
    cfg = load_config(write_config(tmp_path, "loco", "sgd", checkpoint_every=2))
    train(cfg, tmp_path / "straight", max_steps=5, progress=False)
    train(cfg, tmp_path / "mixed", max_steps=2, progress=False)
    result = train_distributed(cfg, tmp_path / "mixed", max_steps=4, resume=True, progress=False,
                               deadline_s=TIMEOUT)
    assert (result.status, result.step) == ("max_steps", 4)
    train(cfg, tmp_path / "mixed", max_steps=5, resume=True, progress=False)
    diff = compare_runs(tmp_path / "straight", tmp_path / "mixed", 5)
    print("resume max abs difference:", diff)
    assert [r["step"] for r in read_log(tmp_path / "mixed")] == [1, 2, 3, 4, 5]


def test_errors_are_one_line(tmp_path):
    path = write_config(tmp_path, "gim", "sgd", batch=100)  # more than the 80 training images
    result = run_cli("train", str(path), "--out", str(tmp_path / "run"), "--processes", "stage")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "batch 100 is larger than the 80 training images" in result.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    result = run_cli("train", str(write_config(tmp_path, "gim", "sgd", name="ok.yaml")),
                     "--out", str(tmp_path / "full"), "--processes", "stage")
    assert result.exit_code == 2 and "already exists (hint: --resume" in result.output


# Two local stages (conv1+res2, res3): two processes for torchrun, which starts each from scratch.
MICRO2 = MICRO.split("  - {name: res4")[0] + "head: {fc: null}\n"


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("method, schedule, processes", [
    ("simclr", "sync", "stage"), ("loco", "pipelined", "stage"), ("gim", "sync", "one")])
def test_torchrun(tmp_path, method, schedule, processes):
    """The ranks of a torchrun launch (two local stages, or two data-parallel replicas of the
    whole network) equal the single process's."""
    path = write_config(tmp_path, method, "sgd", pipeline=schedule)
    (tmp_path / "micro.yaml").write_text(MICRO2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "archspec.train.distributed", str(path), "--out", str(tmp_path / "stage"), "--max-steps", "2",
           "--no-progress", "--processes", processes]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=2 * TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(f"max_steps: step 2/10 of {method} on micro, ") == 1, done.stdout  # rank 0 prints
    train(load_config(path), tmp_path / "one", max_steps=2, progress=False)
    compare_runs(tmp_path / "one", tmp_path / "stage", 2, **(DP_TOLERANCE if processes == "one" else {}))


# -- the pipelined schedule -------------------------------------------------------------------------
@pytest.mark.distributed
@pytest.mark.parametrize("method, optimizer", [("gim", "sgd"), ("loco", "lars")])
def test_pipelined_equals_its_single_process_reference(tmp_path, method, optimizer):
    """Four ranks pipelined over 7 steps with a checkpoint (a drained pipeline) at step 4 against
    the single-process runner with the same config, which applies the same delays
    (archspec.train.stale): the same losses, weights, optimizer and schedule state."""
    cfg = load_config(write_config(tmp_path, method, optimizer, pipeline="pipelined", checkpoint_every=4))
    train(cfg, tmp_path / "one", max_steps=7, progress=False)
    result = train_distributed(cfg, tmp_path / "stage", max_steps=7, progress=False, deadline_s=TIMEOUT)
    assert (result.status, result.step) == ("max_steps", 7) and result.summary["pipeline"] == "pipelined"
    for step in (4, 7):
        diff = compare_runs(tmp_path / "one", tmp_path / "stage", step)
        print(method, step, "max abs difference:", diff)
    assert [r["step"] for r in read_log(tmp_path / "stage")] == list(range(1, 8))


@pytest.mark.distributed
def test_pipelined_gim_is_exactly_gim_and_pipelined_loco_is_one_step_stale(tmp_path):
    """GIM has no delay: pipelined equals the synchronous single-process GIM. LoCo's stages but
    the last compute with weights one update old: its numbers equal synchronous LoCo's at step 1
    (no update yet) and differ from step 2 on (W_0 instead of W_1)."""
    gim = load_config(write_config(tmp_path, "gim", "sgd", name="gim.yaml", pipeline="pipelined"))
    train(load_config(write_config(tmp_path, "gim", "sgd", name="gim_sync.yaml")), tmp_path / "gim_sync",
          max_steps=3, progress=False)
    train_distributed(gim, tmp_path / "gim_pipe", max_steps=3, progress=False, deadline_s=TIMEOUT)
    compare_runs(tmp_path / "gim_sync", tmp_path / "gim_pipe", 3)

    stale = load_config(write_config(tmp_path, "loco", "sgd", name="loco.yaml", pipeline="pipelined"))
    sync = load_config(write_config(tmp_path, "loco", "sgd", name="loco_sync.yaml"))
    train(stale, tmp_path / "loco_stale", max_steps=3, progress=False)
    train(sync, tmp_path / "loco_sync", max_steps=3, progress=False)
    stale_log, sync_log = read_log(tmp_path / "loco_stale"), read_log(tmp_path / "loco_sync")
    assert stale_log[0]["loss/res3"] == sync_log[0]["loss/res3"]
    assert stale_log[0]["loss/res5"] == sync_log[0]["loss/res5"]
    assert stale_log[1]["loss/res3"] != sync_log[1]["loss/res3"]
    assert stale_log[1]["loss/res5"] != sync_log[1]["loss/res5"]  # exact itself, on a stale stage's output


@pytest.mark.distributed
def test_pipelined_resumes_across_runners(tmp_path):
    """Pipelined LoCo: 4 steps in one process, 2 pipelined ranks' steps from there, then 2
    single-process steps: the same as 8 steps in one process. (The delay restarts at every
    segment, so a resume is exact at multiples of checkpoint_every, here 2.)"""
    cfg = load_config(write_config(tmp_path, "loco", "adam", pipeline="pipelined", checkpoint_every=2))
    train(cfg, tmp_path / "straight", max_steps=8, progress=False)
    train(cfg, tmp_path / "mixed", max_steps=4, progress=False)
    train_distributed(cfg, tmp_path / "mixed", max_steps=6, resume=True, progress=False, deadline_s=TIMEOUT)
    train(cfg, tmp_path / "mixed", max_steps=8, resume=True, progress=False)
    compare_runs(tmp_path / "straight", tmp_path / "mixed", 8)


def test_simclr_cannot_be_pipelined(tmp_path):
    path = write_config(tmp_path, "simclr", "sgd")
    result = run_cli("train", str(path), "--out", str(tmp_path / "run"), "--processes", "stage",
                     "--schedule", "pipelined")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "simclr cannot be pipelined" in result.output


# -- data parallelism -------------------------------------------------------------------------------
# Replicas sum their gradients and all-reduce batch-norm statistics in another order than one
# process: float32 results agree to about 1e-6 after 3 steps; held to rtol 1e-4, atol 1e-5.
DP_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


@pytest.mark.distributed
@pytest.mark.parametrize("processes, method, optimizer, pipeline", [
    ("one", "simclr", "adam", "sync"), ("one", "gim", "lars", "sync"),
    ("stage", "loco", "sgd", "sync"), ("stage", "loco", "lars", "pipelined")])
def test_data_parallel_equals_one_process_on_the_whole_batch(tmp_path, processes, method, optimizer, pipeline):
    """Two replicas, each on half of every batch (two local stages each with --processes stage,
    so four ranks), against one process on the whole batch with the same config."""
    path = write_config(tmp_path, method, optimizer, pipeline=pipeline)
    (tmp_path / "micro.yaml").write_text(MICRO2)
    cfg = load_config(path)
    train(cfg, tmp_path / "one", max_steps=3, progress=False)
    result = train_distributed(cfg, tmp_path / "dp", max_steps=3, progress=False, deadline_s=TIMEOUT,
                               processes=processes, data_parallel=2)
    assert result.summary["data_parallel"] == 2
    assert result.summary["processes"] == (2 if processes == "one" else 4)
    diff = compare_runs(tmp_path / "one", tmp_path / "dp", 3, **DP_TOLERANCE)
    print(processes, method, pipeline, "max abs difference:", diff)
    model, state = load_run(tmp_path / "dp")  # the single-process format
    assert state["step"] == 3


@pytest.mark.distributed
def test_data_parallel_cli_and_uneven_batch(tmp_path):
    path = write_config(tmp_path, "gim", "sgd", batch=9)
    (tmp_path / "micro.yaml").write_text(MICRO2)
    result = run_cli("train", str(path), "--out", str(tmp_path / "run"), "--data-parallel", "2")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "batch 9 does not split into 2 equal shards" in result.output
    path = write_config(tmp_path, "gim", "sgd", name="ok.yaml")
    result = run_cli("train", str(path), "--out", str(tmp_path / "run"), "--data-parallel", "2", "--max-steps", "2",
                     "--no-progress")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("max_steps: step 2/10 of gim on micro") and "2 processes" in result.output


# -- failures --------------------------------------------------------------------------------------
@pytest.mark.distributed
def test_a_rank_that_dies_stops_every_rank_with_one_line(tmp_path, monkeypatch):
    """Rank 2 of 4 is killed (SIGKILL) after its third update: the others notice its closed
    sockets at once and the run fails with one line naming it, within seconds."""
    import time

    monkeypatch.setenv("ARCHSPEC_TEST_KILL", "2:3")
    cfg = load_config(write_config(tmp_path, "loco", "sgd", pipeline="pipelined"))
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        train_distributed(cfg, tmp_path / "run", progress=False, deadline_s=TIMEOUT)
    elapsed = time.monotonic() - started
    message = str(err.value)
    assert "\n" not in message and message.startswith("rank 2 of 4 died (signal SIGKILL)"), message
    assert elapsed < 30, elapsed


@pytest.mark.distributed
def test_a_bug_in_one_rank_names_the_rank_and_the_exception(tmp_path, monkeypatch):
    """An exception that is not a UserError (a bug) in rank 1 at step 2: the run fails with one
    line naming the rank and the exception, not "died without an error of its own", and the
    traceback is kept in the run directory."""
    monkeypatch.setenv("ARCHSPEC_TEST_KILL", "1:2:bug")
    cfg = load_config(write_config(tmp_path, "gim", "sgd"))
    with pytest.raises(UserError) as err:
        train_distributed(cfg, tmp_path / "run", progress=False, deadline_s=TIMEOUT)
    message = str(err.value)
    assert "\n" not in message, message
    assert message.startswith("rank 1 of 4 failed: RuntimeError: injected bug on rank 1 at step 2"), message
    kept = tmp_path / "run" / "traceback-rank1.txt"
    assert message.endswith(f"its traceback is in {kept})"), message
    assert "Traceback (most recent call last)" in kept.read_text() and "injected_fault" in kept.read_text()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("schedule", ["sync", "pipelined"])
def test_ctrl_c_checkpoints_every_rank(tmp_path, schedule):
    """SIGINT to `archspec train --processes stage`: every rank stops at the same step, the
    checkpoint is written, exit code 130; --resume goes on from it."""
    import signal
    import time

    path = write_config(tmp_path, "gim", "sgd", epochs=50, name="long.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "archspec.cli", "train", str(path), "--out", str(tmp_path / "run"),
           "--processes", "stage", "--schedule", schedule, "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.monotonic() + TIMEOUT
    while not (log.is_file() and log.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, out + err
    assert "interrupted: checkpoint" in err and "(continue with --resume)" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 2 <= summary["step"] < summary["total_steps"]
    _, state = load_run(tmp_path / "run")
    assert state["step"] == summary["step"]
    assert [r["step"] for r in read_log(tmp_path / "run")] == list(range(1, summary["step"] + 1))


# -- mixed precision --------------------------------------------------------------------------------
@pytest.mark.distributed
def test_bfloat16_pipelined_equals_its_single_process_reference(tmp_path):
    """dtype: bfloat16: float32 weights, autocast forward, 16-bit activations between ranks; the
    four pipelined ranks equal one process bitwise."""
    cfg = load_config(write_config(tmp_path, "loco", "sgd", pipeline="pipelined", dtype="bfloat16"))
    train(cfg, tmp_path / "one", max_steps=3, progress=False)
    train_distributed(cfg, tmp_path / "stage", max_steps=3, progress=False, deadline_s=TIMEOUT)
    compare_runs(tmp_path / "one", tmp_path / "stage", 3)
    _, state = load_run(tmp_path / "stage")
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())


def test_float16_trains_with_a_loss_scale_in_one_process_and_is_refused_per_stage(tmp_path):
    path = write_config(tmp_path, "gim", "adam", dtype="float16")
    result = train(load_config(path), tmp_path / "one", max_steps=3, progress=False)
    assert all(v < 10 for v in result.summary["final_losses"].values())
    _, state = load_run(tmp_path / "one")
    assert state["loss_scale"]["scale"] == 2.0 ** 16 and state["loss_scale"]["good_steps"] == 3
    result = run_cli("train", str(path), "--out", str(tmp_path / "stage"), "--processes", "stage")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "float16 needs a loss scale" in result.output


def test_loss_scale_skips_an_overflow_and_backs_off():
    from archspec.train.precision import LossScale

    scale = LossScale(scale=8.0, growth_interval=2)
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([8.0, 16.0, float("inf")])
    assert not scale.unscale([p]) and scale.scale == 4.0
    p.grad = torch.tensor([4.0, 8.0, 12.0])
    assert scale.unscale([p]) and p.grad.tolist() == [1.0, 2.0, 3.0] and scale.scale == 4.0
    p.grad = torch.tensor([4.0, 8.0, 12.0])
    assert scale.unscale([p]) and scale.scale == 8.0  # two good steps: doubled


@pytest.mark.distributed
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_pipelined_on_cuda_with_nccl(tmp_path):
    """The same runner on GPUs: NCCL for activations and gradients, gloo for the control messages."""
    path = write_config(tmp_path, "loco", "sgd", pipeline="pipelined", dtype="bfloat16", device="cuda",
                        deterministic=False)
    (tmp_path / "micro.yaml").write_text(MICRO2)
    cfg = load_config(path)
    result = train_distributed(cfg, tmp_path / "stage", max_steps=3, progress=False, deadline_s=TIMEOUT)
    assert result.summary["backend"] == "nccl" and result.step == 3
    train(cfg, tmp_path / "one", max_steps=3, progress=False)
    compare_runs(tmp_path / "one", tmp_path / "stage", 3, rtol=1e-2, atol=1e-3)


@pytest.mark.distributed
def test_a_non_finite_loss_stops_the_pipeline_with_one_line(tmp_path):
    """A learning rate of 1e12 makes res5's loss NaN at step 2: both runners name that step; the
    pipelined one drains first, so its checkpoint is a few steps later."""
    import dataclasses

    cfg = load_config(write_config(tmp_path, "loco", "sgd", pipeline="pipelined", temperature=0.01))
    cfg = dataclasses.replace(cfg, optimizer=dataclasses.replace(cfg.optimizer, lr=1e12))
    with pytest.raises(UserError) as one:
        train(cfg, tmp_path / "one", progress=False)
    with pytest.raises(UserError) as stage:
        train_distributed(cfg, tmp_path / "stage", progress=False, deadline_s=TIMEOUT)
    assert str(one.value).split(" (hint")[0] == str(stage.value).split(" (hint")[0]
    assert "'res5': nan} at step 2" in str(stage.value) and "checkpoint saved at step" in str(stage.value)
    _, state = load_run(tmp_path / "stage")
    assert state["step"] > 2


@pytest.mark.distributed
def test_data_parallel_resumes_across_runner_kinds(tmp_path):
    """2 steps in one process, 2 with two replicas of each of two stages (4 ranks) from that
    checkpoint, 1 in one process from theirs: the same as 5 steps in one process."""
    path = write_config(tmp_path, "loco", "sgd", checkpoint_every=2)
    (tmp_path / "micro.yaml").write_text(MICRO2)
    cfg = load_config(path)
    train(cfg, tmp_path / "straight", max_steps=5, progress=False)
    train(cfg, tmp_path / "mixed", max_steps=2, progress=False)
    train_distributed(cfg, tmp_path / "mixed", max_steps=4, resume=True, progress=False, deadline_s=TIMEOUT,
                      data_parallel=2)
    train(cfg, tmp_path / "mixed", max_steps=5, resume=True, progress=False)
    compare_runs(tmp_path / "straight", tmp_path / "mixed", 5, **DP_TOLERANCE)
