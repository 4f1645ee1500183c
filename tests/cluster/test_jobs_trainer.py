"""The ensemble chain on a real SLURM: `cxrlt slurm pipeline` submits two members as a job array, a
predict array after it (afterok) and an ensemble job after that, which writes a validated submission.
"""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

from cxrlt.labels import get_schema
from tests.cli import cxrlt
from tests.cluster.conftest import (SCHEMA, VENV, diagnosis, submitted_ids, tracking_store, train_toml,
                                    wait_ended)
from tests.cluster.local_slurm import LocalSlurm


def split_tables(shards: Path, folder: Path) -> tuple[Path, Path]:
    """dev labels (image_id, subject_id, ViewPosition, classes) and test ids (dicom_id) from the shards'
    own json; `ensemble build` reads the views for view aggregation from the label CSV."""
    classes = get_schema(SCHEMA).classes
    samples = []
    for shard in sorted(shards.glob("*.tar")):
        with tarfile.open(shard) as tar:
            samples += [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    labels, ids = folder / "dev_labels.csv", folder / "test_ids.csv"
    with labels.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "subject_id", "ViewPosition", *classes])
        for s in (s for s in samples if s["split"] == "dev"):
            writer.writerow([s["image_id"], s["patient_id"], s["view"], *[int(v) for v in s["labels"]]])
    with ids.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dicom_id"])
        writer.writerows([s["image_id"]] for s in samples if s["split"] == "test")
    return labels, ids


def test_member_array_predict_and_ensemble_chain(slurm: LocalSlurm, starter_shards: Path, tmp_path: Path) -> None:
    labels, ids = split_tables(starter_shards, tmp_path)
    uri = tracking_store(tmp_path)
    for i in range(2):
        (tmp_path / f"member-{i}.toml").write_text(train_toml(starter_shards, tmp_path / "ignored", uri, steps=2, slurm=""))
    (tmp_path / "chain.toml").write_text(f"""
[slurm]
venv = "{VENV}"
[slurm.pipeline]
members = ["member-0.toml", "member-1.toml"]
shards = "{starter_shards}"
labels = "{labels}"
ids = "{ids}"
""")
    done = cxrlt("slurm", "pipeline", "chain.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    jobs = submitted_ids(done.stdout)
    folder = Path(done.stdout.split("submission folder: ")[1].strip())
    tasks = wait_ended(slurm, jobs["ensemble"], timeout=400)
    assert tasks[0]["JobState"] == "COMPLETED", diagnosis(slurm, *sorted((folder / "logs").glob("*.out")))
    assert [f["JobState"] for f in wait_ended(slurm, jobs["train"], 10)] == ["COMPLETED", "COMPLETED"]
    assert (folder / "submission.zip").is_file()
    assert cxrlt("submit", "validate", "--task", "t1", "--ids", ids, folder / "submission.zip").returncode == 0

    status = json.loads(cxrlt("slurm", "status", "--json", cwd=tmp_path).stdout)
    assert status["state"] == "COMPLETED" and [t["step"] for t in status["tasks"]] == [
        "train", "train", "predict", "predict", "ensemble"]  # fmt: skip

