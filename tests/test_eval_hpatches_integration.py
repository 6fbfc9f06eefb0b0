"""End to end: generated HPatches-like sequences -> ORB and zippy -> summary.json, table.md, plot, cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from zippy_eval.hpatches.generate import GeneratorConfig, generate_sequences
from zippy_eval.hpatches.pipeline import HPatchesConfig, Setting, run

pytest.importorskip("zippy.matching", reason="zippy.matching (the Hamming / L2 matcher) is not there yet")

SETTING = Setting(240, 320, 300)


def textured_photo(path: Path, seed: int) -> Path:
    """Random shapes on a gradient, lightly blurred: a photo-like image with many corners (320x240)."""
    rng = np.random.default_rng(seed)
    h, w = 240, 320
    img = np.dstack([np.tile(np.linspace(60, 200, w), (h, 1))] * 3).astype(np.uint8)
    for _ in range(120):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x0, y0), (x0 + int(rng.integers(5, 40)), y0 + int(rng.integers(5, 40))), color, -1)
        else:
            cv2.circle(img, (x0, y0), int(rng.integers(3, 20)), color, -1)
    assert cv2.imwrite(str(path), cv2.GaussianBlur(img, (0, 0), 0.8))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("photos")
    photos = [textured_photo(src / f"photo{i}.png", i) for i in range(2)]
    out = tmp_path_factory.mktemp("hpatches_like")
    generate_sequences(photos, out, GeneratorConfig(n=2, seed=0, num_images=3))
    broken = out / "v_broken"
    shutil.copytree(out / sorted(p.name for p in out.iterdir() if p.name.startswith("v_"))[0], broken)
    (broken / "H_1_3").unlink()
    return out


def zippy_methods() -> tuple[str, ...]:
    import zippy

    try:
        return ("zippypoint",) if "zippypoint" in zippy.available_models() else ()
    except ImportError:
        return ()


def test_orb_and_zippy_end_to_end(dataset, tmp_path):
    methods = ("orb", *zippy_methods(), "aliked")
    conf = HPatchesConfig(
        methods=methods, settings=(SETTING,), weights={"aliked": str(tmp_path / "absent.pth")}, threads=1
    )
    out = tmp_path / "results"
    summary_path = run(conf, dataset, out)
    summary = json.loads(summary_path.read_text())

    # protocol, provenance, skips are all in the file
    assert summary["protocol"]["homography"]["ransac_threshold_px"] == 3.0
    assert summary["protocol"]["settings"][0]["tag"] == SETTING.tag
    assert "aliked" in summary["skipped_methods"] and "absent.pth" in summary["skipped_methods"]["aliked"]
    dtag = dataset.name
    assert summary["dataset"][dtag]["skipped"] == {"v_broken": "missing H_1_3"}
    assert summary["environment"]["versions"]["opencv"] == cv2.__version__
    evaluated = [m for m in methods if m != "aliked"]
    assert sorted(summary["methods"]) == sorted(evaluated)

    # 2 sequences x 2 pairs per method
    assert len(summary["rows"]) == 4 * len(evaluated)
    agg = summary["aggregates"][dtag][SETTING.tag]
    orb = agg["orb"]["all"]
    assert orb["num_pairs"] == 4 and agg["orb"]["i"]["num_pairs"] == 2 and agg["orb"]["v"]["num_pairs"] == 2
    # easy synthetic pairs: ORB must do well (thresholds well below what it reaches)
    assert orb["repeatability"] > 0.4 and orb["mma@3"] > 0.5 and orb["h_acc@5"] >= 0.5
    assert len(orb["mma"]) == 10 and orb["mma"][0] <= orb["mma"][-1]
    for m in evaluated:
        a = agg[m]["all"]
        assert 0.0 <= a["repeatability"] <= 1.0 and 0.0 <= a["matching_score"] <= 1.0
        assert summary["timings_ms_per_image"][dtag][SETTING.tag][m] > 0
        # the wrong-match causes add up to the wrong matches of all pairs
        rows = [r for r in summary["rows"] if r["method"] == m]
        wrong = 1 - sum(r["n_correct@3"] for r in rows) / sum(r["n_matches"] for r in rows)
        causes = a["wrong_out_of_view"] + a["wrong_no_partner"] + a["wrong_partner_elsewhere"]
        assert causes == pytest.approx(wrong) and 0.0 <= a["wrong_far"] <= wrong
    if "zippypoint" in evaluated:
        assert "trained" in summary["methods"]["zippypoint"]["params"]

    table = (out / "table.md").read_text()
    assert "| orb |" in table and SETTING.tag in table and "v_broken" in table
    assert "wrong mutual matches at 3 px by cause" in table
    # per pair: the same numbers as the rows of that pair, in image order
    for g in ("i", "v"):
        by_pair = agg["orb"][g]["by_pair"]
        assert list(by_pair) == ["1-2", "1-3"]
        sel = [r for r in summary["rows"] if r["method"] == "orb" and r["kind"] == g and r["pair"] == "1-3"]
        assert by_pair["1-3"]["num_pairs"] == len(sel) == 1
        assert by_pair["1-3"]["mma@3"] == pytest.approx(sel[0]["mma"][2])
        assert by_pair["1-3"]["h_acc@3"] == float(sel[0]["h_acc@3"])
    assert "H@3 / MMA@3 by pair" in table and "| method | i 1-2 | i 1-3 | v 1-2 | v 1-3 |" in table
    # v_ by motion: every v_ pair in exactly one rotation bin and one scale bin
    v_rows = [r for r in summary["rows"] if r["method"] == "orb" and r["kind"] == "v"]
    by_motion = agg["orb"]["v"]["by_motion"]
    for prefix in ("rotation", "scale"):
        assert sum(c["num_pairs"] for k, c in by_motion.items() if k.startswith(prefix)) == len(v_rows)
    assert all(r["rotation_deg"] >= 0 and r["scale_change"] >= 1 for r in summary["rows"])
    assert "by the rotation and the scale change" in table
    assert (out / f"mma_{dtag}.png").stat().st_size > 1000

    # rerun: every feature comes from the cache (files untouched), same numbers
    npz = sorted((out / "cache").rglob("*.npz"))
    assert len(npz) == 6 * len(evaluated)
    mtimes = [p.stat().st_mtime_ns for p in npz]
    again = json.loads(run(conf, dataset, out).read_text())
    assert [p.stat().st_mtime_ns for p in npz] == mtimes
    assert again["aggregates"] == summary["aggregates"]
    # --overwrite recomputes
    run(HPatchesConfig(methods=("orb",), settings=(SETTING,), overwrite=True), dataset, out)
    orb_files = [p for p in npz if "orb" in p.parts[len(out.parts) + 1]]
    assert all(p.stat().st_mtime_ns != t for p, t in zip(npz, mtimes) if p in orb_files)


def test_binarization_gap(dataset, tmp_path):
    """The float / k-ones variants of one network; its own k gives the numbers of the HPatches run."""
    from binarization_gap import descriptor_variant
    from binarization_gap import run as gap_run

    import zippy
    from zippy.config import ExtractorConfig

    if "zippypoint" not in zippy_methods():
        pytest.skip("zippypoint is not available")
    # the raw samples give back the shipped descriptors with the network's own k
    ext = zippy.load("zippypoint")
    image = cv2.imread(str(sorted(dataset.glob("i_*/1.*"))[0]))[:, :, ::-1]
    final = ext.extract(image, 200)
    ext.raw_descriptors = True
    raw = ext.extract(image, 200)
    assert raw.descriptors.dtype == np.float32 and raw.descriptors.shape == (len(final), 256)
    assert np.array_equal(descriptor_variant(raw, "k64").descriptors, final.descriptors)
    assert np.unpackbits(descriptor_variant(raw, "k96").descriptors, axis=1).sum(1).tolist() == [96] * len(final)
    assert np.allclose(np.linalg.norm(descriptor_variant(raw, "float").descriptors, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="'float' or 'k<ones>'"):
        descriptor_variant(raw, "k")
    with pytest.raises(ValueError, match="raw float32 descriptors expected"):
        descriptor_variant(final, "k64")

    summary = json.loads(
        gap_run(
            dataset, ExtractorConfig(weights=ext.weights_path), tmp_path / "gap", setting="240x320:300", ones=(64, 128)
        ).read_text()
    )
    gap = summary["aggregates"]
    assert list(gap) == ["float", "k64", "k128"] and summary["protocol"]["network_ones"] == 64
    ref = json.loads(
        run(HPatchesConfig(methods=("zippypoint",), settings=(SETTING,)), dataset, tmp_path / "ref").read_text()
    )
    own = ref["aggregates"][dataset.name][SETTING.tag]["zippypoint"]
    for group in ("all", "i", "v"):
        for key in ("h_acc@3", "mma", "n_matches", "repeatability"):
            assert gap["k64"][group][key] == pytest.approx(own[group][key]), (group, key)
    assert gap["float"]["all"]["n_matches"] > 0 and gap["k128"]["all"]["mma"] != gap["k64"]["all"]["mma"]
    assert "| k64 (the network's own) |" in (tmp_path / "gap" / "table.md").read_text()
    pyramid = gap_run(
        dataset,
        ExtractorConfig(weights=ext.weights_path, scales=(1.41, 1.0)),
        tmp_path / "gap2",
        setting="240x320:300",
        ones=(64,),
    )
    assert json.loads(pyramid.read_text())["protocol"]["scales"] == [1.41, 1.0]  # the extraction really used
    with pytest.raises(ValueError, match="each in \\(0, 256\\)"):
        gap_run(dataset, ExtractorConfig(weights=ext.weights_path), tmp_path / "bad", setting="240x320:300", ones=(0,))
    with pytest.raises(ValueError, match="distinct"):
        gap_run(
            dataset, ExtractorConfig(weights=ext.weights_path), tmp_path / "bad", setting="240x320:300", ones=(64, 64)
        )
    with pytest.raises(ValueError, match="float-descriptor network"):
        gap_run(dataset, ExtractorConfig("kp2d"), tmp_path / "bad", setting="240x320:300")


def cli(module_name: str, argv: list[str]) -> int:
    """Run one command module the way apps/cli.py does (parser from add_arguments, then run)."""
    import argparse
    import importlib

    module = importlib.import_module(f"zippy_apps.{module_name}")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def test_cli_eval_hpatches(dataset, tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        cli("cmd_eval_hpatches", [str(dataset), "--methods", "orb", "--settings", "240x320:300", "--out", str(out)])
        == 0
    )
    assert "| orb |" in capsys.readouterr().out
    assert (out / "summary.json").is_file()
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        cli("cmd_eval_hpatches", [str(dataset), "--methods", "nope", "--out", str(out)])
    with pytest.raises(ValueError, match="HEIGHTxWIDTH:TOPK"):
        cli("cmd_eval_hpatches", [str(dataset), "--settings", "240:300", "--out", str(out)])
    with pytest.raises(ValueError, match="METHOD=PATH"):
        cli("cmd_eval_hpatches", [str(dataset), "--weights", "x.pth", "--out", str(out)])
    with pytest.raises(SystemExit):  # argparse: "expected comma-separated numbers such as 1.41,1"
        cli("cmd_eval_hpatches", [str(dataset), "--scales", "big", "--out", str(out)])
    assert "expected comma-separated numbers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli("cmd_eval_hpatches", [str(dataset), "--shifts", "4", "--out", str(out)])
    assert "expected comma-separated DX:DY integer pairs" in capsys.readouterr().err


def test_shifts_option_parses_pairs() -> None:
    import argparse

    from zippy.config import parse_shifts
    from zippy_apps import cmd_eval_hpatches

    parser = argparse.ArgumentParser()
    cmd_eval_hpatches.add_arguments(parser)
    assert parser.parse_args(["ds"]).shifts == ((0, 0),)
    assert parser.parse_args(["ds", "--shifts", "0:0, 4:4"]).shifts == ((0, 0), (4, 4))
    for bad in ("", "4", "a:b", "1:2:3", "0.5:0"):
        with pytest.raises(argparse.ArgumentTypeError, match="DX:DY"):
            parse_shifts(bad)


def test_cli_make_hpatches_like(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    textured_photo(src / "a_1.png", 0)
    textured_photo(src / "b_1.png", 1)
    argv = [str(src), str(tmp_path / "out"), "--n", "2", "--num-images", "2", "--glob", "a_*"]
    assert cli("cmd_make_hpatches_like", argv) == 0
    assert "2 sequences (1 v_, 1 i_)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["generation.json", "i_a_1_r1", "v_a_1"]
    with pytest.raises(ValueError, match="no photos"):
        cli("cmd_make_hpatches_like", [str(src), str(tmp_path / "o2"), "--glob", "zzz*"])


def test_result_helpers(tmp_path):
    from zippy_eval.results import markdown_table, to_jsonable, write_json

    doc = {"a": np.float32(0.5), "b": float("inf"), "c": np.arange(3), "d": (np.int64(2), None), "e": tmp_path}
    assert to_jsonable(doc) == {"a": 0.5, "b": None, "c": [0, 1, 2], "d": [2, None], "e": str(tmp_path)}
    path = write_json(tmp_path / "x" / "s.json", {"nan": float("nan")})
    assert json.loads(path.read_text()) == {"nan": None}
    assert not list((tmp_path / "x").glob("*.tmp"))
    table = markdown_table(["m", "v", "n"], [["orb", 0.51234, 7], ["x", None, float("inf")]], [".3f", ".2f", ".0f"])
    assert table.splitlines() == ["| m | v | n |", "|---|---|---|", "| orb | 0.51 | 7 |", "| x | - | - |"]
    with pytest.raises(ValueError, match="cells"):
        markdown_table(["a"], [[1, 2]])


def test_shift_pair_metrics_counts_exactly() -> None:
    from shift_invariance import shift_pair_metrics

    kp0 = np.array([[10.0, 10.0], [50.0, 20.0], [90.0, 30.0]])
    kp1 = np.array([[14.0, 10.0], [54.0, 24.0], [30.0, 30.0]])  # +4 px: exact, 4 px off, far
    m = shift_pair_metrics(kp0, kp1, np.array([[0, 0], [1, 1], [2, 2]]), 4.0)
    assert m["repeatability@3"] == pytest.approx(1 / 3) and m["mma@3"] == pytest.approx(1 / 3)
    assert m["n_kp"] == 3 and m["n_matches"] == 3
    empty = shift_pair_metrics(kp0, kp1[:0], np.zeros((0, 2), int), 4.0)
    assert np.isnan(empty["repeatability@3"]) and np.isnan(empty["mma@3"])  # kept as failures, not skipped


def test_shift_invariance(dataset, tmp_path):
    """ORB is nearly shift-invariant; the zippy grid repeats itself after one 8 px cell."""
    from shift_invariance import main as shift_main

    argv = [str(dataset), "--methods", "orb,zippypoint_small", "--setting", "240x320:300", "--include", "i_*"]
    assert shift_main([*argv, "--out", str(tmp_path / "si")]) == 0
    summary = json.loads((tmp_path / "si" / "summary.json").read_text())
    means = summary["aggregates"]
    assert summary["protocol"]["shifts_px"] == list(range(9))
    assert len(summary["rows"]) == 2 * 9 * len({r["sequence"] for r in summary["rows"]})
    for name in ("orb", "zippypoint_small"):
        assert means[name]["0"]["repeatability@3"] == 1.0 and means[name]["0"]["mma@3"] == 1.0
    zp = means["zippypoint_small"]
    assert zp["8"]["repeatability@3"] > zp["4"]["repeatability@3"]
    assert summary["methods"]["zippypoint_small"]["params"]["shifts"] == [[0, 0]]
    assert "| orb | mma@3 |" in (tmp_path / "si" / "table.md").read_text()


def test_suppress_near_duplicates_keeps_the_best_of_each_cluster() -> None:
    from zippy.features import Features
    from zippy_eval.hpatches.pipeline import suppress_near_duplicates

    kp = np.array([[10, 10], [10.5, 10], [30, 30], [11.8, 10], [13.5, 10]], np.float32)
    scores = np.array([0.5, 0.9, 0.7, 0.8, 0.1], np.float32)
    desc = np.arange(5, dtype=np.uint8)[:, None].repeat(32, 1)
    out = suppress_near_duplicates(Features(kp, scores, desc, (64, 48), {}), 2.0)
    # 1 (0.9) suppresses 0 and 3 (within 2 px); 4 is 3.0 px from 1, kept; 2 is alone
    # (3 is within 2 px of 4 too, but a suppressed keypoint suppresses nothing); the kept ones keep their order
    assert out.keypoints.tolist() == [[10.5, 10], [30, 30], [13.5, 10]] and out.descriptors[:, 0].tolist() == [1, 2, 4]
    np.testing.assert_allclose(out.scores, [0.9, 0.7, 0.1])
    assert len(suppress_near_duplicates(Features(kp, scores, desc, (64, 48), {}), 0.1)) == 5
    with pytest.raises(ValueError, match="dedup_px must be >= 0"):
        HPatchesConfig(methods=("orb",), dedup_px=-1)


def test_dedup_protocol_variant(dataset, tmp_path):
    """The variant drops near-duplicates before matching and is recorded in the protocol."""
    conf = HPatchesConfig(methods=("orb",), settings=(SETTING,), dedup_px=2.0, cache_dir=str(tmp_path / "cache"))
    plain = json.loads(
        run(
            HPatchesConfig(methods=("orb",), settings=(SETTING,), cache_dir=str(tmp_path / "cache")),
            dataset,
            tmp_path / "plain",
        ).read_text()
    )
    dedup = json.loads(run(conf, dataset, tmp_path / "dedup").read_text())
    assert dedup["protocol"]["dedup_px"] == 2.0 and plain["protocol"]["dedup_px"] == 0.0
    n_plain = sum(r["n_kp0"] for r in plain["rows"])
    n_dedup = sum(r["n_kp0"] for r in dedup["rows"])
    assert 0 < n_dedup < n_plain  # ORB's pyramid levels repeat corners
    assert "Protocol variant" in (tmp_path / "dedup" / "table.md").read_text()
    assert "Protocol variant" not in (tmp_path / "plain" / "table.md").read_text()
