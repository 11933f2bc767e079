"""A job is keyed by the cache keys of what it computes: the same submission runs once while its results
are in the cache under today's analysis versions, and runs again when they are not (an entry discarded, an
analysis version bumped, ``--force``)."""

from __future__ import annotations

import pytest

from precompute import jobs
from precompute.cache import Cache, ResultKey


@pytest.fixture
def queue(tmp_settings, monkeypatch):
    """Jobs run in this process when the test says so (no consumer); returns the ids enqueued."""
    enqueued: list[str] = []
    monkeypatch.setattr(jobs, "_enqueue", lambda settings, jid: enqueued.append(jid))
    return enqueued


def _done(tmp_settings, queue, args) -> dict:
    job = jobs.submit("precompute", args, tmp_settings)
    assert queue[-1] == job["id"]
    finished = jobs.run_job(job["id"], tmp_settings)
    assert finished["state"] == "done", finished.get("error")
    return finished


ARGS = {"model": "resnet20-random", "analyses": ["symmetry", "histogram"]}


def test_done_job_with_its_results_is_not_run_again(tmp_settings, queue):
    first = _done(tmp_settings, queue, ARGS)
    again = jobs.submit("precompute", ARGS, tmp_settings)
    assert again["id"] == first["id"] and again["state"] == "done" and len(queue) == 1


def test_a_discarded_entry_makes_the_job_run_again(tmp_settings, queue):
    _done(tmp_settings, queue, ARGS)
    cache = Cache(tmp_settings.cache)
    rec = cache.get_model("resnet20-random")
    info = rec["analyses"]["symmetry"]
    key = ResultKey(rec["weights_sha256"], "symmetry", info["version"], info["params"])
    cache.discard(cache.result_path(key, info["layers"][0]))
    again = jobs.submit("precompute", ARGS, tmp_settings)
    assert again["state"] == "queued" and len(queue) == 2
    assert jobs.run_job(again["id"], tmp_settings)["state"] == "done"
    assert cache.has(key, info["layers"][0])  # recomputed


def test_a_bumped_analysis_version_makes_the_job_run_again(tmp_settings, queue):
    _done(tmp_settings, queue, ARGS)
    cache = Cache(tmp_settings.cache)
    registry = cache.get_registry()
    assert registry["symmetry"]["version"] == cache.get_model("resnet20-random")["analyses"]["symmetry"]["version"]
    # what a worker running newer code declares (the pipeline writes the registry into the cache)
    registry["symmetry"] = dict(registry["symmetry"], version=registry["symmetry"]["version"] + 1)
    cache.put_registry(registry)
    assert jobs.submit("precompute", ARGS, tmp_settings)["state"] == "queued" and len(queue) == 2


def test_force_always_runs_again(tmp_settings, queue):
    args = dict(ARGS, force=True)
    _done(tmp_settings, queue, args)
    assert jobs.submit("precompute", args, tmp_settings)["state"] == "queued" and len(queue) == 2


def test_a_partial_record_is_not_a_result(tmp_settings, queue):
    _done(tmp_settings, queue, ARGS)
    cache = Cache(tmp_settings.cache)
    rec = cache.get_model("resnet20-random")
    cache.put_model("resnet20-random", dict(rec, status="partial"))
    assert jobs.submit("precompute", ARGS, tmp_settings)["state"] == "queued"
