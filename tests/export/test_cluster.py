"""Distributed batch sampling on a local Ray cluster (export/cluster.py; docs/scale.md).

Sharded output equals one process with the same seed bit for bit; a worker that dies mid-run
costs only its own shard (recomputed by a rerun, or by Ray's retry), and no finished shard is
touched.  Shards of 8 rows (not a multiple of the noise layout's row block, on purpose) keep
every run small.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("ray", reason="needs ray (pip install 'refdiff[serve]'; make test installs it)")

import refdiff.export as ex  # noqa: E402
from refdiff.export.cluster import (  # noqa: E402
    MANIFEST,
    SamplerSpec,
    ShardError,
    cluster_sample,
    load_samples,
    plan_shards,
)
from refdiff.export.noise import host_noise  # noqa: E402

from refdiff.errors import FileFormatError, InputError  # noqa: E402
from refdiff.schedule import make_schedule  # noqa: E402
from refdiff.sigma import from_schedule  # noqa: E402

from ._ray_local import ray_cluster  # noqa: E402, F401

BASE = make_schedule("linear", 30)
MODEL = ex.mixture_denoiser_model(ex.builtin_mixture("two"), BASE).SerializeToString()
N, SEED, ROWS = 41, 9, 8  # shards [0,8) … [32,41): the lone last row joins the shard before


def single_process(n=N, seed=SEED, **spec) -> np.ndarray:
    """``OrtSampler(...).sample(shape=n, seed=seed)``, checked against the layout's arrays."""
    s = SamplerSpec(**spec).build(MODEL)
    x = s.sample(shape=n, seed=seed)
    x_T, z = host_noise(seed, s.num_steps, (n, 2))
    x_T = (x_T.astype(np.float64) * s.tables.x_T_scale).astype(np.float32)
    assert np.array_equal(x, s.sample(x_T, z if s.noisy else None))
    return x


def test_plan_shards_never_leaves_a_lone_row():
    assert plan_shards(41, 8) == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 41)]
    assert plan_shards(40, 8)[-1] == (32, 40) and plan_shards(3, 8) == [(0, 3)]
    with pytest.raises(InputError) as e:
        plan_shards(10, 1)
    assert e.value.argument == "shard_rows"


def test_cluster_sample_equals_single_process_bit_for_bit(ray_cluster, tmp_path):  # noqa: F811
    r = cluster_sample(MODEL, tmp_path, N, seed=SEED, shard_rows=ROWS, num_cpus=1)
    assert r.computed == [0, 1, 2, 3, 4] and r.reused == []
    x = load_samples(tmp_path)
    assert x.dtype == np.float32 and np.array_equal(x, single_process())
    # Other configurations through the same cluster: DDIM (respaced, η > 0), a σ-view
    # sampler (x_T = σ_0 z), the per-step mode with runs of 3 rows inside each shard.
    for i, opts in enumerate(
        [
            dict(sampler="ddim", steps=7, options={"eta": 0.7}),
            dict(sampler="euler_ancestral", options={"sigmas": from_schedule(BASE, 6).tolist()}),
            dict(mode="steps", rows_per_run=3),
        ]
    ):
        cluster_sample(MODEL, tmp_path / str(i), N, seed=SEED, shard_rows=ROWS, **opts)
        opts.pop("rows_per_run", None)
        assert np.array_equal(load_samples(tmp_path / str(i)), single_process(**opts)), opts
    # The manifest pins the plan: another seed in the same folder is refused, not mixed.
    with pytest.raises(InputError) as e:
        cluster_sample(MODEL, tmp_path, N, seed=SEED + 1, shard_rows=ROWS)
    assert e.value.argument == "out_dir" and "seed" in str(e.value)


def test_killed_worker_shard_is_recomputed_by_a_rerun(ray_cluster, tmp_path):  # noqa: F811
    # Hooks are local functions: Ray ships them by value (workers cannot import test modules).
    def kill_on_shard_2(i: int) -> None:
        if i == 2:
            os._exit(1)  # the worker process dies abruptly, as on a lost node

    kw = dict(seed=SEED, shard_rows=ROWS, num_cpus=1)
    with pytest.raises(ShardError) as e:
        cluster_sample(MODEL, tmp_path, N, max_retries=0, on_shard=kill_on_shard_2, **kw)
    assert e.value.missing == [2] and e.value.argument == "out_dir", e.value.reasons
    with pytest.raises(FileFormatError, match="shard 2 is missing"):
        load_samples(tmp_path)
    kept = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.npy")}
    assert sorted(kept) == [f"shard-0000{i}.npy" for i in (0, 1, 3, 4)]
    r = cluster_sample(MODEL, tmp_path, N, **kw)
    assert r.computed == [2] and r.reused == [0, 1, 3, 4]
    assert {k: (tmp_path / k).stat().st_mtime_ns for k in kept} == kept  # untouched
    assert np.array_equal(load_samples(tmp_path), single_process())


def test_killed_worker_is_retried_by_ray(ray_cluster, tmp_path):  # noqa: F811
    marker = tmp_path / "killed-once"

    def kill_first_attempt(i: int) -> None:
        if i == 1 and not marker.exists():
            marker.write_text("x")
            os._exit(1)

    out = tmp_path / "run"
    r = cluster_sample(
        MODEL, out, N, seed=SEED, shard_rows=ROWS, num_cpus=1, on_shard=kill_first_attempt
    )
    assert marker.exists() and r.computed == [0, 1, 2, 3, 4]
    assert np.array_equal(load_samples(out), single_process())


def test_altered_shard_is_refused_and_recomputed(ray_cluster, tmp_path):  # noqa: F811
    cluster_sample(MODEL, tmp_path, N, seed=SEED, shard_rows=ROWS, num_cpus=1)
    p = tmp_path / "shard-00003.npy"
    a = np.load(p)
    a[0, 0] += 1
    np.save(p, a)
    with pytest.raises(FileFormatError, match="SHA-256"):
        load_samples(tmp_path)
    r = cluster_sample(MODEL, tmp_path, N, seed=SEED, shard_rows=ROWS, num_cpus=1)
    assert r.computed == [3] and np.array_equal(load_samples(tmp_path), single_process())
    assert (tmp_path / MANIFEST).exists()


def test_run_cli_shards_the_commands_own_sampler(ray_cluster, tmp_path, capsys):  # noqa: F811
    """The body of ``refdiff sample --cluster``: schedule, sampler, mode and the denoiser's
    conventions come from the OrtSampler the command built, step-table options alongside."""
    from refdiff.export.cluster import run_cli

    path = tmp_path / "den.onnx"
    path.write_bytes(MODEL)
    sig = from_schedule(BASE, 5)  # an array, as the command's σ grid is
    s = ex.OrtSampler(
        str(path), BASE, sampler="euler_ancestral", mode="fused", provider="cpu", sigmas=sig
    )
    out = tmp_path / "shards"
    kw = dict(seed=3, address="local", shard_rows=8, options={"sigmas": sig})
    assert run_cli(s, str(path), str(out), 21, **kw) == 0
    assert "21 samples in 3 shards (3 computed, 0 reused)" in capsys.readouterr().out
    assert np.array_equal(load_samples(out), s.sample(shape=21, seed=3))
