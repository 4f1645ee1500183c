"""Issue #16: `cxrlt shard` refuses an empty output and an image or patient in two splits."""

from __future__ import annotations

import pytest

from cxrlt.data.build import BuildOptions, build_shards
from cxrlt.data.sources.csvfolder import CsvColumns, read_csv_folder
from cxrlt.data.writer import WriterOptions
from cxrlt.errors import InputError
from cxrlt.labels import get_schema

SMALL = WriterOptions(max_size=40, image_format="png", samples_per_shard=8)
TARGET = get_schema("cxr-lt-2024-task2")


def _table(tmp_path, rows: list[str]):
    table = tmp_path / "table.csv"
    table.write_text("\n".join(["file,pid,split,Pneumothorax", *rows]) + "\n")
    return table


def _images(tmp_path, make_image, n=4):
    for i in range(n):
        make_image(tmp_path / "img" / f"x{i}.png", seed=i)
    return tmp_path / "img"


def _build(table, images, out):
    source = read_csv_folder(table, images, TARGET, CsvColumns(path="file", patient_id="pid", split="split"))
    return build_shards(source, TARGET, out, BuildOptions(), SMALL)


def test_no_readable_image_is_an_error_naming_the_reason_and_a_rerun_starts_clean(tmp_path, make_image):
    table = _table(tmp_path, [f"x{i}.png,P{i},{'train' if i < 3 else 'test'},{i % 2}" for i in range(4)])
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"no sample was written.*missing: 4.*nonexistent"):
        _build(table, tmp_path / "nonexistent", out)
    assert not (out / "_index.json").exists() and not list(out.glob("*.tar"))
    # The same command with the images in place now writes every sample (nothing stale blocks it).
    for i in range(4):
        make_image(tmp_path / "nonexistent" / f"x{i}.png", seed=i)
    assert _build(table, tmp_path / "nonexistent", out).num_samples == 4


def test_an_image_in_two_splits_is_refused_naming_both(tmp_path, make_image):
    images = _images(tmp_path, make_image)
    table = _table(tmp_path, ["x0.png,P0,train,1", "x1.png,P1,train,0", "x0.png,P0,test,1", "x2.png,P2,test,0"])
    with pytest.raises(InputError, match=r"table.csv.*image id 'x0' is in both the 'train' and the 'test' split"):
        _build(table, images, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_patient_in_two_splits_is_refused_naming_both(tmp_path, make_image):
    images = _images(tmp_path, make_image)
    table = _table(tmp_path, ["x0.png,P0,train,1", "x1.png,P1,dev,0", "x2.png,P0,dev,1", "x3.png,P3,test,0"])
    with pytest.raises(InputError, match=r"patient 'P0' is in both the 'train' and the 'dev' split"):
        _build(table, images, tmp_path / "out")
    # Disjoint patients shard fine.
    table = _table(tmp_path, ["x0.png,P0,train,1", "x1.png,P1,dev,0", "x2.png,P0,train,1", "x3.png,P3,test,0"])
    assert _build(table, images, tmp_path / "ok").splits == {"train": 2, "dev": 1, "test": 1}
