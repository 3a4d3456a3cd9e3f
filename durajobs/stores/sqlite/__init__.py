"""The SQLite store: ``store`` (one WAL-mode file through apsw), ``claims`` (OFD byte-range
locks on ``<db>.lock``) and ``wake`` (a Unix datagram socket ``<db>.wake``)."""
