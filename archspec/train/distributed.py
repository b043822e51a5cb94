"""One process per local stage: starting the ranks (spawned here, or under torchrun).

Rank k owns local stage k (its stages' modules, optimizer and schedule) and the decoder on it
(SimCLR: only the last rank has one). Rank 0 also does everything the single-process runner
(:mod:`archspec.train.loop`) does around the network: it reads the data in the same order,
makes the two augmented views with the same generator, writes ``log.jsonl``, the checkpoints
and ``summary.json`` in the same formats. Start it either way::

    archspec train CONFIG --processes stage [--schedule sync|pipelined]
    torchrun --nproc-per-node N -m archspec.train.distributed CONFIG [--out DIR] [--max-steps S]

The pieces: :mod:`archspec.train.stage_runner` (one rank's setup and loop),
:mod:`archspec.train.schedule` (the sync and pipelined schedules; what is stale, and why),
:mod:`archspec.train.stale` (the pipelined arithmetic in one process, the tests' reference),
:mod:`archspec.train.stage_checkpoint` (checkpoints in the single-process format) and
:mod:`archspec.train.transport` (messages, bounded send queues, lost peers).

A rank that dies closes its sockets: the ranks waiting for it fail at once with one line,
and a spawning parent stops every other rank and reports which rank died (within seconds, not
torch's 30-minute timeout). A rank that hangs is given up after $ARCHSPEC_DIST_TIMEOUT seconds
(default 600).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from archspec.errors import UserError
from archspec.io import write_text_atomic
from archspec.train.config import TrainConfig
from archspec.train.loop import RunResult
from archspec.train.rundir import check_run_dir, dump_config
from archspec.train.runlog import result_line
from archspec.train.session import torch_settings
from archspec.train.ranks import peak_rss_bytes, rank_device, stage_plan
from archspec.train.stage_runner import StageRunner
from archspec.train.transport import default_timeout_s, peer_failure


__all__ = ["PRELOAD", "StageRunner", "launched_by_torchrun", "main", "peak_rss_bytes", "run_rank", "stage_plan",
           "train_distributed"]


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (or another launcher) started with RANK and WORLD_SIZE."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


# -- running one rank ---------------------------------------------------------------------------------
def run_rank(cfg: TrainConfig, out: Path | str, rank: int, world: int, *, local_rank: int | None = None,
             local_world: int | None = None, init_method: str = "env://", max_steps: int | None = None,
             resume: bool = False, progress: bool | None = None, on_step=None, timeout_s: float | None = None,
             stop_file: str | None = None, processes: str = "stage") -> RunResult:
    """Join the process group as ``rank`` of ``world``, train, leave. Every rank calls this.
    ``processes``: ``stage`` (a StageRunner: one local stage per rank) or ``one`` (a
    ReplicaRunner: the whole network, one data-parallel replica per rank)."""
    from archspec.train.replica_runner import ReplicaRunner

    out = Path(out)
    local_rank = rank if local_rank is None else local_rank
    local_world = world if local_world is None else local_world
    device = rank_device(cfg.device, local_rank, local_world)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # N processes share the machine's cores unless the config says otherwise.
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // local_world)
    timeout = datetime.timedelta(seconds=timeout_s or default_timeout_s())
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world, timeout=timeout)
    runner = None
    try:
        with torch_settings(threads, cfg.deterministic):
            kind = StageRunner if processes == "stage" else ReplicaRunner
            runner = kind(cfg, out, rank, world, device, progress, resume, stop_file)
            if rank == 0 and not resume:
                out.mkdir(parents=True, exist_ok=True)
                write_text_atomic(out / "config.yaml",
                                  dump_config(dataclasses.replace(cfg, output=str(out.resolve()))))
            return runner.run(max_steps=max_steps, on_step=on_step)
    except RuntimeError as exc:  # a peer that died or hung: one line, not gloo's traceback
        lost = peer_failure(exc, rank, getattr(runner, "label", "replica") if runner is not None else "setup")
        if lost is None:
            raise
        raise lost from None
    finally:
        dist.destroy_process_group()


def _spawned(index: int, world: int, init_method: str, cfg: TrainConfig, out: Path, max_steps, resume, progress,
             timeout_s, talk: str, processes: str, env: dict) -> None:
    """One spawned rank. ``talk``: the parent's folder for the stop file and the error lines
    (files, so that nothing needs a semaphore or an interpreter teardown)."""
    import multiprocessing
    import threading

    from tqdm import tqdm

    os.environ.update(env)  # the parent's ARCHSPEC_* settings (a forkserver has its own environment)
    parent = multiprocessing.parent_process()
    if parent is not None:  # a rank whose parent died (killed, or a Ctrl-C before it could wait) goes too
        threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True).start()
    tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock: a semaphore os._exit would leak
    code = 0
    try:
        run_rank(cfg, out, index, world, init_method=init_method, max_steps=max_steps, resume=resume,
                 progress=progress, timeout_s=timeout_s, stop_file=os.path.join(talk, "stop"), processes=processes)
    except UserError as err:  # to the parent as one line; a lost peer's line only if nothing better is known
        kind = "lost" if getattr(err, "secondary", False) else "error"
        write_text_atomic(Path(talk) / f"{kind}-{index:04d}.json", json.dumps([str(err), err.exit_code]))
        code = err.exit_code
    except Exception as exc:  # a bug: its traceback on stderr and to the parent, which keeps it
        import traceback

        traceback.print_exc()
        line = "".join(traceback.format_exception_only(exc)).strip().splitlines()[-1]
        write_text_atomic(Path(talk) / f"bug-{index:04d}.json", json.dumps([line, traceback.format_exc()]))
        code = 1
    # Everything is written (rank 0 closed and renamed its files); skip the interpreter's
    # teardown, which takes about 2 s with torch loaded.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# What a rank imports anyway: torch._dynamo comes with the first optimizer (torch's
# Optimizer.__init__ imports it), torch._meta_registrations with the first meta tensor.
PRELOAD = ["torch", "torch._dynamo", "torch._meta_registrations", "archspec.train.distributed",
           "archspec.train.replica_runner",
           "archspec.train.augment", "archspec.train.data", "archspec.train.methods", "archspec.train.optim"]


def _start_method() -> str:
    """``forkserver`` where there is one: a clean server process (it has run nothing, so no
    thread pools) imports torch and the runner once, then forks every rank, so no rank imports
    them again and a later run from the same process reuses the server; else ``spawn``."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return "spawn"
    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    return "forkserver"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_all(context) -> None:
    for p in context.processes:
        if p.is_alive():
            p.terminate()
    for p in context.processes:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()


def train_distributed(cfg: TrainConfig, out: Path | str, *, max_steps: int | None = None, resume: bool = False,
                      progress: bool | None = None, on_step=None, timeout_s: float | None = None,
                      deadline_s: float | None = None, processes: str = "stage", data_parallel: int = 1) -> RunResult:
    """Train ``cfg`` into ``out`` with one process per local stage (``processes="stage"``) or
    with ``data_parallel`` replicas of the whole network (``processes="one"``); arguments as
    :func:`archspec.train.loop.train`. In a process started by torchrun (RANK and WORLD_SIZE
    set) this process is one rank; otherwise it spawns the processes on this machine (a free
    port on 127.0.0.1) and waits for them. ``timeout_s``: how long a rank waits for a message
    before failing (default 600 s, or $ARCHSPEC_DIST_TIMEOUT);
    ``deadline_s``: spawned runs only, stop every process and fail after this many seconds.
    ``on_step`` runs on rank 0 and only under torchrun."""
    out = Path(out)
    if launched_by_torchrun():
        env = os.environ
        world = int(env["WORLD_SIZE"])
        return run_rank(cfg, out, int(env["RANK"]), world, local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
                        local_world=int(env.get("LOCAL_WORLD_SIZE", world)), max_steps=max_steps, resume=resume,
                        progress=progress, on_step=on_step, timeout_s=timeout_s, processes=processes)
    if on_step is not None:
        raise UserError("on_step needs the ranks in this process: start the run with torchrun")
    from archspec.train.config import load_training_spec

    stages = len(stage_plan(load_training_spec(cfg))[0]) if processes == "stage" else 1
    world = stages * data_parallel
    from archspec.train.replica_runner import check_batch
    from archspec.train.ranks import check_stage_dtype

    check_batch(cfg, data_parallel)
    if processes == "stage":
        check_stage_dtype(cfg)
    check_run_dir(cfg, out, resume)  # fail here, with one line, before starting any process
    import shutil
    import tempfile

    timeout_s = timeout_s or default_timeout_s()  # read here: a forkserver's ranks have the server's environment

    import torch.multiprocessing as tmp

    talk = tempfile.mkdtemp(prefix="archspec-ranks-")
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    interrupts, context = [], None

    def on_sigint(signum, frame):  # the first Ctrl-C: every rank stops after its current step
        interrupts.append(signum)
        Path(talk, "stop").touch()
        if len(interrupts) > 1:  # the second: at once
            if context is not None:
                _stop_all(context)
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread
        previous = None
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    try:
        context = tmp.start_processes(_spawned, args=(world, init_method, cfg, out, max_steps, resume, progress,
                                                      timeout_s, talk, processes,
                                                      {k: v for k, v in os.environ.items() if k.startswith("ARCHSPEC_")}),
                                      nprocs=world, join=False, start_method=_start_method())
        while not context.join(timeout=0.1, grace_period=10):
            if deadline is not None and time.monotonic() > deadline:
                _stop_all(context)
                raise UserError(f"the {world} processes did not finish within {deadline_s:g} s (hint: a rank is "
                                f"stuck or the machine is overloaded)")
    except (tmp.ProcessRaisedException, tmp.ProcessExitedException) as exc:
        raise _rank_failure(exc, context, talk, world, out) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        shutil.rmtree(talk, ignore_errors=True)
    summary = json.loads((out / "summary.json").read_text())
    return RunResult(summary["status"], summary["step"], summary["total_steps"], out, summary)


def _rank_failure(exc, context, talk: str, world: int, out: Path) -> UserError:
    """The one line for a spawned run that failed: the lowest rank's own error; else the rank
    that died without one (killed, out of memory, a crash), the first that torch saw fail
    first; else a lost peer's line."""
    import signal as signals

    import torch.multiprocessing as tmp

    _stop_all(context)
    reported = sorted(Path(talk).glob("error-*.json"))
    if reported:
        return _reported(reported[0])
    bugs = sorted(Path(talk).glob("bug-*.json"))
    if bugs:  # a rank's own exception, not a UserError: its line, and its traceback kept in the run
        line, trace = json.loads(bugs[0].read_text())
        rank = int(bugs[0].stem[4:])
        kept = out / f"traceback-rank{rank}.txt"
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(kept, trace)
        return UserError(f"rank {rank} of {world} failed: {line}; the other ranks were stopped "
                         f"(hint: a bug; its traceback is in {kept})")
    codes = [p.exitcode for p in context.processes]
    said = lambda r: Path(talk, f"lost-{r:04d}.json").exists()  # noqa: E731
    if isinstance(exc, tmp.ProcessRaisedException):  # a bug: the exception's last line
        last = [line for line in str(exc).splitlines() if line.strip()]
        return UserError(f"rank {exc.error_index} failed: {last[-1] if last else exc}")
    first = [exc.error_index] if not said(exc.error_index) else []
    # ranks that died on their own: not those stopped here (SIGTERM) or that said why
    silent = first + [r for r, code in enumerate(codes) if code not in (0, None, -signals.SIGTERM) and not said(r)]
    if silent:
        r, code = silent[0], codes[silent[0]]
        how = f"signal {signals.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        err = UserError(f"rank {r} of {world} died ({how}) without an error of its own; the other ranks were "
                        f"stopped (hint: out of memory? see the system log; resume with --resume)")
        err.exit_code = 1
        return err
    lost = sorted(Path(talk).glob("lost-*.json"))
    return _reported(lost[0]) if lost else UserError(f"the ranks failed: {exc}")


def _reported(path: Path) -> UserError:
    message, code = json.loads(path.read_text())
    err = UserError(message)
    err.exit_code = code
    return err


def _command():
    import click

    @click.command("python -m archspec.train.distributed")
    @click.argument("config", type=click.Path(dir_okay=False))
    @click.option("--out", "out_dir", type=click.Path(file_okay=False),
                  help="Run directory (default: the config's 'output', else runs/<config name>).")
    @click.option("--max-steps", type=click.IntRange(min=1), help="Stop at this global step.")
    @click.option("--resume", is_flag=True, help="Continue the run from its newest checkpoint.")
    @click.option("--memory-budget", metavar="SIZE", help="Refuse to start if the estimated peak memory exceeds SIZE.")
    @click.option("--progress/--no-progress", default=None, help="Progress bar on rank 0.")
    @click.option("--schedule", type=click.Choice(["sync", "pipelined"]), default=None,
                  help="sync or pipelined (gim, loco); default: the config's 'pipeline'.")
    @click.option("--processes", type=click.Choice(["one", "stage"]), default="stage", show_default=True,
                  help="stage: one local stage per rank; one: the whole network per rank, every rank a "
                       "data-parallel replica.")
    @click.option("--data-parallel", "data_parallel", type=click.IntRange(min=1), default=1, show_default=True,
                  help="Replicas when this command spawns the processes (under torchrun: from WORLD_SIZE).")
    def command(config, out_dir, max_steps, resume, memory_budget, progress, schedule, processes, data_parallel):
        """``archspec train CONFIG --processes stage``: one process per local stage. Under
        torchrun, rank 0 validates the config and prints; every rank trains its stage."""
        from archspec.train.config import default_output, load_config, validate_config
        from archspec.vocabulary import parse_bytes

        rank0 = int(os.environ.get("RANK", "0")) == 0
        from archspec.commands.train import with_schedule

        cfg = with_schedule(load_config(config), schedule)
        if rank0:  # the others wait for it in the process group (torchrun stops them if it fails)
            validate_config(cfg, memory_budget=parse_bytes(memory_budget, "--memory-budget") if memory_budget else None)
        out = Path(out_dir) if out_dir else default_output(cfg)
        result = train_distributed(cfg, out, max_steps=max_steps, resume=resume, progress=progress,
                                   processes=processes, data_parallel=data_parallel)
        s = result.summary
        if rank0:
            click.echo(result_line(result, cfg.method, s["processes"]))
        if result.status == "interrupted":
            if rank0:
                click.echo(f"interrupted: checkpoint {out / s['checkpoint']} saved (continue with --resume)", err=True)
            raise click.exceptions.Exit(130)

    return command


def main(argv=None) -> int:
    """``python -m archspec.train.distributed CONFIG [options]`` (under torchrun, or spawning
    its own processes): errors as one line on rank 0, exit code 2."""
    import click

    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        code = _command().main(args=argv, standalone_mode=False)
    except UserError as err:
        if rank0:
            click.echo(f"error: {err}", err=True)
        return err.exit_code
    except click.ClickException as err:
        if rank0:
            click.echo(f"error: {err.format_message()}", err=True)
        return err.exit_code
    except click.Abort:
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())

