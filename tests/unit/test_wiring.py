"""The process-wide setup keeps library log lines free of patient data."""

from __future__ import annotations

import logging
import warnings

import pydicom
import pytest
from pydicom.data import get_testdata_file

from shared_code.wiring import quiet_libraries


def test_pydicom_does_not_log_or_warn_an_invalid_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dataset = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("default")
        quiet_libraries()
        # pydicom validates what is written and quotes the bad value when it warns
        dataset.PatientBirthDate = "12/03/1975"
        dataset.OtherPatientIDs = "TEST0001\\" + "9" * 70

    assert "12/03/1975" not in caplog.text
    assert "TEST0001" not in caplog.text
    assert [str(w.message) for w in caught] == []
