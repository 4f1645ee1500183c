"""The rehearsal set: a MIMIC-CXR-LT-shaped tree built from the embedded real NIH images and IU reports.

Users hold MIMIC-CXR-JPG + the CXR-LT 2024 CSVs, which cannot be shipped. The rehearsal tree has their
exact layout, file names, columns and value formats (../shared/reference/mimic-formats.md) so the real
recipe runs unchanged on it: real images (cxrlt/resources/nih-starter) and real reports (IU X-ray,
cxrlt.data.rehearsal_reports), invented patients, studies, views, dates and vitals
(cxrlt.data.rehearsal_context). A structural rehearsal: nothing in it measures clinical performance.

Images are grouped into invented patients (1-3 studies) and studies (1-6 images, at least one frontal
view; every split holds a study of 5 and of 6 images), split by patient 70/15/15. A study's labels are
the union of its images' NIH labels plus the classes NIH lacks that its paired report's MeSH terms
state; the 5 Task-3 classes go only to answers/development_labeled_task3.csv. Some images are held out
in NIH's own layout (nih-external/), others in VinDr-CXR's and CheXpert's (vindr-external/,
chexpert-external/: cxrlt.data.rehearsal_public). The tree is written beside DIR and renamed into place, with
manifest.json written last; an existing tree with the same options is reused.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from cxrlt.data import rehearsal_context as context
from cxrlt.data.rehearsal_files import write_csv, write_readme
from cxrlt.data.rehearsal_public import write_chexpert_tree, write_vindr_tree
from cxrlt.data.rehearsal_reports import NIH_CLASSES, VARIANTS, ReportPairer, has_indication, render_report
from cxrlt.data.reports import Report, read_iu_reports
from cxrlt.data.sources.starter import starter_folder
from cxrlt.errors import InputError
from cxrlt.labels import CXR_LT_2024_TASK1, CXR_LT_2024_TASK2, CXR_LT_2024_TASK3, canonical_name

# The IU X-ray reports are not copied into the project: they are read from shared/ beside the checkout.
DEFAULT_REPORTS = str(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "reports" / "NLMCXR_reports.tgz")
# Stand-ins for the recipe's local ImageNet checkpoints, in the layout those ship in (timm state dict, 3-channel
# stem, 224 px position grid): random weights, since nothing may be downloaded, but the recipe's
# load-a-local-checkpoint path (stem summed to one channel, ViT position embeddings resized) runs as on MIMIC.
BACKBONE_CHECKPOINTS = ("convnext_atto", "tf_efficientnetv2_b0", "vit_tiny_patch16_224")
DINOV2_CHECKPOINT = "vit_small_patch14_dinov2"  # the smallest DINOv2: the recipe's DINOv2 member
SPLIT_SHARES = {"train": 0.70, "dev": 0.15, "test": 0.15}
SIZE_MIX = {1: 0.45, 2: 0.43, 3: 0.10, 4: 0.02}  # images per study, CXR-LT 2024 training split (5+ added apart)
STUDIES_PER_PATIENT = {1: 0.55, 2: 0.30, 3: 0.15}
MIN_SPLIT_IMAGES = 12  # a study of 5 and one of 6 images, plus at least one more
ID_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "ViewCodeSequence_CodeMeaning", "fpath")
IMAGE_SIZE = 256


@dataclass(frozen=True)
class RehearsalOptions:
    """--seed, --images (None: all), --external and --public (None: scaled with --images), --reports-archive."""

    seed: int = 0
    images: int | None = None
    external: int | None = None
    reports_archive: str = DEFAULT_REPORTS
    public: int | None = None

    def resolved(self, available: int) -> RehearsalOptions:
        images = available if self.images is None else self.images
        if not 1 <= images <= available:
            raise InputError(f"--images {images}: the starter has {available} images")
        external = round(100 * images / available) if self.external is None else self.external
        public = round(50 * images / available) if self.public is None else self.public
        if not 0 <= external < images or not 0 <= public < images:
            raise InputError(f"--external {external}, --public {public}: each must be in [0, --images ({images}) - 1]")
        left = images - external - public
        if left * min(SPLIT_SHARES.values()) < MIN_SPLIT_IMAGES:
            raise InputError(
                f"--images {images} with --external {external} and --public {public} leaves {left} images for MIMIC "
                f"studies; each split needs {MIN_SPLIT_IMAGES} (a study of 5 and of 6 images): use more images"
            )
        return RehearsalOptions(self.seed, images, external, str(Path(self.reports_archive).resolve()), public)


@dataclass
class Study:
    study_id: int
    subject_id: int
    split: str
    rows: list[int]
    dicom_ids: list[str] = field(default_factory=list)
    views: list[str] = field(default_factory=list)
    time: datetime | None = None
    labels: set[str] = field(default_factory=set)
    task3: set[str] = field(default_factory=set)
    report: Report | None = None
    variant: str = "standard"

    def paired_report(self) -> Report:
        """The report `_generate` paired with the study; asking before the pairing is a bug."""
        if self.report is None:
            raise RuntimeError(f"study {self.study_id}: no report paired yet")
        return self.report

    def scan_time(self) -> datetime:
        """The study's time, set by plan_studies."""
        if self.time is None:
            raise RuntimeError(f"study {self.study_id}: no study time planned")
        return self.time

    @property
    def folder(self) -> str:
        return f"files/p{str(self.subject_id)[:2]}/p{self.subject_id}/s{self.study_id}"


def _unique_ids(rng: np.random.Generator, low: int, high: int, n: int) -> list[int]:
    seen: set[int] = set()
    out: list[int] = []
    while len(out) < n:
        value = int(rng.integers(low, high))
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out


def _study_sizes(n: int, big_pairs: int, rng: np.random.Generator) -> list[int]:
    sizes = [5, 6] * big_pairs
    remaining = n - sum(sizes)
    while remaining > 0:
        size = min(int(rng.choice(list(SIZE_MIX), p=list(SIZE_MIX.values()))), remaining)
        sizes.append(size)
        remaining -= size
    rng.shuffle(sizes)
    return sizes


def _patients(sizes: list[int], rng: np.random.Generator) -> list[list[int]]:
    patients, i = [], 0
    while i < len(sizes):
        k = int(rng.choice(list(STUDIES_PER_PATIENT), p=list(STUDIES_PER_PATIENT.values())))
        patients.append(sizes[i : i + k])
        i += k
    return patients


def plan_studies(frame: pd.DataFrame, rows: list[int], rng: np.random.Generator) -> list[Study]:
    """Group the starter rows into invented patients and studies, split by patient 70/15/15."""
    n = len(rows)
    counts = {"dev": round(n * SPLIT_SHARES["dev"]), "test": round(n * SPLIT_SHARES["test"])}
    counts = {"train": n - sum(counts.values()), **counts}
    plan: list[tuple[str, list[list[int]]]] = []
    start = 0
    for split, count in counts.items():
        big_pairs = 1 + (max(0, count - 100) // 120 if split == "train" else 0)
        split_rows = rows[start : start + count]
        start += count
        pools = {sex: [r for r in split_rows if frame.at[r, "Patient Gender"] == sex] for sex in ("F", "M")}
        for sizes in _patients(_study_sizes(count, big_pairs, rng), rng):
            total = sum(sizes)
            fits = [sex for sex in ("F", "M") if len(pools[sex]) >= total]
            order = [str(rng.choice(fits))] if fits else sorted(pools, key=lambda s: -len(pools[s]))
            order += [s for s in ("F", "M") if s not in order]
            taken: list[int] = []
            for sex in order:
                while pools[sex] and len(taken) < total:
                    taken.append(pools[sex].pop(0))
            plan.append((split, [taken[sum(sizes[:i]) : sum(sizes[: i + 1])] for i in range(len(sizes))]))
    subjects = _unique_ids(rng, 10_000_000, 20_000_000, len(plan))
    study_ids = iter(_unique_ids(rng, 50_000_000, 60_000_000, sum(len(p) for _, p in plan)))
    studies = []
    for subject, (split, patient) in zip(subjects, plan):
        time = datetime(2100, 1, 1) + timedelta(days=int(rng.integers(0, 365 * 99)))
        for study_rows in patient:
            time += timedelta(days=int(rng.integers(1, 500)), seconds=int(rng.integers(0, 86400)))
            study = Study(next(study_ids), subject, split, study_rows, time=time)
            _draw_views(study, rng)
            studies.append(study)
    return studies


def _draw_views(study: Study, rng: np.random.Generator) -> None:
    """One view from the mostly-frontal mix, the rest from the mostly-lateral one; at least one frontal."""

    def draw(mix: dict[str, float], n: int) -> list[str]:
        return [str(v) for v in rng.choice(list(mix), size=n, p=np.array(list(mix.values())) / sum(mix.values()))]

    views = draw(context.FIRST_VIEW_MIX, 1) + draw(context.OTHER_VIEW_MIX, len(study.rows) - 1)
    if not any(v in context.FRONTAL for v in views):
        views[0] = str(rng.choice(["AP", "PA"]))
    study.views = [views[i] for i in rng.permutation(len(views))]
    study.dicom_ids = ["-".join(f"{int(x):08x}" for x in rng.integers(0, 2**32, size=5)) for _ in study.rows]


def nih_labels(frame: pd.DataFrame, rows: list[int]) -> set[str]:
    """CXR-LT names of the union of the rows' NIH findings; Normal only when none of them has a finding."""
    findings = {canonical_name(f.strip(), "nih") for r in rows for f in str(frame.at[r, "Finding Labels"]).split("|")}
    findings.discard("")
    return findings - {"Normal"} if findings - {"Normal"} else {"Normal"}


def _label_frames(studies: list[Study]) -> dict[str, pd.DataFrame]:
    rows = []
    for study in studies:
        for dicom, view in zip(study.dicom_ids, study.views):
            ids = (
                dicom,
                study.subject_id,
                f"s{study.study_id}",
                view,
                context.VIEW_MEANING[view],
                f"{study.folder}/{dicom}.jpg",
            )
            labels = [int(c in study.labels) for c in CXR_LT_2024_TASK1.classes]
            task3 = [int(c in study.task3) for c in CXR_LT_2024_TASK3.classes]
            rows.append((study.split, study.study_id, *ids, *labels, *task3))
    columns = ["split", "study", *ID_COLUMNS, *CXR_LT_2024_TASK1.classes, *CXR_LT_2024_TASK3.classes]
    table = pd.DataFrame(rows, columns=columns)
    return {split: table[table["split"] == split].drop(columns=["split"]) for split in SPLIT_SHARES}


def _write_labels(root: Path, studies: list[Study], rng: np.random.Generator) -> None:
    frames = _label_frames(studies)
    task1 = [*ID_COLUMNS, *CXR_LT_2024_TASK1.classes]
    folder = root / "cxr-lt-2024"
    write_csv(frames["train"][task1], folder / "train_labeled.csv")
    write_csv(frames["dev"][task1], folder / "development_labeled_task1.csv")
    dev_studies = list(dict.fromkeys(frames["dev"]["study"]))
    gold = set(rng.choice(dev_studies, size=math.ceil(len(dev_studies) / 2), replace=False).tolist())
    task2 = [*ID_COLUMNS, *sorted(CXR_LT_2024_TASK2.classes)]
    write_csv(frames["dev"][frames["dev"]["study"].isin(gold)][task2], folder / "development_labeled_task2.csv")
    write_csv(frames["dev"][list(ID_COLUMNS)], folder / "development_task3.csv")
    write_csv(frames["test"][task1], folder / "test_labeled_task1.csv")
    answers = frames["dev"][[*ID_COLUMNS, *CXR_LT_2024_TASK3.classes]]
    write_csv(answers, root / "answers" / "development_labeled_task3.csv")


def _write_images(root: Path, frame: pd.DataFrame, studies: list[Study], external: list[int], progress: bool) -> None:
    source = starter_folder() / "images"
    jpg_root = root / "mimic-cxr-jpg" / "2.0.0"
    total = sum(len(s.rows) for s in studies) + len(external)
    with tqdm(total=total, desc="rehearsal images", unit="img", disable=not progress) as bar:
        for study in studies:
            (jpg_root / study.folder).mkdir(parents=True, exist_ok=True)
            for row, dicom in zip(study.rows, study.dicom_ids):
                with Image.open(source / frame.at[row, "Image Index"]) as image:
                    image.convert("L").save(jpg_root / study.folder / f"{dicom}.jpg", "JPEG", quality=95)
                bar.update()
        (root / "nih-external" / "images").mkdir(parents=True, exist_ok=True)
        for row in external:
            name = frame.at[row, "Image Index"]
            shutil.copyfile(source / name, root / "nih-external" / "images" / name)
            bar.update()


def _write_reports(root: Path, studies: list[Study]) -> None:
    for study in studies:
        path = root / "mimic-cxr" / "2.0.0" / f"{study.folder}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        examination, technique = context.procedure(study.views)
        path.write_text(render_report(study.paired_report(), examination, technique, study.variant), encoding="utf-8")


def _summary(studies: list[Study], covered: set[int], options: RehearsalOptions, external: int) -> dict:
    by_split = {s: [st for st in studies if st.split == s] for s in SPLIT_SHARES}
    task1 = CXR_LT_2024_TASK1.classes
    positives = {
        s: sorted({c for st in group for c in st.labels if c in task1}, key=task1.index)
        for s, group in by_split.items()
    }
    anywhere = {c for group in positives.values() for c in group}
    dev_task3 = {c for st in by_split["dev"] for c in st.task3}
    return {
        "generator": "cxrlt rehearsal make",
        "options": asdict(options),
        "images": {s: sum(len(st.rows) for st in group) for s, group in by_split.items()} | {"nih-external": external},
        "patients": {s: len({st.subject_id for st in group}) for s, group in by_split.items()},
        "studies": {s: len(group) for s, group in by_split.items()},
        "studies_by_size": {
            s: dict(sorted(Counter(str(len(st.rows)) for st in group).items())) for s, group in by_split.items()
        },
        "classes_with_positives": positives,
        "classes_without_positives": [c for c in task1 if c not in anywhere],
        "task3_classes_with_positives_dev": [c for c in CXR_LT_2024_TASK3.classes if c in dev_task3],
        "share_of_studies_with_indication": round(
            sum(has_indication(st.paired_report(), st.variant) for st in studies) / len(studies), 3
        ),
        "share_of_studies_with_ed_stay": round(len(covered) / len(studies), 3),
    }


def _generate(tmp: Path, options: RehearsalOptions, progress: bool) -> dict:
    archive = Path(options.reports_archive)
    if not archive.exists():
        raise InputError(
            f"--reports-archive {archive}: not found; the rehearsal pairs every study with a real IU X-ray "
            "report (Open-i NLMCXR_reports.tgz, or a folder of its XML files)"
        )
    reports = [r for r in read_iu_reports(archive) if r.sections.get("IMPRESSION") or r.sections.get("FINDINGS")]
    frame = pd.read_csv(starter_folder() / "labels.csv", dtype=str, keep_default_na=False)
    seeded = lambda k: np.random.default_rng([options.seed, k])  # noqa: E731 - one stream per concern
    order = seeded(0).permutation(len(frame))[: options.images].tolist()
    held_nih, held_public = options.external or 0, options.public or 0  # resolved: never None here
    external, public = order[:held_nih], order[held_nih : held_nih + held_public]
    rows = order[held_nih + held_public :]
    vindr, chexpert = public[: len(public) // 2], public[len(public) // 2 :]
    studies = plan_studies(frame, rows, seeded(1))
    pairer, variants = ReportPairer(reports, seeded(2)), seeded(3)
    for study in studies:
        study.labels = nih_labels(frame, study.rows)
        study.report, stated = pairer.pair(study.labels)
        study.labels |= {c for c in stated if c in CXR_LT_2024_TASK1.classes and c not in NIH_CLASSES}
        study.task3 = {c for c in stated if c in CXR_LT_2024_TASK3.classes}
        study.variant = str(variants.choice(VARIANTS))
    _write_images(tmp, frame, studies, external, progress)
    _write_reports(tmp, studies)
    _write_labels(tmp, studies, seeded(4))
    events = [context.StudyEvent(s.study_id, s.subject_id, s.scan_time(), s.dicom_ids, s.views) for s in studies]
    rng = seeded(5)
    jpg = tmp / "mimic-cxr-jpg" / "2.0.0"
    write_csv(context.metadata_frame(events, (IMAGE_SIZE, IMAGE_SIZE), rng), jpg / "mimic-cxr-2.0.0-metadata.csv.gz")
    genders = {s.subject_id: frame.at[s.rows[0], "Patient Gender"] for s in studies}
    stays, triage, covered = context.ed_frames(events, genders, rng)
    write_csv(stays, tmp / "mimic-iv-ed" / "2.2" / "ed" / "edstays.csv.gz")
    write_csv(triage, tmp / "mimic-iv-ed" / "2.2" / "ed" / "triage.csv.gz")
    nih_table = frame.loc[
        external,
        [
            "Image Index",
            "Finding Labels",
            "Follow-up #",
            "Patient ID",
            "Patient Age",
            "Patient Gender",
            "View Position",
        ],
    ]
    write_csv(nih_table, tmp / "nih-external" / "Data_Entry_2017_v2020.csv")
    write_vindr_tree(tmp / "vindr-external", frame, vindr, starter_folder() / "images")
    write_chexpert_tree(tmp / "chexpert-external", frame, chexpert, starter_folder() / "images")
    manifest = _summary(studies, covered, options, len(external))
    manifest["images"].update({"vindr-external": len(vindr), "chexpert-external": len(chexpert)})
    manifest["models"] = _write_backbone_checkpoints(tmp / "models", options.seed)
    write_readme(tmp / "README.md", manifest)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _write_backbone_checkpoints(folder: Path, seed: int) -> list[str]:
    import timm
    import torch
    from timm.models import save_for_hf

    from cxrlt.models.backbones import BackboneConfig, create_backbone, save_backbone_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in BACKBONE_CHECKPOINTS:
        torch.manual_seed(seed)
        save_backbone_checkpoint(create_backbone(BackboneConfig(name=name, in_chans=3)), folder / f"{name}.pth")
        written.append(f"models/{name}.pth")
    # DINOv2 weights ship as a Hugging Face folder in timm's layout (timm/vit_*_patch14_dinov2.lvd142m):
    # config.json + model.safetensors, with the 518 px position grid the recipe resamples to its size.
    torch.manual_seed(seed)
    save_for_hf(
        timm.create_model(DINOV2_CHECKPOINT, pretrained=False), str(folder / DINOV2_CHECKPOINT), safe_serialization=True
    )
    written.append(f"models/{DINOV2_CHECKPOINT}/")
    return written


def make_rehearsal(out: str | os.PathLike, options: RehearsalOptions, progress: bool = True) -> tuple[dict, bool]:
    """(manifest, reused): write the tree at `out`, or reuse the one there if made with the same options."""
    out = Path(out)
    frame_size = len(pd.read_csv(starter_folder() / "labels.csv", usecols=[0]))
    options = options.resolved(frame_size)
    if out.exists():
        manifest_path = out / "manifest.json"
        if not manifest_path.is_file():
            raise InputError(f"{out} exists but holds no manifest.json (not a complete rehearsal tree); remove it")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("options") != asdict(options):
            raise InputError(
                f"{out} was made with options {manifest.get('options')}, not the requested {asdict(options)}; "
                "remove it or choose another --out"
            )
        return manifest, True
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        manifest = _generate(tmp, options, progress)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest, False
