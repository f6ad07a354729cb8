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
import re
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


# Slots: a million genomes are held while a run is planned (a third less memory than with a __dict__ each).
@dataclass(frozen=True, slots=True)
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
    for name in _COLUMNS:
        # Which of two same-named columns is meant is a guess: neither is read.
        positions = [index + 1 for index, cell in enumerate(header) if cell == name]
        if len(positions) > 1:
            listed = ", ".join(map(str, positions[:-1])) + f" and {positions[-1]}"
            raise InputError(
                f"{sheet}, line {header_line} (header): column '{name}' appears more than once (columns {listed})"
            )
    for required in ("genome_id", "path"):
        if required not in header:
            raise InputError(
                f"{sheet}, line {header_line} (header): no '{required}' column (columns: {', '.join(header)})"
            )
    schema = load_schema(schema_path)
    schema["properties"]["genetic_code"]["enum"] = list(GENETIC_CODES)
    check_row = _row_checker(schema)
    columns = [(index, name) for index, name in enumerate(header) if name in _COLUMNS]
    samples: list[Sample] = []
    seen: set[str] = set()
    folder = str(sheet.parent)
    for line, row in rows:
        if len(row) != len(header):
            raise InputError(f"{sheet}, line {line}: {len(row)} columns where the header has {len(header)}")
        record: dict[str, Any] = {name: cell for index, name in columns if (cell := row[index].strip())}
        if "genetic_code" in record and record["genetic_code"].isdigit():
            record["genetic_code"] = int(record["genetic_code"])
        error = check_row(record)
        if error is not None:
            column = error.path[0] if error.path else (error.message.split("'")[1] if "'" in error.message else "?")
            raise InputError(f"{_where(sheet, line, record)}, column '{column}': {error.message}")
        genome_id = record["genome_id"]
        if genome_id in seen:
            first = _first_line_of(sheet, genome_id)
            raise InputError(f"{_where(sheet, line, record)}, column 'genome_id': duplicate of line {first}")
        seen.add(genome_id)
        stamp: tuple[int, ...] = ()
        for column in ("path", "gff"):
            if column in record:
                record[column], file_stamp = _readable(
                    os.path.join(folder, record[column]), sheet, line, record, column
                )
                stamp += file_stamp
        samples.append(
            Sample(
                genome_id=genome_id,
                path=record["path"],
                gff=record.get("gff"),
                genetic_code=record["genetic_code"],
                kind=record["kind"],
                group=record.get("group", genome_id),
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


def _where(sheet: Path, line: int, record: dict[str, Any]) -> str:
    """How messages name a row (made only for a message: a million rows are read)."""
    return f"{sheet}, line {line} (genome_id '{record.get('genome_id', '')}')"


def _first_line_of(sheet: Path, genome_id: str) -> int:
    """The line of the first row of `genome_id` (read again for a duplicate's message, rather than keeping every
    genome's line while reading)."""
    rows = _sheet_rows(sheet)
    _, header = next(rows)
    column = [cell.strip() for cell in header].index("genome_id")
    return next(line for line, row in rows if row[column].strip() == genome_id)


_COLUMNS = ("genome_id", "path", "gff", "genetic_code", "kind", "group", "split")


def _row_checker(schema: dict[str, Any]) -> Callable[[dict[str, Any]], jsonschema.ValidationError | None]:
    """A check of one sheet row against `schema` that fills in its defaults, fast enough for a million rows.

    jsonschema's validation of a whole row takes ~100 us (a million rows: minutes of planning). The row
    schema is only `properties` and `required`, so a row is valid when each of its values is valid for its
    property (`value_check`: about a microsecond). A row that fails is validated whole, for jsonschema's own
    message about it. Values of an ``enum`` become the schema's own objects, so that a million rows share one
    "draft".
    """
    if set(schema) - {"$schema", "description", "type", "properties", "required"}:
        raise ValueError("the sample-sheet schema may hold only properties and required (see _row_checker)")
    whole = filling_validator(schema)
    properties = schema["properties"]
    checks = {name: value_check(subschema) for name, subschema in properties.items()}
    defaults = {name: subschema["default"] for name, subschema in properties.items() if "default" in subschema}
    shared = {
        name: {value: value for value in subschema["enum"]}
        for name, subschema in properties.items()
        if "enum" in subschema
    }
    required = schema.get("required", [])

    def check(record: dict[str, Any]) -> jsonschema.ValidationError | None:
        for name, value in defaults.items():
            record.setdefault(name, value)
        if not all(name in record for name in required) or not all(
            checks[name](value) for name, value in record.items() if name in checks
        ):
            return jsonschema.exceptions.best_match(whole.iter_errors(record))
        for name, values in shared.items():
            if name in record:
                record[name] = values[record[name]]
        return None

    return check


#: The keywords `value_check` turns into plain Python, and the JSON types it knows.
_PLAIN_KEYWORDS = {"type", "description", "pattern", "enum", "default"}
_PLAIN_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda value: isinstance(value, str),
    "integer": lambda value: isinstance(value, int) and not isinstance(value, bool),
}


def value_check(subschema: dict[str, Any]) -> Callable[[Any], bool]:
    """Whether a value is valid for `subschema`, as jsonschema's Draft 2020-12 says, for the values a sheet holds
    (text, and whole numbers read from it). A subschema of only type (string or integer), pattern and enum is
    checked in plain Python, ten times faster than by jsonschema (genome ids and paths are all different, so
    caching does not help); any other is left to jsonschema, with its answers cached."""
    if set(subschema) - _PLAIN_KEYWORDS or subschema.get("type", "string") not in _PLAIN_TYPES:
        return functools.lru_cache(maxsize=1024)(jsonschema.Draft202012Validator(subschema).is_valid)
    tests = [_PLAIN_TYPES[subschema["type"]]] if "type" in subschema else []
    if "pattern" in subschema:
        search = re.compile(subschema["pattern"]).search
        tests.append(lambda value: not isinstance(value, str) or search(value) is not None)
    if "enum" in subschema:
        # With its type: 1 and True are equal in Python, not in JSON.
        enum = {(member, type(member)) for member in subschema["enum"]}
        tests.append(lambda value: (value, type(value)) in enum)
    if len(tests) == 1:
        return tests[0]
    return lambda value: all(test(value) for test in tests)


def _readable(path: str, sheet: Path, line: int, record: dict[str, Any], column: str) -> tuple[str, tuple[int, int]]:
    """`path`, normalised, and its (size, mtime_ns), if it is a readable file (one stat: planning checks every
    genome's files); else an error naming the sheet's line and column."""
    path = os.path.normpath(path)
    try:
        info: os.stat_result | None = os.stat(path)
    except OSError:
        info = None
    if info is not None and stat.S_ISREG(info.st_mode) and os.access(path, os.R_OK):
        return path, (info.st_size, info.st_mtime_ns)
    if info is None:
        problem = "file not found"
    elif stat.S_ISDIR(info.st_mode):
        problem = "a folder, not a file"
    elif not stat.S_ISREG(info.st_mode):
        # A device, FIFO or socket (often a link to one, as to /dev/null): reading it hangs or gives nothing.
        kind = next((name for test, name in _SPECIAL_FILES if test(info.st_mode)), "a special file")
        problem = f"{kind}, not a regular file"
    else:
        problem = "file not readable"
    link = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
    raise InputError(f"{_where(sheet, line, record)}, column '{column}': {problem}: {path}{link}")


#: How messages name a path that is neither a file nor a folder.
_SPECIAL_FILES: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


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
