"""In every Python subprocess a test starts (conftest.py puts this folder on PYTHONPATH):
- the tests' recording network guard, when XRAY_NETGUARD_LOG names its log;
- a failure injected on purpose, when XRAY_TEST_FAIL_TASK names a task: its training raises (the
  backfill test uses it to show that one failed task leaves the others materialised)."""

import os
import sys

if os.environ.get("XRAY_NETGUARD_LOG"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        import netguard

        netguard.install()
    finally:
        sys.path.pop(0)

if os.environ.get("XRAY_TEST_FAIL_TASK"):
    import xray_assets.train as _train

    _real_train = _train.train

    def _failing_train(request, *args, **kwargs):
        if request.task == os.environ.get("XRAY_TEST_FAIL_TASK"):
            raise RuntimeError(f"failure injected by the tests for {request.task}")
        return _real_train(request, *args, **kwargs)

    _train.train = _failing_train
