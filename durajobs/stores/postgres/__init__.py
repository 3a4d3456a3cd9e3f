"""The PostgreSQL store: ``store`` (psycopg 3), ``claims`` (session advisory locks) and
``wake`` (``NOTIFY``/``LISTEN``)."""
