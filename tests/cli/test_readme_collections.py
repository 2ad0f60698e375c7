"""The README's collection commands, typed as a new user types them: from a fresh working
folder, with relative paths, each `nst` a process of its own (so Ray Train's workers really run
in Ray's session folder), on a folder of photos with a phone photo and a bad file in it."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from helpers import phone_jpeg
from PIL import Image

from pipeline.run import images, model_file

README = Path(__file__).parents[2] / "README.md"
# what a test adds to each command: a tiny network and job on seeded random weights
TINY = {
    "train": "--steps 6 --checkpoint-every 3 --sample-every 3 --crop 32 --width 4 "
    "--residual-blocks 1 --batch-size 2 --set weights=random:0 --set content_layers=relu2_1 "
    "--set style_layers=relu1_1,relu2_1 --set size=32 --set iterations=20 --set init=content",
    "apply": "--no-progress",
    "transfer": "--set weights=random:0 --set size=32 --set content_layers=relu2_1 "
    "--set style_layers=relu1_1,relu2_1",
}


def readme_collection_commands() -> list[str]:
    """The `nst` lines of the README's collection block (the one that starts with nst train)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    block = next(b for b in blocks if b.startswith("nst train"))
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("nst ")]


def run(line: str, cwd: Path) -> subprocess.CompletedProcess:
    args = shlex.split(line)
    extra = shlex.split(TINY.get(args[1], ""))
    env = {**os.environ, "RAY_worker_niceness": "0"}
    cmd = [sys.executable, "-m", "pipeline.cli", args[1], *extra, *args[2:]]  # the line's own win
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def a_users_folder(work: Path) -> None:
    rng = __import__("numpy").random.default_rng(0)
    for i in range(4):
        a = (rng.random((40, 48, 3)) * 255).astype("uint8")
        Image.fromarray(a).filter(__import__("PIL.ImageFilter").ImageFilter.BLUR).save(
            work / "photos" / f"img_{i}.jpg"
        )
    phone_jpeg(work / "photos" / "hard.jpg", w=48, h=32)  # seen 32 wide, 48 high
    (work / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 the upload was cut")
    Image.fromarray((rng.random((40, 40, 3)) * 255).astype("uint8")).save(work / "starry.jpg")


def test_the_readmes_collection_commands_work_as_typed_from_a_fresh_folder(tmp_path):
    work = tmp_path / "work"
    (work / "photos").mkdir(parents=True)
    a_users_folder(work)
    commands = readme_collection_commands()
    assert [shlex.split(c)[1] for c in commands] == ["train", "apply", "transfer", "models",
                                                     "export"]  # fmt: skip
    done = {}
    for line in commands:
        res = run(line, work)
        assert res.returncode == 0, f"{line}\n{res.stdout}\n{res.stderr}"
        done[shlex.split(line)[1]] = res

    assert "skipped:" in done["train"].stderr and "broken.jpg" in done["train"].stderr
    model = work / "models" / "starry" / "model.pt"
    meta = model_file.from_bytes(model.read_bytes(), "model.pt").meta
    assert meta["steps"] == 6 and meta["photos"] == 4  # 5 readable, 1 held aside
    assert any("broken.jpg" in s for s in meta["skipped_photos"])
    assert meta["style_uris"] == [str(work / "starry.jpg")]  # absolute: it reached Ray Train
    gap = meta["holdout_gap"]  # the network against the optimiser on the held-aside photo
    (held,) = gap["photos"]
    assert held["optimised"] < held["photo"] and gap["median_gap_closure"] is not None
    assert "held-aside photos (1): the network closes" in done["train"].stdout

    rows = {
        r["input"]: r for r in pq.read_table(work / "styled/starry/results.parquet").to_pylist()
    }
    assert rows["broken.jpg"]["status"] == "failed" and "broken.jpg" in rows["broken.jpg"]["error"]
    assert (rows["hard.jpg"]["out_width"], rows["hard.jpg"]["out_height"]) == (32, 48)
    assert sum(r["status"] == "ok" for r in rows.values()) == 5
    assert Image.open(work / "styled/starry/images/hard.png").size == (32, 48)

    refined = images.decode((work / "refined.png").read_bytes(), "refined.png")
    assert refined.shape[-2:] == (32, 21)  # the phone photo upright, longer side 32
    assert "model" in done["models"].stdout and "error" not in done["models"].stderr
    assert (work / "starry.onnx").stat().st_size > 1000

    before = model.read_bytes()
    fewer = run(f"{commands[0]} --steps 3", work)
    assert fewer.returncode == 1 and "--steps 3 would not train" in fewer.stderr, fewer.stderr
    assert model.read_bytes() == before
    listed = run("nst models models/ --json", work)
    (row,) = [json.loads(x) for x in listed.stdout.splitlines()]
    assert row["model"].endswith("work/models/starry/model.pt") and row["steps"] == 6
    assert row["error"] is None and row["gap_closure"] == gap["median_gap_closure"]
