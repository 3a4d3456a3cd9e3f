"""Run the daemon as if this platform had no timerfd (as on macOS).

The earliest alarm then becomes a ``select`` timeout, rounded up to a millisecond.
"""

from __future__ import annotations

import durajobs_daemon

durajobs_daemon.WallTimer.create = classmethod(lambda cls: None)  # type: ignore[assignment]

if __name__ == "__main__":
    durajobs_daemon.main()
