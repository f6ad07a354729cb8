"""The sample sheet: one row per genome, validated before any job is scheduled.

Columns (JSON schema: ``bacflow/schemas/samples.schema.yaml``): ``genome_id`` (unique, safe characters),
``path``, optional ``gff``, ``genetic_code`` (default 11), ``kind`` (``complete``, ``draft`` or ``mag``;
default ``draft``), ``group`` (default: the genome_id) and ``split`` (``train``, ``val``, ``test`` or
empty). The sheet is tab-separated, or comma-separated when its name ends in ``.csv``. Relative paths
are taken relative to the folder of the sheet, so a sheet can travel with its genomes. Other columns
are allowed and ignored.
"""

from __future__ import annotations

import csv
import functools
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pyrodigal

from bacflow.core.errors import InputError
from bacflow.core.schemas import SAMPLES_SCHEMA, filling_validator, load_schema

#: The NCBI translation tables genes can be called with: pyrodigal's (it lacks 27, 28 and 31); the sample
#: sheet takes no others.
GENETIC_CODES = tuple(sorted(pyrodigal.TRANSLATION_TABLES))


@dataclass(frozen=True)
class Sample:
    genome_id: str
    path: str
    gff: str | None
    genetic_code: int
    kind: str
    group: str
    split: str | None
    #: (size, mtime_ns) of `path`, then of `gff`, as the sheet check found them: the proteins job's params
    #: hold them, so that a changed or replaced file re-runs its shard without being a Snakemake input.
    stamp: tuple[int, ...] = ()


def read_samples(sheet: str | Path, schema_path: str | Path = SAMPLES_SCHEMA) -> list[Sample]:
    """Read and validate a sample sheet; the first problem found raises one `InputError` naming its line."""
    sheet = Path(sheet)
    rows = _sheet_rows(sheet)
    header_line, header = next(rows, (0, None))
    if header is None:
        raise InputError(f"{sheet}: the sample sheet is empty")
    header = [cell.strip() for cell in header]
    for required in ("genome_id", "path"):
        if required not in header:
            raise InputError(
                f"{sheet}, line {header_line} (header): no '{required}' column (columns: {', '.join(header)})"
            )
    schema = load_schema(schema_path)
    schema["properties"]["genetic_code"]["enum"] = list(GENETIC_CODES)
    check_row = _row_checker(schema)
    samples, first_line_of, folder = [], {}, str(sheet.parent)
    for line, row in rows:
        if len(row) != len(header):
            raise InputError(f"{sheet}, line {line}: {len(row)} columns where the header has {len(header)}")
        record: dict[str, Any] = {
            name: cell.strip() for name, cell in zip(header, row, strict=False) if name in _COLUMNS and cell.strip()
        }
        if "genetic_code" in record and record["genetic_code"].isdigit():
            record["genetic_code"] = int(record["genetic_code"])
        where = f"{sheet}, line {line} (genome_id '{record.get('genome_id', '')}')"
        error = check_row(record)
        if error is not None:
            column = error.path[0] if error.path else (error.message.split("'")[1] if "'" in error.message else "?")
            raise InputError(f"{where}, column '{column}': {error.message}")
        if record["genome_id"] in first_line_of:
            raise InputError(f"{where}, column 'genome_id': duplicate of line {first_line_of[record['genome_id']]}")
        first_line_of[record["genome_id"]] = line
        stamp: tuple[int, ...] = ()
        for column in ("path", "gff"):
            if column in record:
                record[column], file_stamp = _readable(
                    os.path.join(folder, record[column]), f"{where}, column '{column}'"
                )
                stamp += file_stamp
        samples.append(
            Sample(
                genome_id=record["genome_id"],
                path=record["path"],
                gff=record.get("gff"),
                genetic_code=record["genetic_code"],
                kind=record["kind"],
                group=record.get("group", record["genome_id"]),
                split=record.get("split"),
                stamp=stamp,
            )
        )
    if not samples:
        raise InputError(f"{sheet}: the sample sheet has a header but no genomes")
    return samples


def _sheet_rows(sheet: Path) -> Iterator[tuple[int, list[str]]]:
    """The sheet's rows that are not blank, with their line numbers, read one by one: a sheet of a million
    genomes is never held whole beside its samples."""
    try:
        # utf-8-sig: spreadsheet programs on Windows start the file with a byte-order mark, which would
        # otherwise become part of the first column's name.
        with open(sheet, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter="," if sheet.suffix == ".csv" else "\t")
            # Blank lines are skipped, so each row keeps its own line number: messages must name the
            # line the user sees in an editor.
            for row in reader:
                if any(cell.strip() for cell in row):
                    yield reader.line_num, row
    except OSError as error:
        raise InputError(f"{sheet}: cannot read the sample sheet ({error.strerror})") from None


_COLUMNS = ("genome_id", "path", "gff", "genetic_code", "kind", "group", "split")


def _row_checker(schema: dict[str, Any]) -> Callable[[dict[str, Any]], jsonschema.ValidationError | None]:
    """A check of one sheet row against `schema` that fills in its defaults, fast enough for a million rows.

    jsonschema's validation of a whole row takes ~100 us (a million rows: minutes of planning). The row
    schema is only `properties` and `required`, so a row is valid when each of its values is valid for its
    property: those checks are ~1 us, and a column's repeated values (kind, genetic_code...) are checked
    once. A row that fails is validated whole, for jsonschema's own message about it.
    """
    if set(schema) - {"$schema", "description", "type", "properties", "required"}:
        raise ValueError("the sample-sheet schema may hold only properties and required (see _row_checker)")
    whole = filling_validator(schema)
    properties = schema["properties"]
    checks = {
        name: functools.lru_cache(maxsize=1024)(jsonschema.Draft202012Validator(subschema).is_valid)
        for name, subschema in properties.items()
    }
    defaults = {name: subschema["default"] for name, subschema in properties.items() if "default" in subschema}
    required = schema.get("required", [])

    def check(record: dict[str, Any]) -> jsonschema.ValidationError | None:
        for name, value in defaults.items():
            record.setdefault(name, value)
        if all(name in record for name in required) and all(
            checks[name](value) for name, value in record.items() if name in checks
        ):
            return None
        return jsonschema.exceptions.best_match(whole.iter_errors(record))

    return check


def _readable(path: str, where: str) -> tuple[str, tuple[int, int]]:
    """`path`, normalised, and its (size, mtime_ns), if it is a readable file (one stat: planning checks every
    genome's files)."""
    path = os.path.normpath(path)
    try:
        info: os.stat_result | None = os.stat(path)
    except OSError:
        info = None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise InputError(f"{where}: a folder, not a file: {path}")
    if info is None or not stat.S_ISREG(info.st_mode):
        raise InputError(f"{where}: file not found: {path}")
    if not os.access(path, os.R_OK):
        raise InputError(f"{where}: file not readable: {path}")
    return path, (info.st_size, info.st_mtime_ns)


def assign_shards(samples: list[Sample], shard_size: int) -> dict[str, list[Sample]]:
    """Cut the sheet, in its own order, into shards of `shard_size` genomes named ``00000``, ``00001``...

    Genomes appended to the end of a sheet therefore change only the last shard (and add new ones);
    every other shard keeps its members and is not run again.
    """
    if shard_size < 1:
        raise InputError(f"shard_size must be at least 1, not {shard_size}")
    return {
        f"{start // shard_size:05d}": samples[start : start + shard_size]
        for start in range(0, len(samples), shard_size)
    }
