import csv
import os
import sys

from shop import ItemAdded, jobs


def send(batch):
    # one transaction, one fsync; rows an earlier run stored are skipped, the others stored
    results = jobs.task("orders").send_many(batch, on_duplicate="skip")
    return sum(result.skipped for result in results)


# A key per row (the file's name and the row's number): running the import again, after a
# crash or on the file with rows appended, stores each row exactly once. Keys are remembered
# for Jobs(key_window=...), a day by default.
path = sys.argv[1]
count = skipped = 0
with open(path, newline="") as file:
    batch = []
    for count, row in enumerate(csv.DictReader(file), start=1):
        key = f"{os.path.basename(path)}:{count}"
        batch.append((row["order"], ItemAdded(row["sku"]), key))
        if len(batch) == 1000:  # at most 2,000 distinct orders per call
            skipped += send(batch)
            batch = []
    if batch:
        skipped += send(batch)
print(f"{path}: {count - skipped} rows imported, {skipped} imported before")
