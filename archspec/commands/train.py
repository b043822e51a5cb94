"""``archspec train``, ``archspec eval`` and ``archspec plot``; ``archspec validate CONFIG``
delegates here for training configs. Heavy imports live inside the commands."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from archspec.errors import UserError


def _print_validation(path: str, cfg, report, ranks=None, processes: str = "one", data_parallel: int = 1) -> None:
    from archspec.vocabulary import format_bytes

    mem = report.memory
    decoders = ", ".join(f"{label} ({c}x{h}x{w})" for label, (c, h, w) in report.decoders.items())
    click.echo(f"ok: {path}: {cfg.method} on {report.spec_name} at {report.input_size}x{report.input_size}, "
               f"{report.params:,} encoder parameters, local stages {', '.join(report.local_stages)}")
    click.echo(f"  decoders fit: {decoders}")
    budget = f" (budget {format_bytes(report.memory_budget)})" if report.memory_budget else ""
    if ranks is None:
        click.echo(f"  estimated peak training memory: {format_bytes(mem['total'])}{budget} at batch {cfg.batch} "
                   f"({2 * cfg.batch} images), {cfg.dtype}, {cfg.optimizer.name}; peak at {mem['peak_at']}")
    else:
        _print_ranks(cfg, mem, ranks, processes, data_parallel, report.memory_budget)
    if report.data_path is not None:
        state = "found" if report.data_found else "not found (needed by 'archspec train'; --check-data makes this an error)"
        click.echo(f"  data: {cfg.data.kind} at {report.data_path}: {state}")
    else:
        click.echo(f"  data: {cfg.data.kind} (built in, nothing to look for)")


def _rank_list(ranks) -> str:
    """``2``, ``2, 8`` or ``2, 8, ..., 20`` (every data-parallel replica's rank of a stage); ``0-3``."""
    if len(ranks) > 2 and list(ranks) == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ", ".join(map(str, ranks)) if len(ranks) <= 3 else f"{ranks[0]}, {ranks[1]}, ..., {ranks[-1]}"


def _ranks_words(ranks) -> str:
    return f"rank{'s' if len(ranks) > 1 else ''} {_rank_list(ranks)}"


def _run_words(cfg, processes: str, data_parallel: int) -> str:
    shard = cfg.batch // data_parallel
    what = (f"--processes stage, {cfg.pipeline} schedule" if processes == "stage" else "--processes one")
    replicas = f", --data-parallel {data_parallel}" if data_parallel > 1 else ""
    return (f"{what}{replicas}, batch {cfg.batch}: {2 * shard} images per rank, {cfg.dtype}, "
            f"{cfg.optimizer.name}")


def _print_ranks(cfg, mem: dict, ranks, processes: str, data_parallel: int, budget: int | None) -> None:
    """The table of every rank's estimated peak (archspec.profiling.rank_memory) and the largest."""
    from archspec.vocabulary import format_bytes

    world = sum(len(r.ranks) for r in ranks)
    click.echo(f"  estimated peak memory of each of the {world} ranks ({_run_words(cfg, processes, data_parallel)}):")
    parts = ("weights", "gradients", "optimizer", "decoders", "activations")
    width = max([5] + [len(_rank_list(r.ranks)) for r in ranks])
    stage_width = max([11] + [len(r.stages) for r in ranks])
    click.echo(f"    {'rank':>{width}}  {'local stage':<{stage_width}}" + "".join(f" {p:>11}" for p in parts)
               + f" {'peak':>11}")
    for r in ranks:
        click.echo(f"    {_rank_list(r.ranks):>{width}}  {r.stages:<{stage_width}}"
                   + "".join(f" {format_bytes(getattr(r.peak, p)):>11}" for p in parts)
                   + f" {format_bytes(r.peak.total):>11}")
    top = max(ranks, key=lambda r: r.peak.total)
    per = f" (budget {format_bytes(budget)} per device)" if budget else ""
    one = f"; one process: {format_bytes(mem['total'])}" if processes == "stage" or data_parallel > 1 else ""
    click.echo(f"  largest: {_ranks_words(top.ranks)} ({top.stages}), {format_bytes(top.peak.total)}{per}{one}")


def validate_training_config(path: str, memory_budget: str | None = None, check_data: bool = False,
                             processes: str = "one", schedule: str | None = None, data_parallel: int = 1) -> None:
    """``archspec validate CONFIG``: parse, compile, fit decoders, estimate memory: of the single
    process, or (``processes="stage"`` or ``data_parallel`` > 1) of every rank of that run, which
    ``memory_budget`` (one device's) then bounds."""
    from archspec.train.config import ConfigError, load_config, validate_config
    from archspec.vocabulary import format_bytes, parse_bytes

    budget = parse_bytes(memory_budget, "--memory-budget") if memory_budget else None
    cfg = with_schedule(load_config(path), schedule)
    if processes == "one" and data_parallel == 1:
        report = validate_config(cfg, memory_budget=budget, check_data=check_data)
        return _print_validation(path, cfg, report)
    from archspec.profiling.rank_memory import config_rank_peaks, memory_hint
    from archspec.train.ranks import check_stage_dtype
    from archspec.train.replica_runner import check_batch

    check_batch(cfg, data_parallel)
    if processes == "stage":
        check_stage_dtype(cfg)
    report = validate_config(cfg, check_data=check_data)
    report.memory_budget = budget
    ranks = config_rank_peaks(cfg, processes, data_parallel)
    over = [r for r in ranks if budget is not None and r.peak.total > budget]
    if over:
        names = ", ".join(f"{_ranks_words(r.ranks)} ({r.stages}) {format_bytes(r.peak.total)}" for r in over)
        raise ConfigError(f"estimated peak memory over the budget of {format_bytes(budget)} per device on "
                          f"{names} ({cfg.method}, {report.spec_name} "
                          f"at {report.input_size}x{report.input_size}, {_run_words(cfg, processes, data_parallel)})",
                          where=cfg.where("batch"), what="memory", hint=memory_hint(cfg, processes, data_parallel))
    _print_validation(path, cfg, report, ranks, processes, data_parallel)


def with_schedule(cfg, schedule: str | None):
    """``cfg`` with ``--schedule`` in place of its ``pipeline`` key (one line if it cannot be)."""
    import dataclasses

    if schedule is None or schedule == cfg.pipeline:
        return cfg
    from archspec.train.config_schema import pipeline_refusal

    refusal = pipeline_refusal(cfg.method, schedule)
    if refusal:
        raise UserError(f"{cfg.source}: {refusal} (hint: --schedule sync, or method gim or loco)")
    return dataclasses.replace(cfg, pipeline=schedule)


@click.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Run directory (default: the config's 'output', else runs/<config name>).")
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop at this global step (the schedule still spans "
                                                              "the config's epochs); --resume goes on from there.")
@click.option("--resume", is_flag=True, help="Continue the run in the run directory from its newest checkpoint.")
@click.option("--memory-budget", metavar="SIZE", help="Refuse to start if the estimated peak memory exceeds SIZE.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--processes", type=click.Choice(["one", "stage"]), default="one", show_default=True,
              help="one: a single process; stage: one process per local stage (model parallel, torch.distributed; "
                   "spawned here, or the ranks of a torchrun launch). See docs/training.md.")
@click.option("--schedule", type=click.Choice(["sync", "pipelined"]), default=None,
              help="With --processes stage: sync (one batch in flight) or pipelined (gim, loco: every rank busy, "
                   "LoCo's gradient one step late; see docs/training.md). Default: the config's 'pipeline' (sync).")
@click.option("--data-parallel", "data_parallel", type=click.IntRange(min=1), default=1, show_default=True,
              help="Replicas, each on its shard of every batch, batch norm and the loss over the whole batch, "
                   "gradients summed: equal to one process on the whole batch (--processes one).")
def train(config, out_dir, max_steps, resume, memory_budget, progress, processes, schedule, data_parallel):
    """Train the encoder of a training CONFIG (SimCLR, GIM or LoCo; see docs/training.md).

    Writes config.yaml, log.jsonl, checkpoints/ and summary.json into the run directory.
    Ctrl-C saves a checkpoint after the current step and exits with code 130.
    """
    from archspec.train.config import default_output, load_config, validate_config
    from archspec.vocabulary import parse_bytes
    import functools

    if processes == "stage" or data_parallel > 1:
        from archspec.train.distributed import train_distributed

        run_training = functools.partial(train_distributed, processes=processes, data_parallel=data_parallel)
    else:
        from archspec.train.loop import train as run_training

    cfg = with_schedule(load_config(config), schedule)
    validate_config(cfg, memory_budget=parse_bytes(memory_budget, "--memory-budget") if memory_budget else None)
    out = Path(out_dir) if out_dir else default_output(cfg)
    result = run_training(cfg, out, max_steps=max_steps, resume=resume, progress=progress)
    from archspec.train.runlog import result_line

    click.echo(result_line(result, cfg.method, result.summary.get("processes")))
    if result.status == "interrupted":
        click.echo(f"interrupted: checkpoint {out / result.summary['checkpoint']} saved (continue with --resume)",
                   err=True)
        raise click.exceptions.Exit(130)


def _stages(model, stage: str | None) -> list[tuple[str, str | None]]:
    """(label, stage name for extract_features) for --stage; None: the final representation."""
    labels = {ls.label: ls.last for ls in model.spec.local_stages}
    if stage is None:
        return [("representation", None)]
    if stage == "all":
        return list(labels.items())
    if stage in labels:
        return [(stage, labels[stage])]
    if stage in model.spec.stage_names:
        return [(stage, stage)]
    raise UserError(f"unknown stage '{stage}' (hint: use one of {', '.join(list(labels) + ['all'])} "
                    f"or a stage name: {', '.join(model.spec.stage_names)})")


MAX_PIXEL_FEATURES = 16384  # eval --baseline: the raw-pixel row up to 128x128 gray or 73x73 RGB


@click.command("eval")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--stage", default=None, help="A local stage (e.g. conv1+res2, res3), a stage name, or 'all'; "
                                            "default: the final representation (pooled last stage).")
@click.option("--knn/--no-knn", default=True, show_default=True, help="Also a weighted k-NN classifier (k=20).")
@click.option("--baseline", is_flag=True, help="Also evaluate the untrained encoder (the run's initialisation) "
                                               "and the raw pixels (the flattened images, one row).")
@click.option("--probe-epochs", type=click.IntRange(min=1), default=200, show_default=True,
              help="L-BFGS iterations of the linear probe.")
@click.option("--batch-size", type=click.IntRange(1, sys.maxsize), default=256, show_default=True)
def evaluate(run, stage, knn, baseline, probe_epochs, batch_size):
    """Linear probe and k-NN on frozen features of a trained RUN; writes RUN/eval.json."""
    from archspec.io import write_text_atomic
    from archspec.train.data import build_dataset
    from archspec.train.evaluate import extract_features, knn_accuracy, linear_probe, pixel_features
    from archspec.train.model import build_model, load_run
    from archspec.train.session import resolve_device

    run = Path(run)
    model, state = load_run(run)
    device = resolve_device(model.cfg.device)
    stages = _stages(model, stage)
    data = model.cfg.data.data_config(model.spec.input_size[0])
    train_set, test_set = build_dataset(data, "train"), build_dataset(data, "test")
    if len(test_set) == 0:
        raise UserError(f"the data of run {run} has no test split (hint: set data.test_fraction above 0)")
    encoders = [("trained", model.net)]
    if baseline:
        encoders.append(("untrained", build_model(model.cfg).net))
    rows = []

    def add_row(which, label, tr_x, tr_y, te_x, te_y):
        row = {"encoder": which, "stage": label, "features": int(tr_x.shape[1]),
               "linear_probe": linear_probe(tr_x, tr_y, te_x, te_y, epochs=probe_epochs, seed=model.cfg.seed)}
        if knn:
            row["knn"] = knn_accuracy(tr_x, tr_y, te_x, te_y)
        rows.append(row)

    for which, net in encoders:
        net.to(device)
        for label, name in stages:
            add_row(which, label, *extract_features(net, train_set, stage=name, batch_size=batch_size, device=device),
                    *extract_features(net, test_set, stage=name, batch_size=batch_size, device=device))
    pixels = train_set.channels * train_set.size ** 2
    if baseline and pixels > MAX_PIXEL_FEATURES:  # 224x224 RGB: 150,528 floats per image, the probe's memory
        click.echo(f"raw pixels skipped: {pixels} features per image, over {MAX_PIXEL_FEATURES}", err=True)
    elif baseline:  # what the probe and k-NN get from the images alone
        add_row("pixels", "input", *pixel_features(train_set, batch_size), *pixel_features(test_set, batch_size))
    doc = {"run": str(run), "method": model.cfg.method, "spec": model.spec.name, "step": state["step"],
           "train_images": len(train_set), "test_images": len(test_set), "results": rows}
    write_text_atomic(run / "eval.json", json.dumps(doc, indent=2) + "\n")
    header = f"{'encoder':<10} {'stage':<16} {'features':>8} {'linear probe':>12}" + (f" {'k-NN':>7}" if knn else "")
    click.echo(f"{model.cfg.method} on {model.spec.name}, step {state['step']}: accuracy on the test split "
               f"({len(test_set)} images)")
    click.echo(header)
    for row in rows:
        line = f"{row['encoder']:<10} {row['stage']:<16} {row['features']:>8} {100 * row['linear_probe']:>11.2f}%"
        if knn:
            line += f" {100 * row['knn']:>6.2f}%"
        click.echo(line)
    click.echo(f"wrote {run / 'eval.json'}", err=True)


def _run_names(runs: list[Path]) -> list[str]:
    names = [r.resolve().name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{r.resolve().parent.name}/{r.resolve().name}" for r in runs]
    return names


def _plot_labels(labels: str | None, runs: int) -> list[str] | None:
    """``--labels a,b,c``: one distinct, non-empty name per RUN; None when not given."""
    if labels is None:
        return None
    names = [name.strip() for name in labels.split(",")]
    if len(names) != runs:
        raise click.BadParameter(f"{len(names)} label(s) for {runs} run(s); give one per RUN, in order, "
                                 f"separated by commas", param_hint="'--labels'")
    if not all(names) or len(set(names)) < len(names):
        raise click.BadParameter(f"{labels!r}: labels must be non-empty and differ", param_hint="'--labels'")
    return names


@click.command("plot")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False),
              help="Folder for the figures (default: RUN/figures of the first RUN).")
@click.option("--tsne/--no-tsne", default=True, show_default=True,
              help="t-SNE of each run's final representation on the test split, coloured by class.")
@click.option("--tsne-samples", type=click.IntRange(min=10), default=2000, show_default=True,
              help="At most this many test images in each t-SNE (a seeded subset).")
@click.option("--labels", metavar="A,B,...",
              help="Names of the RUNs in the loss legend and the t-SNE titles: one per RUN, in order, separated "
                   "by commas (default: the run folders' names).")
def plot(runs, out_dir, tsne, tsne_samples, labels):
    """Loss curves of every decoder of several RUNs in one figure, and t-SNE plots (PNG + PDF),
    each with its caption (the conventions) in STEM.caption.md next to it."""
    import torch

    from archspec.io import make_dir, write_text_atomic
    from archspec.train.data import build_dataset
    from archspec.train.evaluate import extract_features
    from archspec.train.figures import loss_caption, plot_loss_curves, plot_tsne, tsne_caption
    from archspec.train.model import load_run
    from archspec.train.runlog import read_log

    paths = [Path(r) for r in runs]
    given = _plot_labels(labels, len(paths))
    for run in paths:
        if not (run / "log.jsonl").is_file():
            raise UserError(f"{run} is not a run directory: it has no log.jsonl (hint: give the --out of "
                            f"'archspec train')")
    names = _run_names(paths)
    shown = given or names
    out = Path(out_dir) if out_dir else paths[0] / "figures"
    make_dir(out)

    def caption(stem: Path, text: str) -> Path:
        write_text_atomic(stem.with_name(stem.name + ".caption.md"), text + "\n")
        return stem.with_name(stem.name + ".caption.md")

    logs = {label: read_log(run) for label, run in zip(shown, paths)}
    written = list(plot_loss_curves(logs, out / "loss_curves"))
    sources = {label: str(run) for label, run in zip(shown, paths)} if given else None
    written.append(caption(out / "loss_curves", loss_caption(logs, sources=sources)))
    if tsne:
        for name, shown_as, run in zip(names, shown, paths):
            model, state = load_run(run)
            data = model.cfg.data.data_config(model.spec.input_size[0])
            test_set = build_dataset(data, "test")
            split = "the test split"
            if len(test_set) > tsne_samples:
                split = f"a seeded subset of the test split ({len(test_set)} images)"
                keep = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(0))[:tsne_samples]
                test_set = torch.utils.data.Subset(test_set, sorted(keep.tolist()))
                test_set.classes = test_set.dataset.classes
            feats, labels = extract_features(model.net, test_set)
            title = shown_as if given or model.cfg.method in name else f"{name} ({model.cfg.method})"
            stem = out / f"tsne_{name.replace('/', '_')}"
            classes = getattr(test_set, "classes", None)
            written += list(plot_tsne(feats, labels, stem, classes=classes, seed=0, title=title))
            subject = (f"the final representation (the globally average-pooled output of the last stage) of "
                       f"{shown_as} (a {model.cfg.method} run, {run}) at step {state['step']} on {split}")
            written.append(caption(stem, tsne_caption(len(feats), feats[0].numel(), subject, seed=0,
                                                      classes=len(classes) if classes else None)))
    for path in written:
        click.echo(f"wrote {path}")


COMMANDS = [train, evaluate, plot]
