"""Test-only fault injection for subprocess runs (stages, replicas, torchrun).

Python imports ``sitecustomize`` at start-up from the first folder on ``sys.path`` that
has one; a test puts this folder first on ``PYTHONPATH`` (``runhelpers.kill_env``) so
that every process of the run loads it. With ``LOCALLEARN_TEST_KILL_RANK=R`` and
``LOCALLEARN_TEST_KILL_AFTER=N`` the process with ``RANK`` R kills itself (SIGKILL)
when it is about to take training batch N (counted over the run, from 0). A process
that torchrun restarted is spared, so the fault fires once. Nothing here is in the
library: its loops know nothing of tests.
"""

import os


def _install(after: int) -> None:
    from locallearn.training.spec import RunSpec

    build = RunSpec.build
    taken = [0]

    def killing_loader(loader):
        def wrapped(split, *args, **kwargs):
            batches = loader(split, *args, **kwargs)
            return batches if split != "train" else counted(batches)
        return wrapped

    def counted(batches):
        for batch in batches:
            if taken[0] == after:
                os.kill(os.getpid(), 9)
            taken[0] += 1
            yield batch

    def build_then_arm(self, *args, **kwargs):
        dataset, network, rule = build(self, *args, **kwargs)
        dataset.loader = killing_loader(dataset.loader)
        return dataset, network, rule

    RunSpec.build = build_then_arm


if (os.environ.get("LOCALLEARN_TEST_KILL_RANK") is not None
        and os.environ.get("RANK") == os.environ["LOCALLEARN_TEST_KILL_RANK"]
        and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
    _install(int(os.environ["LOCALLEARN_TEST_KILL_AFTER"]))
