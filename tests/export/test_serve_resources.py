"""Requests the Ray cluster cannot place are refused at once with a typed error naming the
flag and what the cluster has (export/cluster.py check_cluster_resources; docs/scale.md),
instead of ``refdiff serve`` / ``cluster_sample`` waiting forever for resources."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("ray", reason="needs ray (pip install 'refdiff[serve]'; make test installs it)")

import refdiff.export as ex  # noqa: E402
from refdiff.export.cluster import (  # noqa: E402
    ResourceError,
    check_cluster_resources,
    cluster_sample,
)
from refdiff.export.serve import serve_main  # noqa: E402

from refdiff.schedule import make_schedule  # noqa: E402

from ._ray_local import ray_cluster  # noqa: E402, F401

MODEL = ex.mixture_denoiser_model(
    ex.builtin_mixture("two"), make_schedule("linear", 20)
).SerializeToString()


def _gpus(ray) -> float:
    return float(ray.cluster_resources().get("GPU", 0))


def test_check_names_the_argument_and_what_the_cluster_has(ray_cluster):  # noqa: F811
    have = _gpus(ray_cluster)
    with pytest.raises(ResourceError, match="the Ray cluster has") as e:
        check_cluster_resources(
            ray_cluster, per_unit={"GPU": (0.5, "--gpus-per-replica")}, units=int(2 * have) + 1
        )
    assert e.value.argument == "--gpus-per-replica" and e.value.available == have
    assert e.value.needed == 0.5 * (int(2 * have) + 1) > have
    assert isinstance(e.value, ValueError)
    cpus = float(ray_cluster.cluster_resources()["CPU"])
    with pytest.raises(ResourceError, match="per node|in all") as e:  # more than any node
        check_cluster_resources(ray_cluster, per_unit={"CPU": (cpus + 1, "num_cpus")})
    assert e.value.argument == "num_cpus"
    # what fits passes, zero asks nothing
    check_cluster_resources(ray_cluster, per_unit={"CPU": (cpus, "c"), "GPU": (0, "g")})


def test_serve_exits_2_naming_the_flag_without_waiting(ray_cluster, tmp_path, capsys):  # noqa: F811
    path = tmp_path / "m.onnx"
    path.write_bytes(MODEL)
    replicas = int(2 * _gpus(ray_cluster)) + 1  # 0.5 GPU each: more than the cluster has
    argv = [str(path), "--gpus-per-replica", "0.5", "--replicas", str(replicas)]
    assert serve_main(argv) == 2
    err = capsys.readouterr().err
    assert f"--gpus-per-replica: asks for {replicas} replica" in err, err
    assert "GPU" in err and "the Ray cluster has" in err
    assert ray_cluster.is_initialized()  # a cluster it did not start is left running
    assert serve_main([str(path), "--cpus-per-replica", "1000"]) == 2
    assert "--cpus-per-replica: asks for 1 replica × 1000 CPU" in capsys.readouterr().err


def test_cluster_sample_refuses_gpus_the_cluster_lacks(ray_cluster, tmp_path):  # noqa: F811
    with pytest.raises(ResourceError) as e:
        cluster_sample(MODEL, tmp_path / "out", 8, num_gpus=_gpus(ray_cluster) + 1, provider="cpu")
    assert e.value.argument == "num_gpus"
    assert not list((tmp_path / "out").glob("shard-*.npy"))
