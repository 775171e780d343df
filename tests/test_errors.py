"""Only the project's own errors (xray_loss.errors.UserError) print as one sentence; anything
else is a bug and keeps its traceback, in the record's status as on the console."""

from __future__ import annotations

import pytest
from hydra.errors import CompactHydraException

from xray_loss.data.splits import DataError
from xray_loss.errors import UserError
from xray_loss.runtime.record import RunFailed, read_record, recorded_run


def test_a_plain_value_error_is_a_bug_and_keeps_its_traceback(tmp_path):
    with pytest.raises(ValueError, match="a bug") as raised, recorded_run(tmp_path, False):
        raise ValueError("a bug")
    assert not isinstance(raised.value, (RunFailed, CompactHydraException))
    record = read_record(tmp_path)
    assert record["status"] == "failed" and record["error"] == "ValueError: a bug"


def test_a_data_error_is_one_sentence(tmp_path):
    with pytest.raises(DataError) as raised, recorded_run(tmp_path, False):
        raise DataError("data.root=/nowhere does not exist")
    assert isinstance(raised.value, CompactHydraException)  # Hydra prints its message alone
    assert read_record(tmp_path)["status"] == "failed"


def test_the_projects_errors_share_one_base():
    from xray_loss.config import ConfigError
    from xray_loss.inference import CheckpointError
    from xray_loss.report.records import PredictionsError
    from xray_loss.report.stats import StatsError
    from xray_loss.threshold import RuleError

    for error in (ConfigError, CheckpointError, DataError, PredictionsError, StatsError, RuleError):
        assert issubclass(error, UserError), error
