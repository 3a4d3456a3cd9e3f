import contextlib
import csv
import sys

from shop import ItemAdded, jobs

from durajobs.errors import DuplicateEventError


def send(batch):
    # DuplicateEventError: imported by an earlier run (a batch is stored whole or not at all)
    with contextlib.suppress(DuplicateEventError):
        jobs.task("orders").send_many(batch)  # one transaction, one fsync


# a key per row: running the import again (after a crash) applies each row exactly once
with open(sys.argv[1], newline="") as rows:
    batch = []
    for line, row in enumerate(csv.DictReader(rows)):
        batch.append((row["order"], ItemAdded(row["sku"]), f"import:{line}"))
        if len(batch) == 1000:
            send(batch)
            batch = []
    if batch:
        send(batch)
