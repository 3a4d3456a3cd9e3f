"""The pure core: definitions, schedules, durations, retry, codec, contexts, rows and the step
functions. Nothing here does I/O or reads a clock (tests/test_layering.py checks)."""
