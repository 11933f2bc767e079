"""The training run of a cached model record: a trained variant's run record (its spec's ``extra``), parsed
once by its typed model, :class:`~precompute.declarations.records.TrainingRun`, for every view that shows
it (model summaries, findings' twins, the front door's groups, the experiment pages). No HTTP here and no
torch.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

from pydantic import ValidationError

from precompute.declarations.records import TrainingRun, training_run

log = logging.getLogger(__name__)

#: models whose record's run did not parse, already logged (a page over the whole cache asks for every model)
_warned: set[str] = set()
_warned_lock = threading.Lock()


def run_of(rec: dict) -> Optional[TrainingRun]:
    """The TrainingRun of a model record (family ``variant``); None for every other model, and for a variant
    whose run record does not fit the model: it is then shown as a model without a run (not an experiment
    variant), and the server's log names the model and the field once."""
    try:
        return training_run(rec.get("spec") or {})
    except ValidationError as e:
        name = str(rec.get("name"))
        with _warned_lock:
            first = name not in _warned
            _warned.add(name)
        if first:
            log.warning("model %s: its run record (spec.extra) does not fit TrainingRun, shown without it; "
                        "precompute it again after fixing the record: %s", name, e)
        return None
