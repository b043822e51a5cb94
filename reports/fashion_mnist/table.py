"""The results table of reports/fashion_mnist/ from the eval.json files `archspec eval RUN --stage all
--baseline` writes: linear-probe and k-NN test accuracy per local stage of each run, of the
untrained encoder and of the raw pixels. Writes OUT/results.md and OUT/results.json.

    python reports/fashion_mnist/table.py runs/fashion_mnist_{simclr,gim,loco}/eval.json -o reports/fashion_mnist
"""
import argparse
import json
from pathlib import Path

NAMES = {"simclr": "SimCLR", "gim": "GIM", "loco": "LoCo"}
MEASURES = {"linear_probe": "linear probe", "knn": "k-NN (k = 20)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("evals", nargs="+", type=Path, help="eval.json files, one per run")
    parser.add_argument("-o", "--out", type=Path, required=True, help="folder for results.md and results.json")
    args = parser.parse_args()
    docs = [json.loads(p.read_text()) for p in args.evals]
    methods = [NAMES.get(d["method"], d["method"]) for d in docs]
    trained = {m: {r["stage"]: r for r in d["results"] if r["encoder"] == "trained"} for m, d in zip(methods, docs)}
    stages = list(trained[methods[0]])
    untrained = [{r["stage"]: r for r in d["results"] if r["encoder"] == "untrained"} for d in docs]
    pixels = next(r for r in docs[0]["results"] if r["encoder"] == "pixels")
    # The runs share spec and seed, so their untrained encoders (and data) are the same: say so, or fail.
    for other in untrained[1:] + [{r["stage"]: r for r in d["results"] if r["encoder"] == "pixels"} for d in docs]:
        for stage, row in other.items():
            ref = pixels if row["encoder"] == "pixels" else untrained[0][stage]
            assert (row["linear_probe"], row.get("knn")) == (ref["linear_probe"], ref.get("knn")), (stage, row)
    first = docs[0]
    lines = [f"Test accuracy (%) on the {first['test_images']} Fashion-MNIST test images of frozen features "
             f"(globally average-pooled local-stage outputs, {first['spec']}, step {first['step']}), probe and k-NN "
             f"fitted on the {first['train_images']} training images the encoders were trained on; "
             f"made by `reports/fashion_mnist/table.py` from `archspec eval RUN --stage all --baseline`.", ""]
    table = {"test_images": first["test_images"], "train_images": first["train_images"], "spec": first["spec"],
             "step": first["step"], "raw_pixels": {}, "stages": {}}
    for key, measure in MEASURES.items():
        lines += [f"**{measure}**", "", "| local stage | features | untrained | " + " | ".join(methods) + " |",
                  "|---|---:|---:|" + "---:|" * len(methods)]
        for stage in stages:
            cells = [untrained[0][stage][key]] + [trained[m][stage][key] for m in methods]
            best = max(cells[1:])
            shown = [f"{100 * cells[0]:.2f}"] + [f"**{100 * c:.2f}**" if c == best else f"{100 * c:.2f}"
                                                for c in cells[1:]]
            lines.append(f"| {stage} | {trained[methods[0]][stage]['features']} | " + " | ".join(shown) + " |")
            table["stages"].setdefault(stage, {})[key] = dict(zip(["untrained"] + methods, cells))
        lines += [f"| raw pixels | {pixels['features']} | {100 * pixels[key]:.2f} |" + " |" * len(methods), ""]
        table["raw_pixels"][key] = pixels[key]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text("\n".join(lines))
    (args.out / "results.json").write_text(json.dumps(table, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
