"""Run independent shard functions on Ray: a local Ray started on demand, or an existing cluster by address.

frobnolab's rendering and extraction are split into shards by pure functions (``_render_shard`` in
``scenes/dataset.py``, ``_extract_chunk`` in ``analysis/store.py``) that read their inputs by path, write their shard
into the run's ``.partial`` folder under a temporary name and rename it into place. Locally a process pool runs them;
here Ray actors do, so that a worker keeps what is expensive to make (a GL context, a loaded model) for all of its
shards. This module lives in ``scenes`` because it is the lowest layer: both render and extract use it.

Fault handling: a worker that dies mid-shard (killed, out of memory, node lost) leaves at most a temporary folder,
never a shard; a fresh actor replaces it and the shard goes back to the front of the queue, up to ``retries`` times.
An exception raised by the shard function itself (bad input) is not retried: it is raised here, once. So is one
raised by a worker's set-up (``init``: an unknown concept, a missing model), with its own type and message: the
worker stays alive to hand it over instead of dying and being retried as a lost worker.

On a cluster of several machines the run's output folder and its inputs (family file, dataset, model folder) must be
at the same path on every node (a shared filesystem) and frobnolab installed in every node's Python; the driver
checks each shard it is told of and says so when it cannot see it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

LOCAL = "local"
log = logging.getLogger("frobnolab.cluster")


@dataclass(frozen=True)
class RayConfig:
    """Where and how shards run on Ray."""

    address: str = LOCAL
    """``local``: start a Ray on this machine (or use the one this process already joined); ``auto``: the running
    cluster this machine belongs to; ``HOST:PORT`` or ``ray://HOST:10001``: an existing cluster."""
    workers: int = 0
    """Actors (each with its own GL context or model); 0: one per CPU (per GPU for GPU work) the cluster has,
    at most one per shard."""
    retries: int = 3
    """How many times a shard whose worker died is given to a fresh worker before the run fails."""

    def check(self):
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"ray workers must be an integer >= 0, got {self.workers!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"ray retries must be an integer >= 0, got {self.retries!r}")
        if not self.address:
            raise ValueError("ray address is empty (use 'local', 'auto', HOST:PORT or ray://HOST:PORT)")


def import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("Ray is not installed: pip install 'frobnolab[ray]' (or run without --ray)") from None
    return ray


def connect(cfg: RayConfig):
    """Join the Ray cluster of ``cfg``, or start a local one with ``cfg.workers`` CPUs (all when 0); returns the
    ``ray`` module. Once this process has joined a cluster, later calls reuse it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a research tool
    ray = import_ray()
    if ray.is_initialized():
        return ray
    # frobnolab's settings travel to the workers (a worker on another node does not inherit this environment);
    # PYOPENGL_PLATFORM does not: each node picks EGL or OSMesa for its own hardware (scenes/gl.py)
    env = {k: v for k, v in os.environ.items() if k.startswith("FROBNOLAB_")}
    kwargs = dict(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env} if env else None)
    if cfg.address == LOCAL:
        # address="local" always starts a new Ray; None would join whatever cluster this machine last knew of
        ray.init(address="local", num_cpus=cfg.workers or None, **kwargs)
        return ray
    try:
        _preflight(cfg.address)
        ray.init(address=cfg.address, **kwargs)
    except (ConnectionError, RuntimeError) as e:
        hint = str(e).strip().splitlines()[-1][:300]
        raise ConnectionError(f"cannot reach the Ray cluster at {cfg.address!r} ({hint}). Is it up (`ray status` on "
                              "its head)? Clusters made by `ray start` use token authentication: set "
                              "RAY_AUTH_MODE=token, with the token in ~/.ray/auth_token or $RAY_AUTH_TOKEN") from None
    return ray


def _preflight(address: str, timeout: float = 5.0):
    """Fail in seconds when nothing listens at HOST:PORT (Ray itself retries for minutes)."""
    hostport = address.removeprefix("ray://")
    if address == "auto" or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except ValueError:
        raise ValueError(f"ray address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto") from None
    except OSError as e:
        raise ConnectionError(f"nothing answers at {host}:{port}: {e.strerror or e}") from None


def check_gpus(cfg: RayConfig, num_gpus: float) -> dict:
    """The cluster's resources; ValueError when work that needs ``num_gpus`` per worker finds no GPU there."""
    res = connect(cfg).cluster_resources()
    if num_gpus and res.get("GPU", 0) < num_gpus:
        raise ValueError(f"the Ray cluster at {cfg.address!r} has no GPU (it has: {', '.join(sorted(res))}); "
                         "extract with --device cpu, or join a cluster with GPUs")
    return res


class SetupFailed:
    """What a worker whose ``init`` raised returns for every shard: the exception, for the driver to raise."""

    def __init__(self, error: BaseException):
        import traceback

        self.traceback = (f"raised in the set-up of a Ray worker on {socket.gethostname()}:\n"
                          + "".join(traceback.format_exception(error)).rstrip())
        from ray import cloudpickle  # how Ray will carry it to the driver

        try:
            cloudpickle.loads(cloudpickle.dumps(error))
        except Exception:  # noqa: BLE001 - an exception that does not travel: its type and text do
            error = RuntimeError(f"{type(error).__name__}: {error}")
        self.error = error


class _ShardWorker:
    """One Ray actor: runs ``init(*init_args)`` once, then shard after shard. If ``init`` raises, the actor keeps
    the error and returns it for its first shard (an actor whose constructor raises dies, and a dead worker is
    retried)."""

    def __init__(self, cwd: str, init: Callable, init_args: tuple):
        self.setup_failed = None
        if os.path.isdir(cwd):  # relative paths mean the same on a worker as on the driver
            os.chdir(cwd)
        try:
            init(*init_args)
        except Exception as e:  # noqa: BLE001 - handed to the driver, raised there once
            self.setup_failed = SetupFailed(e)

    def run(self, fn: Callable, job):
        if self.setup_failed is not None:
            return self.setup_failed, socket.gethostname()
        return fn(job), socket.gethostname()


def run_shards(cfg: RayConfig, fn: Callable, jobs: Sequence, *, init: Callable, init_args: tuple = (),
               num_gpus: float = 0, check: Callable | None = None) -> Iterator:
    """Run ``fn(job)`` for every job on Ray actors set up by ``init(*init_args)``; yield the results as they finish.

    num_gpus: GPUs per actor (0 for CPU work); actors are then as many as the cluster's GPUs by default.
    check(job) -> bool: whether the driver can see the shard the job wrote (a shared-filesystem check).
    """
    cfg.check()
    jobs = list(jobs)
    if not jobs:
        return
    res = check_gpus(cfg, num_gpus)  # joins the cluster
    ray = import_ray()
    from ray.exceptions import RayActorError, RayTaskError

    capacity = int(res.get("GPU", 0) // num_gpus) if num_gpus else int(res.get("CPU", 1))
    n_workers = max(1, min(cfg.workers or capacity, len(jobs)))
    Actor = ray.remote(num_cpus=1, num_gpus=num_gpus, max_restarts=0, max_task_retries=0)(_ShardWorker)

    def spawn():
        return Actor.remote(os.getcwd(), init, init_args)

    idle = deque(spawn() for _ in range(n_workers))
    queue = deque((job, 0) for job in jobs)
    inflight: dict = {}
    try:
        while queue or inflight:
            while queue and idle:
                actor = idle.popleft()
                job, attempt = queue.popleft()
                inflight[actor.run.remote(fn, job)] = (actor, job, attempt)
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            actor, job, attempt = inflight.pop(ref)
            try:
                result, host = ray.get(ref)
            except RayActorError as e:
                if attempt >= cfg.retries:
                    raise RuntimeError(f"shard {job!r} failed: its worker died {attempt + 1} times "
                                       f"(last: {type(e).__name__})") from None
                log.warning("shard %r: its worker died (%s); retrying on a fresh worker (attempt %d of %d)",
                            job, type(e).__name__, attempt + 2, cfg.retries + 1)
                ray.kill(actor, no_restart=True)
                idle.append(spawn())
                queue.appendleft((job, attempt + 1))
                continue
            except RayTaskError as e:  # the shard function raised: bad input, not a lost worker
                raise e.as_instanceof_cause() from None
            if isinstance(result, SetupFailed):  # the worker's set-up raised: an error, not a lost worker
                result.error.add_note(result.traceback)
                raise result.error
            if check is not None and not check(job):
                raise RuntimeError(f"shard {job!r} was written on {host} but is not visible here on "
                                   f"{socket.gethostname()}: on a cluster the output folder must be on a filesystem "
                                   "that every node shares, at the same path")
            idle.append(actor)
            yield result
    finally:
        for actor in list(idle) + [a for a, _, _ in inflight.values()]:
            ray.kill(actor, no_restart=True)

