"""Ships the jobs to a cluster: the `spark_jobs` package as one `--py-files` archive.

    python -m spark_jobs.packaging dist/
    spark-submit --master spark://host:7077 --py-files dist/spark_jobs.zip \\
        spark_jobs/word_count.py --input ... --sink ... --checkpoint ...
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def build_py_files(dest_dir: Path) -> Path:
    """Write `spark_jobs.zip` (the package's Python sources) into `dest_dir`; return its path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    archive = dest_dir / "spark_jobs.zip"
    tmp = archive.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for source in sorted(PACKAGE.glob("*.py")):
            zf.write(source, f"{PACKAGE.name}/{source.name}")
    tmp.replace(archive)
    return archive


if __name__ == "__main__":
    print(build_py_files(Path(sys.argv[1] if len(sys.argv) > 1 else "dist")))
