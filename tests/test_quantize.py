"""int8 ONNX export: every registered family quantized by ONNX Runtime agrees with PyTorch on real clips
(within the int8 tolerance, not bitwise), calibration comes from the training split, and the file carries
its metadata and really holds int8 weights."""
from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest
import torch
from support import quickly_trained

from sctrain.config import load_config
from sctrain.data.clips import split_clips
from sctrain.inference import export, quantize
from sctrain.inference.export import Tolerance, check_parity, load_exported
from sctrain.inference.manifest import manifest_path, read_manifest
from sctrain.models.registry import list_models

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("name", list_models())
def test_every_family_quantizes_within_the_int8_tolerance(name, mini_root, tmp_path):
    torch.set_num_threads(1)
    model, test = quickly_trained(name, mini_root, tmp_path / "cache")
    out = export.export_onnx_int8(model, tmp_path / f"{name}.int8.onnx", "logmel", clips=64)
    exported = load_exported(out)
    result = check_parity(model, exported, test, Tolerance.int8())
    assert result["clips"] == 64 and result["max_prob_diff"] <= 0.35, result
    record = json.loads(exported.meta["sctrain.quantization"])
    assert record["calibration_split"] == "train" and record["calibration_clips"] == 64
    import onnx

    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert int8_weights, "no int8 weights in the quantized file"


def test_calibration_clips_come_from_the_training_split(mini_root, tmp_path):
    cfg = load_config(None, [f"data.root={mini_root}", f"data.cache_dir={tmp_path}"])
    held_out = set((mini_root / "validation_list.txt").read_text().split()) | \
        set((mini_root / "testing_list.txt").read_text().split())
    clips, _ = split_clips(cfg.data, quantize.CALIBRATION_SPLIT, 100)
    assert len(clips) == 100 and not {c.path for c in clips} & held_out
    assert len({c.label for c in clips}) == 8  # spread over every word


def test_int8_cli_export_with_the_front_end_in_the_graph(trained_checkpoint, model, mini_root, tmp_path, capsys):
    import onnxruntime as ort

    from sctrain.cli.export import main as export_main

    out = tmp_path / "kws.int8.onnx"
    assert export_main([str(trained_checkpoint), "--format", "onnx", "--int8", "--calibration-clips", "64",
                        "--out", str(out), "--check-clips", "48", "--manifest"]) == 0
    printed = capsys.readouterr().out
    assert "onnx int8, input audio" in printed and "parity on 48 real clips" in printed
    manifest = read_manifest(manifest_path(out))
    assert manifest["model_file"] == out.name and manifest["bytes"] == out.stat().st_size
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest["labels"] == model.labels and manifest["quantization"]["calibration_clips"] == 64
    assert manifest["parity_at_export"]["clips"] == 48 and len(manifest["front_end"]["window"]) == 512
    # A plain ONNX Runtime session on raw audio, as a deployment runs it.
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["sctrain.labels"]) == model.labels and meta["sctrain.input"] == "audio"
    assert json.loads(meta["sctrain.thresholds"]).keys() <= set(model.labels)
    assert "smooth" in json.loads(meta["sctrain.detector"])
    assert [i.name for i in session.get_inputs()] == ["audio"] and session.get_outputs()[0].name == "logits"
    files = sorted((mini_root / "testing_list.txt").read_text().split())
    audio = export.clip_batch([mini_root / f for f in files[::4][:64]])
    with torch.inference_mode():
        reference = model.classifier(torch.from_numpy(audio)).numpy()
    got = session.run(None, {"audio": audio})[0]
    assert (got.argmax(1) == reference.argmax(1)).mean() >= 0.9
    assert np.abs(export.softmax(got) - export.softmax(reference)).max() <= 0.35


def test_int8_parity_failure_keeps_no_file(trained_checkpoint, mini_root, tmp_path, capsys):
    from sctrain.cli.export import main as export_main

    out = tmp_path / "kws.int8.onnx"
    # A bound int8 cannot meet (no probability may move at all): refused in one line, nothing left behind.
    assert export_main([str(trained_checkpoint), "--format", "onnx", "--int8", "--input", "logmel",
                        "--calibration-clips", "16", "--check-clips", "8", "--max-prob-diff", "0",
                        "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sctrain: error: parity check failed") and "int8 bounds" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".tmp*"))


def test_missing_litert_is_one_line(trained_checkpoint, tmp_path):
    from support import run

    # None in sys.modules makes the import fail, as in an environment without sctrain[edge].
    code = ("import sys; sys.modules['litert_torch'] = None; sys.modules['ai_edge_litert'] = None; "
            "from sctrain.cli.export import main; "
            f"sys.exit(main([{str(trained_checkpoint)!r}, '--format', 'tflite', "
            f"'--out', {str(tmp_path / 'm.tflite')!r}]))")
    proc = run([sys.executable, "-c", code], timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "sctrain: error: litert_torch, ai_edge_litert not installed: pip install 'sctrain[edge]'"], proc.stderr
    assert not (tmp_path / "m.tflite").exists()


def test_deploy_benchmark_reports_each_format(trained_checkpoint, tmp_path, capsys):
    from sctrain.bench.deploy import main as deploy_main

    out, md = tmp_path / "deploy.json", tmp_path / "deploy.md"
    assert deploy_main([str(trained_checkpoint), "--formats", "onnx", "onnx-int8", "--iters", "3", "--test-clips",
                        "48", "--calibration-clips", "32", "--json", str(out), "--markdown", str(md)]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert set(rows) == {"torch", "onnx", "onnx-int8"} and report["test_clips"] == 48
    assert rows["onnx"]["agreement"] == 1.0 and rows["onnx"]["test_acc"] == rows["torch"]["test_acc"]
    int8 = rows["onnx-int8"]
    assert int8["agreement"] >= 0.9 and int8["bytes"] < rows["onnx"]["bytes"]
    assert int8["acc_change_vs_float"] == pytest.approx(int8["test_acc"] - rows["onnx"]["test_acc"])
    assert all(r["batch1"]["p50_ms"] > 0 for r in rows.values())
    assert "| onnx-int8 | audio |" in md.read_text() and "| onnx-int8 | audio |" in capsys.readouterr().out
