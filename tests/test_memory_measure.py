"""The training-memory prediction (a training step run on meta tensors) against the measured
peak of real CPU steps of the project's runner (archspec.train.measure), and the tracker itself."""
import pytest
import torch
import yaml

from archspec.profiling.profiler import profile
from archspec.profiling.tensor_memory import TensorMemory
from archspec.train.config import load_config, load_training_spec
from archspec.train.measure import measure_step_peaks

MiB = 2**20


def test_the_tracker_counts_what_autograd_keeps_and_frees_it():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
                              torch.nn.Conv2d(64, 64, 3, padding=1))
    x = torch.randn(8, 3, 32, 32)
    feature_map = 8 * 64 * 32 * 32 * 4
    tracker = TensorMemory(list(net.parameters()) + list(net.buffers()) + [x])
    with tracker:
        y = net(x)
        # saved for backward: conv1's output (batch norm's input), the ReLU's output (conv2's input;
        # batch norm's output is the ReLU's, in place); and y itself; batch norm's saved mean and invstd
        assert tracker.current == 3 * feature_map + 2 * 64 * 4
        view = y[:, :32]  # a view: no new storage
        assert tracker.current == 3 * feature_map + 2 * 64 * 4
        y.sum().backward()
        del y, view
        params = sum(p.numel() * 4 for p in net.parameters())
        assert tracker.current == params  # only the gradients are left
    assert tracker.peak >= 3 * feature_map


def write(tmp_path, spec, method, batch, optimizer):
    data = {"spec": spec, "method": method,
            "data": {"kind": "synthetic", "size": 64, "channels": 3, "num_samples": 4 * batch + 8},
            "batch": batch, "epochs": 1, "optimizer": {"name": optimizer, "lr": 1e-3, "lr_scaling": "none"},
            "device": "cpu", "threads": 1, "checkpoint_every": 1000, "tensorboard": False}
    path = tmp_path / f"{spec}_{method}_{batch}_{optimizer}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["resnet18", "resnet50"])
@pytest.mark.parametrize("batch", [2, 4])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_predicted_peak_within_3_percent_of_the_measured_one(tmp_path, spec, batch, optimizer):
    """SimCLR, GIM and LoCo, 3 steps each (the first creates the optimizer state): the steady
    state's measured peak against `archspec profile SPEC --batch B --size 64 --optimizer O`."""
    for method in ("simclr", "gim", "loco"):
        cfg = write(tmp_path, spec, method, batch, optimizer)
        peaks = measure_step_peaks(cfg, tmp_path / f"run_{method}", steps=3)
        assert peaks[1] == peaks[2]  # the steady state
        o = cfg.optimizer
        plan = profile(load_training_spec(cfg), batch=batch, optimizer=optimizer,
                       decoder=cfg.decoders.decoder_config(), weight_decay=o.weight_decay,
                       exclude_bn_bias=o.exclude_bn_bias).memory[method]
        ratio = plan.total / peaks[-1]
        print(spec, batch, optimizer, method, f"measured {peaks[-1] / MiB:.1f} MiB, predicted {plan.total / MiB:.1f}, "
              f"ratio {ratio:.4f}, at {plan.peak_unit}")
        assert ratio == pytest.approx(1, abs=0.03)


@pytest.mark.distributed
@pytest.mark.parametrize("method, schedule", [("loco", "sync"), ("loco", "pipelined"), ("gim", "pipelined")])
def test_every_ranks_predicted_peak_within_3_percent(tmp_path, monkeypatch, method, schedule):
    """One process per local stage (4 ranks), each measuring its own tensors
    ($ARCHSPEC_MEASURE_MEMORY=1), against archspec.profiling.rank_memory."""
    import dataclasses

    from archspec.profiling.rank_memory import rank_peaks
    from archspec.train.distributed import train_distributed

    monkeypatch.setenv("ARCHSPEC_MEASURE_MEMORY", "1")
    monkeypatch.setenv("ARCHSPEC_DIST_TIMEOUT", "60")
    cfg = dataclasses.replace(write(tmp_path, "resnet18", method, 4, "sgd"), pipeline=schedule)
    result = train_distributed(cfg, tmp_path / "run", max_steps=3, progress=False, deadline_s=120)
    o = cfg.optimizer
    predicted = rank_peaks(load_training_spec(cfg), method, 4, decoder=cfg.decoders.decoder_config(),
                           weight_decay=o.weight_decay, exclude_bn_bias=o.exclude_bn_bias, schedule=schedule)
    measured = result.summary["tensor_peak_bytes"]
    assert list(measured) == list(predicted) == ["conv1+res2", "res3", "res4", "res5"]
    for label, peak in measured.items():
        print(method, schedule, label, f"measured {peak / MiB:.2f} MiB, predicted {predicted[label].total / MiB:.2f}")
        assert predicted[label].total / peak == pytest.approx(1, abs=0.03)
