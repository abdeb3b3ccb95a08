"""Weights & Biases logging, offline (WANDB_MODE=offline writes the run under the run
directory): read back from W&B's own transaction log, not from a mock."""
import json
import struct
import zlib
from pathlib import Path

import pytest

from .conftest import TINY, run

wandb = pytest.importorskip("wandb", reason="wandb is an optional dependency (pip install -e '.[wandb]')")


def read_wandb_log(path: Path):
    """The records of a W&B transaction log (<run>/run-<id>.wandb): a 7-byte header, then
    LevelDB-log framing (32 KiB blocks; each piece: crc32, length, type FULL/FIRST/MIDDLE/
    LAST) around protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, pending = [], 7, b""
    block = 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:               # block trailer: padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        pending += chunk
        if kind in (1, 4):                         # FULL or LAST: a whole record
            r = pb.Record()
            r.ParseFromString(pending)
            records.append(r)
            pending = b""
    return records


def _history(records):
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                         for i in r.history.item})
    return rows


@pytest.mark.slow
def test_a_run_logs_its_config_scalars_and_figures_and_resume_continues_the_same_run(tmp_path):
    common = ["experiment=demo", *TINY, "dataset.num_train=64", "dataset.num_test=32", "epochs=2",
              "wandb=true", "wandb_project=sslcifar-test", f"hydra.run.dir={tmp_path}"]
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    run("simclr.py", *common, "max_steps=5", env=env)
    run("simclr.py", *common, "resume=true", env=env)
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)     # the same W&B run
    records = [rec for r in runs for rec in read_wandb_log(next(r.glob("run-*.wandb")))]
    kinds = {r.WhichOneof("record_type") for r in records}
    assert {"run", "history"} <= kinds
    run_rec = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run_rec.project == "sslcifar-test" and run_rec.run_id == run_id
    config = {i.key: json.loads(i.value_json) for i in run_rec.config.update}
    assert config["batch_size"] == 16 and config["dataset"]["name"] == "spirograph"
    assert "max_steps=5" in config["overrides"] and "commit" in config["code"]
    history = _history(records)
    epochs = [h for h in history if "epoch/loss" in h]
    assert [h["trainer/step"] for h in epochs] == [4, 5, 8]     # epoch 0, the stop, epoch 1
    metrics = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs[-1]["epoch/loss"] == pytest.approx(metrics[-1]["loss"])
    assert any("epoch/knn_r2" in h for h in epochs)
    assert any("train/loss" in h for h in history)
    figures = [h for h in history if "curves/_type" in h]      # W&B flattens the image's dict
    assert figures and figures[-1]["curves/_type"] == "image-file"
    assert list(runs[-1].glob("files/media/images/curves_*.png"))
    done = json.loads((tmp_path / "done.json").read_text())
    assert len(done["code"]["commit"] or "x" * 40) == 40


def test_without_wandb_installed_the_error_names_the_install_command(tmp_path):
    """The package is hidden from the child process by a path entry that shadows it."""
    fake = tmp_path / "shadow" / "wandb"
    fake.parent.mkdir()
    # `import wandb` raises ImportError in the child, as where it is not installed
    (tmp_path / "shadow" / "sitecustomize.py").write_text("import sys\nsys.modules['wandb'] = None\n")
    from .conftest import REPO
    proc = run("simclr.py", "experiment=demo", *TINY, "wandb=true", f"hydra.run.dir={tmp_path / 'r'}",
               env={"PYTHONPATH": f"{tmp_path / 'shadow'}:{REPO}"}, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: wandb=true needs the wandb package, which is not installed. "
        "Fix: pip install -e '.[wandb]' (or wandb=false)")
