"""A checkpoint's state is read from where it is kept, not through Ray's shared folder.

Ray's ``Checkpoint.as_directory`` downloads into one folder per checkpoint and host under a
file lock: a worker that found the lock taken waited, then failed where the folder was
gone (removed by the other reader once it had read it). Two workers of one host resuming
together from one checkpoint failed the restart it was kept for (a DDP job, a lost node).
Here another reader holds Ray's lock, and the folder is gone when it lets go: the load in
another process must not wait on that lock, nor fail.
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs
import pytest

# The checkpoint as Ray Train hands it to every worker: one object, pickled (one folder).
READ = """
import pickle, sys
from training.checkpoints import load_state
with open(sys.argv[1], "rb") as handle:
    checkpoint = pickle.load(handle)
print("epoch", load_state(checkpoint)["epoch"], flush=True)
"""


def test_a_remote_checkpoint_loads_while_another_reader_holds_ray_s_shared_folder(
        tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from ray.air._internal.filelock import TempFileLock
    from ray.train import Checkpoint

    from training.checkpoints import STATE_FILE

    (tmp_path / "kept").mkdir()
    torch.save({"epoch": 7}, tmp_path / "kept" / STATE_FILE)
    remote = pyarrow.fs.SubTreeFileSystem(str(tmp_path), pyarrow.fs.LocalFileSystem())
    checkpoint = Checkpoint("kept", filesystem=remote)
    handed = tmp_path / "checkpoint.pickle"
    handed.write_bytes(pickle.dumps(checkpoint))
    shared = checkpoint._get_temporary_checkpoint_dir()
    with TempFileLock(shared, timeout=0):
        reader = subprocess.Popen([sys.executable, "-c", READ, str(handed)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=Path(__file__).resolve().parents[3])
        deadline = time.monotonic() + 60
        while reader.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        waited = reader.poll() is None
        shutil.rmtree(shared, ignore_errors=True)  # the other reader is done with it
    out, err = reader.communicate(timeout=120)
    assert not waited, "the load waited on Ray's shared folder's lock"
    assert reader.returncode == 0, err[-3000:]
    assert "epoch 7" in out
