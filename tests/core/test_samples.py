"""The sample sheet: validation messages that name the line and column, defaults, relative paths, and
shard assignment that stays put when genomes are appended."""

from __future__ import annotations

import os
from pathlib import Path

import jsonschema
import pytest

from bacflow.core.errors import InputError
from bacflow.core.samples import Sample, assign_shards, read_samples, value_check
from bacflow.core.schemas import SAMPLES_SCHEMA, load_schema
from conftest import PYRODIGAL_DATA, SMALL_GENOME, make_sample

HEADER = ("genome_id", "path", "gff", "genetic_code", "kind", "group", "split")
GOOD_ROW = ("SRR492066", str(SMALL_GENOME), "", "4", "mag", "SRR492066", "train")


def write_sheet(
    path: Path,
    rows: list[tuple[str, ...]],
    header: tuple[str, ...] = HEADER,
    delimiter: str = "\t",
    newline: str = "\n",
    bom: bool = False,
) -> Path:
    text = newline.join(delimiter.join(row) for row in [header, *rows]) + newline
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return path


def with_cell(row: tuple[str, ...], column: str, value: str) -> tuple[str, ...]:
    """`row` (in HEADER's column order) with one cell replaced."""
    cells = list(row)
    cells[HEADER.index(column)] = value
    return tuple(cells)


OTHER_GENOME = with_cell(with_cell(GOOD_ROW, "genome_id", "KK037166"), "path", str(PYRODIGAL_DATA / "KK037166.fna.gz"))


@pytest.mark.parametrize(
    ("bad_row", "column", "fragment"),
    [
        pytest.param(GOOD_ROW, "genome_id", "duplicate of line 2", id="duplicate-genome_id"),
        pytest.param(
            with_cell(OTHER_GENOME, "genome_id", "../escape"), "genome_id", "does not match", id="path-in-genome_id"
        ),
        pytest.param(
            with_cell(OTHER_GENOME, "genome_id", "two words"), "genome_id", "does not match", id="space-in-genome_id"
        ),
        pytest.param(
            with_cell(OTHER_GENOME, "genome_id", "_hidden"), "genome_id", "does not match", id="genome_id-start"
        ),
        pytest.param(with_cell(OTHER_GENOME, "kind", "finished"), "kind", "is not one of", id="unknown-kind"),
        pytest.param(
            with_cell(OTHER_GENOME, "genetic_code", "7"), "genetic_code", "is not one of", id="genetic_code-7"
        ),
        # NCBI tables that pyrodigal cannot call genes with.
        *(
            pytest.param(
                with_cell(OTHER_GENOME, "genetic_code", code),
                "genetic_code",
                "is not one of",
                id=f"genetic_code-{code}",
            )
            for code in ("27", "28", "31")
        ),
        pytest.param(
            with_cell(OTHER_GENOME, "genetic_code", "eleven"), "genetic_code", "is not of type", id="genetic_code-word"
        ),
        pytest.param(with_cell(OTHER_GENOME, "split", "holdout"), "split", "is not one of", id="unknown-split"),
        pytest.param(with_cell(OTHER_GENOME, "path", ""), "path", "required", id="empty-path"),
        pytest.param(
            with_cell(OTHER_GENOME, "path", "no_such_genome.fna.gz"), "path", "file not found", id="missing-path"
        ),
        pytest.param(
            with_cell(OTHER_GENOME, "path", str(PYRODIGAL_DATA)), "path", "a folder, not a file", id="path-is-a-folder"
        ),
        pytest.param(with_cell(OTHER_GENOME, "gff", "no_such.gff"), "gff", "file not found", id="missing-gff"),
    ],
)
def test_bad_row_names_its_line_and_column(tmp_path: Path, bad_row: tuple[str, ...], column: str, fragment: str):
    sheet = write_sheet(tmp_path / "samples.tsv", [GOOD_ROW, bad_row])
    with pytest.raises(InputError) as raised:
        read_samples(sheet)
    message = str(raised.value)
    assert message.startswith(f"{sheet}, line 3 ") and f"column '{column}'" in message, message
    assert fragment in message, message


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file, so no file is unreadable")
def test_unreadable_path_names_its_line_and_column(tmp_path: Path):
    locked = tmp_path / "locked.fna"
    locked.write_text(">locked\nACGT\n")
    locked.chmod(0)
    sheet = write_sheet(tmp_path / "samples.tsv", [GOOD_ROW, with_cell(OTHER_GENOME, "path", "locked.fna")])
    with pytest.raises(InputError, match=r"line 3 .*column 'path': file not readable"):
        read_samples(sheet)


@pytest.mark.parametrize(
    ("make", "what", "link"),
    [
        pytest.param(
            lambda path: path.symlink_to(os.devnull), "a character device", f" (a link to {os.devnull})", id="dev-null"
        ),
        pytest.param(os.mkfifo, "a FIFO", "", id="fifo"),
    ],
)
def test_a_path_that_is_no_regular_file_says_what_it_is(tmp_path: Path, make, what: str, link: str):
    make(tmp_path / "genome.fna")
    sheet = write_sheet(tmp_path / "samples.tsv", [GOOD_ROW, with_cell(OTHER_GENOME, "path", "genome.fna")])
    with pytest.raises(InputError) as raised:
        read_samples(sheet)
    assert str(raised.value) == (
        f"{sheet}, line 3 (genome_id 'KK037166'), column 'path': {what}, not a regular file: "
        f"{tmp_path / 'genome.fna'}{link}"
    )


def test_a_duplicate_names_both_lines(tmp_path: Path):
    """The first line of a duplicated genome_id is found again, blank lines counted, only for the message."""
    rows = [OTHER_GENOME, GOOD_ROW, ("",) * len(HEADER), GOOD_ROW]
    with pytest.raises(
        InputError, match=r", line 5 \(genome_id 'SRR492066'\), column 'genome_id': duplicate of line 3$"
    ):
        read_samples(write_sheet(tmp_path / "samples.tsv", rows))


@pytest.mark.parametrize(
    "subschema",
    [
        *load_schema(SAMPLES_SCHEMA)["properties"].values(),
        {"type": "integer", "enum": [4, 11]},
        {"pattern": "^a"},  # a pattern holds for strings only
        {"type": "string", "minLength": 2},  # not plain: left to jsonschema
    ],
    ids=lambda subschema: "-".join(key for key in subschema if key != "description"),
)
def test_value_checks_agree_with_jsonschema(subschema: dict):
    values = ["", "a", "ab", "A.1-b_c", "_x", "x y", "../x", "a" * 128, "a" * 129, "draft", "mag", "Draft", "train"]
    values += [0, 4, 11, 25, True, False, "11", None, 1.5]
    plain = value_check(subschema)
    validator = jsonschema.Draft202012Validator(subschema)
    assert [plain(value) for value in values] == [validator.is_valid(value) for value in values]


def test_blank_lines_do_not_shift_line_numbers(tmp_path: Path):
    """Line numbers are those an editor shows, blank lines included."""
    sheet = write_sheet(tmp_path / "samples.tsv", [GOOD_ROW, ("",) * len(HEADER), with_cell(OTHER_GENOME, "kind", "x")])
    with pytest.raises(InputError, match=r", line 4 .*column 'kind'"):
        read_samples(sheet)


@pytest.mark.parametrize("missing", ["genome_id", "path"])
def test_missing_required_column_names_the_header_line(tmp_path: Path, missing: str):
    header = tuple(column for column in HEADER if column != missing)
    row = tuple(cell for column, cell in zip(HEADER, GOOD_ROW, strict=False) if column != missing)
    sheet = write_sheet(tmp_path / "samples.tsv", [row], header=header)
    with pytest.raises(InputError) as raised:
        read_samples(sheet)
    assert str(raised.value).startswith(f"{sheet}, line 1 (header): no '{missing}' column"), str(raised.value)


def test_a_duplicated_column_names_both_positions(tmp_path: Path):
    """Two 'path' columns: which one would be read is a guess, so neither is."""
    header = ("genome_id", "path", "kind", "path")
    row = ("SRR492066", str(SMALL_GENOME), "mag", str(PYRODIGAL_DATA / "KK037166.fna.gz"))
    sheet = write_sheet(tmp_path / "samples.tsv", [row], header=header)
    with pytest.raises(InputError) as raised:
        read_samples(sheet)
    assert str(raised.value) == f"{sheet}, line 1 (header): column 'path' appears more than once (columns 2 and 4)"
    # Columns that are not read may repeat (blank names of trailing cells, say).
    write_sheet(sheet, [(*row, "", "")], header=(*header[:3], "note", "", ""))
    assert [sample.path for sample in read_samples(sheet)] == [str(SMALL_GENOME)]


def test_missing_sheet(tmp_path: Path):
    sheet = tmp_path / "absent.tsv"
    with pytest.raises(InputError) as raised:
        read_samples(sheet)
    assert str(raised.value).startswith(f"{sheet}: cannot read the sample sheet")


def test_defaults_are_filled(tmp_path: Path):
    sheet = write_sheet(tmp_path / "samples.tsv", [("SRR492066", str(SMALL_GENOME))], header=("genome_id", "path"))
    assert read_samples(sheet) == [
        Sample(
            genome_id="SRR492066",
            path=str(SMALL_GENOME),
            gff=None,
            genetic_code=11,
            kind="draft",
            group="SRR492066",
            split=None,
            stamp=(SMALL_GENOME.stat().st_size, SMALL_GENOME.stat().st_mtime_ns),
        )
    ]


def test_every_column_is_read(tmp_path: Path):
    sheet = write_sheet(tmp_path / "samples.tsv", [GOOD_ROW])
    assert read_samples(sheet) == [
        Sample(
            genome_id="SRR492066",
            path=str(SMALL_GENOME),
            gff=None,
            genetic_code=4,
            kind="mag",
            group="SRR492066",
            split="train",
            stamp=(SMALL_GENOME.stat().st_size, SMALL_GENOME.stat().st_mtime_ns),
        )
    ]


@pytest.mark.parametrize(
    ("name", "delimiter", "newline", "bom"),
    [
        pytest.param("samples.tsv", "\t", "\n", False, id="tsv"),
        pytest.param("samples.csv", ",", "\n", False, id="csv"),
        # As a Windows spreadsheet program saves it: byte-order mark and CRLF line endings.
        pytest.param("samples.csv", ",", "\r\n", True, id="csv-from-windows"),
    ],
)
def test_relative_paths_are_taken_from_the_sheet_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, delimiter: str, newline: str, bom: bool
):
    """A sheet travels with its genomes: relative paths do not depend on the working directory."""
    genomes = tmp_path / "genomes"
    genomes.mkdir()
    genome = genomes / SMALL_GENOME.name
    genome.write_bytes(SMALL_GENOME.read_bytes())
    gff = genomes / "SRR492066.meta.gff"
    gff.write_bytes((PYRODIGAL_DATA / "SRR492066.meta.gff").read_bytes())
    sheets = tmp_path / "sheets"
    sheets.mkdir()
    rows = [("SRR492066", f"../genomes/{genome.name}", f"../genomes/{gff.name}")]
    sheet = write_sheet(
        sheets / name, rows, header=("genome_id", "path", "gff"), delimiter=delimiter, newline=newline, bom=bom
    )
    monkeypatch.chdir(genomes)  # anywhere but the sheet's folder
    (sample,) = read_samples(sheet)
    assert (sample.genome_id, sample.path, sample.gff) == ("SRR492066", str(genome), str(gff))
    # Both files' size and mtime, the genome's first: a change of either re-runs the genome's shard.
    assert sample.stamp == tuple(
        value for path in (genome, gff) for value in (path.stat().st_size, path.stat().st_mtime_ns)
    )


def samples_named(count: int, prefix: str = "genome") -> list[Sample]:
    return [make_sample(SMALL_GENOME, f"{prefix}{number:03d}") for number in range(count)]


@pytest.mark.parametrize(("count", "appended", "shard_size"), [(7, 4, 3), (9, 1, 3), (5, 20, 2), (1, 1, 1)])
def test_appending_genomes_changes_only_the_last_shard(count: int, appended: int, shard_size: int):
    before = assign_shards(samples_named(count), shard_size)
    after = assign_shards(samples_named(count) + samples_named(appended, "new"), shard_size)
    last = max(before)
    assert before == assign_shards(samples_named(count), shard_size), "shards are deterministic"
    assert {name: after[name] for name in before if name != last} == {
        name: members for name, members in before.items() if name != last
    }
    assert after[last][: len(before[last])] == before[last], "the last shard only gains members"
    assert [sample for name in sorted(after) for sample in after[name]] == samples_named(count) + samples_named(
        appended, "new"
    )
    assert all(len(members) == shard_size for name, members in after.items() if name != max(after))


def test_shard_names_and_sizes():
    shards = assign_shards(samples_named(7), 3)
    assert {name: [sample.genome_id for sample in members] for name, members in shards.items()} == {
        "00000": ["genome000", "genome001", "genome002"],
        "00001": ["genome003", "genome004", "genome005"],
        "00002": ["genome006"],
    }


def test_shard_size_must_be_positive():
    with pytest.raises(InputError, match="shard_size must be at least 1"):
        assign_shards(samples_named(2), 0)
