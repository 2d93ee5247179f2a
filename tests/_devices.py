"""Running a command in a fresh interpreter that sees N simulated CPU devices.

XLA reads ``--xla_force_host_platform_device_count`` when jax starts, so a test that needs
several devices runs its code in a subprocess with the flag set.
"""

import os
import subprocess
import sys


def run_with_devices(devices: int, args: list[str], timeout: int = 900) -> str:
    """Runs ``python *args`` on ``devices`` simulated CPU devices; returns its stdout and
    fails the test with the end of its stderr if it exits non-zero."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
