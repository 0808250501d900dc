"""The benchmark harness: its memory probe and its tables (no timing is asserted)."""

import json

import pytest
import torch

from attnkit.bench import Row, markdown
from attnkit.bench.cases import CASES, QUICK_RUNS, RUNS
from attnkit.bench.measure import peak_bytes_here

MB = 2**20


def test_peak_memory_probe_sees_a_step_of_known_size():
    def step(backward):  # 64 MB alive at once, then freed
        x = torch.ones(16 * MB // 4 * 4, dtype=torch.float32)
        x += 1

    peak = peak_bytes_here(step, False)
    assert 60 * MB <= peak <= 80 * MB, peak / MB


def test_tables_give_ratios_against_attnkit():
    rows = [
        Row("additive", {"B": 8}, "attnkit", 0.010, 0.030, 100 * MB, 200 * MB),
        Row("additive", {"B": 8}, "textbook", 0.050, 0.240, 2000 * MB, 4000 * MB),
        Row("additive", {"B": 8}, "keras", None, None, None, None, "not installed: pip install 'attnkit[bench]'"),
    ]
    table = markdown(rows, "## header")
    assert "| textbook | 50.0 | 240.0 | 5.00x | 8.00x | 2000 | 4000 | 20.00x |  |" in table
    assert "| keras | - | - | - | - | - | - | - | not installed: pip install 'attnkit[bench]' |" in table


@pytest.mark.parametrize("name", list(CASES))
def test_smoke_every_case_builds_its_full_and_quick_runs_with_attnkit_first(name):
    for runs in (RUNS, QUICK_RUNS):
        for sizes in runs[name]:
            case = CASES[name](**sizes)
            assert next(iter(case.contenders)) == "attnkit"
            assert json.dumps(case.sizes)  # printable
