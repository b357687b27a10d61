"""Ships the jobs to a cluster: the `spark_jobs` package as one `--py-files` archive.

    python -m spark_jobs.packaging dist/
    spark-submit --master spark://host:7077 --py-files dist/spark_jobs.zip \\
        spark_jobs/word_count.py --input ... --sink ... --checkpoint ...
"""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def shipped_sources(package: Path = PACKAGE) -> list[Path]:
    """The files a driver runs: the package's Python sources, as `build_py_files` ships them."""
    return sorted(package.glob("*.py"))


def code_version(package: Path = PACKAGE) -> str:
    """A content hash of the code a driver runs (`sha256:` and 16 hex digits): equal for equal
    sources, whatever their files' times or the folder they are in."""
    digest = hashlib.sha256()
    for source in shipped_sources(package):
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return f"sha256:{digest.hexdigest()[:16]}"


def build_py_files(dest_dir: Path) -> Path:
    """Write `spark_jobs.zip` (the package's Python sources) into `dest_dir`; return its path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    archive = dest_dir / "spark_jobs.zip"
    tmp = archive.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for source in shipped_sources():
            zf.write(source, f"{PACKAGE.name}/{source.name}")
    tmp.replace(archive)
    return archive


if __name__ == "__main__":
    print(build_py_files(Path(sys.argv[1] if len(sys.argv) > 1 else "dist")))
