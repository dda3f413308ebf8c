"""Online serving of refdiff's ONNX samplers on Ray Serve (docs/scale.md).

``refdiff serve MODEL`` (extra ``serve``) deploys :class:`refdiff.export.OrtSampler` as a Ray
Serve application: R replicas, each holding onnxruntime sessions (CUDA when the replica gets
GPUs), with request batching (``serve.batch``: concurrent requests of the same sampler
configuration run as one batch) behind an HTTP API on the Serve proxy:

``POST /sample``  JSON body, every key optional::

        seed      int ≥ 0              host-noise seed (default 0)
        batch     int in 1..max_batch  number of samples (default 1)
        sampler   "ddpm" | "ddim" | "euler" | …  (refdiff.export.SAMPLERS; default: the server's)
        steps     int                  respaced sampling steps (default: the server's)
        spacing   str                  leading | trailing | linspace | ddimN | "10,15"
        options   {eta, clip, variance_type, sigmas, s_noise, guidance_scale, …}: the
                  options of refdiff.export.step_tables and OrtSampler's guidance arguments
        x_T       (batch, *S) numbers  injected initial noise instead of the seed's
        step_noise (N, batch, *S)      injected step noise (with x_T, when the sampler adds noise)
        inputs    {name: array}        conditioning inputs (batch 1 or ``batch``): ``cond=``
        uncond_inputs {name: array}    unconditional inputs with guidance: ``uncond=``
        format    "json" | "npy"       response body (or ``Accept: application/x-npy``)

    Response: JSON ``{"samples": [...], "shape": [...], "dtype": "float32", "seed": ...,
    "steps": ..., "provider": ...}`` or the ``.npy`` bytes of x_0 (float32, (batch, *S)).
    For batch ≥ 2 the samples are those of ``OrtSampler(...).sample(shape=batch, seed=seed)``
    with the same configuration, bit for bit: batching concatenates requests along the batch
    axis, each with its own seed's noise, and with two rows or more every row of onnxruntime's
    output depends on its own row only.  A lone row is always run beside a copy of itself
    (:func:`refdiff.export.cluster.sample_rows`), so a one-sample request gets what a batch
    of two computes for it, whatever it was batched with (it can differ from
    ``sample(shape=1)`` by a float32 ulp: onnxruntime's one-row MatMul kernel).
    tests/export/test_serve.py checks both.

``GET /health``  ``{"status": "ok", "replica": ..., "provider": ..., "requests": ...,
    "batches": ..., "largest_batch": ...}``.  ``GET /info``: the model, its schedule and limits.

Bad requests get a 4xx with ``{"error": message, "argument": name}``: malformed JSON, an
unknown key or option, a value of the wrong type or shape (400), a batch above ``max_batch``
(413), an unknown path (404) or method (405); a typed refdiff error while sampling (e.g.
the model returned NaN) is a 422 and anything unexpected a 500.  A replica never dies of a
request: errors are caught per request, and a failed batch fails only its own requests.
Shutdown (SIGINT/SIGTERM) drains in-flight requests (``graceful_shutdown_timeout_s``), then
stops Serve and Ray.

Imports ``ray`` lazily: ``import refdiff.export`` works without the ``serve`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refdiff.errors import InputError, RefdiffError

from .cluster import ResourceError, SamplerSpec, check_cluster_resources, host_rows, sample_rows
from .tables import SAMPLERS

__all__ = [
    "REQUEST_KEYS",
    "ServeConfig",
    "sampler_app",
    "serve_main",
    "post_sample",
    "get_json",
    "build_app",
]

#: Keys a ``POST /sample`` body may hold.
REQUEST_KEYS = (
    "seed",
    "batch",
    "sampler",
    "steps",
    "spacing",
    "options",
    "x_T",
    "step_noise",
    "inputs",
    "uncond_inputs",
    "format",
)
_FORMATS = ("json", "npy")
_NPY = "application/x-npy"
_CACHE = 8  # samplers (configurations) a replica keeps built


class HTTPError(RefdiffError):
    """A request the server refuses: ``status`` (4xx), ``argument`` and the message."""

    def __init__(self, status: int, argument: str, message: str):
        super().__init__(f"{argument}: {message}")
        self.status, self.argument, self.message = status, argument, message


@dataclass(frozen=True)
class ServeConfig:
    """What every replica serves (picklable; sent to the replicas with the model bytes).

    ``sampler``/``steps``/``spacing``/``options``: the defaults a request may override;
    ``mode``: ``"graph"`` | ``"steps"`` | ``"fused"`` (:class:`~refdiff.export.OrtSampler`);
    ``provider``: ``"cpu"`` | ``"cuda"`` | ``"auto"``; ``threads``: onnxruntime intra-op
    threads per session; ``max_batch``: most samples one request may ask for;
    ``max_rows_per_run``: most rows one batched run concatenates; ``batch_wait_s``: how long
    a batch waits for more requests; ``schedule``: the base schedule when the model's metadata
    has none; ``model_kwargs``: :func:`~refdiff.export.open_denoiser` arguments
    (``prediction_type``, ``timestep_convention``, …) for a user's denoiser.
    """

    sampler: str = "ddpm"
    steps: int | None = None
    spacing: str = "leading"
    options: tuple = ()
    mode: str = "graph"
    provider: str = "cpu"
    threads: int | None = 1
    max_batch: int = 4096
    max_rows_per_run: int = 8192
    batch_wait_s: float = 0.005
    label: str = "<model>"
    schedule: object = None
    model_kwargs: tuple = ()


# -- request parsing (pure Python: tested without Ray) -----------------------------------------
def _int(body: dict, key: str, default: int, lo: int, hi: int | None = None) -> int:
    v = body.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise HTTPError(400, key, f"must be an integer; got {type(v).__name__} {v!r}")
    if v < lo or (hi is not None and v > hi):
        rng = f"≥ {lo}" if hi is None else f"in {lo}..{hi}"
        raise HTTPError(413 if key == "batch" else 400, key, f"must be {rng}; got {v}")
    return v


def _array(v: object, key: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """A JSON nested list as a finite float32 array of the given shape (None: any size)."""
    try:
        a = np.asarray(v)
    except (ValueError, TypeError):
        raise HTTPError(400, key, "must be a rectangular nested list of numbers") from None
    if a.dtype.kind not in "iuf" or a.dtype.kind == "b":
        raise HTTPError(400, key, f"must hold numbers; got dtype {a.dtype} (ragged or non-numeric)")
    if a.ndim != len(shape) or any(d is not None and d != s for d, s in zip(shape, a.shape)):
        want = tuple("?" if d is None else d for d in shape)
        raise HTTPError(400, key, f"has shape {a.shape}; expected {want}")
    if not np.isfinite(a).all():
        raise HTTPError(400, key, "holds NaN or Inf")
    return a.astype(np.float32)


def parse_request(body: object, config: ServeConfig, accept: str = "") -> dict:
    """Check a ``POST /sample`` body; returns the normalised request or raises HTTPError."""
    if not isinstance(body, dict):
        raise HTTPError(400, "body", f"must be a JSON object; got {type(body).__name__}")
    unknown = sorted(set(body) - set(REQUEST_KEYS))
    if unknown:
        raise HTTPError(400, unknown[0], f"unknown key; valid keys: {', '.join(REQUEST_KEYS)}")
    fmt = body.get("format", "npy" if _NPY in accept else "json")
    if fmt not in _FORMATS:
        raise HTTPError(400, "format", f"must be one of {list(_FORMATS)}; got {fmt!r}")
    sampler = body.get("sampler", config.sampler)
    if not isinstance(sampler, str):
        raise HTTPError(400, "sampler", f"must be a string; got {sampler!r}")
    spacing = body.get("spacing", config.spacing)
    if not isinstance(spacing, str):
        raise HTTPError(400, "spacing", f"must be a string; got {spacing!r}")
    steps = body.get("steps", config.steps)
    if steps is not None:
        steps = _int(body, "steps", steps, 1)
    opts = body.get("options", None)
    if opts is None:
        opts = dict(config.options) if sampler == config.sampler else {}
    if not isinstance(opts, dict):
        raise HTTPError(400, "options", f"must be a JSON object; got {type(opts).__name__}")
    for k, v in opts.items():
        ok = isinstance(v, str | int | float | bool | None) or (
            k == "sigmas" and isinstance(v, list) and all(isinstance(e, int | float) for e in v)
        )
        if not ok:
            raise HTTPError(400, k, f"must be a number, string, boolean or null; got {v!r}")
    conds = []
    for key in ("inputs", "uncond_inputs"):
        c = body.get(key)
        if c is not None and not isinstance(c, dict):
            raise HTTPError(400, key, "must be a JSON object {name: array}")
        conds.append(c)
    return dict(
        seed=_int(body, "seed", 0, 0, 2**63 - 1),
        batch=_int(body, "batch", 1, 1, config.max_batch),
        key=(sampler, steps, spacing, _freeze(opts)),
        x_T=body.get("x_T"),
        step_noise=body.get("step_noise"),
        cond=conds[0],
        uncond=conds[1],
        format=fmt,
    )


def _freeze(opts: dict) -> tuple:
    """Options as a hashable cache key (lists, e.g. ``sigmas``, as tuples)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in opts.items()))


def _thaw(key: tuple) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in key}


# -- the replica ------------------------------------------------------------------------------
class SamplerServer:
    """One replica's state: the model, built samplers (LRU cache) and counters.

    Usable without Ray (tests/export/test_serve.py calls it in-process);
    :func:`sampler_app` wraps it as a Serve deployment.
    """

    def __init__(self, model: bytes, config: ServeConfig):
        from .model_io import load_model, open_denoiser

        self.model, self.config = model, config
        proto, _ = load_model(model)
        meta = {p.key: p.value for p in proto.metadata_props}
        self.complete = meta.get("refdiff.kind") == "sampler"
        if self.complete:  # requests may name the file's own sampler
            try:
                name = json.loads(meta.get("refdiff.sampler", "{}")).get("name")
            except (ValueError, AttributeError):
                name = None
            if isinstance(name, str):
                self.config = config = dataclasses.replace(config, sampler=name)
        self.denoiser = None if self.complete else open_denoiser(proto, **dict(config.model_kwargs))
        self.base = config.schedule  # None: the model's metadata (SamplerSpec.build)
        self._samplers: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0, "errors": 0}
        # Build the default configuration now: a bad server configuration fails at start-up.
        first = self.sampler_for(self._default_key())
        self.provider = first.provider
        self.dims = list(first.dims)
        self.schedule = first.schedule

    def _default_key(self) -> tuple:
        c = self.config
        return (c.sampler, c.steps, c.spacing, _freeze(dict(c.options)))

    def sampler_for(self, key: tuple):
        """The :class:`OrtSampler` of a request configuration (built once, LRU-cached)."""
        with self._lock:
            s = self._samplers.get(key)
            if s is not None:
                self._samplers.move_to_end(key)
                return s
        sampler, steps, spacing, opts = key
        c = self.config
        spec = SamplerSpec(
            sampler, steps, spacing, _thaw(opts), c.mode, c.provider, c.threads, self.base
        )
        try:
            if self.complete:
                if key != self._default_key():
                    names = ("sampler", "steps", "spacing", "options")
                    arg = next(n for n, u, v in zip(names, key, self._default_key()) if u != v)
                    raise HTTPError(
                        400,
                        arg,
                        "this model is a complete sampler: sampler, steps, spacing and "
                        "options are baked in",
                    )
            s = spec.build(self.model, denoiser=self.denoiser)
        except HTTPError:
            raise
        except RefdiffError as e:
            arg = getattr(e, "argument", "request")
            arg = "steps" if arg == "num_steps" else arg
            raise HTTPError(400, arg, _message(e)) from None
        with self._lock:
            self._samplers[key] = s
            while len(self._samplers) > _CACHE:
                self._samplers.popitem(last=False)
        return s

    def prepare(self, req: dict) -> tuple:
        """A parsed request as a job ``(sampler, x_T, step_noise, cond, uncond, group)``.

        Noise: the seed's (:func:`~refdiff.export.cluster.host_rows`) or the injected arrays;
        conditioning checked and broadcast to the request's batch
        (:func:`refdiff.export.conditioning.prepare_conditioning`), so a bad request fails
        here, alone, never inside a batch.
        ``group``: jobs with equal groups run as one batch.
        """
        from .conditioning import prepare_conditioning

        s = self.sampler_for(req["key"])
        b = req["batch"]
        shape = (b, *s.dims[1:])
        if not all(isinstance(d, int) for d in shape):
            raise HTTPError(400, "batch", f"the model's state {tuple(s.dims)} has open dims")
        if req["x_T"] is None:
            if req["step_noise"] is not None:
                raise HTTPError(400, "step_noise", "was given without x_T")
            x_T, z = host_rows(s, req["seed"], (0, b))
        else:
            x_T = _array(req["x_T"], "x_T", shape)
            z = None
            if s.noisy and s.noise == "input":
                if req["step_noise"] is None:
                    raise HTTPError(400, "step_noise", "this sampler adds noise: give it with x_T")
                z = _array(req["step_noise"], "step_noise", (s.num_steps, *shape))
            elif req["step_noise"] is not None:
                raise HTTPError(400, "step_noise", "this sampler adds no step noise")
        cond, uncond, group = None, None, [id(s)]
        if req["cond"] is not None or req["uncond"] is not None or s.extras:
            given = sorted({*(req["cond"] or {}), *(req["uncond"] or {})})
            if self.complete or not s.extras:
                raise HTTPError(
                    400, "inputs", f"this model takes no conditioning inputs; got {given}"
                )
            try:
                cond, uncond = prepare_conditioning(
                    s.extras, req["cond"], req["uncond"], s.guidance, b
                )
            except RefdiffError as e:
                arg = getattr(e, "argument", "inputs")
                arg = (
                    arg.replace("uncond", "uncond_inputs", 1)
                    if arg.startswith("uncond")
                    else (arg.replace("cond", "inputs", 1) if arg.startswith("cond") else arg)
                )
                raise HTTPError(400, arg, _message(e)) from None
            for e in s.extras:  # inputs without a batch axis: equal values batch together
                for d in (cond, uncond or {}):
                    if not e.batched and e.name in d:
                        group.append((e.name, d[e.name].tobytes()))
        return s, x_T, z, cond, uncond, tuple(group)

    def run(self, jobs: list[tuple]) -> list:
        """Run prepared jobs; jobs of one group share one run (rows concatenated).

        Returns, per job, its samples or the exception that failed its group.
        """
        out: list = [None] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job[5], []).append(i)
        for idx in groups.values():
            s = jobs[idx[0]][0]
            x_T = np.concatenate([jobs[i][1] for i in idx])
            zs = [jobs[i][2] for i in idx]
            z = None if zs[0] is None else np.concatenate(zs, axis=1)
            conds = []
            for c in (3, 4):
                first = jobs[idx[0]][c]
                conds.append(
                    None
                    if first is None
                    else {
                        e.name: np.concatenate([jobs[i][c][e.name] for i in idx])
                        if e.batched
                        else first[e.name]
                        for e in s.extras
                    }
                )
            try:
                x = sample_rows(s, x_T, z, cond=conds[0], uncond=conds[1], extras=s.extras)
            except Exception as e:  # noqa: BLE001 - the group's requests fail, not the replica
                for i in idx:
                    out[i] = e
                continue
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(idx))
            lo = 0
            for i in idx:
                b = jobs[i][1].shape[0]
                out[i] = x[lo : lo + b]
                lo += b
        return out

    def info(self) -> dict:
        c = self.config
        return {
            "model": c.label,
            "complete_sampler": self.complete,
            "state": self.dims,
            "schedule": {"name": self.schedule.name, "T": int(self.schedule.T)},
            "sampler": c.sampler,
            "steps": self.schedule.T if self.complete else c.steps,
            "spacing": c.spacing,
            "options": dict(c.options),
            "mode": c.mode,
            "provider": self.provider,
            "max_batch": c.max_batch,
            "request_keys": list(REQUEST_KEYS),
        }


def _message(e: Exception) -> str:
    arg = getattr(e, "argument", None)
    msg = str(e)
    if arg and msg.startswith(f"{arg}: "):
        msg = msg[len(arg) + 2 :]
    return msg


def _response(x: np.ndarray, req: dict, s) -> tuple[bytes, str]:
    if req["format"] == "npy":
        buf = io.BytesIO()
        np.save(buf, x, allow_pickle=False)
        return buf.getvalue(), _NPY
    body = {
        "samples": x.tolist(),
        "shape": list(x.shape),
        "dtype": str(x.dtype),
        "seed": req["seed"] if req["x_T"] is None else None,
        "steps": int(s.num_steps),
        "provider": s.provider,
    }
    return json.dumps(body).encode(), "application/json"


def _error_body(status: int, argument: str, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": message, "argument": argument}).encode()


def sampler_app(
    model: object,
    *,
    replicas: int = 1,
    gpus_per_replica: float = 0.0,
    cpus_per_replica: float = 1.0,
    sampler: str = "ddpm",
    steps: int | None = None,
    spacing: str = "leading",
    options: dict | None = None,
    mode: str = "graph",
    provider: str | None = None,
    threads: int | None = None,
    max_batch: int = 4096,
    max_rows_per_run: int = 8192,
    max_requests_per_batch: int = 64,
    batch_wait_s: float = 0.005,
    health_check_period_s: float = 2.0,
    graceful_shutdown_timeout_s: float = 10.0,
    name: str = "RefdiffSampler",
    schedule=None,
    **model_kwargs,
):
    """A Ray Serve application serving ``model`` (path or bytes of an ONNX denoiser/sampler).

    ``replicas`` copies, each with ``cpus_per_replica`` CPUs and ``gpus_per_replica`` GPUs
    (fractions allowed; the provider is then ``"cuda"``, else ``"cpu"``, unless given).
    Requests are batched per replica: up to ``max_requests_per_batch`` requests or
    ``max_rows_per_run`` rows, waiting at most ``batch_wait_s``.  ``schedule``: the base
    schedule for a denoiser without one in its metadata; ``model_kwargs``:
    :func:`~refdiff.export.open_denoiser` arguments (``prediction_type``,
    ``timestep_convention``, …).  Returns the bound application for ``serve.run``.
    """
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    label = "<model>"
    if isinstance(model, str | Path):
        label = str(model)
        model = Path(model).read_bytes()
    if not isinstance(model, bytes):
        raise InputError("model", "give a path or the bytes of an ONNX file")
    if replicas < 1:
        raise InputError("replicas", f"must be ≥ 1; got {replicas}")
    if gpus_per_replica < 0 or cpus_per_replica < 0:
        raise InputError("gpus_per_replica", "CPU and GPU counts must be ≥ 0")
    if max_batch > max_rows_per_run:
        raise InputError("max_batch", f"{max_batch} exceeds max_rows_per_run={max_rows_per_run}")
    if provider is None:
        provider = "cuda" if gpus_per_replica > 0 else "cpu"
    if threads is None:
        threads = max(1, int(cpus_per_replica))
    config = ServeConfig(
        sampler=sampler,
        steps=steps,
        spacing=spacing,
        options=tuple(sorted((options or {}).items())),
        mode=mode,
        provider=provider,
        threads=threads,
        max_batch=max_batch,
        max_rows_per_run=max_rows_per_run,
        batch_wait_s=batch_wait_s,
        label=label,
        schedule=schedule,
        model_kwargs=tuple(sorted(model_kwargs.items())),
    )

    def rows(items: list) -> int:
        return sum(int(j[1].shape[0]) for j in items)

    @serve.deployment(
        name=name,
        num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        max_ongoing_requests=max(2 * max_requests_per_batch, 8),
        health_check_period_s=health_check_period_s,
        health_check_timeout_s=max(10.0, 3 * health_check_period_s),
        graceful_shutdown_timeout_s=graceful_shutdown_timeout_s,
    )
    class RefdiffSampler:
        def __init__(self, model: bytes, config: ServeConfig):
            self.server = SamplerServer(model, config)
            try:
                self.replica = str(serve.get_replica_context().replica_id.unique_id)
            except Exception:  # noqa: BLE001 - only a label
                self.replica = "?"

        def check_health(self) -> None:  # Serve's health check: the sessions must exist
            if not self.server._samplers:
                raise RuntimeError("no sampler built")

        @serve.batch(
            max_batch_size=max(max_rows_per_run, 1),
            batch_wait_timeout_s=batch_wait_s,
            batch_size_fn=rows,
        )
        async def run_batch(self, jobs: list) -> list:
            return await asyncio.to_thread(self.server.run, jobs)

        async def __call__(self, request: Request) -> Response:
            root = request.scope.get("root_path", "")
            path = request.url.path[len(root) :] if request.url.path.startswith(root) else ""
            path = "/" + path.strip("/")
            try:
                if path in ("/health", "/info"):
                    if request.method != "GET":
                        raise HTTPError(405, "method", f"{path} takes GET")
                    if path == "/health":
                        body = {"status": "ok", "replica": self.replica}
                        body.update(provider=self.server.provider, **self.server.stats)
                    else:
                        body = self.server.info()
                    return Response(json.dumps(body), media_type="application/json")
                if path != "/sample":
                    raise HTTPError(404, "path", f"{path} is not served; use /sample, /health")
                if request.method != "POST":
                    raise HTTPError(405, "method", "/sample takes POST with a JSON body")
                raw = await request.body()
                try:
                    body = json.loads(raw or b"{}")
                except (ValueError, RecursionError) as e:
                    raise HTTPError(400, "body", f"is not valid JSON ({e})") from None
                req = parse_request(body, self.server.config, request.headers.get("accept", ""))
                job = await asyncio.to_thread(self.server.prepare, req)
                self.server.stats["requests"] += 1
                x = await self.run_batch(job)
                if isinstance(x, Exception):
                    raise x
                data, media = _response(x, req, job[0])
                return Response(data, media_type=media)
            except HTTPError as e:
                status, data = _error_body(e.status, e.argument, e.message)
            except RefdiffError as e:
                status, data = _error_body(422, getattr(e, "argument", "model"), _message(e))
            except Exception as e:  # noqa: BLE001 - a replica never dies of one request
                self.server.stats["errors"] += 1
                msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
                status, data = _error_body(500, "server", f"{type(e).__name__}: {msg}")
            return Response(data, status_code=status, media_type="application/json")

    return RefdiffSampler.bind(model, config)


def build_app(args: dict):
    """Ray Serve application builder for config files and KubeRay's RayService
    (``import_path: refdiff.export.serve:build_app``; ``args``: ``model`` (a path every node
    can read) plus :func:`sampler_app` keywords)."""
    import inspect

    args = dict(args)
    if "model" not in args:
        raise InputError("model", "the application args need model: PATH")
    params = inspect.signature(sampler_app).parameters
    for k, v in args.items():  # `serve run … key=value` passes strings
        d = params[k].default if k in params else None
        if isinstance(v, str) and isinstance(d, int | float) and not isinstance(d, bool):
            try:
                args[k] = type(d)(v)
            except ValueError:
                raise InputError(k, f"must be a {type(d).__name__}; got {v!r}") from None
    return sampler_app(args.pop("model"), **args)


# -- a small stdlib client (tests, benchmark, docs) -------------------------------------------
def post_sample(url: str, body: dict, *, timeout: float = 60.0) -> tuple[int, object]:
    """POST ``body`` to ``url`` (``…/sample``); returns (status, array or decoded JSON)."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, ctype, raw = r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        status, ctype, raw = e.code, e.headers.get("Content-Type", ""), e.read()
    if ctype.startswith(_NPY):
        return status, np.load(io.BytesIO(raw), allow_pickle=False)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def get_json(url: str, *, timeout: float = 10.0) -> tuple[int, object]:
    """GET ``url``; returns (status, decoded JSON) — (0, reason) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        return 0, str(e)


# -- ``refdiff serve`` --------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refdiff serve",
        description="Serve an ONNX denoiser or sampler over HTTP with Ray Serve (docs/scale.md).",
    )
    p.add_argument("model", metavar="MODEL", help="denoiser or refdiff sampler .onnx file")
    p.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--route-prefix", default="/", help="URL prefix of the API (default /)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local one)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local cluster")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--gpus-per-replica", type=float, default=0.0)
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.add_argument("--provider", choices=("auto", "cuda", "cpu"), default=None)
    p.add_argument("--mode", choices=("graph", "steps", "fused"), default="graph")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
    p.add_argument("--steps", type=int, default=None, help="default respaced steps")
    p.add_argument("--spacing", default="leading")
    p.add_argument("--eta", type=float, default=None, help="default DDIM η")
    p.add_argument("--max-batch", type=int, default=4096, help="most samples per request")
    p.add_argument("--max-rows-per-run", type=int, default=8192, help="most rows per batch")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="batching window")
    p.add_argument("--graceful-shutdown-s", type=float, default=10.0)
    return p


def serve_main(argv: list[str]) -> int:
    """``refdiff serve MODEL``: run until SIGINT/SIGTERM, then drain and stop; exit code."""
    import signal
    import sys

    a = _parser().parse_args(argv)
    try:
        import ray
        from ray import serve
    except ModuleNotFoundError as e:
        print(f"refdiff serve: missing module {e.name!r} (pip install 'refdiff[serve]')")
        return 2
    opts = {} if a.eta is None else {"eta": a.eta}
    try:
        app = sampler_app(
            a.model,
            replicas=a.replicas,
            gpus_per_replica=a.gpus_per_replica,
            cpus_per_replica=a.cpus_per_replica,
            sampler=a.sampler,
            steps=a.steps,
            spacing=a.spacing,
            options=opts,
            mode=a.mode,
            provider=a.provider,
            max_batch=a.max_batch,
            max_rows_per_run=max(a.max_rows_per_run, a.max_batch),
            batch_wait_s=a.batch_wait_ms / 1000,
            graceful_shutdown_timeout_s=a.graceful_shutdown_s,
        )
    except (RefdiffError, OSError) as e:
        print(f"refdiff serve: error: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=a.address,
            num_cpus=a.num_cpus if a.address is None else None,
            include_dashboard=False if a.address is None else None,
        )
    try:  # Serve would wait forever for replicas the cluster cannot place
        check_cluster_resources(
            ray,
            per_unit={
                "GPU": (a.gpus_per_replica, "--gpus-per-replica"),
                "CPU": (a.cpus_per_replica, "--cpus-per-replica"),
            },
            units=a.replicas,
            unit="replica",
            hint="; lower it or --replicas, or give --address of a cluster that has them",
        )
    except ResourceError as e:
        if started:
            ray.shutdown()
        print(f"refdiff serve: error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": a.host, "port": a.port})
        serve.run(app, name="refdiff", route_prefix=a.route_prefix)
        base = f"http://{a.host}:{a.port}{a.route_prefix.rstrip('/')}"
        print(f"refdiff serve: {a.model} on {base}/sample (health: {base}/health); Ctrl-C stops")
        while not stop.wait(0.5):
            pass
        print("refdiff serve: draining and shutting down", file=sys.stderr)
    finally:
        t0 = time.monotonic()
        serve.shutdown()
        if started:
            ray.shutdown()
        print(f"refdiff serve: stopped ({time.monotonic() - t0:.1f} s)", file=sys.stderr)
    return 0
