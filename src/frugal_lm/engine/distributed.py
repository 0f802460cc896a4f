"""Many processes: the launcher behind `frugal train --processes N`, and the process facts the engine shares.

frugal does not schedule processes itself. `--processes N` re-runs the same command under PyTorch's own
launcher (`python -m torch.distributed.run`, i.e. `torchrun --standalone`); `accelerate launch -m frugal_lm
train ...` and `torchrun -m frugal_lm train ...` work the same way, and span several machines. Inside, Hugging
Face Accelerate sets up the process group: gloo on CPUs, nccl on GPUs.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
from typing import Any


def in_launch() -> bool:
    """Whether this process was started by a distributed launcher (torchrun, accelerate launch, mpirun)."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main() -> bool:
    """Whether this is the main process (rank 0), decided from the launcher's environment without torch."""
    return os.environ.get("RANK", "0") == "0"


def process_state() -> Any:
    """Accelerate's process state (rank, world, device), set up for CPUs or GPUs as this machine has."""
    import torch
    from accelerate import PartialState

    # without cpu=True, accelerate does not see a CPU-only torchrun launch as distributed (gloo)
    state = PartialState(cpu=not torch.cuda.is_available())
    destroy_at_exit()
    return state


_destroy_registered = [False]


def destroy_at_exit() -> None:
    """Destroy the process group (if one is set up) before the interpreter tears down.

    A group left to teardown can abort a process that finished its work (SIGABRT, "terminate called
    without an active exception": gloo's threads outlive the interpreter), and the launcher then fails the run.
    """
    import torch

    if torch.distributed.is_initialized() and not _destroy_registered[0]:
        atexit.register(_destroy_process_group)
        _destroy_registered[0] = True


def _destroy_process_group() -> None:
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def without_option(argv: list[str], name: str) -> list[str]:
    """`argv` without `name VALUE` / `name=VALUE` (the launcher's own option, not the workers')."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            out.append(arg)
    return out


def launch(argv: list[str], processes: int) -> int:
    """Run `frugal ARGV` in `processes` processes on this machine through torch.distributed.run.

    Each worker gets an equal share of the CPU threads (unless OMP_NUM_THREADS is set). SIGTERM sent to
    this process is passed on, so the workers finish their step and checkpoint, as one process would.

    Returns:
        The launcher's exit status.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", "frugal_lm", *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum: int, frame: Any) -> None:
        proc.send_signal(signum)

    old = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # the workers got the same Ctrl-C from the terminal; wait for them
                continue
    finally:
        signal.signal(signal.SIGTERM, old)
