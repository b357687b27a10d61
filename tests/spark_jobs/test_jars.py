"""The pinned jars: verified by checksum, downloaded once, and a missing one named to the user."""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
from pathlib import Path

import pytest

from spark_jobs import jars
from spark_jobs.jars import Jar, JarUnavailable

CONNECTOR = "org.apache.spark:spark-sql-kafka-0-10_2.13:4.2.0"


class FakeRepository:
    """A Maven repository in a dict, counting what is downloaded from it."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.downloads: list[str] = []

    def download(self, url: str, dest: Path) -> None:
        self.downloads.append(url)
        path = url.removeprefix("https://repo.example/maven2/")
        if path not in self.files:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)  # type: ignore[arg-type]
        dest.write_bytes(self.files[path])


def lock_with(tmp_path: Path, contents: dict[str, bytes]) -> Path:
    lines = ["# test lock"]
    for coordinate, data in contents.items():
        lines.append(f"demo {coordinate} {hashlib.sha256(data).hexdigest()} {len(data)}")
    lock = tmp_path / "jars.lock"
    lock.write_text("\n".join(lines) + "\n")
    return lock


def repository_path(coordinate: str) -> str:
    group, artifact, version = coordinate.split(":")
    return Jar("demo", group, artifact, version, "", 0).repository_path


def test_the_lock_pins_the_connector_for_the_locked_pyspark() -> None:
    from importlib import metadata

    pinned = {jar.coordinate: jar for jar in jars.locked(jars.SPARK_KAFKA)}
    spark = metadata.version("pyspark")
    assert f"org.apache.spark:spark-sql-kafka-0-10_2.13:{spark}" in pinned
    assert f"org.apache.spark:spark-token-provider-kafka-0-10_2.13:{spark}" in pinned
    # The versions spark-sql-kafka-0-10_2.13-4.2.0.pom names for its client and pool
    assert "org.apache.kafka:kafka-clients:3.9.2" in pinned
    assert "org.apache.commons:commons-pool2:2.13.1" in pinned
    for jar in [*pinned.values(), *jars.locked(jars.KAFKA_BROKER)]:
        assert re.fullmatch(r"[0-9a-f]{64}", jar.sha256), jar
        assert jar.size > 0


def test_the_s3a_set_matches_the_bundled_hadoop_without_the_sdk_bundle() -> None:
    import pyspark

    # Given the Hadoop client jars that the installed pyspark ships
    bundled = Path(pyspark.__file__).parent / "jars"
    hadoop = {
        p.name.removeprefix("hadoop-client-api-") for p in bundled.glob("hadoop-client-api-*")
    }
    assert len(hadoop) == 1
    version = hadoop.pop().removesuffix(".jar")
    pinned = jars.locked(jars.S3A)
    coordinates = {jar.coordinate for jar in pinned}
    # Then S3A is pinned at that version, with the SDK's modules and not its bundle of every
    # service, and no jar that pyspark ships already (another version on one classpath)
    assert f"org.apache.hadoop:hadoop-aws:{version}" in coordinates
    assert "software.amazon.awssdk:s3:2.35.4" in coordinates
    assert not any(jar.artifact == "bundle" for jar in pinned)
    shipped = {re.sub(r"-\d[^-]*(\.Final)?\.jar$", "", p.name) for p in bundled.glob("*.jar")}
    assert {jar.artifact for jar in pinned} & shipped == set()
    assert sum(jar.size for jar in pinned) < 20_000_000


def test_jobs_get_the_s3a_jars_for_paths_on_s3_only() -> None:
    s3a = {str(path) for path in jars.resolve(jars.S3A)}
    assert jars.for_source("file", ["/data/ck", "/data/sink", "/data/in"]) == []
    assert set(jars.for_source("file", ["s3a://b/ck", "/data/sink", None])) == s3a
    assert set(jars.for_source("rate", ["/data/ck", "S3://b/sink"])) == s3a
    kafka_and_s3a = jars.for_source("kafka", ["s3a://b/ck", "s3a://b/sink"])
    assert set(kafka_and_s3a) == s3a | set(jars.spark_kafka_jars())


def test_the_set_up_fetched_every_pinned_jar_and_a_resolve_downloads_nothing() -> None:
    # `make` fetched them (`make jars`); resolving again checks each file and downloads nothing.
    downloads: list[str] = []
    for jar_set in (jars.SPARK_KAFKA, jars.KAFKA_BROKER, jars.S3A):
        paths = jars.resolve(jar_set, downloader=lambda url, dest: downloads.append(url))
        for jar, path in zip(jars.locked(jar_set), paths, strict=True):
            assert path.stat().st_size == jar.size
            assert jars.sha256_of(path) == jar.sha256
    assert downloads == []


def test_a_jar_is_downloaded_once_then_read_from_the_cache(tmp_path: Path) -> None:
    # Given a lock of two jars and a repository that serves them
    contents = {"org.example:alpha:1.0": b"alpha jar", "org.example:beta_2.13:2.1": b"beta jar"}
    lock = lock_with(tmp_path, contents)
    repo = FakeRepository({repository_path(c): data for c, data in contents.items()})
    cache = tmp_path / "cache"

    # When they are resolved twice
    def resolve() -> list[Path]:
        return jars.resolve(
            "demo",
            cache=cache,
            repository="https://repo.example/maven2",
            downloader=repo.download,
            lock_file=lock,
        )

    first = resolve()
    mtimes = [path.stat().st_mtime_ns for path in first]
    second = resolve()

    # Then each was downloaded once, from its Maven path, and the second resolve downloaded nothing
    assert repo.downloads == [
        "https://repo.example/maven2/org/example/alpha/1.0/alpha-1.0.jar",
        "https://repo.example/maven2/org/example/beta_2.13/2.1/beta_2.13-2.1.jar",
    ]
    assert second == first == [cache / "alpha-1.0.jar", cache / "beta_2.13-2.1.jar"]
    assert [path.read_bytes() for path in second] == list(contents.values())
    assert [path.stat().st_mtime_ns for path in second] == mtimes
    assert sorted(p.name for p in cache.iterdir()) == ["alpha-1.0.jar", "beta_2.13-2.1.jar"]


def test_a_damaged_cached_jar_is_downloaded_again(tmp_path: Path) -> None:
    contents = {"org.example:alpha:1.0": b"alpha jar"}
    lock = lock_with(tmp_path, contents)
    repo = FakeRepository({repository_path(c): data for c, data in contents.items()})
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "alpha-1.0.jar").write_bytes(b"alpha j")  # truncated

    [path] = jars.resolve("demo", cache, "https://repo.example/maven2", repo.download, lock)

    assert path.read_bytes() == b"alpha jar"
    assert len(repo.downloads) == 1


def test_a_jar_with_the_wrong_checksum_is_refused_and_not_cached(tmp_path: Path) -> None:
    lock = lock_with(tmp_path, {"org.example:alpha:1.0": b"alpha jar"})
    repo = FakeRepository({repository_path("org.example:alpha:1.0"): b"something else"})
    cache = tmp_path / "cache"

    with pytest.raises(JarUnavailable) as refused:
        jars.resolve("demo", cache, "https://repo.example/maven2", repo.download, lock)

    message = str(refused.value)
    assert "org.example:alpha:1.0" in message
    assert hashlib.sha256(b"something else").hexdigest() in message
    assert "refusing to use it" in message
    assert list(cache.iterdir()) == []


def test_a_missing_jar_names_the_artifact_and_what_to_do(tmp_path: Path) -> None:
    lock = lock_with(tmp_path, {"org.example:alpha:1.0": b"alpha jar"})
    repo = FakeRepository({})  # serves nothing
    cache = tmp_path / "cache"

    with pytest.raises(JarUnavailable) as missing:
        jars.resolve("demo", cache, "https://repo.example/maven2", repo.download, lock)

    message = str(missing.value)
    assert "jar org.example:alpha:1.0 (demo) is not in" in message
    assert "https://repo.example/maven2/org/example/alpha/1.0/alpha-1.0.jar" in message
    assert "404" in message
    assert "make jars" in message
    assert str(cache / "alpha-1.0.jar") in message
    assert list(cache.iterdir()) == []


def test_a_job_without_its_jar_exits_2_naming_it(tmp_path: Path) -> None:
    # Given an empty jar cache and a repository that does not answer
    import subprocess
    import sys

    env = {
        **os.environ,
        jars.CACHE_ENV: str(tmp_path / "empty-cache"),
        jars.REPOSITORY_ENV: "http://127.0.0.1:9/maven2",
    }
    # When a kafka stream starts
    command = [
        sys.executable, "-m", "spark_jobs.word_count",
        "--source", "kafka", "--kafka-bootstrap-servers", "127.0.0.1:9",
        "--kafka-topic", "lines",
        "--sink", str(tmp_path / "sink"), "--checkpoint", str(tmp_path / "ck"),
    ]  # fmt: skip
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    # Then it refuses before any Spark starts, naming the connector's jar
    assert result.returncode == 2, result.stderr
    assert f"word_count: error: jar {CONNECTOR} (spark-kafka) is not in" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_mirror_in_the_maven_settings_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(jars.REPOSITORY_ENV, raising=False)
    settings = tmp_path / "settings.xml"
    settings.write_text(
        """<settings xmlns="http://maven.apache.org/SETTINGS/1.0.0"><mirrors>
        <mirror><id>blocker</id><mirrorOf>external:http:*</mirrorOf>
          <url>http://0.0.0.0/</url><blocked>true</blocked></mirror>
        <mirror><id>other</id><mirrorOf>*,!central</mirrorOf><url>https://no.example/</url></mirror>
        <mirror><id>corp</id><mirrorOf>central</mirrorOf>
          <url>https://maven.corp.example/central/</url></mirror>
        </mirrors></settings>"""
    )
    assert jars.maven_repository([settings]) == "https://maven.corp.example/central"
    assert jars.maven_repository([tmp_path / "absent.xml"]) == jars.MAVEN_CENTRAL
    monkeypatch.setenv(jars.REPOSITORY_ENV, "https://env.example/m2/")
    assert jars.maven_repository([settings]) == "https://env.example/m2"


def test_lock_lines_name_each_jar_of_a_maven_repository_layout(tmp_path: Path) -> None:
    # Given the folder `mvn dependency:copy-dependencies -Dmdep.useRepositoryLayout` writes
    jar = tmp_path / "software/amazon/awssdk/s3/2.35.4/s3-2.35.4.jar"
    jar.parent.mkdir(parents=True)
    jar.write_bytes(b"s3")
    # Then its line pins the coordinate, checksum and size, as `locked` reads them back
    lines = jars.lock_lines("s3a", tmp_path)
    digest = hashlib.sha256(b"s3").hexdigest()
    assert lines == [f"s3a software.amazon.awssdk:s3:2.35.4 {digest} 2"]
    lock = tmp_path / "jars.lock"
    lock.write_text("\n".join(lines) + "\n")
    assert jars.locked("s3a", lock)[0].repository_path == str(jar.relative_to(tmp_path))
