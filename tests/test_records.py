"""The typed records (precompute/declarations/records.py): what is written validates, what was written
before still reads, a wrong value is refused naming its field, and the API documents the same models."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError
from torch import nn

import precompute.pipeline as pipeline
from precompute.cache import Cache
from precompute.declarations.records import InventoryRow, JobState, ModelRecord, TrainingRun, training_run
from precompute.experiments.records import RecordError, read_record, scan, spec_from_record, write_run
from precompute.inventory import inventory
from precompute.jobs import read_job, submit
from precompute.settings import Settings
from server import schemas
from server.app import create_app
from server.runs import run_of
from server.views import model_summary

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "reference"
BODIES_CACHE = REPO / "tests" / "data" / "api-bodies" / "cache"


def _named(field: str, e: ValidationError) -> bool:
    """Does one of the errors sit at ``field`` (or inside it: a number's union members, int and float)?"""
    locs = [".".join(str(p) for p in err["loc"]) for err in e.errors()]
    return any(loc == field or loc.startswith(field + ".") for loc in locs)


def _aliases(model) -> set[str]:
    return {f.alias or k for k, f in model.model_fields.items()}


# ---- the training run record --------------------------------------------------------------------------
def test_reference_runs_read_and_round_trip():
    """Every committed reference run reads as a TrainingRun, and its public form is the file, key for key
    and in the file's order (what was written before the model existed still reads, unchanged)."""
    runs = scan(REFERENCE)
    files = sorted(p.stem for p in REFERENCE.glob("*.json"))
    assert len(runs) >= 20 and sorted(runs) == files
    for name, (run, _) in runs.items():
        raw = json.loads((REFERENCE / f"{name}.json").read_text())
        assert list(run.public().items()) == list(raw.items()), name
        assert set(TrainingRun.written_keys()) <= set(raw), (name, set(TrainingRun.written_keys()) - set(raw))


def test_spec_extra_parses_back_to_the_run():
    """The zoo puts the run in the spec's extra; the server's one parser gets the same run back."""
    run, ckpt = scan(REFERENCE)["banding-baseline"]
    spec = spec_from_record(run, ckpt, reference=True).public()
    back = training_run(spec)
    assert back.reference is True and back.replaces_reference is False
    assert back.model_copy(update={"reference": False}).public() == {**run.public(), "reference": False,
                                                                     "replaces_reference": False}
    assert training_run({**spec, "family": "real"}) is None


def _reference_record(name="banding-baseline") -> dict:
    return json.loads((REFERENCE / f"{name}.json").read_text())


@pytest.mark.parametrize("change,field", [
    ({"epochs": "ten"}, "epochs"),
    ({"final_test_accuracy": "91"}, "final_test_accuracy"),
    ({"seed": 1.0}, "seed"),  # strict: a float is not silently an int
    ({"input_size": None}, "input_size"),
    ({"plateau": {"reached": "yes", "span": 0.1, "epochs": 3, "threshold": 0.5}}, "plateau.reached"),
    ({"model": "../etc"}, "model"),
])
def test_a_wrong_value_is_refused_naming_the_field(tmp_path, change, field):
    rec = {**_reference_record(), **change}
    with pytest.raises(ValidationError) as e:
        TrainingRun.model_validate(rec)
    assert _named(field, e.value), e.value
    path = tmp_path / "banding-baseline.json"
    path.write_text(json.dumps(rec))
    with pytest.raises(RecordError, match=field.replace(".", r"\.")):
        read_record(path)


def test_a_wrong_history_point_names_its_index(tmp_path):
    rec = _reference_record()
    rec["history"][3]["epoch"] = "one"
    path = tmp_path / "banding-baseline.json"
    path.write_text(json.dumps(rec))
    with pytest.raises(RecordError, match=r"history\.3\.epoch"):
        read_record(path)


def test_numbers_are_kept_as_written_and_unknown_keys_kept():
    rec = {**_reference_record(), "final_test_accuracy": 91, "written_by_a_newer_convscope": {"x": 1}}
    out = TrainingRun.model_validate(rec).public()
    assert out["final_test_accuracy"] == 91 and isinstance(out["final_test_accuracy"], int)
    assert out["written_by_a_newer_convscope"] == {"x": 1}


def test_a_record_of_an_older_version_reads():
    """Only the keys the zoo needs are required: a record written before history, plateau, precision and
    resumed existed reads, with empty defaults that the public form does not add."""
    old = {k: v for k, v in _reference_record().items()
           if k not in ("history", "plateau", "precision", "config", "resumed", "measurements")}
    run = TrainingRun.model_validate(old)
    assert run.history == [] and run.plateau is None and not run.at_plateau()
    assert run.public() == old


def test_write_run_refuses_an_incomplete_record_and_writes_nothing(tmp_path):
    rec = _reference_record()
    del rec["history"]
    state = {"w": torch.zeros(4, dtype=torch.float16)}
    with pytest.raises(RecordError, match="lacks history"):
        write_run(tmp_path, "banding-baseline", state, rec)
    rec = {**_reference_record(), "epochs": -1.5}
    with pytest.raises(RecordError, match="epochs"):
        write_run(tmp_path, "banding-baseline", state, rec)
    assert not list(tmp_path.iterdir())


def test_server_shows_a_variant_with_a_bad_run_without_it_and_says_why(caplog):
    good = {"name": "banding-baseline", "spec": {"family": "variant", "extra": _reference_record()}}
    assert run_of(good).variant == "baseline"
    bad = {"name": "bad-variant-for-the-log", "spec": {"family": "variant",
                                                       "extra": {**_reference_record(), "seed": "zero"}}}
    with caplog.at_level(logging.WARNING, logger="server.runs"):
        assert run_of(bad) is None
        assert run_of(bad) is None
    said = [r.getMessage() for r in caplog.records if "bad-variant-for-the-log" in r.getMessage()]
    assert len(said) == 1 and "seed" in said[0], said  # once per model, naming the field
    assert run_of({"name": "m", "spec": {"family": "real", "extra": {"twin_of": "x"}}}) is None


def test_a_variants_summary_fits_the_documented_schema():
    """The model summary of a trained variant (its ``training``, from the run record) is what the API's
    ModelSummary documents: plateau and snapshot are the run record's own models."""
    rec = next(iter(_cached_records(BODIES_CACHE).values()))
    run, ckpt = scan(REFERENCE)["banding-baseline"]
    spec = spec_from_record(run, ckpt, reference=True).public()
    summary = json.loads(json.dumps(model_summary({**rec, "spec": spec})))
    assert summary["training"]["plateau"] == _reference_record()["plateau"]
    documented = schemas.ModelSummary.model_validate(summary)
    assert documented.training.plateau == run.plateau and documented.training.variant == "baseline"
    assert "training" not in model_summary(rec)  # not a variant


# ---- inventory rows and model records -----------------------------------------------------------------
def test_inventory_rows_validate_and_have_the_models_keys():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 8 * 8, 5))
    rows = inventory(net, (3, 16, 16))
    assert [r["type"] for r in rows] == ["conv", "batchnorm", "linear"]
    for r in rows:
        assert InventoryRow.as_written(r).public() == json.loads(json.dumps(r))
    conv_only = {"kernel", "stride", "padding", "pads", "dilation", "groups", "padding_mode", "depthwise"}
    assert set(rows[0]) == _aliases(InventoryRow)
    assert set(rows[1]) == set(rows[2]) == _aliases(InventoryRow) - conv_only


def test_a_wrong_inventory_row_is_refused_naming_the_field():
    torch.manual_seed(0)
    row = inventory(nn.Sequential(nn.Conv2d(3, 4, 3)), (3, 8, 8))[0]
    for change, field in (({"type": "pool"}, "type"), ({"stride": "2"}, "stride"), ({"class": 1}, "class"),
                          ({"uneven_detail": {"top": 0}}, "uneven_detail.bottom")):
        with pytest.raises(ValidationError) as e:
            InventoryRow.as_written({**row, **change})
        assert _named(field, e.value), (change, e.value)


def _cached_records(root: Path) -> dict[str, dict]:
    cache = Cache(root)
    return {m: cache.get_model(m) for m in cache.list_models()}


def test_committed_cache_records_validate():
    """The cache the API-bodies test serves (written by the pipeline before these models existed) reads."""
    recs = _cached_records(BODIES_CACHE)
    assert recs
    for name, rec in recs.items():
        m = ModelRecord.as_written(rec)
        assert m.public() == rec and m.inventory and m.status in ("done", "partial"), name


def test_the_pipeline_writes_records_that_validate(tmp_path):
    """A real precompute (two analyses of the untrained ResNet-20): the record in the cache fits ModelRecord."""
    settings = Settings(data_dir=tmp_path, store_dir=tmp_path / "store", device="cpu")
    record = pipeline.precompute_model("resnet20-random", settings, analyses=["symmetry", "batchnorm"], device="cpu")
    cached = _cached_records(settings.cache)["resnet20-random"]
    m = ModelRecord.as_written(cached)
    assert m.status == "done" and set(m.analyses) == {"symmetry", "batchnorm"} and len(m.inventory) > 20
    assert m.public() == cached == json.loads(json.dumps(record))


def test_the_pipeline_refuses_a_row_that_does_not_fit(tmp_path, monkeypatch):
    real = pipeline.inventory
    monkeypatch.setattr(pipeline, "inventory", lambda *a, **k: [dict(r, params=str(r["params"])) for r in real(*a, **k)])
    settings = Settings(data_dir=tmp_path, store_dir=tmp_path / "store", device="cpu")
    with pytest.raises(ValidationError, match="params"):
        pipeline.precompute_model("resnet20-random", settings, analyses=["symmetry"], device="cpu")
    assert _cached_records(settings.cache) == {}  # nothing computed, nothing written


def test_a_wrong_model_record_is_refused_naming_the_field():
    rec = next(iter(_cached_records(BODIES_CACHE).values()))
    for change, field in (({"status": "finished"}, "status"), ({"weights_sha256": None}, "weights_sha256"),
                          ({"scalars": {"c": {"symmetry": "high"}}}, "scalars.c.symmetry")):
        with pytest.raises(ValidationError) as e:
            ModelRecord.as_written({**rec, **change})
        assert _named(field, e.value), (change, e.value)


# ---- job states ---------------------------------------------------------------------------------------
def test_job_states_validate(tmp_path, monkeypatch):
    settings = Settings(data_dir=tmp_path, store_dir=tmp_path / "store", device="cpu")
    monkeypatch.setattr("precompute.jobs._enqueue", lambda settings, jid: None)
    job = submit("precompute", {"model": "cifar10-cnn"}, settings)
    state = JobState.as_written(read_job(settings, job["id"]))
    assert state.state == "queued" and state.kind == "precompute" and state.history[0].event == "queued"
    with pytest.raises(ValidationError, match="state"):
        JobState.as_written({**job, "state": "paused"})
    with pytest.raises(ValidationError, match="kind"):
        JobState.as_written({**job, "kind": "paint"})
    with pytest.raises(ValidationError, match="progress"):
        JobState.as_written({**job, "progress": "half"})


# ---- the API documents these models -------------------------------------------------------------------
def _resolve(schema: dict, components: dict) -> dict:
    ref = schema.get("$ref")
    return components[ref.rsplit("/", 1)[-1]] if ref else schema


def _shape(schema):
    """A JSON schema without its "default" keys (FastAPI leaves out null defaults; the shape is the same)."""
    if isinstance(schema, dict):
        return {k: _shape(v) for k, v in schema.items() if k != "default"}
    return [_shape(v) for v in schema] if isinstance(schema, list) else schema


def test_openapi_documents_the_record_models(tmp_path):
    settings = Settings(data_dir=tmp_path, store_dir=tmp_path / "store", device="cpu")
    with TestClient(create_app(settings)) as c:
        doc = c.get("/openapi.json").json()
    comp = doc["components"]["schemas"]
    row = InventoryRow.model_json_schema(ref_template="#/components/schemas/{model}")
    row.pop("$defs", None)
    assert _shape(comp["InventoryRow"]) == _shape(row)
    assert comp["InventoryRow"]["properties"]["type"]["enum"] == ["conv", "linear", "batchnorm"]
    detail = comp["ModelDetail"]["properties"]
    for field in ModelRecord.model_fields:  # the record's fields, as the record's model describes them
        assert field in detail, field
    assert _resolve(detail["inventory"]["items"], comp) == comp["InventoryRow"]
    assert _resolve(comp["LayerContext"]["properties"]["row"], comp) == comp["InventoryRow"]
    job = comp["Job"]["properties"]
    for field in schemas.JOB_PUBLIC_FIELDS:
        want = JobState.model_json_schema()["properties"][field]
        assert _shape(job[field]) == _shape(want), field
    assert job["state"]["enum"] == ["queued", "running", "done", "failed"]
