"""Synthetic tail images, ablated: the same member trained with and without them on the embedded data.

Steps (all through the `cxrlt` command line, as a user runs them), in WORK (default runs/synth-ablation):
  1. shard the embedded NIH sample at 64 px (train / dev / test by patient);
  2. train the baseline member (configs/train-starter-tiny.toml);
  3. train the diffusion model (configs/synth-demo.toml) and sample the tail classes, filtered by the
     baseline's best.pt;
  4. train the same member again with the synthetic set mixed in at --ratio;
  5. predict the held-out test split with both and print overall mAP and the mAP over the synthesised
     classes (classes without a positive in the test split are excluded and listed).
On 515 training images and a CPU-sized diffusion model this measures the plumbing's effect, not what
synthesis can do at scale; print what comes out.
Run from the repository root: `.venv/bin/python benchmarks/synth_ablation.py [--synth-steps N] ...`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cxrlt.data.labels_table import split_labels as read_split_labels
from cxrlt.metrics import evaluate
from cxrlt.predictions import read_predictions

ROOT = Path(__file__).resolve().parents[1]
CXRLT = str(Path(sys.executable).parent / "cxrlt")


def cxrlt(*args: object) -> None:
    command = [CXRLT, *map(str, args)]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def split_labels(shards: Path, split: str) -> dict[str, np.ndarray]:
    """image id -> label row of one split, from the shards' json members."""
    metas, labels, _ = read_split_labels(shards, split)
    return {meta["image_id"]: row for meta, row in zip(metas, labels)}


def starter_shards(work: Path) -> Path:
    """WORK/shards: the embedded sample at 64 px, sharded unless an earlier run already did."""
    shards = work / "shards"
    if not (shards / "_index.json").is_file():
        cxrlt("shard", "starter", "--out", shards, "--max-size", 64, "--workers", 1)
    return shards


def score(predictions: Path, labels: dict[str, np.ndarray], targets: list[str]) -> dict[str, object]:
    table = read_predictions(predictions)
    y_true = np.stack([labels[i] for i in table.image_ids])
    result = evaluate(y_true, table.probs, table.meta.classes, groups={c: "tail" for c in targets})
    return {"mAP": result.mAP, "synthesised_mAP": result.group_mAP.get("tail"), "excluded": result.excluded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "synth-ablation")
    parser.add_argument("--synth-steps", type=int, default=300)
    parser.add_argument("--per-class", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--ratio", type=float, default=0.1, help="share of synthetic samples in the mixed batches")
    parser.add_argument("--threshold", type=float, default=0.3, help="filter threshold on the baseline's score")
    args = parser.parse_args()
    work = args.work.resolve()
    started = time.perf_counter()
    shards = starter_shards(work)
    train_config = ROOT / "configs" / "train-starter-tiny.toml"
    synth_config = ROOT / "configs" / "synth-demo.toml"
    common = (f"data.shards={shards}", f"schedule.epochs={args.epochs}")
    # --resume everywhere: a rerun of this script continues where a killed one stopped.
    cxrlt("train", train_config, *sets(*common, f"run.out_dir={work / 'baseline'}"), "--resume")
    synth = (
        f"data.shards={shards}",
        f"run.out_dir={work / 'synth'}",
        f"train.steps={args.synth_steps}",
        f"sample.per_class={args.per_class}",
        f"filter.classifier={work / 'baseline' / 'best.pt'}",
        f"filter.threshold={args.threshold}",
    )
    cxrlt("synth", "train", synth_config, *sets(*synth), "--resume")
    cxrlt("synth", "sample", synth_config, *sets(*synth))
    cxrlt("synth", "report", synth_config, *sets(*synth))
    mixed = (f"data.synthetic={work / 'synth' / 'synthetic'}", f"data.synthetic_ratio={args.ratio}")
    cxrlt("train", train_config, *sets(*common, f"run.out_dir={work / 'mixed'}", *mixed), "--resume")
    labels = split_labels(shards, "test")
    report = json.loads((work / "synth" / "report" / "report.json").read_text())
    targets = list(report["pass_rates"])
    results = {}
    for member in ("baseline", "mixed"):
        predictions = work / f"{member}-test.csv"
        cxrlt("predict", work / member / "best.pt", "--shards", shards, "--split", "test", "--out", predictions)
        results[member] = score(predictions, labels, targets)
    print(
        f"\nsynthesised classes: {targets}; pass rates "
        f"{ {t: round(r['pass_rate'], 2) for t, r in report['pass_rates'].items()} }; "
        f"discriminator AUC {report['discriminator']['auc']:.3f}"
    )
    for member, r in results.items():
        print(
            f"{member:>8}: test mAP {r['mAP']:.4f}  synthesised-class mAP {r['synthesised_mAP']}  "
            f"excluded {r['excluded']}"
        )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
