"""Where everything of a stream lives: the one definition both Spark jobs and Airflow read.

A checkpoint folder holds Spark's own files and, in `_streamops/`, ours:

    <checkpoint>/
        metadata              Spark: the query id
        offsets/<N>           Spark: what batch N reads (written before the batch runs)
        commits/<N>           Spark: batch N finished
        sources/, state/      Spark: file-source log, state store
        _streamops/
            generation.json   our sink batch id of Spark batch 0 (see `Generation`)
            status.json       the job's progress, written by its listener (see `status.py`)
            lease.json        which driver runs the query on this checkpoint (see `lease.py`)
            stop-request      present: stop at the next batch boundary and exit 0

A sink folder is a Parquet dataset, one file per micro-batch:

    <sink>/part-<batch_id, 12 digits>.parquet
    <sink>/.part-...tmp       a batch being written; hidden, so no reader sees it
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from spark_jobs.storage import Location

STREAMOPS_DIR = "_streamops"
LEASE_FILE = "lease.json"
STATUS_FILE = "status.json"
STOP_REQUEST = "stop-request"
#: Files of `_streamops/` that describe the running stream, not the checkpoint's content: a
#: snapshot leaves them out, and a restore or rotation keeps the live ones.
CONTROL_FILES = (LEASE_FILE, STATUS_FILE, STOP_REQUEST)
SINK_FILE_PATTERN = re.compile(r"^part-(\d{12})\.parquet$")


def sink_file_name(batch_id: int) -> str:
    """The file that holds one micro-batch's rows in a sink."""
    return f"part-{batch_id:012d}.parquet"


@dataclass(frozen=True)
class CheckpointLayout:
    """The files of one checkpoint folder."""

    root: Location

    @classmethod
    def of(cls, checkpoint: str) -> CheckpointLayout:
        """The layout of the checkpoint at a local path or URI."""
        return cls(Location.of(checkpoint))

    @property
    def offsets(self) -> Location:
        """Spark's write-ahead log of what each batch reads."""
        return self.root.child("offsets")

    @property
    def commits(self) -> Location:
        """Spark's log of finished batches."""
        return self.root.child("commits")

    @property
    def metadata(self) -> Location:
        """Spark's query metadata file."""
        return self.root.child("metadata")

    @property
    def generation_file(self) -> Location:
        """Our record of how sink batch ids relate to this checkpoint's batch ids."""
        return self.root.child(STREAMOPS_DIR, "generation.json")

    @property
    def status_file(self) -> Location:
        """The job's machine-readable progress."""
        return self.root.child(STREAMOPS_DIR, STATUS_FILE)

    @property
    def lease_file(self) -> Location:
        """Which driver runs the query on this checkpoint: its lease (see `lease.py`)."""
        return self.root.child(STREAMOPS_DIR, LEASE_FILE)

    @property
    def stop_request(self) -> Location:
        """Its presence asks the running job to stop at the next batch boundary."""
        return self.root.child(STREAMOPS_DIR, STOP_REQUEST)

    def batch_ids(self, log: Location) -> list[int]:
        """The batch ids present in Spark's `offsets` or `commits` log, ascending."""
        return sorted(int(info.base_name) for info in log.list() if info.base_name.isdigit())

    def is_new(self) -> bool:
        """True when Spark has never planned a batch in this checkpoint."""
        return not self.batch_ids(self.offsets)

    def batch_timestamp_ms(self, batch_id: int) -> int:
        """The timestamp Spark recorded for a batch in its offset log.

        Spark writes it before the batch runs and reuses it when a batch is replayed after a
        crash, so it is the same on every attempt of the batch.
        """
        log_file = self.offsets.child(str(batch_id))
        lines = log_file.read_text().splitlines()
        if len(lines) < 2:
            raise ValueError(
                f"checkpoint offset file {log_file} is truncated: expected a version line and a "
                "metadata line; restore the checkpoint from a snapshot"
            )
        return int(json.loads(lines[1])["batchTimestampMs"])


@dataclass(frozen=True)
class Generation:
    """How a checkpoint's batch ids map onto the sink's, which increase over a job's whole life.

    Spark numbers batches from 0 in every new checkpoint. The sink numbers them
    `first_sink_batch_id + spark_batch_id`, so a new checkpoint continues after the last batch
    already in the sink instead of colliding with it.
    """

    first_sink_batch_id: int
    # 0 for a checkpoint's first life; each rotation starts the next number.
    number: int = 0

    def sink_batch_id(self, spark_batch_id: int) -> int:
        """The sink's batch id of a Spark batch of this checkpoint."""
        return self.first_sink_batch_id + spark_batch_id

    @classmethod
    def read(cls, layout: CheckpointLayout) -> Generation | None:
        """The recorded generation of a checkpoint, if any."""
        if not layout.generation_file.exists():
            return None
        data = json.loads(layout.generation_file.read_text())
        return cls(
            first_sink_batch_id=int(data["first_sink_batch_id"]), number=int(data.get("number", 0))
        )

    def write(self, layout: CheckpointLayout) -> None:
        """Record this generation in the checkpoint."""
        layout.generation_file.write_text_atomic(
            json.dumps({"first_sink_batch_id": self.first_sink_batch_id, "number": self.number})
            + "\n"
        )
