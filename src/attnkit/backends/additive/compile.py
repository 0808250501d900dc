"""Compiling the tile kernels: when, in a background process, cached across processes, and what happens when
it fails (see :mod:`attnkit.backends.additive`).

The state below is this module's: patch it here (``additive.compile._loaded``), not on the package.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ...errors import AttentionError
from .config import _workers, config
from .kernels import _grads_fused, _scores_fused

log = logging.getLogger("attnkit.backends")

_building: dict[tuple, subprocess.Popen] = {}  # kernel key -> its build, running in the background
_loaded: dict[tuple, tuple[Callable, Callable]] = {}  # kernel key -> (scores, grads), loaded in this process
_calls: dict[tuple, int] = {}  # tile key -> calls seen, for compile_after
_compile_failed = False


def _compile_wanted(units: int, device: torch.device) -> bool:
    if config.compile not in ("auto", "always", "never"):
        raise AttentionError(f"additive config.compile must be 'auto', 'always' or 'never', got {config.compile!r}")
    if config.compile == "never" or _compile_failed or device.type != "cpu":
        return False
    if torch.compiler.is_compiling():  # inside the caller's own torch.compile: it compiles us
        return False
    return config.compile == "always" or units >= config.compile_min_work


def _compiled_kernels(key: tuple, kernel_key: tuple, new_call: bool) -> tuple[Callable, Callable] | None:
    """The compiled kernels of a tile shape if they are built (in this process, or by an earlier one);
    else None, having started their build in the background once the shape has been seen often enough
    ("auto"), or having waited for it ("always")."""
    global _compile_failed
    if kernel_key in _loaded:
        return _loaded[kernel_key]
    paths = _kernel_paths(kernel_key)
    if not all(path.exists() for path in paths):
        if config.compile == "auto":
            _calls[key] = _calls.get(key, 0) + new_call
        build = _building.get(kernel_key)
        if build is None:
            wanted = config.compile == "always" or _calls[key] >= config.compile_after
            if not wanted or len(_building) + len(_loaded) >= config.max_compiled_shapes:
                return None
            build = _building[kernel_key] = _start_build(kernel_key, paths)
        if config.compile == "always":
            build.wait()
        if build.poll() is None:
            return None
        del _building[kernel_key]
        if build.returncode != 0 or not all(path.exists() for path in paths):
            _compile_failed = True
            build.log.seek(0)
            err = build.log.read().strip().splitlines()[-3:]
            log.warning("additive_fused: compiling the tiles failed, they run eagerly from now on: %s", " ".join(err))
            return None
    try:
        _loaded[kernel_key] = _load_kernels(paths)
    except Exception as err:  # noqa: BLE001  a damaged or foreign package: eager is the same maths
        _compile_failed = True
        log.warning("additive_fused: loading the compiled tiles failed, they run eagerly from now on: %s", err)
        return None
    return _loaded[kernel_key]


def _cache_dir() -> Path:
    """Where compiled tile kernels are kept across processes: $ATTNKIT_CACHE, else ~/.cache/attnkit."""
    root = (
        os.environ.get("ATTNKIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attnkit"
    )
    return Path(root) / "additive" / f"torch-{torch.__version__}-{platform.machine()}"


def _kernel_paths(kernel_key: tuple) -> tuple[Path, Path]:
    name = "-".join(str(part).removeprefix("torch.") for part in kernel_key)
    return _cache_dir() / f"{name}.scores.pt2", _cache_dir() / f"{name}.grads.pt2"


def _start_build(kernel_key: tuple, paths: tuple[Path, Path]) -> subprocess.Popen:
    """AOTInductor-compile a tile shape's kernels in a separate, low-priority process (20 to 30 s of one
    core), so that no call waits for the compiler or shares its interpreter with it."""
    log.debug("additive_fused: compiling the tiles %s in the background", kernel_key)
    args = json.dumps([*kernel_key[:4], str(kernel_key[4]).removeprefix("torch."), kernel_key[5], *map(str, paths)])
    code = f"from attnkit.backends.additive.compile import _build; _build({args!r})"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    nice = (lambda: os.nice(10)) if hasattr(os, "nice") else None
    log_file = tempfile.TemporaryFile("w+")  # a file, not a pipe: the build never blocks on its warnings
    build = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        env=env,
        preexec_fn=nice,  # noqa: PLW1509  os.nice only: no lock is taken
    )
    build.log = log_file
    return build


def _build(args: str) -> None:
    """In the build process: export and compile both kernels for one thread (each worker runs them on its
    own), each written to a temporary file and renamed, so a killed build leaves no half package."""
    nb, ci, cj, hidden, dtype, factored, scores_path, grads_path = json.loads(args)
    torch.set_num_threads(1)
    dtype = getattr(torch, dtype)
    x, y = torch.rand(nb, ci, hidden, dtype=dtype), torch.rand(nb, cj, hidden, dtype=dtype)
    v, ds = torch.rand(nb, hidden, dtype=dtype), torch.rand(nb, ci, cj, dtype=dtype)

    class Scores(torch.nn.Module):
        def forward(self, x, y, v):
            return _scores_fused(x, y, v, factored)

    class Grads(torch.nn.Module):
        def forward(self, x, y, v, ds):
            return _grads_fused(x, y, v, ds, factored)

    for module, inputs, path in ((Scores(), (x, y, v), scores_path), (Grads(), (x, y, v, ds), grads_path)):
        program = torch.export.export(module, inputs)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        partial = f"{path.removesuffix('.pt2')}.{os.getpid()}.partial.pt2"  # aoti wants the suffix
        torch._inductor.aoti_compile_and_package(program, package_path=partial)
        os.replace(partial, path)


def _load_kernels(paths: tuple[Path, Path]) -> tuple[Callable, Callable]:
    """The built kernels, loaded straight into the C++ runtime (a few ms; no dynamo, no inductor import),
    with a runner per worker so that workers call them at once."""
    runners = max(2, _workers())
    scores, grads = (torch._C._aoti.AOTIModelPackageLoader(str(p), "model", False, runners, -1) for p in paths)

    def scores_call(x: Tensor, y: Tensor, v: Tensor, factored: bool) -> Tensor:
        return scores.run([x.contiguous(), y.contiguous(), v.contiguous()])[0]

    def grads_call(x: Tensor, y: Tensor, v: Tensor, ds: Tensor, factored: bool) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(grads.run([x.contiguous(), y.contiguous(), v.contiguous(), ds.contiguous()]))

    return scores_call, grads_call
