"""Training configs (errors at file:line, validation, memory budget), the runner (logs,
checkpoints, bitwise resume, Ctrl-C), a short real run on digits, and the train / eval / plot /
validate commands."""
import json
import os
import signal

import pytest
import torch
import yaml

from archspec.train.config import load_config, loads_config, parse_bytes
from archspec.train.loop import read_log, train

from .conftest import ROOT, run_cli, write_config

pytestmark = pytest.mark.usefixtures("one_thread")


# -- configs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["presnet50_simclr", "presnet50_gim", "presnet50_loco",
                                  "digits_simclr", "digits_gim", "digits_loco"])
def test_shipped_configs_validate(name):
    result = run_cli("validate", ROOT / "configs" / f"{name}.yaml")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: ") and "estimated peak training memory" in result.output


def test_shipped_configs_follow_the_paper():
    cfg = load_config(ROOT / "configs" / "presnet50_loco.yaml")
    assert (cfg.batch, cfg.epochs, cfg.optimizer.name, cfg.temperature) == (4096, 100, "lars", 0.1)
    assert cfg.optimizer.effective_lr(cfg.batch) == pytest.approx(4.8)
    assert (cfg.optimizer.weight_decay, cfg.schedule.warmup_epochs, cfg.schedule.decay) == (1e-6, 10, "cosine")
    assert cfg.decoders.out_dim == 128 and cfg.data.root.endswith("data/imagenet")
    for method in ("simclr", "gim"):
        other = load_config(ROOT / "configs" / f"presnet50_{method}.yaml")
        assert other.method == method and other.to_data() | {"method": "loco", "output": None} == \
            cfg.to_data() | {"output": None}


@pytest.mark.parametrize("text, where, message", [
    ("spec: presnet50\nmethod: loco\nbatch: 64\noptimizer:\n  name: lars\n  lrr: 0.1\n", 6,
     "optimizer: unknown key 'lrr' (hint: did you mean 'lr'?)"),
    ("spec: presnet50\nmethod: loko\n", 2, "'method' must be one of simclr, gim, loco, got 'loko'"),
    ("spec: presnet50\nmethod: gim\nbatch: many\n", 3, "'batch' must be an integer, got 'many'"),
    ("spec: presnet50\nmethod: gim\ndata:\n  kind: digits\n  size: 0\n", 5, "data: 'size' must be >= 1, got 0"),
    ("spec: presnet50\nmethod: gim\naugment:\n  scale: [0.9, 0.1]\n", 4, "'scale' must be [low, high]"),
    ("method: gim\n", 1, "the config is missing 'spec'"),
    ("spec: presnet50\nmethod: gim\ndata:\n  kind: image_folder\n", 3, "an image_folder data set needs 'root'"),
    ("spec: presnet50\nmethod: gim\nmethod: loco\n", 3, "key 'method' appears twice"),
    ("spec: presnet50\nmethod: [gim\n", 3, "malformed YAML"),
])
def test_config_errors_name_file_and_line(tmp_path, text, where, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run_cli("validate", path)
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1
    assert line.startswith(f"error: {path}:{where}:"), line
    assert message in line


def test_validation_errors_point_at_the_config(tmp_path):
    # The decoder's stride-2 conv needs 2x2: a stage shrunk to 1x1 at size 4 cannot take one.
    path = write_config(tmp_path, data={"size": 4})
    result = run_cli("validate", path)
    assert result.exit_code == 2
    assert "decoder on local stage 'res4' cannot fit: its stride-2 conv needs at least 2x2 input, the stage " \
           "gives 1x1" in result.output and f"{path}:" in result.output
    assert run_cli("validate", write_config(tmp_path, "pool.yaml", data={"size": 4},
                                            decoders={"block": False})).exit_code == 0
    # Three-channel data into a one-channel spec.
    result = run_cli("validate", write_config(tmp_path, "rgb.yaml", data={"channels": 3}))
    assert result.exit_code == 2 and "the data has 3 channel(s) but spec 'micro_digits' takes 1" in result.output
    # An unknown spec, located at the spec line.
    (tmp_path / "nospec.yaml").write_text("spec: presnet5\nmethod: gim\n")
    result = run_cli("validate", tmp_path / "nospec.yaml")
    assert result.exit_code == 2 and "nospec.yaml:1: spec: unknown spec 'presnet5'" in result.output


def test_memory_budget(tmp_path):
    path = ROOT / "configs" / "presnet50_loco.yaml"
    result = run_cli("validate", path, "--memory-budget", "16GiB")
    assert result.exit_code == 2
    line = result.output.strip()
    assert len(line.splitlines()) == 1
    assert "presnet50_loco.yaml:" in line and "estimated peak training memory 257." in line
    assert "over the budget of 16.00 GiB" in line
    ok = run_cli("validate", path, "--memory-budget", "1TiB")
    assert ok.exit_code == 0 and "(budget 1.00 TiB)" in ok.output
    assert run_cli("validate", path, "--memory-budget", "lots").exit_code == 2
    assert run_cli("validate", "resnet18", "--memory-budget", "1GiB").exit_code == 2  # specs take none
    assert parse_bytes("16GiB") == 16 * 2**30 and parse_bytes("1.5 GB") == 1_500_000_000 and parse_bytes("512") == 512
    assert run_cli("validate", path, "--check-data").exit_code == 2  # data/imagenet is not in the checkout


def test_spec_validation_unchanged():
    result = run_cli("validate", "tiny_digits")
    assert result.exit_code == 0 and result.output.startswith("ok: tiny_digits: 5 stages + head")


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    cfg = load_config(write_config(tmp_path, output="out/here"))
    assert cfg.spec == str(tmp_path / "micro.yaml") and cfg.output == str(tmp_path / "out" / "here")
    # A resolved config (as written into a run) reads back the same.
    assert loads_config(yaml.safe_dump(cfg.to_data())).to_data() == cfg.to_data()


# -- the runner ------------------------------------------------------------------------------
def losses(out):
    return [{k: v for k, v in r.items() if k.startswith("loss/") or k in ("step", "lr")} for r in read_log(out)]


def test_resume_and_ctrl_c_reproduce_an_uninterrupted_run(tmp_path):
    cfg = load_config(write_config(tmp_path, epochs=2))  # 89 steps per epoch of 16 digits
    straight = train(cfg, tmp_path / "a", max_steps=6, progress=False)
    assert straight.status == "max_steps" and straight.step == 6
    first = train(cfg, tmp_path / "b", max_steps=3, progress=False)
    assert first.step == 3 and sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-0000003.pt"]
    train(cfg, tmp_path / "b", max_steps=6, resume=True, progress=False)

    def interrupt(step, _):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # handled: the loop saves after this step and stops

    stopped = train(cfg, tmp_path / "c", max_steps=6, progress=False, on_step=interrupt)
    assert stopped.status == "interrupted" and stopped.step == 2
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["status"] == "interrupted"
    train(cfg, tmp_path / "c", max_steps=6, resume=True, progress=False)

    reference = losses(tmp_path / "a")
    assert len(reference) == 6 and set(reference[0]) == {"step", "lr", "loss/conv1+res2", "loss/res3", "loss/res4",
                                                         "loss/res5"}
    assert losses(tmp_path / "b") == reference  # exact float equality, step by step
    assert losses(tmp_path / "c") == reference
    weights = [torch.load(tmp_path / r / "checkpoints" / "step-0000006.pt", weights_only=True)["model"]
               for r in "abc"]
    assert all(torch.equal(weights[0][k], w[k]) for w in weights[1:] for k in weights[0])


def test_run_directory_contents_and_refusals(tmp_path):
    path = write_config(tmp_path, method="gim", checkpoint_every=2, keep_checkpoints=2)
    out = tmp_path / "run"
    result = run_cli("train", path, "--out", out, "--max-steps", "5", "--no-progress")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("max_steps: step 5/89 of gim on micro_digits")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.yaml", "log.jsonl", "summary.json"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000004.pt", "step-0000005.pt"]
    records = read_log(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert all(r["images_per_s"] > 0 and r["lr"] > 0 for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "max_steps" and summary["step"] == 5 and summary["method"] == "gim"
    assert load_config(out / "config.yaml").to_data() | {"output": None} == load_config(path).to_data()
    # An existing run is never overwritten without --resume; --resume needs a matching config.
    again = run_cli("train", path, "--out", out)
    assert again.exit_code == 2 and "already exists (hint: --resume" in again.output
    changed = write_config(tmp_path, "changed.yaml", method="gim", temperature=0.2)
    refused = run_cli("train", changed, "--out", out, "--resume")
    assert refused.exit_code == 2 and "'temperature' differs from the run's config.yaml" in refused.output
    assert run_cli("train", path, "--out", tmp_path / "none", "--resume").exit_code == 2


def test_train_refuses_an_invalid_config_with_one_line(tmp_path):
    path = write_config(tmp_path, data={"size": 4})
    result = run_cli("train", path, "--out", tmp_path / "run")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "cannot fit" in result.output and not (tmp_path / "run").exists()
    big = write_config(tmp_path, "big.yaml", batch=5000)
    result = run_cli("train", big, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "batch 5000 is larger than the 1438 training images" in result.output


def test_ctrl_c_exits_130_with_a_checkpoint(tmp_path, monkeypatch):
    import archspec.train.loop as loop

    original = loop.train

    def interrupted(*args, **kwargs):
        return original(*args, **kwargs, on_step=lambda step, _: step == 2 and os.kill(os.getpid(), signal.SIGINT))

    monkeypatch.setattr(loop, "train", interrupted)
    out = tmp_path / "run"
    result = run_cli("train", write_config(tmp_path), "--out", out, "--no-progress")
    assert result.exit_code == 130
    assert (out / "checkpoints" / "step-0000002.pt").is_file()


# -- a real (short) run ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """LoCo on digits, tiny_digits at 16x16, 2 epochs of batch 64 (44 steps)."""
    tmp = tmp_path_factory.mktemp("digits")
    cfg = load_config(ROOT / "configs" / "digits_loco.yaml")
    import dataclasses

    cfg = dataclasses.replace(cfg, batch=64, epochs=4, output=None,
                              schedule=dataclasses.replace(cfg.schedule, warmup_epochs=0.5))
    result = train(cfg, tmp / "run", progress=False)
    assert result.status == "completed"
    return tmp / "run"


def test_short_digits_run_learns(digits_run):
    summary = json.loads((digits_run / "summary.json").read_text())
    for key, final in summary["final_losses"].items():
        assert final < summary["first_losses"][key] - 0.5, (key, summary)
    result = run_cli("eval", digits_run, "--baseline", "--no-knn", "--probe-epochs", "100")
    assert result.exit_code == 0, result.output
    rows = {r["encoder"]: r for r in json.loads((digits_run / "eval.json").read_text())["results"]}
    assert rows["trained"]["stage"] == "representation" and rows["trained"]["features"] == 128
    assert rows["trained"]["linear_probe"] > rows["untrained"]["linear_probe"], rows
    assert "linear probe" in result.output and "trained" in result.output


def test_eval_stages_and_plot(digits_run, tmp_path):
    result = run_cli("eval", digits_run, "--stage", "res3", "--probe-epochs", "20")
    assert result.exit_code == 0, result.output
    doc = json.loads((digits_run / "eval.json").read_text())
    assert [(r["stage"], r["features"]) for r in doc["results"]] == [("res3", 32)]
    assert 0 <= doc["results"][0]["knn"] <= 1
    bad = run_cli("eval", digits_run, "--stage", "res9")
    assert bad.exit_code == 2 and "unknown stage 'res9'" in bad.output
    assert run_cli("eval", tmp_path).exit_code == 2  # not a run
    result = run_cli("plot", digits_run, digits_run, "-o", tmp_path / "fig", "--tsne-samples", "200")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "fig").iterdir())
    assert any(n.endswith(".png") for n in names) and any(n.endswith(".pdf") for n in names)
    assert any("tsne" in n for n in names) and any("loss" in n for n in names)
