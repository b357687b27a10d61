"""The jars streamops needs beyond pyspark's own, pinned in `jars.lock` and cached locally.

Each set of jars (`spark-kafka`: Spark's Kafka source; `kafka-broker`: the Apache Kafka broker of
the tests and the demo; `s3a`: Hadoop's S3A connector and the AWS SDK modules it uses) is listed
in `jars.lock` with its version and SHA-256. `resolve(SET)`
downloads a missing jar once from Maven Central (or the mirror that the machine's Maven settings
name for it) into the cache folder (`.cache/jars/` of the repository, or `$STREAMOPS_JAR_CACHE`),
checks its checksum, and from then on uses the file as it is. `make` runs
`python -m spark_jobs.jars fetch` before the tests and the demo, so a fresh clone needs nothing
else.

This module imports neither pyspark nor Airflow: both sides use it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = Path(__file__).resolve().parent / "jars.lock"
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "jars"
CACHE_ENV = "STREAMOPS_JAR_CACHE"
REPOSITORY_ENV = "STREAMOPS_MAVEN_REPOSITORY"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
SPARK_KAFKA = "spark-kafka"
KAFKA_BROKER = "kafka-broker"
S3A = "s3a"
#: The Maven project each set is resolved from, for the sets `lock` regenerates.
POMS = {S3A: Path(__file__).resolve().parent / "maven" / "s3a.pom.xml"}
#: URI schemes that Spark reads through S3A (`s3://` is mapped to it, see `session.py`).
S3A_SCHEMES = ("s3", "s3a")
DOWNLOAD_TIMEOUT_SECONDS = 120.0
_CHUNK = 1 << 20


class JarUnavailable(Exception):
    """A pinned jar could not be found, downloaded or verified; the message says what to do."""


@dataclass(frozen=True)
class Jar:
    """One pinned jar: its Maven coordinate, checksum and size."""

    jar_set: str
    group: str
    artifact: str
    version: str
    sha256: str
    size: int

    @property
    def coordinate(self) -> str:
        """`group:artifact:version`, as Maven names it."""
        return f"{self.group}:{self.artifact}:{self.version}"

    @property
    def file_name(self) -> str:
        """The jar's file name in the repository and in the cache."""
        return f"{self.artifact}-{self.version}.jar"

    @property
    def repository_path(self) -> str:
        """The jar's path below a Maven repository's root."""
        return f"{self.group.replace('.', '/')}/{self.artifact}/{self.version}/{self.file_name}"


def locked(jar_set: str, lock_file: Path = LOCK_FILE) -> list[Jar]:
    """The jars of `jar_set` as `jars.lock` pins them."""
    jars = []
    for number, raw in enumerate(lock_file.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            name, coordinate, sha256, size = line.split()
            group, artifact, version = coordinate.split(":")
        except ValueError as err:
            raise JarUnavailable(
                f"{lock_file}:{number}: expected '<set> <group>:<artifact>:<version> <sha256> "
                f"<bytes>', got {raw!r}"
            ) from err
        if name == jar_set:
            jars.append(Jar(name, group, artifact, version, sha256.lower(), int(size)))
    if not jars:
        raise JarUnavailable(f"{lock_file} pins no jars of the set {jar_set!r}")
    return jars


def cache_dir() -> Path:
    """Where downloaded jars are kept: `$STREAMOPS_JAR_CACHE`, or `.cache/jars/`."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _mirror_matches(mirror_of: str, repository_id: str = "central") -> bool:
    # Maven's rules for <mirrorOf>: a comma list of ids, '*', 'external:*', and '!id' exclusions.
    patterns = [p.strip() for p in mirror_of.split(",") if p.strip()]
    if f"!{repository_id}" in patterns:
        return False
    return any(p in (repository_id, "*", "external:*", "external:https:*") for p in patterns)


def settings_files(home: Path | None = None) -> list[Path]:
    """The Maven settings files that may name a mirror, in Maven's order of precedence."""
    user = (home or Path.home()) / ".m2" / "settings.xml"
    files = [user]
    for root in (os.environ.get("MAVEN_HOME"), os.environ.get("M2_HOME")):
        if root:
            files.append(Path(root) / "conf" / "settings.xml")
    files += [Path("/etc/maven/settings.xml"), Path("/usr/share/maven/conf/settings.xml")]
    return files


def maven_repository(files: Iterable[Path] | None = None) -> str:
    """The URL jars are downloaded from.

    `$STREAMOPS_MAVEN_REPOSITORY` if set; otherwise the first mirror of Maven Central that the
    machine's Maven settings name (the user's `~/.m2/settings.xml`, then the installation's), so
    that a machine whose Maven goes through a mirror downloads through it too; otherwise Maven
    Central itself. Blocked mirrors (Maven's default `external:http:*` blocker) are skipped.
    """
    if url := os.environ.get(REPOSITORY_ENV):
        return url.rstrip("/")
    for path in settings_files() if files is None else files:
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError):
            continue
        for mirror in root.iter():
            if not mirror.tag.endswith("mirror"):
                continue
            fields = {child.tag.rsplit("}", 1)[-1]: (child.text or "").strip() for child in mirror}
            if fields.get("blocked") == "true" or not fields.get("url"):
                continue
            if _mirror_matches(fields.get("mirrorOf", "")):
                return fields["url"].rstrip("/")
    return MAVEN_CENTRAL


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path) -> None:
    """Write the body of `url` to `dest` (raises `OSError` or `urllib.error.URLError`)."""
    with (
        urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response,
        dest.open("wb") as out,
    ):
        while chunk := response.read(_CHUNK):
            out.write(chunk)


def fetch(
    jar: Jar,
    cache: Path,
    repository: str,
    downloader: Callable[[str, Path], None] = download,
) -> Path:
    """The cached file of `jar`, downloaded and verified first if it is not there yet.

    A cached file whose checksum does not match (truncated, replaced) is downloaded again.
    """
    target = cache / jar.file_name
    if target.is_file() and sha256_of(target) == jar.sha256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    url = f"{repository}/{jar.repository_path}"
    partial = cache / f".{jar.file_name}.{os.getpid()}.part"
    what_to_do = (
        f"Check that this machine reaches {repository} (or set {REPOSITORY_ENV} to a Maven "
        f"repository that serves it), then run `make jars`; or put the file there yourself: "
        f"{target}"
    )
    try:
        downloader(url, partial)
    except (OSError, urllib.error.URLError) as err:
        partial.unlink(missing_ok=True)
        raise JarUnavailable(
            f"jar {jar.coordinate} ({jar.jar_set}) is not in {cache} and could not be "
            f"downloaded from {url}: {err}. {what_to_do}"
        ) from err
    got = sha256_of(partial)
    if got != jar.sha256:
        partial.unlink(missing_ok=True)
        raise JarUnavailable(
            f"jar {jar.coordinate} ({jar.jar_set}) downloaded from {url} has SHA-256 {got}, "
            f"but spark_jobs/jars.lock pins {jar.sha256}: refusing to use it. {what_to_do}"
        )
    partial.replace(target)
    return target


def resolve(
    jar_set: str,
    cache: Path | None = None,
    repository: str | None = None,
    downloader: Callable[[str, Path], None] = download,
    lock_file: Path = LOCK_FILE,
) -> list[Path]:
    """Local paths of every jar of `jar_set`, each verified against `jars.lock`.

    Downloads only the jars that are missing from the cache (or whose file is damaged).
    Raises `JarUnavailable` naming the artifact when one cannot be had.
    """
    folder = cache or cache_dir()
    jars = locked(jar_set, lock_file)
    if all((folder / jar.file_name).is_file() for jar in jars):
        repository = repository or MAVEN_CENTRAL  # not read unless a file is damaged
    else:
        repository = repository or maven_repository()
    return [fetch(jar, folder, repository, downloader) for jar in jars]


def spark_kafka_jars() -> list[str]:
    """The local jar paths that Spark's `kafka` source needs, for `spark.jars` or `--jars`."""
    return [str(path) for path in resolve(SPARK_KAFKA)]


def needs_s3a(paths: Iterable[str | None]) -> bool:
    """Whether any of `paths` is an S3 URI, which Spark reads through S3A."""
    return any(p.split("://", 1)[0].lower() in S3A_SCHEMES for p in paths if p and "://" in p)


def for_source(source: str, paths: Iterable[str | None] = ()) -> list[str]:
    """Local paths of the jars a job needs beyond pyspark's own: the Kafka source's for
    `--source kafka`, S3A's when one of `paths` (checkpoint, sink, input) is an S3 URI.

    Raises `JarUnavailable` naming the artifact when one cannot be had.
    """
    found = spark_kafka_jars() if source == "kafka" else []
    if needs_s3a(paths):
        found += [str(path) for path in resolve(S3A)]
    return found


def lock_lines(jar_set: str, repository_layout: Path) -> list[str]:
    """`jars.lock` lines for every jar below a folder in Maven's repository layout."""
    lines = []
    for path in sorted(repository_layout.rglob("*.jar")):
        *group, artifact, version, _ = path.relative_to(repository_layout).parts
        coordinate = f"{'.'.join(group)}:{artifact}:{version}"
        lines.append(f"{jar_set} {coordinate} {sha256_of(path)} {path.stat().st_size}")
    return sorted(lines, key=lambda line: line.split()[1])


def relock(jar_set: str, lock_file: Path = LOCK_FILE) -> list[str]:
    """Resolve `jar_set` again from its pom with Maven, and rewrite its lines in `lock_file`.

    Runs `mvn dependency:copy-dependencies` (runtime scope) into a temporary folder; the other
    sets' lines and the comments are kept.
    """
    import subprocess
    import tempfile

    if jar_set not in POMS:
        raise JarUnavailable(f"the set {jar_set!r} has no pom to resolve it from ({sorted(POMS)})")
    with tempfile.TemporaryDirectory(prefix="streamops-jars-") as out:
        done = subprocess.run(
            [
                "mvn",
                "-q",
                "-f",
                str(POMS[jar_set]),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                "-Dmdep.useRepositoryLayout=true",
                f"-DoutputDirectory={out}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise JarUnavailable(
                f"mvn could not resolve {POMS[jar_set]}: {(done.stdout + done.stderr).strip()}"
            )
        lines = lock_lines(jar_set, Path(out))
    kept = [
        raw
        for raw in lock_file.read_text().splitlines()
        if raw.split("#", 1)[0].split()[:1] != [jar_set]
    ]
    lock_file.write_text("\n".join([*kept, *lines]) + "\n")
    return lines


def main(argv: list[str] | None = None) -> int:
    """`python -m spark_jobs.jars fetch [SET ...]`: download and verify the pinned jars."""
    parser = argparse.ArgumentParser(prog="python -m spark_jobs.jars", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("fetch", help="download and verify the pinned jars")
    fetch_cmd.add_argument(
        "sets", nargs="*", default=[SPARK_KAFKA, KAFKA_BROKER, S3A], metavar="SET"
    )
    lock_cmd = commands.add_parser(
        "lock", help="resolve a set again from its pom with mvn and rewrite its lines in jars.lock"
    )
    lock_cmd.add_argument("set", choices=sorted(POMS), metavar="SET")
    args = parser.parse_args(argv)
    if args.command == "lock":
        try:
            lines = relock(args.set)
        except JarUnavailable as err:
            sys.stderr.write(f"jars: error: {err}\n")
            return 1
        print(f"jars: {len(lines)} jars of {args.set} locked in {LOCK_FILE}")
        return 0
    downloads: list[str] = []

    def counting_download(url: str, dest: Path) -> None:
        downloads.append(url)
        download(url, dest)

    try:
        paths = [p for name in args.sets for p in resolve(name, downloader=counting_download)]
    except JarUnavailable as err:
        sys.stderr.write(f"jars: error: {err}\n")
        return 1
    size = sum(p.stat().st_size for p in paths)
    print(
        f"jars: {len(paths)} jars of {', '.join(args.sets)} verified in {cache_dir()} "
        f"({size / 1e6:.1f} MB; {len(downloads)} downloaded now)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
