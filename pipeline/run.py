"""``qesmon pipeline``: run the dataflow with Bytewax recovery, alone or as a cluster.

Recovery is always on: the stream source and the window state are snapshotted every
``SNAPSHOT_INTERVAL_SECONDS`` into ``RECOVERY_DIR``, so a restart (even after SIGKILL) resumes
from the last snapshot and the idempotent sinks absorb the replay. ``-w`` (workers per
process), ``-i``/``-a`` (process id and addresses of a multi-host cluster) go to Bytewax as
they are; ``-p N`` starts N local processes on localhost ports 2101.. as one cluster.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from types import FrameType

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from pipeline.dataflow import build_flow
from pipeline.health import PipelineStats
from qesmon.settings import Settings

log = logging.getLogger(__name__)


def prepare_recovery(directory: Path, partitions: int) -> RecoveryConfig:
    """Create the recovery partitions once; later runs reuse (and resume from) them.

    They are created in a scratch directory renamed into place, so a crash during creation
    never leaves a half-made store that Bytewax would refuse to resume from.
    """
    if not any(directory.glob("part-*.sqlite3")):
        if directory.exists():
            directory.rmdir()  # empty: nothing to lose; refuses if anything else is in it
        scratch = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        init_db_dir(scratch, partitions)
        scratch.rename(directory)
        log.info("created %d recovery partition(s) in %s", partitions, directory)
    return RecoveryConfig(directory)


_STOP = threading.Event()


#: glibc's mallopt parameter for the size from which blocks are mmap'ed on their own
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 * 2**20


def tune_memory() -> None:
    """Garbage collector and allocator settings for a process that runs the dataflow.

    * Parsing allocates millions of short-lived objects per second; the default collection
      thresholds (700 allocations) made the collector a fifth of the pipeline's time.
    * glibc raises its mmap threshold to the largest block freed so far (up to 32 MiB): after
      the first multi-megabyte snapshot every later read buffer came from the heap, which
      fragmented and made RSS creep up by a fifth over millions of events. A fixed threshold
      keeps big blocks mmap'ed and returned to the system when freed.
    """
    gc.set_threshold(100_000, 50, 100)
    try:
        # the process's own symbols include libc's (find_library would run ldconfig at start-up)
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        log.debug("mallopt not available; allocator left as it is")


def _stop_gracefully(signum: int, frame: FrameType | None) -> None:
    """First SIGTERM/SIGINT: end the sources, let Bytewax finish the epoch and snapshot.
    Second one: leave at once (recovery replays from the last snapshot, so nothing is lost)."""
    if _STOP.is_set():
        os._exit(128 + signum)
    _STOP.set()
    log.info("stopping: finishing the current epoch (signal again to stop at once)")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(settings: Settings, args: argparse.Namespace, *, relaunch: Sequence[str]) -> int:
    """Run the pipeline as ``args`` say. ``relaunch`` is the command line that starts this
    same command again (the entry point knows it): ``-p N`` starts N of them as a cluster."""
    recovery_dir: Path = args.recovery_dir or settings.pipeline.recovery_dir
    workers = max(1, args.workers_per_process)
    if args.processes > 1 and args.process_id is None:
        return _run_local_cluster(relaunch, args.processes, workers, recovery_dir)
    addresses = args.addresses.split(";") if args.addresses else None
    total = workers * (len(addresses) if addresses else 1)
    recovery = prepare_recovery(recovery_dir, total)
    stats = PipelineStats()
    stats.start_publishing(settings.redis_url, settings.streams.key("health", "pipeline"))
    tune_memory()
    signal.signal(signal.SIGTERM, _stop_gracefully)
    signal.signal(signal.SIGINT, _stop_gracefully)
    trim_after = settings.pipeline.stream_trim_after
    if trim_after is None:
        trim_after = 3 * settings.pipeline.snapshot_interval + 30.0
    flow = build_flow(
        settings,
        stats=stats,
        trim_after=trim_after,
        stopping=_STOP.is_set,
        # the read-ahead brake needs the window step in this process
        max_inflight=None if addresses else 100_000,
    )
    log.info(
        "pipeline reading %s, recovery in %s", ", ".join(settings.streams.metrics), recovery_dir
    )
    try:
        cli_main(
            flow,
            workers_per_process=workers,
            process_id=args.process_id,
            addresses=addresses,
            epoch_interval=timedelta(seconds=settings.pipeline.snapshot_interval),
            recovery_config=recovery,
        )
    finally:
        stats.stop()
    log.info("pipeline stopped")
    return 0


def _run_local_cluster(
    relaunch: Sequence[str], processes: int, workers: int, recovery_dir: Path
) -> int:
    addresses = ";".join(f"localhost:{2101 + i}" for i in range(processes))
    prepare_recovery(recovery_dir, processes * workers)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop the children with us
    children = [
        subprocess.Popen(
            [
                *relaunch,
                "-w",
                str(workers),
                "-i",
                str(i),
                "-a",
                addresses,
                "--recovery-dir",
                str(recovery_dir),
            ],
            env=os.environ.copy(),
        )
        for i in range(processes)
    ]
    try:
        codes = [child.wait() for child in children]
    except KeyboardInterrupt:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        codes = [child.wait() for child in children]
    return max(codes)
