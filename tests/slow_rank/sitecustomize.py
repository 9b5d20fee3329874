"""Test-only start-up hook, put on a launch's PYTHONPATH by tests/test_distributed_train.py: the rank named by
MEGAMYTHOS_TEST_SLOW_RANK sleeps MEGAMYTHOS_TEST_SLOW_SECONDS before each forward of the model, as a rank on a
slow host would compute longer; the other processes (the launcher, the other ranks) are left alone."""
import os

if "RANK" in os.environ and os.environ["RANK"] == os.environ.get("MEGAMYTHOS_TEST_SLOW_RANK"):
    import time

    from megamythos.model.lm import MythosLM

    _forward = MythosLM.forward
    _seconds = float(os.environ["MEGAMYTHOS_TEST_SLOW_SECONDS"])

    def _slow_forward(self, *args, **kwargs):
        time.sleep(_seconds)
        return _forward(self, *args, **kwargs)

    MythosLM.forward = _slow_forward
