"""``refdiff serve`` on a local Ray cluster (export/serve.py; docs/scale.md).

One Serve application for the module (one replica, 127.0.0.1, a free port); requests are
bounded in count and each has a timeout.  Parity: the served samples equal
``OrtSampler(...).sample(shape=batch, seed=seed)`` bit for bit, also when Serve batches
concurrent requests into one run.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("ray", reason="needs ray (pip install 'refdiff[serve]'; make test installs it)")

import refdiff.export as ex  # noqa: E402
from refdiff.export.noise import host_noise  # noqa: E402
from refdiff.export.serve import (  # noqa: E402
    SamplerServer,
    ServeConfig,
    get_json,
    parse_request,
    post_sample,
    sampler_app,
)

from refdiff.errors import InputError  # noqa: E402
from refdiff.schedule import make_schedule  # noqa: E402
from refdiff.sigma import from_schedule  # noqa: E402

from ._ray_local import free_port, ray_cluster  # noqa: E402, F401

BASE = make_schedule("linear", 40)
MODEL = ex.mixture_denoiser_model(ex.builtin_mixture("two"), BASE).SerializeToString()
TIMEOUT = 60.0


def reference(batch: int, seed: int, sampler: str = "ddpm", steps=None, **opts) -> np.ndarray:
    """``OrtSampler.sample(shape=batch, seed=seed)``; a single row beside a copy of itself
    (onnxruntime's one-row MatMul kernel rounds differently: export/serve.py sample_rows)."""
    _, sched = ex.build_schedule("", 0, base=BASE, steps=steps)
    s = ex.OrtSampler(MODEL, sched, sampler=sampler, mode="graph", provider="cpu", **opts)
    if batch > 1:
        return s.sample(shape=batch, seed=seed)
    x_T, z = host_noise(seed, s.num_steps, (1, 2))
    x_T = (x_T.astype(np.float64) * s.tables.x_T_scale).astype(np.float32)
    z2 = np.concatenate([z, z], axis=1) if s.noisy else None
    return s.sample(np.concatenate([x_T, x_T]), z2)[:1]


@pytest.fixture(scope="module")
def url(ray_cluster):  # noqa: F811
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = sampler_app(
        MODEL,
        replicas=1,
        cpus_per_replica=0.5,
        max_batch=64,
        max_rows_per_run=256,
        batch_wait_s=0.05,
        health_check_period_s=1.0,
        graceful_shutdown_timeout_s=2.0,
    )
    serve.run(app, name="refdiff_test", route_prefix="/rd")
    yield f"http://127.0.0.1:{port}/rd"
    serve.shutdown()


def test_serve_same_seed_same_samples_as_ort_sampler(url):
    st, x = post_sample(url + "/sample", {"seed": 11, "batch": 5}, timeout=TIMEOUT)
    assert st == 200, x
    assert x["shape"] == [5, 2] and x["dtype"] == "float32" and x["steps"] == BASE.T
    assert np.array_equal(np.asarray(x["samples"], np.float32), reference(5, 11))
    body = {"seed": 3, "batch": 4, "sampler": "ddim", "steps": 8, "options": {"eta": 0.5}}
    st, y = post_sample(url + "/sample", {**body, "format": "npy"}, timeout=TIMEOUT)
    assert st == 200 and isinstance(y, np.ndarray) and y.dtype == np.float32
    assert np.array_equal(y, reference(4, 3, "ddim", steps=8, eta=0.5))
    assert not np.array_equal(y, reference(4, 4, "ddim", steps=8, eta=0.5))  # seed matters
    sig = from_schedule(BASE, 5).tolist()  # a σ-view sampler: x_T = σ_0 z
    body = {"seed": 6, "batch": 3, "sampler": "euler_ancestral", "options": {"sigmas": sig}}
    st, y = post_sample(url + "/sample", {**body, "format": "npy"}, timeout=TIMEOUT)
    assert st == 200 and np.array_equal(y, reference(3, 6, "euler_ancestral", sigmas=sig))


def test_serve_injected_noise_is_used(url):
    rng = np.random.default_rng(5)
    x_T = rng.standard_normal((2, 2)).astype(np.float32)
    z = rng.standard_normal((BASE.T, 2, 2)).astype(np.float32)
    body = {"batch": 2, "x_T": x_T.tolist(), "step_noise": z.tolist(), "format": "npy"}
    st, x = post_sample(url + "/sample", body, timeout=TIMEOUT)
    assert st == 200, x
    s = ex.OrtSampler(MODEL, BASE, mode="graph", provider="cpu")
    assert np.array_equal(x, s.sample(x_T, z))


def test_serve_32_concurrent_clients_batched_and_exact(url):
    bodies = [{"seed": 100 + i, "batch": 1 + i % 4, "format": "npy"} for i in range(32)]
    _, before = get_json(url + "/health", timeout=TIMEOUT)
    with ThreadPoolExecutor(32) as pool:
        res = list(pool.map(lambda b: post_sample(url + "/sample", b, timeout=TIMEOUT), bodies))
    assert [st for st, _ in res] == [200] * 32, [x for st, x in res if st != 200][:2]
    for b, (_, x) in zip(bodies, res):
        assert np.array_equal(x, reference(b["batch"], b["seed"])), b
    st, after = get_json(url + "/health", timeout=TIMEOUT)
    assert st == 200 and after["requests"] - before["requests"] == 32
    # Batching happened: fewer runs than requests (32 requests inside one 50 ms window).
    assert after["batches"] - before["batches"] < 32 and after["largest_batch"] >= 2


BAD = [
    ({"seed": 1.5}, 400, "seed", "integer"),
    ({"seed": -1}, 400, "seed", "got -1"),
    ({"batch": 65}, 413, "batch", "1..64"),
    ({"batch": "3"}, 400, "batch", "integer"),
    ({"temperature": 1}, 400, "temperature", "unknown key"),
    ({"options": {"etaa": 1}}, 400, "options", "etaa"),
    ({"sampler": "lms"}, 400, "sampler", "lms"),
    ({"sampler": "euler"}, 400, "sigmas", "σ grid"),
    ({"sampler": "ddpm", "options": {"eta": 0.5}}, 400, "options", "eta"),
    ({"steps": 41}, 400, "steps", "41"),
    ({"format": "csv"}, 400, "format", "csv"),
    ({"batch": 2, "x_T": [[0.0, 1.0]]}, 400, "x_T", "shape (1, 2)"),
    ({"batch": 1, "x_T": [["a", "b"]]}, 400, "x_T", "numbers"),
    ({"batch": 1, "x_T": [[0.0, 1.0]]}, 400, "step_noise", "adds noise"),
    ({"inputs": {"class_label": [1]}}, 400, "inputs", "no conditioning inputs"),
    ([1, 2], 400, "body", "JSON object"),
]


def test_serve_bad_requests_get_4xx_and_the_replica_survives(url):
    _, h0 = get_json(url + "/health", timeout=TIMEOUT)
    for body, status, arg, words in BAD:
        st, err = post_sample(url + "/sample", body, timeout=TIMEOUT)
        assert (st, err["argument"]) == (status, arg), (body, st, err)
        assert words in err["error"], (body, err)
    assert get_json(url + "/nowhere", timeout=TIMEOUT)[0] == 404
    assert get_json(url + "/sample", timeout=TIMEOUT)[0] == 405
    st, x = post_sample(url + "/sample", {"seed": 2, "batch": 2}, timeout=TIMEOUT)
    assert st == 200 and np.array_equal(np.asarray(x["samples"], np.float32), reference(2, 2))
    _, h1 = get_json(url + "/health", timeout=TIMEOUT)
    assert h1["replica"] == h0["replica"] and h1["errors"] == h0["errors"]


def test_serve_info_describes_the_model(url):
    st, info = get_json(url + "/info", timeout=TIMEOUT)
    assert st == 200 and info["state"] == ["B", 2] and info["schedule"]["T"] == BASE.T
    assert info["max_batch"] == 64 and info["provider"] == "cpu"


def test_serve_killed_replica_is_restarted_and_serves_again(url, ray_cluster):  # noqa: F811
    ray = ray_cluster
    _, h0 = get_json(url + "/health", timeout=TIMEOUT)
    names = [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::refdiff_test#")
    ]
    assert len(names) == 1 and names[0]["name"].endswith(h0["replica"])
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)
    deadline, h1 = time.monotonic() + 45.0, None
    while time.monotonic() < deadline:  # bounded: one probe per 0.25 s for at most 45 s
        st, h = get_json(url + "/health", timeout=5.0)
        if st == 200 and h["replica"] != h0["replica"]:
            h1 = h
            break
        time.sleep(0.25)
    assert h1 is not None, "no new replica answered within 45 s"
    for seed in (7, 8):
        st, x = post_sample(url + "/sample", {"seed": seed, "batch": 3}, timeout=TIMEOUT)
        assert st == 200 and np.array_equal(
            np.asarray(x["samples"], np.float32), reference(3, seed)
        )


def test_conditioning_and_guidance_batch_exactly_in_process():
    """Requests with their own conditioning inputs (batch 1 broadcast, or per sample) and
    guidance run as one batch, each equal to its own OrtSampler run (no Ray needed)."""
    from .test_export_guidance import cond_model

    model = cond_model().SerializeToString()
    kw = dict(prediction_type="epsilon", timestep_convention="refdiff")
    cfg = ServeConfig(
        sampler="ddim", options=(("eta", 1.0),), schedule=BASE, model_kwargs=tuple(kw.items())
    )
    srv = SamplerServer(model, cfg)
    rng = np.random.default_rng(3)
    bodies = [
        {"seed": 1, "batch": 3, "inputs": {"cond": [[0.5, -1, 0, 2]], "label": [2]}},
        {
            "seed": 2,
            "batch": 2,
            "inputs": {"cond": rng.standard_normal((2, 4)).tolist(), "label": [0, 1]},
        },
        {"seed": 3, "batch": 1, "inputs": {"cond": [[1, 1, 1, 1]], "label": [1]}},
        {
            "seed": 4,
            "batch": 2,
            "options": {"eta": 1.0, "guidance_scale": 3.0},
            "inputs": {"cond": [[0, 1, 0, 1]], "label": [2]},
            "uncond_inputs": {"cond": [[0, 0, 0, 0]], "label": [0]},
        },
    ]
    jobs = [srv.prepare(parse_request(b, cfg)) for b in bodies]
    out = srv.run(jobs)
    assert srv.stats["batches"] == 2  # the three unguided requests ran as one batch
    for b, x in zip(bodies, out):
        opts = b.get("options", {"eta": 1.0})
        s = ex.OrtSampler(model, BASE, sampler="ddim", mode="graph", provider="cpu", **kw, **opts)
        cond = {k: np.asarray(v) for k, v in b["inputs"].items()}
        unc = {k: np.asarray(v) for k, v in b.get("uncond_inputs", {}).items()} or None
        if b["batch"] > 1:
            want = s.sample(shape=b["batch"], seed=b["seed"], cond=cond, uncond=unc)
        else:  # a lone row beside a copy of itself (sample_rows)
            x_T, z = host_noise(b["seed"], s.num_steps, (1, 2))
            two = {k: np.concatenate([v, v]) for k, v in cond.items()}
            want = s.sample(np.concatenate([x_T, x_T]), np.concatenate([z, z], 1), cond=two)[:1]
        assert np.array_equal(x, want), b
    bad = [
        ({"inputs": {"cond": [[1, 2, 3, 4]]}}, "inputs", "label"),  # one missing
        ({"inputs": {"cond": [[1, 2, 3]], "label": [0]}}, "inputs['cond']", ""),  # shape
        ({"inputs": {"cond": [[1, 2, 3, 4]], "label": [0.5]}}, "inputs['label']", ""),  # dtype
        ({"inputs": {"cond": [[1, 2, 3, 4]], "label": [0], "style": [1]}}, "inputs", "style"),
    ]
    for body, arg, words in bad:
        with pytest.raises(Exception) as e:
            srv.prepare(parse_request({"batch": 2, **body}, cfg))
        assert (getattr(e.value, "status", None), e.value.argument) == (400, arg), (body, e.value)
        assert words in str(e.value)


def test_complete_sampler_file_is_served_as_baked_in_in_process(tmp_path):
    """A sampler file (export --kind sampler): its own sampler, refusals name what differs;
    ``build_app`` (Serve config files, KubeRay) converts ``key=value`` strings."""
    from refdiff.export.serve import HTTPError, build_app

    sampler = ex.sampler_model(ex.open_denoiser(MODEL), ex.step_tables(BASE, "ddim", eta=0.3))
    data = sampler.SerializeToString()
    srv = SamplerServer(data, ServeConfig())
    assert srv.info()["sampler"] == "ddim" and srv.info()["complete_sampler"]
    (x,) = srv.run(
        [srv.prepare(parse_request({"seed": 5, "batch": 3, "sampler": "ddim"}, srv.config))]
    )
    want = ex.OrtSampler(data, mode="graph", provider="cpu").sample(shape=3, seed=5)
    assert np.array_equal(x, want)
    for body, arg in (({"steps": 10}, "steps"), ({"sampler": "ddpm"}, "sampler")):
        with pytest.raises(HTTPError) as e:
            srv.prepare(parse_request(body, srv.config))
        assert (e.value.status, e.value.argument) == (400, arg)
    path = tmp_path / "s.onnx"
    path.write_bytes(data)
    app = build_app({"model": str(path), "replicas": "2", "max_batch": "16"})
    assert type(app).__name__ == "Application"
    with pytest.raises(InputError) as e:
        build_app({"model": str(path), "replicas": "two"})
    assert e.value.argument == "replicas"
