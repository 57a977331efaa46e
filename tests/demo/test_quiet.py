"""hpmodel.kernel.quiet: the listed chatter is dropped inside the block only, everything
else still reaches the user, and torchao's import is silent through :func:`quiet_imports`."""

import importlib.util
import logging
import subprocess
import sys
import warnings

import pytest

from conftest import hpmodel_env
from hpmodel.kernel.quiet import LogNoise, WarningNoise, quiet_single_process_dcp, quieted


def test_listed_warning_is_dropped_inside_the_block_and_others_pass():
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quieted(warns=[WarningNoise(r"chatter \d+", UserWarning)]):
            warnings.warn("chatter 42", UserWarning)
            warnings.warn("a real problem", UserWarning)
        warnings.warn("chatter 43", UserWarning)
    assert [str(w.message) for w in seen] == ["a real problem", "chatter 43"]
    assert warnings.filters == before


def test_dcp_single_process_notice_is_dropped():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_single_process_dcp():
            warnings.warn("torch.distributed is disabled, unavailable or uninitialized, assuming the "
                          "intent is to save in a single process.", UserWarning)
    assert seen == []


def test_listed_log_record_is_dropped_on_its_logger_only_and_the_filter_is_removed(caplog):
    noisy = logging.getLogger("hpmodel_test.noisy")
    with caplog.at_level(logging.WARNING):
        with quieted(logs=[LogNoise("hpmodel_test.noisy", r"Failed to load .*_C_mxfp8")]):
            noisy.warning("Failed to load /x/_C_mxfp8.so: no such file")
            noisy.warning("disk full")
            logging.getLogger("hpmodel_test.other").warning("Failed to load /x/_C_mxfp8.so")
        noisy.warning("Failed to load /y/_C_mxfp8.so")
    assert [r.getMessage() for r in caplog.records] == [
        "disk full", "Failed to load /x/_C_mxfp8.so", "Failed to load /y/_C_mxfp8.so"]
    assert noisy.filters == []


def test_filters_are_removed_when_the_block_raises():
    noisy = logging.getLogger("hpmodel_test.raises")
    with pytest.raises(RuntimeError):
        with quieted(logs=[LogNoise("hpmodel_test.raises", "x")]):
            raise RuntimeError("boom")
    assert noisy.filters == []


IMPORT_TORCHAO = "from torchao.quantization.qat import QATConfig"


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed")
def test_torchao_import_is_silent_through_quiet_imports():
    quiet = subprocess.run([sys.executable, "-c", "from hpmodel.kernel.quiet import quiet_imports\n"
                            f"with quiet_imports():\n    {IMPORT_TORCHAO}"],
                           capture_output=True, text=True, env=hpmodel_env(), timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stderr == "" and quiet.stdout == ""
