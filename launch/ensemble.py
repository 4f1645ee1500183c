"""`cxrlt ensemble build|apply|report|compare`: search a recipe on dev predictions, apply it, report on it,
compare members and ensemble on a held-out labelled split."""

from __future__ import annotations

import argparse
from pathlib import Path

from launch.options import add_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ensemble", help="ensembles of prediction files")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    build = actions.add_parser(
        "build",
        help="search a combiner with Ray Tune on dev predictions; write recipe.json",
        description="Scores are out of fold over patient-grouped folds of the dev set.",
    )
    build.add_argument("--predictions", required=True, nargs="+", type=Path, help="members' dev prediction files")
    build.add_argument(
        "--labels", required=True, type=Path, help="dev label CSV (dicom_id/image_id, patient column, classes)"
    )
    build.add_argument("--views", type=Path, help="CSV with the view column (default: the label CSV)")
    build.add_argument("--config", type=Path, help="ensemble config TOML")
    add_overrides(build)
    build.add_argument("--out", required=True, type=Path, help="build folder")
    build.add_argument(
        "--verbose", action="store_true", help="show Ray's and Tune's own output (hidden by default: a line per trial)"
    )
    build.set_defaults(run=run_build)

    apply = actions.add_parser("apply", help="apply a recipe to members' predictions (no refitting)")
    apply.add_argument("--recipe", required=True, type=Path)
    apply.add_argument("--predictions", required=True, nargs="+", type=Path)
    apply.add_argument("--views", type=Path, help="CSV with ViewPosition (needed by frontal-weighted recipes)")
    apply.add_argument("--out", required=True, type=Path, help="ensemble prediction file (.csv or .parquet)")
    apply.set_defaults(run=run_apply)

    report = actions.add_parser("report", help="HTML page and PNG plots of a build")
    report.add_argument("build", type=Path, help="build folder (recipe.json, build.npz)")
    report.add_argument("--out", type=Path, help="report folder (default: BUILD/report)")
    report.set_defaults(run=run_report)

    compare = actions.add_parser(
        "compare",
        help="members vs ensemble vs prevalence on a held-out labelled split: HTML page, PNGs, metrics.json",
    )
    compare.add_argument("--members", required=True, nargs="+", type=Path, help="members' prediction files")
    compare.add_argument("--ensemble", type=Path, help="the ensemble's prediction file (from `ensemble apply`)")
    compare.add_argument(
        "--labels", required=True, type=Path, help="label CSV of the split (dicom_id/image_id, subject_id, classes)"
    )
    compare.add_argument("--recipe", type=Path, help="recipe.json whose member weights to draw")
    compare.add_argument(
        "--image",
        dest="images",
        action="append",
        default=[],
        type=_titled_image,
        metavar="TITLE=PATH",
        help="an extra PNG to show under TITLE (repeatable)",
    )
    compare.add_argument(
        "--task",
        choices=["t1", "t2", "t3"],
        help="score only this CXR-LT task's classes, on the images the label CSV lists",
    )
    compare.add_argument("--title", default=None, help="page title")
    compare.add_argument("--out", required=True, type=Path, help="report folder")
    compare.set_defaults(run=run_compare)


def run_build(args: argparse.Namespace) -> int:
    from rich.table import Table

    from cxrlt.config import load_config
    from ensembles.build import build
    from ensembles.config import EnsembleConfig
    from launch.console import make_console

    console = make_console()
    config = load_config(EnsembleConfig, args.config, args.overrides)
    result = build(config, args.predictions, args.labels, args.out, args.views, console, args.verbose)
    table = Table("score", "value", title=f"ensemble {result.recipe.config_hash}")
    for name, value in result.recipe.scores.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    console.print(f"wrote {result.recipe_path} (MLflow run {result.recipe.mlflow_run_id})")
    return 0


def run_apply(args: argparse.Namespace) -> int:
    from ensembles.recipe import apply_recipe

    print(f"wrote {apply_recipe(args.recipe, args.predictions, args.out, args.views)}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from ensembles.report import write_report

    print(f"wrote {write_report(args.build, args.out)}")
    return 0


def _titled_image(spec: str) -> tuple[str, Path]:
    # The last "=" splits: titles are freer text than paths.
    title, sep, path = spec.rpartition("=")
    if not sep or not title.strip() or not path:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected TITLE=PATH")
    return title.strip(), Path(path)


def run_compare(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ensembles.compare import COLUMNS, DEFAULT_TITLE, write_comparison
    from launch.console import make_console

    console = make_console()
    result = write_comparison(
        args.members,
        args.labels,
        args.out,
        ensemble=args.ensemble,
        recipe=args.recipe,
        images=dict(args.images),
        title=args.title or DEFAULT_TITLE,
        task=args.task,
    )
    summary = result.summary()
    columns = [k for k in COLUMNS if any(row[k] is not None for row in summary.values())]
    title = f"split {result.split}: {result.n_images} images, {len(result.classes_scored)} classes scored"
    table = Table("model", *(COLUMNS[k] for k in columns), title=title)
    for name, row in summary.items():
        table.add_row(name, *("-" if row[k] is None else f"{row[k]:.4f}" for k in columns))
    console.print(table)
    if result.classes_excluded:
        console.print(f"not scored (no AP): {', '.join(result.classes_excluded)}", markup=False)
    # Paths may hold [brackets] (rich markup) and exceed the piped width; print them as they are.
    console.print(f"wrote {result.index}", markup=False, soft_wrap=True)
    return 0
