"""One racing process of tests/spark_jobs/test_s3_lease.py (`python -m`, the S3 settings in its
environment): at each round's start signal, try to take that round's lease, and report.

    python -m tests.spark_jobs.lease_racer URI [URI ...]

For each URI in turn it prints `ready`, waits for one line on its standard input (the start
signal, sent to every racer at once), tries to take the lease there and prints the outcome as
JSON: `{"won": its token or null, "holder": the token its refusal named or null, "took_over":
the token of the gone holder it took the lease from, or null}`.
"""

from __future__ import annotations

import json
import sys

from spark_jobs.lease import Lease, LeaseHeld
from spark_jobs.storage import Location, s3_client


def main(uris: list[str]) -> int:
    """Race for each lease of `uris` in turn."""
    s3_client()  # made before the first start signal, as a running driver has one
    for index, uri in enumerate(uris):
        lease = Lease(Location.of(uri), "word_count", f"racer round {index}")
        print("ready", flush=True)
        if not sys.stdin.readline():
            return 1
        outcome: dict[str, str | None] = {"won": None, "holder": None, "took_over": None}
        try:
            lease.acquire()
            outcome["won"] = lease.token
            if lease.taken_over_from is not None:
                outcome["took_over"] = lease.taken_over_from.token
        except LeaseHeld as held:
            outcome["holder"] = held.holder.token
        print(json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
