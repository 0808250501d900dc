"""The benchmark harness: its memory probe and its tables (no timing is asserted)."""

import json

import pytest
import torch

from attnkit import bench
from attnkit.bench import Row, Timing, markdown
from attnkit.bench.cases import CASES, QUICK_RUNS, RUNS, Case
from attnkit.bench.measure import peak_bytes_here, steady

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


def test_steady_state_and_the_steps_to_reach_it():
    t = steady([2.0, 0.5, 0.3, 0.105, 0.1, 0.1, 0.1, 0.11])
    assert t.first_s == 2.0 and t.steady_s == pytest.approx(0.1) and t.steps == 8
    assert t.steps_to_steady == 4  # 0.105 is within 10% of the median 0.1
    assert t.to_steady_s == pytest.approx(2.905)
    flat = steady([0.2])
    assert (flat.first_s, flat.steady_s, flat.steps_to_steady, flat.to_steady_s) == (0.2, 0.2, 1, 0.2)


def test_cold_table_gives_first_to_steady_and_contended_ratios():
    def timings(scale):
        return {
            "quiet fwd+bwd": Timing(1.0 * scale, 0.1 * scale, 2, 1.1 * scale, 5),
            "contended fwd+bwd": Timing(2.0 * scale, 0.4 * scale, None, None, 5),
        }

    rows = [
        Row("additive", {"B": 8}, "attnkit", 0.1, 0.1, None, None, timings=timings(1)),
        Row("additive", {"B": 8}, "textbook", 0.2, 0.2, None, None, timings=timings(3)),
    ]
    table = markdown(rows, "## header")
    assert "| textbook | quiet | fwd+bwd | 3000.0 | 2 of 5 | 3300.0 | 300.0 | 3.00x / 3.00x / 3.00x | - |" in table
    assert "| attnkit | contended | fwd+bwd | 2000.0 | - | - | 400.0 | 1.00x / - / 1.00x | 4.00x |" in table


def _toy(n=4):
    def factory():
        (x,) = [torch.randn(n, n, requires_grad=True)]
        return lambda backward: (x @ x).sum().backward() if backward else x @ x

    return Case("toy", {"n": n}, {"attnkit": factory, "textbook": factory})


def test_run_reports_cold_steady_quiet_and_contended_for_every_contender(monkeypatch, tmp_path):
    """A toy case through the whole harness, one light competing process: every contender gets both
    passes in both modes, and the report and JSON carry them (no timing asserted)."""
    monkeypatch.setitem(bench.CASES, "toy", _toy)
    monkeypatch.setitem(bench.QUICK_RUNS, "toy", [{"n": 4}])
    monkeypatch.setattr(bench, "CONTENTION", {"processes": 1, "threads": 1})
    rows = bench.run(only=["toy"], quick=True, out=tmp_path, memory=False, budget_s=0.01, log=lambda *a: None)
    assert [r.contender for r in rows] == ["attnkit", "textbook"]
    for r in rows:
        assert set(r.timings) == {"quiet fwd", "quiet fwd+bwd", "contended fwd", "contended fwd+bwd"}
        assert all(t.steps >= 4 and 1 <= t.steps_to_steady <= t.steps for t in r.timings.values())
        assert r.train_s == r.timings["quiet fwd+bwd"].steady_s
    report = (tmp_path / "bench.md").read_text()
    assert "contended: 1 competing processes x 1 threads of matmul" in report
    assert "| textbook | contended | fwd+bwd |" in report
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["rows"][1]["timings"]["contended fwd"]["steps"] >= 4


def test_run_quiet_only_starts_no_load(monkeypatch, tmp_path):
    monkeypatch.setitem(bench.CASES, "toy", _toy)
    monkeypatch.setitem(bench.QUICK_RUNS, "toy", [{"n": 4}])

    def no_load(**kwargs):
        raise AssertionError("a competing load was started")

    monkeypatch.setattr(bench, "competing", no_load)
    rows = bench.run(only=["toy"], quick=True, memory=False, budget_s=0.01, log=lambda *a: None, modes=("quiet",))
    assert all(set(r.timings) == {"quiet fwd", "quiet fwd+bwd"} for r in rows)
