"""Reading a checkpoint while another process replaces it gives the old one or the new one, whole.

safetensors' ``safe_open`` maps the path a second time for the tensors, so a reader racing a
writer's ``os.replace`` could pair one file's header (and checksum) with the next file's tensors;
the checksum caught it as corruption (seen in CI, in the killed-run test's polling loop)."""

import subprocess
import sys

import torch

from attnkit.train import checkpoint

WRITER = """
import sys, torch
from attnkit.train import checkpoint
print("ready", flush=True)
i = 0
while True:
    i += 1
    checkpoint.save(sys.argv[1], {"x": torch.full((200_000,), float(i)), "y": torch.full((3,), float(i))}, {"n": i})
"""


def test_loading_while_another_process_replaces_the_file(tmp_path):
    path = tmp_path / "last.safetensors"
    checkpoint.save(path, {"x": torch.zeros(200_000), "y": torch.zeros(3)}, {"n": 0})
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        writer.stdout.readline()
        seen = set()
        for _ in range(400):  # before the fix, about 1 load in 100 failed its checksum
            tensors, meta = checkpoint.load(path)
            n = meta["n"]
            assert tensors["x"].eq(float(n)).all() and tensors["y"].eq(float(n)).all()
            assert checkpoint.read_meta(path)["n"] >= n
            seen.add(n)
    finally:
        writer.kill()
        writer.wait()
    assert len(seen) > 1  # the writer did replace the file while we read
