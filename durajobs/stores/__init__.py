"""The stores: where instances, their queued events, idempotency keys and history live.

``sqlite`` (one WAL-mode file through apsw, claims as OFD byte-range locks in ``ofd_claims``)
is the embedded default.
"""
