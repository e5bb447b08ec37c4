"""The prepared GPU check (python -m sctrain.bench gpu) in its CI-sized CPU form, so it cannot rot before a GPU
runs it: real trainers for both placements, a real time-to-accuracy run and a real two-process launch."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import REPO

from sctrain.bench import gpu


@pytest.mark.slow
def test_cpu_form_measures_both_placements_tta_and_a_ddp_launch(synthetic_root, tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "sctrain.bench", "gpu", "--device", "cpu", "--root",
                           str(synthetic_root), "--out", str(out), "--tta-target", "0.01"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["sections"] == {"throughput": "done", "tta": "done", "ddp": "done"}
    rows = {r["placement"]: r for r in data["throughput"] if not r["channels_last"]}
    assert set(rows) == {"device", "loader"} and len(data["throughput"]) == 3  # + channels-last of the first
    assert data["throughput"][2]["channels_last"] and data["throughput"][2]["clips_per_s"] > 0
    for row in rows.values():
        assert row["clips_per_s"] > 0 and row["steps_per_epoch"] == 6 and row["epochs"] >= 1
        assert (row["family"], row["width"], row["batch"], row["precision"]) == ("kwsnet", 8, 16, "fp32")
    tta = data["tta"]
    assert tta["reached"] and tta["epochs"] == 1 and tta["fit_seconds"] > 0 and tta["words"] == 6
    ddp = data["ddp"]
    assert ddp["exit_code"] == 0 and ddp["world_size"] == 2 and ddp["distributed"] == "DistributedType.MULTI_CPU"
    assert data["targets"]["met"] is None  # no GPU rows: nothing to judge, and it says so
    md = (out / "gpu_check.md").read_text()
    assert "| kwsnet-8 | 16 | fp32 | eager | device | default |" in md and "## DDP launch" in md


def test_the_matrix_measures_the_target_pair_first_and_compiled_fp32_last():
    args = gpu.parse_args(["--device", "cpu", "--widths", "32", "--batches", "256,1024", "--compile", "compiled,eager",
                           "--precisions", "bf16,fp32"])
    cases = [gpu.describe(c) for c in gpu.throughput_cases(args, ["kwsnet"])]
    assert cases[:3] == ["kwsnet-32 batch 256 bf16 compiled device", "kwsnet-32 batch 256 bf16 compiled loader",
                         "kwsnet-32 batch 256 bf16 compiled device channels-last"]
    assert len(cases) == 17 and len(set(cases)) == 17
    assert all("fp32 compiled" in c for c in cases[-4:]) and not any("fp32 compiled" in c for c in cases[:-4])


def test_a_spent_budget_records_every_section_as_skipped(synthetic_root, tmp_path):
    assert gpu.main(["--device", "cpu", "--root", str(synthetic_root), "--out", str(tmp_path),
                     "--budget-s", "0", "--sections", "throughput,tta,tests"]) == 0
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert all(v.startswith("skipped: its share of the 0 s budget was spent") for v in data["sections"].values())
    assert list(data["sections"]) == ["throughput", "tta", "tests"] and data["throughput"] == []


@pytest.mark.parametrize("flag, value, message", [("--sections", "train", "train is not one of"),
                                                  ("--batches", "0", "positive integers"),
                                                  ("--placements", "gpu", "gpu is not one of")])
def test_bad_arguments_are_one_line_errors(flag, value, message, capsys):
    with pytest.raises(SystemExit):
        gpu.parse_args(["--device", "cpu", flag, value])
    assert message in capsys.readouterr().err


def test_targets_are_judged_from_the_rows():
    row = {"family": "kwsnet", "width": 32, "batch": 256, "precision": "bf16", "compile": "compiled",
           "channels_last": False}
    rows = [{**row, "placement": "device", "clips_per_s": 60_000.0}, {**row, "placement": "loader",
                                                                     "clips_per_s": 30_000.0}]
    t = gpu.targets(rows)
    assert t["device_over_loader"] == 2.0 and t["v2_epoch_s_derived"] == round(84_843 / 60_000, 2) and t["met"]
    rows[1]["clips_per_s"] = 50_000.0
    assert gpu.targets(rows)["met"] is False
