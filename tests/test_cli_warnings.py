"""The CLI quiets the known library deprecation notices in its output, and only those."""

from __future__ import annotations

import logging
import warnings

from jetspec_compile import cli


def test_known_library_warnings_are_ignored_others_show():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli._quiet_known_library_warnings()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`",
                      FutureWarning)
        warnings.warn("`torch._prims_common.check` is deprecated and will be removed in the future.", FutureWarning)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", UserWarning)  # another category shows
        warnings.warn("some other deprecation", FutureWarning)
    assert [(w.category, str(w.message)) for w in caught] == [
        (UserWarning, "`isinstance(treespec, LeafSpec)` is deprecated"), (FutureWarning, "some other deprecation")]


def test_torchvision_log_lines_of_the_onnx_exporter_are_dropped(caplog):
    cli._quiet_known_library_warnings()
    cli._quiet_known_library_warnings()  # idempotent: one filter
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    assert sum(isinstance(f, cli._DropMessages) for f in log.filters) == 1
    with caplog.at_level(logging.WARNING, logger=log.name):
        log.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
        log.warning("another %s", "line")
    assert [r.getMessage() for r in caplog.records] == ["another line"]
