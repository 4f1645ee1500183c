"""`cxrlt schemas`: list the label schemas, their classes and frequency groups."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("schemas", help="list label schemas and their classes")
    parser.add_argument("name", nargs="?", help="show one schema in full")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from cxrlt.errors import InputError
    from cxrlt.labels import SCHEMAS, get_schema
    from launch.console import make_console

    console = make_console()
    if args.name is None:
        table = Table("schema", "classes", "groups", "description")
        for schema in SCHEMAS.values():
            groups = schema.groups()
            sizes = "/".join(str(sum(g == name for g in groups.values())) for name in ("head", "medium", "tail"))
            table.add_row(schema.name, str(len(schema)), sizes if groups else "-", schema.description)
        console.print(table)
        console.print("groups = head/medium/tail class counts; `cxrlt schemas NAME` lists the classes.")
        return 0
    try:
        schema = get_schema(args.name)
    except KeyError as e:
        raise InputError(e.args[0]) from None
    groups = schema.groups()
    table = Table("#", "class", "train count", "share", "group", title=f"{schema.name}: {schema.description}")
    for i, name in enumerate(schema.classes):
        count = schema.counts.get(name) if schema.counts else None
        share = f"{count / schema.total:.2%}" if count is not None and schema.total else "-"
        table.add_row(str(i), name, "-" if count is None else f"{count:,}", share, groups.get(name, "-"))
    console.print(table)
    return 0
