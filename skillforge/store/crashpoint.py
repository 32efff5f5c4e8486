"""A test hook for crash safety: `SKILLFORGE_CRASH_AT=<step>` makes the process SIGKILL itself at `step`.

Claims such as "a killed pull leaves nothing but staging files, which the next run and `gc` remove"
are only worth what a real kill -9 shows, and a kill timed by sleeping is a race. So the code marks
named steps with `crash_point("pull:download")`, and a test starts the command with the variable set
to one of them: the process dies there, exactly, with no cleanup of any kind (no finally, no atexit).
Unset (always, outside tests) it costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

from skillforge import config


def crash_point(step: str) -> None:
    """Die here, as kill -9 would, if SKILLFORGE_CRASH_AT names `step`."""
    if config.crash_at() == step:
        os.kill(os.getpid(), signal.SIGKILL)
