"""Manifests (bacflow.core.manifest): one file standing for many, the same bytes wherever the outdir is."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bacflow.core.errors import InputError
from bacflow.core.manifest import read_manifest, write_manifest


def test_a_manifest_reads_back_its_files_and_does_not_name_the_outdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    texts = []
    for outdir in (tmp_path / "a" / "results", tmp_path / "b" / "elsewhere"):
        files = {"00000": outdir / "unique" / "shards" / "shard=00000.parquet", "00001": outdir / "x" / "y.parquet"}
        manifest = outdir / "unique" / "shards.json"
        write_manifest(files, manifest)
        assert read_manifest(manifest) == {key: str(path) for key, path in files.items()}
        texts.append(manifest.read_text())
    assert texts[0] == texts[1] and str(tmp_path) not in texts[0]
    assert list(json.loads(texts[0])) == ["00000", "00001"]  # in the given order
    # Given relative to the working directory (as Snakemake gives paths), read back relative to it too.
    monkeypatch.chdir(tmp_path / "a")
    assert read_manifest(Path("results/unique/shards.json"))["00000"] == os.path.join(
        "results", "unique", "shards", "shard=00000.parquet"
    )


def test_a_broken_manifest_says_which_and_what_to_do(tmp_path: Path):
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(InputError, match=r"bad.json: not a mapping .* rerun the job"):
        read_manifest(tmp_path / "bad.json")
    with pytest.raises(InputError, match=r"missing.json: unreadable"):
        read_manifest(tmp_path / "missing.json")
