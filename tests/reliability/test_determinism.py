"""Determinism (docs/reliability.md §4): same seed, same bits — across runs and processes.

A child script computes SHA-256 digests of the bytes of everything refdiff draws or
computes from a seed: ``draw_noise``, ``q_sample``, DDPM and DDIM (η = 1) sampling with an MLP
denoiser, the VLB, a short training run, golden vectors, and the onnxruntime CPU sampler
(per-step and whole-graph, host noise and in-graph noise).  Two child processes that differ
in ``PYTHONHASHSEED`` and in the BLAS / OpenMP / onnxruntime thread counts (1 vs 2) must print
identical digests; another seed must change every one of them (so the comparison can fail).
The children import refdiff afresh: nothing is cached between runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import hashlib, json, sys
    import numpy as np


    def digest(*arrays):
        h = hashlib.sha256()
        for a in arrays:
            a = np.ascontiguousarray(a)
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
        return h.hexdigest()


    def digests(seed, threads):
        from refdiff import forward as F, losses as L, mlp as M, sampling as SA, schedule as S

        out = {}
        rng = np.random.default_rng
        sch = S.make_schedule("cosine", 40)
        mlp = M.init_mlp(rng(seed), data_dim=2, hidden=32, depth=2, embed_dim=8)
        out["draw_noise"] = digest(*SA.draw_noise(rng(seed), 40, (64, 2)))
        x0 = rng(seed + 1).standard_normal((64, 2))
        out["q_sample"] = digest(F.q_sample(sch, x0, np.arange(64) % 40 + 1, rng=rng(seed)))
        out["ddpm"] = digest(SA.ddpm_sample(mlp, sch, (64, 2), rng=rng(seed),
                                            variance_type="fixed_large"))
        out["ddim"] = digest(SA.ddim_sample(mlp, S.respace(sch, [1, 10, 20, 40]), (64, 2),
                                            rng=rng(seed), eta=1.0, prediction_type="v"))
        out["vlb"] = digest(*L.vlb_bpd(sch, np.tanh(x0), mlp, rng=rng(seed)))
        try:
            from refdiff.train import TrainConfig, train

            cfg = TrainConfig(steps=30, batch_size=64, hidden=16, depth=2, embed_dim=8,
                              warmup=5, seed=seed)
            res = train(rng(0).standard_normal((256, 2)), S.linear(50), cfg)
            out["train"] = digest(*[a for W, b in res.mlp.layers for a in (W, b)])
        except ImportError:
            pass
        try:
            import pathlib, tempfile
            from refdiff import vectors as V

            d = pathlib.Path(tempfile.mkdtemp()) / "v"
            V.write(d, grid_name="small", T=20, steps=4, seed=seed)
            files = sorted(p for p in d.rglob("*") if p.is_file())
            out["vectors"] = digest(*[np.frombuffer(p.read_bytes(), np.uint8) for p in files])
        except ImportError:
            pass
        try:
            from refdiff.export import OrtSampler, mlp_denoiser_model

            model = mlp_denoiser_model(mlp, schedule=sch)
            for mode in ("steps", "graph"):
                for noise in ("input", "graph"):
                    s = OrtSampler(model, sch, sampler="ddpm", mode=mode, noise=noise, seed=seed,
                                   provider="cpu", threads=threads)
                    out[f"ort-{mode}-{noise}"] = digest(s.sample(shape=(64, 2), seed=seed))
        except ImportError:
            pass
        return out


    if __name__ == "__main__":
        seeds = [int(a) for a in sys.argv[2:]]
        print(json.dumps({s: digests(s, int(sys.argv[1])) for s in seeds}))
    """
)


def _run_child(tmp_path: Path, seeds: list[int], threads: int, hashseed: str) -> dict:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONHASHSEED": hashseed,
        "OMP_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    proc = subprocess.run(
        [sys.executable, str(script), str(threads), *map(str, seeds)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("determinism")
    a = _run_child(tmp, [7, 8], 1, "1")
    b = _run_child(tmp, [7], 2, "12345")
    return a, b


def test_same_seed_same_bits_across_processes(runs):
    a, b = runs[0][7], runs[1][7]
    expected = {
        "draw_noise",
        "q_sample",
        "ddpm",
        "ddim",
        "vlb",
        "train",
        "vectors",
        "ort-steps-input",
        "ort-steps-graph",
        "ort-graph-input",
        "ort-graph-graph",
    }
    assert expected <= set(a), f"missing: {expected - set(a)}"
    diff = {k for k in a if a[k] != b[k]}
    assert not diff, f"differ between processes (threads 1 vs 2, hash seeds 1 vs 12345): {diff}"


def test_another_seed_changes_every_digest(runs):
    """The comparison above can fail: every quantity depends on the seed."""
    a, c = runs[0][7], runs[0][8]
    same = {k for k in a if a[k] == c.get(k)}
    assert not same, f"did not change with the seed: {same}"
