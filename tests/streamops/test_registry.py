"""A stream's spec versions: a hash of job, Params and code, kept in the stream's record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from spark_jobs.packaging import PACKAGE, code_version
from streamops import registry
from streamops.registry import SpecVersion, StreamRecord


def test_the_code_version_follows_the_sources_content_only(tmp_path: Path) -> None:
    copy = tmp_path / "spark_jobs"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert code_version(copy) == code_version()  # another folder, other file times
    runner = copy / "runner.py"
    runner.write_text(runner.read_text() + "\n# changed\n")
    assert code_version(copy) != code_version()
    (copy / "notes.txt").write_text("not shipped")
    runner.write_text((PACKAGE / "runner.py").read_text())
    assert code_version(copy) == code_version()


def test_a_spec_version_changes_with_job_params_or_code() -> None:
    base = SpecVersion.id_of("word_count", {"stream": "wc", "trigger_interval": "1 second"}, "c1")
    # Same spec, keys in another order.
    assert base == SpecVersion.id_of(
        "word_count", {"trigger_interval": "1 second", "stream": "wc"}, "c1"
    )
    assert base != SpecVersion.id_of(
        "word_count", {"stream": "wc", "trigger_interval": "5 seconds"}, "c1"
    )
    assert base != SpecVersion.id_of(
        "running_total", {"stream": "wc", "trigger_interval": "1 second"}, "c1"
    )
    assert base != SpecVersion.id_of(
        "word_count", {"stream": "wc", "trigger_interval": "1 second"}, "c2"
    )


def test_the_record_keeps_every_version_the_stream_ran(tmp_path: Path) -> None:
    record = StreamRecord("wc", "word_count", "ck", "sink", "in", "1 second")
    first = SpecVersion.of("word_count", {"stream": "wc"}, commit="abc")
    second = SpecVersion.of("word_count", {"stream": "wc", "trigger_interval": "5 seconds"})
    record.run_version(first)
    record.run_version(second)
    record.run_version(first)  # back to the first: not a third version
    registry.save(record, str(tmp_path))

    loaded = registry.load("wc", str(tmp_path))
    assert loaded is not None
    assert [v.version for v in loaded.versions] == [first.version, second.version]
    assert loaded.spec_version == first.version
    assert loaded.version() == first
    assert loaded.version(second.version) == second
    assert second.code == code_version()


def test_a_record_written_before_spec_versions_loads(tmp_path: Path) -> None:
    folder = tmp_path / "_streamops" / "streams"
    folder.mkdir(parents=True)
    (folder / "wc.json").write_text(
        json.dumps({"stream": "wc", "job": "word_count", "checkpoint": "c", "sink": "s",
                    "input": "i", "trigger_interval": None})
    )  # fmt: skip
    loaded = registry.load("wc", str(tmp_path))
    assert loaded is not None
    assert loaded.versions == []
    assert loaded.spec_version is None
