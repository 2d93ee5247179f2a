"""Running a command in fresh interpreters that see N simulated CPU devices.

XLA reads ``--xla_force_host_platform_device_count`` when jax starts, so a test that needs
several devices runs its code in a subprocess with the flag set; a multi-host run is simulated
by several such processes joined through ``jax.distributed`` on this machine.
"""

import os
import socket
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


def run_processes(processes: int, devices: int, args: list[str], timeout: int = 900) -> str:
    """Runs ``python *args --coordinator ... --process-id i`` as a multi-process JAX run of
    ``processes`` local processes with ``devices`` simulated CPU devices each (the way one
    process per host would run); returns process 0's stdout and fails the test with the end of
    a failing process's stderr."""
    with socket.socket() as probe:  # a free port for the coordinator
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env["JAX_PLATFORMS"] = "cpu"
    joined = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes)]
    running = [
        subprocess.Popen(
            [sys.executable, *args, *joined, "--process-id", str(index)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(processes)
    ]
    outputs = [process.communicate(timeout=timeout) for process in running]
    for process, (_, stderr) in zip(running, outputs):
        assert process.returncode == 0, stderr[-3000:]
    return outputs[0][0]
