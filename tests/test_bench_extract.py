"""The extraction benchmark: its worker, result files and target checks (tiny sizes, not timed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zippy_eval.bench_extract import BenchConfig, run, target_checks


def _row(method: str, h: int, total: float, network: float | None = None, match: float = 1.0) -> dict:
    return {
        "method": method, "height": h, "width": h * 4 // 3, "threads": 1, "network_ms": network,
        "post_ms": None if network is None else 1.0, "total_ms": total, "match_ms": match,
        "total_plus_match_ms": total + match,
    }  # fmt: skip


def test_target_checks_compare_the_right_cells() -> None:
    rows = [
        _row("zippypoint-fp32", 480, 500.0, network=490.0),
        _row("zippypoint-int8", 480, 90.0, network=80.0),
        _row("sift", 480, 100.0),
        _row("akaze", 480, 60.0),
        _row("zippypoint-int8", 240, 18.0, network=12.0, match=1.5),
    ]
    checks = target_checks(rows)
    assert checks["int8_speedup_network_480x640"] == pytest.approx(490 / 80)
    assert checks["int8_speedup_target_5x_met"] is True
    assert checks["int8_faster_than_sift"] is True and checks["int8_faster_than_akaze"] is False
    assert checks["int8_240x320_extract_plus_match_ms"] == pytest.approx(19.5)
    assert checks["int8_240x320_under_20ms"] is True
    assert "int8_faster_than_sift" not in target_checks(rows[:2])  # missing cell: no verdict
    assert not any(k.startswith("small_") for k in checks)  # no narrow variant in this run
    small = "zippypoint_small-int8"
    rows += [_row(small, 480, 55.0, network=50.0), _row(small, 240, 19.0, match=1.5)]
    rows.append(_row("zippypoint_small-fp32", 480, 240.0, network=230.0))
    checks = target_checks(rows)
    assert checks["small_int8_speedup_network_480x640"] == pytest.approx(230 / 50)
    assert checks["small_int8_speedup_target_5x_met"] is False
    assert checks["small_int8_faster_than_akaze"] is True and checks["int8_faster_than_akaze"] is False
    assert checks["small_int8_240x320_under_20ms"] is False and checks["int8_240x320_under_20ms"] is True


def test_small_run_writes_json_table_and_plot(shared_data: Path, tmp_path: Path) -> None:
    frames = shared_data / "localization" / "tum_freiburg_sequence"
    split = "zippypoint-int8-split"
    cfg = BenchConfig(
        methods=("orb_teblid", "zippypoint_small-int8-x1.41+1", "zippypoint-fq", split), sizes=((64, 96),),
        threads=(1,), frames=str(frames), n_frames=2, repeats=1, max_keypoints=50, timeout_s=300,
    )  # fmt: skip
    summary = run(cfg, tmp_path / "bench")
    data = json.loads(summary.read_text())
    rows = {r["method"]: r for r in data["rows"]}
    pyramid = "zippypoint_small-int8-x1.41+1"
    assert set(rows) == {"orb_teblid", pyramid, "zippypoint-fq", split}
    assert rows[pyramid]["network_ms"] > 0 and rows["orb_teblid"]["network_ms"] is None
    assert data["methods"][pyramid]["scales"] == [1.41, 1.0]
    assert all(r["total_ms"] > 0 and r["peak_rss_mb"] > 0 and r["threads"] == 1 for r in rows.values())
    # the int8 path and its agreement with the trained network (fake quantization), the CPU it ran on
    assert rows[split]["engine_path"] == "int8-split" and rows[split]["kp_agree"] >= 0.99
    assert rows["zippypoint-fq"]["kp_agree"] == 1.0 and rows["orb_teblid"]["kp_agree"] is None
    assert set(data["cpu"]["flags"]) >= {"avx2", "avx512_vnni", "amx_int8"} and data["int8_kernel_check"]
    table = (tmp_path / "bench" / "summary.md").read_text()
    assert table.count(pyramid) >= 1 and "CPU: " in table and "int8-split" in table
    assert (tmp_path / "bench" / "times.png").stat().st_size > 0
