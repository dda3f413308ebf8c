"""Distributed batch sampling on a Ray cluster, sharded by the host-noise layout (docs/scale.md).

:func:`cluster_sample` draws n samples of an ONNX denoiser (or sampler) file as Ray tasks,
one per *shard* of consecutive rows, and writes each shard as ``shard-NNNNN.npy`` beside a
``manifest.json`` in ``out_dir``; :func:`load_samples` reads them back as one (n, *S) array.

Why the result is bit-identical to one process with the same seed
(``OrtSampler(...).sample(shape=n, seed=seed)``): the host noise of sample i comes from its
own streams (:mod:`refdiff.export.noise`: one ``SeedSequence(seed, spawn_key=(stream,
block))`` per step and block of rows), so a shard draws exactly the rows it owns without
drawing the rest; and with two rows or more onnxruntime computes every output row from its
own row only (a one-row run is avoided: :func:`sample_rows`, and no shard is cut to a
single row).  tests/export/test_cluster.py checks both.

Files and faults.  Workers write their shard atomically (:mod:`refdiff._io`: a shard file is
whole or absent) and return its SHA-256; the driver records it in the manifest (written
atomically too).  A worker that dies is retried by Ray (``max_retries``); if a shard still
fails, the run raises :class:`ShardError` naming the shards that are missing, and the next
call with the same arguments recomputes only those: a shard is reused when the manifest
records it and the file's SHA-256 matches.  A manifest of a different plan (model, seed, n,
shard size, sampler configuration, noise layout) is refused rather than mixed.  On a
multi-node cluster ``out_dir`` must be storage every node sees (NFS, a mounted bucket).

Imports ``ray`` lazily (the ``serve`` extra).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from refdiff._io import atomic_write, write_json
from refdiff.errors import FileFormatError, InputError, RefdiffError

__all__ = [
    "FORMAT",
    "MANIFEST",
    "ShardError",
    "ClusterResult",
    "SamplerSpec",
    "plan_shards",
    "shard_samples",
    "host_rows",
    "sample_rows",
    "cluster_sample",
    "load_samples",
]

FORMAT = "refdiff.shards/1"
MANIFEST = "manifest.json"
#: Host-noise bytes one run of a shard may take (:func:`shard_samples`).
RUN_BYTES = 256 * 2**20


class ShardError(RefdiffError):
    """Some shards could not be computed; ``.missing`` lists their indices, ``.argument``
    is ``"out_dir"``.  Rerunning the same call recomputes only those."""

    def __init__(self, out_dir: object, missing: list[int], reasons: dict[int, str]):
        first = next(iter(reasons.values()), "")
        super().__init__(
            f"out_dir: {len(missing)} shard(s) of {out_dir} failed ({missing[:10]}"
            f"{' …' if len(missing) > 10 else ''}): {first}; rerun to recompute only them"
        )
        self.argument, self.missing, self.reasons = "out_dir", missing, reasons


@dataclass(frozen=True)
class SamplerSpec:
    """The sampler configuration every worker builds (picklable, recorded in the manifest).

    As for :class:`refdiff.export.OrtSampler`: ``sampler``, ``mode``, ``provider``,
    ``threads`` (onnxruntime intra-op threads per task), sampler ``options``; ``steps`` /
    ``spacing`` respace the model's schedule (:func:`refdiff.export.build_schedule`), or
    ``schedule`` when the model's metadata has none; ``model_kwargs``:
    :func:`~refdiff.export.open_denoiser` arguments for a user's denoiser.
    """

    sampler: str = "ddpm"
    steps: int | None = None
    spacing: str = "leading"
    options: dict = field(default_factory=dict)
    mode: str = "graph"
    provider: str = "cpu"
    threads: int | None = 1
    schedule: object = None
    model_kwargs: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """The configuration as JSON-able data (the manifest's record; no provider/threads:
        where a shard ran does not change its samples)."""
        from .metadata import schedule_to_json

        d = {k: v for k, v in asdict(self).items() if k not in ("provider", "threads")}
        d["schedule"] = None if self.schedule is None else schedule_to_json(self.schedule)
        return json.loads(json.dumps(d, sort_keys=True))

    def build(self, model: bytes, denoiser=None):
        """The :class:`~refdiff.export.OrtSampler` of this configuration for ``model``
        (``denoiser``: the model already opened with :func:`~refdiff.export.open_denoiser`)."""
        from .metadata import PREFIX, schedule_from_json
        from .model_io import load_model, open_denoiser
        from .runtime import OrtSampler
        from .schedules import build_schedule

        proto, _ = load_model(model)
        kind = {p.key: p.value for p in proto.metadata_props}.get("refdiff.kind")
        kw = dict(provider=self.provider, threads=self.threads)
        if kind == "sampler":  # a complete sampler file: its configuration is baked in
            if self.steps is not None or self.options:
                raise InputError("model", "is a complete sampler: steps and options are baked in")
            return OrtSampler(proto, mode="graph", **kw)
        den = denoiser if denoiser is not None else open_denoiser(proto, **self.model_kwargs)
        base = self.schedule
        if base is None:
            text = den.signature.metadata.get(PREFIX + "schedule")
            if text is None:
                raise InputError("schedule", f"{den.label} records no schedule; pass schedule=")
            base = schedule_from_json(text)
        _, sched = build_schedule("", 0, base=base, steps=self.steps, spacing=self.spacing)
        return OrtSampler(den, sched, sampler=self.sampler, mode=self.mode, **kw, **self.options)


@dataclass
class ClusterResult:
    """What :func:`cluster_sample` did: ``computed`` and ``reused`` shard indices, the
    ``manifest`` path, the ``shards`` (rows) and the wall time ``seconds``."""

    out_dir: Path
    manifest: Path
    shards: list[tuple[int, int]]
    computed: list[int]
    reused: list[int]
    seconds: float


def plan_shards(n: int, shard_rows: int) -> list[tuple[int, int]]:
    """Rows [a, b) of each shard: ``shard_rows`` each, the last one shorter, never one row.

    A lone last row joins the shard before it (a one-row run rounds differently; module
    docstring).  ``n`` ≥ 2; ``shard_rows`` ≥ 2.
    """
    for name, v, lo in (("n", n, 2), ("shard_rows", shard_rows, 2)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
            raise InputError(name, f"must be an int ≥ {lo}; got {v!r}")
    edges = list(range(0, n, shard_rows)) + [n]
    if len(edges) > 2 and edges[-1] - edges[-2] == 1:
        del edges[-2]
    return list(zip(edges[:-1], edges[1:]))


def host_rows(sampler, seed: int, rows: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """(x_T, step_noise or None) of samples rows[0]..rows[1]−1 of ``sampler.sample(shape=n,
    seed=seed)`` for any n ≥ rows[1]: the layout of :mod:`refdiff.export.noise`, x_T scaled
    as the sampler scales it (σ-view samplers start at σ_0 z)."""
    from .noise import host_noise

    shape = (rows[1] - rows[0], *sampler.dims[1:])
    x_T, z = host_noise(seed, sampler.num_steps, shape, rows=rows)
    scale = 1.0 if sampler.tables is None else sampler.tables.x_T_scale
    if scale != 1.0:  # the expression of OrtSampler's own host noise
        x_T = (x_T.astype(np.float64) * scale).astype(np.float32)
    return x_T, (z if sampler.noisy and sampler.noise == "input" else None)


def sample_rows(
    sampler,
    x_T: np.ndarray,
    step_noise: np.ndarray | None,
    *,
    cond: dict | None = None,
    uncond: dict | None = None,
    extras: tuple = (),
) -> np.ndarray:
    """``sampler.sample(x_T, step_noise, cond=, uncond=)``, run with at least two rows.

    onnxruntime's CPU ``MatMul`` takes a matrix-vector kernel for a single row and a
    matrix-matrix kernel otherwise; the two round differently (by float32 ulps), while for
    two rows or more each output row depends on its own row only.  A lone row is therefore run
    with a copy of itself, so a row's samples never depend on how requests were batched or
    data was sharded (tests/export/test_serve.py, test_cluster.py).  ``extras``: the model's
    conditioning inputs (their ``batched`` flag says which to repeat with the row).
    """
    if x_T.shape[0] != 1:
        return sampler.sample(x_T, step_noise, cond=cond, uncond=uncond)

    def twice(d):
        if d is None:
            return None
        batched = {e.name for e in extras if e.batched}
        return {k: np.concatenate([v, v]) if k in batched else v for k, v in d.items()}

    z2 = None if step_noise is None else np.concatenate([step_noise, step_noise], axis=1)
    x2 = np.concatenate([x_T, x_T])
    return sampler.sample(x2, z2, cond=twice(cond), uncond=twice(uncond))[:1]


def shard_samples(
    sampler,
    seed: int,
    rows: tuple[int, int],
    *,
    rows_per_run: int | None = None,
    cond: dict | None = None,
    uncond: dict | None = None,
) -> np.ndarray:
    """Samples rows[0]..rows[1]−1 of ``sampler.sample(shape=n, seed=seed)``, float32.

    Runs ``sampler`` (an :class:`~refdiff.export.OrtSampler`) on runs of at most
    ``rows_per_run`` rows (two or more each; None: as many as keep a run's host noise, N + 1
    states of float32, under 256 MiB), drawing only those rows' noise.  ``cond``/``uncond``:
    conditioning inputs with batch 1 (or none), the same for every row.
    """
    a, b = rows
    if not all(isinstance(d, int) for d in sampler.dims[1:]):
        raise InputError("model", f"the state {tuple(sampler.dims)} has open dims")
    if sampler.mode == "graph" and sampler.noise == "graph":
        raise InputError("model", "draws its noise in-graph: shards could not be reproduced")
    if rows_per_run is None:
        per_row = 4 * (sampler.num_steps + 1) * int(np.prod(sampler.dims[1:]))
        rows_per_run = int(np.clip(RUN_BYTES // per_row, 2, 65536))
    parts = []
    extras = getattr(sampler, "extras", ())
    for lo, hi in plan_shards(b - a, max(2, int(rows_per_run))) if b - a > 1 else [(0, 1)]:
        x_T, z = host_rows(sampler, seed, (a + lo, a + hi))
        parts.append(sample_rows(sampler, x_T, z, cond=cond, uncond=uncond, extras=extras))
    return np.concatenate(parts)


_WORKER_CACHE: dict = {}  # per worker process: (model sha, spec) -> OrtSampler


def _shard_task(model, sha, spec: SamplerSpec, seed, rows, path, rows_per_run, conds, hook, index):
    """Ray task body: compute one shard, write it atomically, return its SHA-256."""
    key = (sha, json.dumps(spec.describe(), sort_keys=True), spec.provider, spec.threads)
    s = _WORKER_CACHE.get(key)
    if s is None:
        _WORKER_CACHE.clear()
        s = _WORKER_CACHE[key] = spec.build(model)
    if hook is not None:
        hook(index)
    x = shard_samples(s, seed, rows, rows_per_run=rows_per_run, cond=conds[0], uncond=conds[1])
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    data = buf.getvalue()
    with atomic_write(path) as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def _plain(v: object) -> object:
    """An option value as JSON data (the σ grid comes as an array), same values."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v.item() if isinstance(v, np.generic) else v


def _check_conds(s, cond, uncond) -> tuple:
    """(cond, uncond) checked by the sampler's own rules for a batch of one sample."""
    if cond is None and uncond is None and not getattr(s, "extras", ()):
        return (None, None)
    from .conditioning import prepare_conditioning

    if s.denoiser is None:
        raise InputError("cond", "conditioning a sampler file is not supported here")
    c, u = prepare_conditioning(s.extras, cond, uncond, s.guidance, 1)
    for d, arg in ((c, "cond"), (u or {}, "uncond")):
        for e in s.extras:
            if e.batched and e.name in d and d[e.name].shape[0] != 1:
                raise InputError(f"{arg}[{e.name!r}]", "give batch 1: the same for every sample")
    return (c, u)


def _conds_digest(conds: tuple) -> dict | None:
    if conds == (None, None):
        return None
    out = {}
    for tag, d in zip(("cond", "uncond"), conds):
        for k, v in sorted((d or {}).items()):
            a = np.ascontiguousarray(v)
            h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()
            out[f"{tag}/{k}"] = h
    return out


def _sha_file(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        return None


def _read_manifest(path: Path) -> dict | None:
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise FileFormatError(path, f"unreadable manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise FileFormatError(path, f"not a {FORMAT} manifest")
    return m


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.npy"


class ResourceError(InputError):
    """The Ray cluster has fewer CPUs or GPUs than a run asks for; raised at once instead of
    waiting forever for resources that never come.  ``.argument``: the flag or keyword that
    asked; ``.needed`` and ``.available``: the amounts of that resource."""

    def __init__(self, argument: str, message: str, needed: float, available: float):
        super().__init__(argument, message)
        self.needed, self.available = needed, available


def check_cluster_resources(
    ray,
    *,
    per_unit: dict[str, tuple[float, str]],
    units: int = 1,
    unit: str = "task",
    hint: str = "",
) -> None:
    """Refuse (:class:`ResourceError`) a request the running Ray cluster cannot place.

    ``per_unit``: ``{"GPU": (amount, argument), "CPU": (amount, argument)}`` asked by each of
    ``units`` replicas/tasks that must all run at once; each unit must also fit on one node.
    Compared with ``ray.cluster_resources()`` and the live nodes' resources (an autoscaling
    cluster that would add nodes later is refused too: ask for what it has now)."""
    have = ray.cluster_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive", True)]
    summary = ", ".join(f"{have.get(r, 0):g} {r}" for r in ("CPU", "GPU"))
    for res, (amount, argument) in per_unit.items():
        if not amount or amount <= 0:
            continue
        total, need = float(have.get(res, 0)), units * float(amount)
        biggest = max((float(n.get(res, 0)) for n in nodes), default=0.0)
        if total < need or biggest < amount:
            ask = f"{units} {unit}{'s' if units != 1 else ''} × {amount:g} {res}"
            where = f"{total:g} {res} in all" if total < need else f"at most {biggest:g} per node"
            raise ResourceError(
                argument,
                f"asks for {ask} = {need:g} {res}, but the Ray cluster has {where} "
                f"({summary}){hint}",
                need,
                total,
            )


def _ensure_ray(address: str | None, init_kwargs: dict | None):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if not ray.is_initialized():
        kw = dict(init_kwargs or {})
        if address is None:
            kw.setdefault("include_dashboard", False)
        ray.init(address=address, **kw)
    return ray


def cluster_sample(
    model: object,
    out_dir: str | os.PathLike,
    n: int,
    *,
    seed: int = 0,
    shard_rows: int = 65536,
    rows_per_run: int | None = None,
    sampler: str = "ddpm",
    steps: int | None = None,
    spacing: str = "leading",
    options: dict | None = None,
    mode: str = "graph",
    provider: str | None = None,
    threads: int | None = 1,
    address: str | None = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    max_retries: int = 3,
    cond: dict | None = None,
    uncond: dict | None = None,
    schedule=None,
    model_kwargs: dict | None = None,
    init_kwargs: dict | None = None,
    on_shard: Callable[[int], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ClusterResult:
    """Draw ``n`` samples of ``model`` (ONNX path or bytes) on a Ray cluster into ``out_dir``.

    Each shard (``shard_rows`` rows; :func:`plan_shards`) is one Ray task with ``num_cpus``
    CPUs and ``num_gpus`` GPUs (provider ``"cuda"`` when > 0, else ``"cpu"``, unless given),
    retried ``max_retries`` times if its worker dies.  ``address``: an existing cluster
    (``"auto"``, ``"ray://host:10001"``); None: the running one, else a local one
    (``init_kwargs`` go to ``ray.init``).  ``on_shard(i)`` runs in the worker before shard i
    (fault injection in tests); ``progress(done, total)`` on the driver.  ``cond`` /
    ``uncond``: conditioning inputs of batch 1 for every sample (recorded in the plan by
    SHA-256); ``schedule``/``model_kwargs``: see :class:`SamplerSpec`.

    Returns a :class:`ClusterResult`; raises :class:`ShardError` when shards are still
    missing after the retries (the manifest keeps every finished one).
    """
    t0 = time.perf_counter()
    if isinstance(model, str | os.PathLike):
        model = Path(model).read_bytes()
    if not isinstance(model, bytes):
        raise InputError("model", "give a path or the bytes of an ONNX file")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError("seed", f"must be an int ≥ 0; got {seed!r}")
    if provider is None:
        provider = "cuda" if num_gpus > 0 else "cpu"
    spec = SamplerSpec(
        sampler,
        steps,
        spacing,
        {k: _plain(v) for k, v in (options or {}).items()},
        mode,
        provider,
        threads,
        schedule,
        dict(model_kwargs or {}),
    )
    probe = spec.build(model)  # checks the configuration here, not in every worker
    conds = _check_conds(probe, cond, uncond)
    shape = [int(d) if isinstance(d, int) else d for d in probe.dims]
    if not all(isinstance(d, int) for d in shape[1:]):
        raise InputError("model", f"the state {tuple(shape)} has open dims")
    shards = plan_shards(n, shard_rows)
    sha = hashlib.sha256(model).hexdigest()
    from .noise import ROW_BLOCK

    plan = {
        "n": int(n),
        "seed": int(seed),
        "shard_rows": int(shard_rows),
        "sample_shape": shape[1:],
        "dtype": "float32",
        "model_sha256": sha,
        "sampler": spec.describe(),
        "conditioning": _conds_digest(conds),
        "num_steps": int(probe.num_steps),
        "noise_layout": f"refdiff.export.noise ROW_BLOCK={ROW_BLOCK}",
    }
    out = Path(out_dir)
    mpath = out / MANIFEST
    old = _read_manifest(mpath)
    done: dict[str, dict] = {}
    if old is not None:
        if old.get("plan") != json.loads(json.dumps(plan)):
            diff = sorted(
                k for k in plan if json.dumps(old.get("plan", {}).get(k)) != json.dumps(plan[k])
            )
            raise InputError(
                "out_dir", f"{out} holds a different sample (plan differs in {diff}); use another"
            )
        for key, entry in old.get("shards", {}).items():
            i = int(key)
            if i < len(shards) and _sha_file(out / entry["file"]) == entry.get("sha256"):
                done[key] = entry
    manifest = {"format": FORMAT, "plan": plan, "shards": done, "complete": False}
    write_json(mpath, manifest)
    todo = [i for i in range(len(shards)) if f"{i:05d}" not in done]
    reused = sorted(int(k) for k in done)
    failed: dict[int, str] = {}
    if todo:
        ray = _ensure_ray(address, init_kwargs)
        check_cluster_resources(
            ray, per_unit={"GPU": (num_gpus, "num_gpus"), "CPU": (num_cpus, "num_cpus")}
        )
        task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)(
            _shard_task
        )
        model_ref = ray.put(model)
        pending = {
            task.remote(
                model_ref, sha, spec, int(seed), shards[i], str(out / _shard_name(i)),
                rows_per_run, conds, on_shard, i,
            ): i
            for i in todo
        }  # fmt: skip
        last_write = time.monotonic()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            try:
                digest = ray.get(ready[0])
            except ray.exceptions.RayError as e:
                lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
                failed[i] = f"{type(e).__name__}: {lines[-1] if lines else ''}"
                continue
            done[f"{i:05d}"] = {"rows": list(shards[i]), "file": _shard_name(i), "sha256": digest}
            if progress is not None:
                progress(len(done), len(shards))
            if time.monotonic() - last_write > 1.0:  # the manifest follows at most 1 s behind
                write_json(mpath, manifest)
                last_write = time.monotonic()
    manifest["shards"] = dict(sorted(done.items()))
    manifest["complete"] = not failed
    write_json(mpath, manifest)
    if failed:
        raise ShardError(out, sorted(failed), failed)
    return ClusterResult(out, mpath, shards, sorted(todo), reused, time.perf_counter() - t0)


def load_samples(out_dir: str | os.PathLike, *, verify: bool = True) -> np.ndarray:
    """The (n, *S) float32 samples of a complete :func:`cluster_sample` folder.

    ``verify``: check every shard's SHA-256 against the manifest.  Raises
    :class:`~refdiff.errors.FileFormatError` for a missing, incomplete or altered folder.
    """
    out = Path(out_dir)
    m = _read_manifest(out / MANIFEST)
    if m is None:
        raise FileFormatError(out / MANIFEST, "no manifest: not a cluster_sample folder")
    plan = m["plan"]
    shards = plan_shards(plan["n"], plan["shard_rows"])
    x = np.empty((plan["n"], *plan["sample_shape"]), np.float32)
    for i, (a, b) in enumerate(shards):
        entry = m["shards"].get(f"{i:05d}")
        if entry is None:
            raise FileFormatError(out, f"shard {i} is missing; rerun cluster_sample")
        path = out / entry["file"]
        if verify and _sha_file(path) != entry["sha256"]:
            raise FileFormatError(path, "does not match the SHA-256 in the manifest")
        try:
            part = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise FileFormatError(path, f"unreadable shard ({e})") from None
        if part.shape != x[a:b].shape or part.dtype != np.float32:
            raise FileFormatError(path, f"has {part.shape} {part.dtype}, not {x[a:b].shape}")
        x[a:b] = part
    return x


def run_cli(
    sampler,
    model: str,
    out_dir: str,
    n: int,
    *,
    seed: int,
    address: str,
    shard_rows: int = 65536,
    options: dict | None = None,
    cond: dict | None = None,
    uncond: dict | None = None,
    quiet: bool = False,
) -> int:
    """``refdiff sample --cluster [ADDRESS]``: shard the run of ``sampler`` (the
    :class:`~refdiff.export.OrtSampler` the command built) over a Ray cluster into ``out_dir``.

    ``address``: ``"local"`` starts a local cluster; else ``"auto"`` or ``ray://host:port``.
    The sampler's walked schedule, mode, provider, guidance and the denoiser's resolved
    conventions are taken from ``sampler``; ``options``: the step-table options the command
    gave it (``eta``, ``sigmas``, …), which an OrtSampler does not keep.  Returns 0, or 2 when
    shards are missing (rerun the same command to compute only those).
    """
    import sys

    complete = sampler.tables is None
    opts, model_kwargs = None, None
    if not complete:
        den, sig = sampler.denoiser, sampler.denoiser.signature
        model_kwargs = dict(
            prediction_type=den.prediction_type,
            timestep_convention=den.timestep_convention,
            state_input=sig.state_input,
            time_input=sig.time_input,
            output=sig.output,
        )
        opts = dict(options or {})
        g = sampler.guidance
        if g is not None:
            opts.update(guidance_scale=g.scale, guidance_rescale=g.rescale, guidance_mode=g.mode)
    t0 = time.perf_counter()
    try:
        res = cluster_sample(
            model,
            out_dir,
            n,
            seed=seed,
            shard_rows=shard_rows,
            sampler="ddpm" if complete else sampler.tables.sampler,
            options=opts,
            schedule=None if complete else sampler.schedule,
            model_kwargs=model_kwargs,
            cond=cond,
            uncond=uncond,
            mode=sampler.mode,
            provider="cpu" if sampler.provider == "cpu" else "cuda",
            num_gpus=0 if sampler.provider == "cpu" else 1,
            address=None if address == "local" else address,
            progress=None
            if quiet
            else lambda d, t: print(f"\r{d}/{t} shards", end="", file=sys.stderr),
        )
    except ShardError as e:
        print(f"\nrefdiff sample: error: {e}", file=sys.stderr)
        return 2
    except ResourceError as e:  # name what the user typed: the GPU comes from the provider
        flag = "--provider" if e.argument == "num_gpus" else "--cluster"
        msg = str(e).split(": ", 1)[1]
        if flag == "--provider":
            msg += f"; the sampler runs on {sampler.provider} here: pass --provider cpu"
        raise ResourceError(flag, msg, e.needed, e.available) from None
    if not quiet:
        print(
            f"\nwrote {out_dir}: {n} samples in {len(res.shards)} shards ({len(res.computed)} "
            f"computed, {len(res.reused)} reused) in {time.perf_counter() - t0:.1f} s; "
            f"read with refdiff.export.cluster.load_samples"
        )
    return 0
