"""Active learning: the acquisition rules on hand-made detections, seeded random, pseudo-labels
that never overwrite a real label, and `fsx acquire` / `fsx loop` end to end on tiny letters
against a real MLflow store."""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cli_helpers import KEEP_LOW_SCORES, LETTERS_SMALL, cli_env, ok, run_fsx

from fsx.evaluation.acquisition import box_uncertainty, image_scores, merge_pseudo_labels, pseudo_labels, rank_images, select

SMALL = [*LETTERS_SMALL, "algorithm.batch_size=8", *KEEP_LOW_SCORES]
TIMEOUT = 300


def det(image_id: int, score: float, category_id: int = 1) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": [1.0, 2.0, 10.0, 20.0], "score": score}


def order(image_ids, detections, rule, how="max", **options) -> list[int]:
    return [row["image_id"] for row in rank_images(image_scores(image_ids, detections, rule, how, **options))]


# --------------------------------------------------------------------------- rules and aggregates

# one box each: confident (0.9), torn (0.5), faint (0.1); image 4 has none
ONE_BOX = [det(1, 0.9), det(2, 0.5), det(3, 0.1)]


def test_box_uncertainty_values():
    assert box_uncertainty(0.9, "least_confidence") == pytest.approx(0.1)
    assert box_uncertainty(0.5, "margin") == pytest.approx(1.0)
    assert box_uncertainty(0.9, "margin") == pytest.approx(0.2)
    assert box_uncertainty(0.5, "entropy") == pytest.approx(1.0)
    assert box_uncertainty(0.1, "entropy") == pytest.approx(-(0.1 * math.log2(0.1) + 0.9 * math.log2(0.9)))
    assert box_uncertainty(1.0, "entropy") == 0.0 and box_uncertainty(0.0, "margin") == 0.0


def test_least_confidence_ranks_the_faintest_first_and_an_empty_image_before_all():
    assert order([1, 2, 3, 4], ONE_BOX, "least_confidence") == [4, 3, 2, 1]
    scores = image_scores([1, 2, 3, 4], ONE_BOX, "least_confidence")
    assert math.isinf(scores[4]["score"]) and scores[4]["detections"] == 0
    # a configured default for images without boxes instead
    assert order([1, 2, 3, 4], ONE_BOX, "least_confidence", empty_score=0.0) == [3, 2, 1, 4]


@pytest.mark.parametrize("rule", ["margin", "entropy"])
def test_margin_and_entropy_rank_the_torn_box_first(rule):
    # 0.1 and 0.9 are equally sure under a binary reading: the tie goes to the smaller id
    assert order([1, 2, 3, 4], ONE_BOX, rule, empty_score=0.0) == [2, 1, 3, 4]
    scores = image_scores([1, 3], ONE_BOX, rule)
    assert scores[1]["score"] == pytest.approx(scores[3]["score"])


@pytest.mark.parametrize(
    ("how", "expected"),
    [("max", [10, 20, 30]), ("mean", [20, 30, 10]), ("sum", [30, 10, 20])],
)
def test_each_aggregate_orders_images_its_own_way(how, expected):
    # least confidence per box: image 10 -> .5, .05, .05; image 20 -> .4; image 30 -> .3, .3, .3
    # max: 10 (.5) > 20 (.4) > 30 (.3); mean: 20 (.4) > 30 (.3) > 10 (.2); sum: 30 (.9) > 10 (.6) > 20 (.4)
    detections = [det(10, 0.5), det(10, 0.95), det(10, 0.95), det(20, 0.6), det(30, 0.7), det(30, 0.7), det(30, 0.7)]
    assert order([10, 20, 30], detections, "least_confidence", how) == expected


def test_min_score_drops_faint_boxes_before_aggregating():
    detections = [det(1, 0.02), det(1, 0.8), det(2, 0.6)]
    assert order([1, 2], detections, "least_confidence") == [1, 2]  # 0.98 > 0.4
    assert order([1, 2], detections, "least_confidence", min_score=0.05) == [2, 1]  # 0.2 < 0.4
    assert image_scores([1], detections, "least_confidence", min_score=0.05)[1]["detections"] == 1


def test_random_is_seeded_and_ignores_detections():
    ids = list(range(100, 130))
    first, ranking = select(ids, ONE_BOX, "random", "max", 5, seed=7)
    again, _ = select(ids, [], "random", "max", 5, seed=7)
    other, _ = select(ids, ONE_BOX, "random", "max", 5, seed=8)
    assert first == again and len(first) == 5 and len(set(first)) == 5
    assert other != first
    assert sorted(row["image_id"] for row in ranking) == ids and [row["rank"] for row in ranking] == list(range(1, 31))


def test_unknown_rule_or_aggregate_is_refused():
    with pytest.raises(ValueError, match="rule=nope"):
        image_scores([1], ONE_BOX, "nope")
    with pytest.raises(ValueError, match="aggregate=median"):
        image_scores([1], ONE_BOX, "entropy", "median")


# --------------------------------------------------------------------------- pseudo-labels


def test_pseudo_labels_never_overwrite_a_real_label():
    real = {"id": 7, "image_id": 1, "category_id": 2, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0}
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}], "annotations": [real], "categories": [{"id": 1, "name": "A"}, {"id": 2, "name": "B"}]}
    before = copy.deepcopy(coco)
    detections = [det(1, 0.99), det(2, 0.95), det(2, 0.3), det(3, 0.97), det(4, 0.9, category_id=2)]
    # image 3 is about to be annotated: no guess for it
    pseudo = pseudo_labels(detections, 0.8, exclude={3})
    assert {p["image_id"] for p in pseudo} == {1, 2, 4} and all(p["pseudo"] is True and p["score"] >= 0.8 for p in pseudo)
    images = [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in (2, 4)]
    merged = merge_pseudo_labels(coco, pseudo, images)

    assert coco == before  # the input is not changed
    on_one = [a for a in merged["annotations"] if a["image_id"] == 1]
    assert on_one == [real]  # the real label survives, alone and unchanged, despite a 0.99 detection there
    guessed = [a for a in merged["annotations"] if a.get("pseudo")]
    assert {a["image_id"] for a in guessed} == {2, 4} and len(guessed) == 2
    assert all(a["score"] >= 0.8 and a["area"] == 200.0 for a in guessed)
    ids = [a["id"] for a in merged["annotations"]]
    assert len(ids) == len(set(ids)) and min(a["id"] for a in guessed) > 7
    assert [img["id"] for img in merged["images"]] == [1, 2, 4]
    assert not any(a.get("pseudo") for a in merged["annotations"] if a["id"] == 7)


# --------------------------------------------------------------------------- the commands


def fsx(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_fsx(args, cwd, env, TIMEOUT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """One tiny pretraining, then `fsx loop` and `fsx acquire` side by side (with the bad
    inputs, which stop before any work)."""
    root = tmp_path_factory.mktemp("acquire-loop")
    env, cwd = cli_env(root / "cache"), root / "work"
    bad = {
        "rule": (["acquire", "checkpoint=latest", "acquire.rule=nope"], "acquire.rule=nope"),
        "rounds": (["loop", "checkpoint=latest", "loop.rounds=0"], "loop.rounds=0"),
        "steps": (["loop", "checkpoint=latest", "loop.steps={reptile: 10}"], "loop.steps="),
        "no-checkpoint": (["loop", "acquire.k=2"], "checkpoint"),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        bad_results = {name: pool.submit(fsx, args, root / f"bad-{name}", env) for name, (args, _) in bad.items()}
        ok(fsx(["pretrain", *SMALL, "train.steps=3", "train.val_images=0"], cwd, env))
        loop = pool.submit(fsx, ["loop", "checkpoint=latest", "experiment=loop_letters", "adapt.steps=2"], cwd, env)
        many = pool.submit(fsx, ["loop", "checkpoint=latest", "experiment=uc2_many", "loop.steps=2", "acquire.k=3", "loop.rounds=3"], cwd, env)
        acquire = pool.submit(fsx, ["acquire", "checkpoint=latest", "shots=1", "adapt.steps=2", "acquire.k=4", "acquire.pseudo_threshold=0.001", "acquire.out=picked"], cwd, env)
        return {
            "cwd": cwd,
            "uri": f"sqlite:///{(cwd / 'mlflow.db').resolve()}",
            "loop": ok(loop.result()),
            "many": ok(many.result()),
            "acquire": ok(acquire.result()),
            "bad": {name: (bad_results[name].result(), bad[name][1]) for name in bad},
        }


def run_id(stdout: str) -> str:
    found = re.findall(r"^MLflow run: ([0-9a-f]{32})$", stdout, re.M)
    assert len(found) == 1, stdout
    return found[0]


def test_loop_logs_one_row_per_round(runs):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=runs["uri"])
    rid = run_id(runs["loop"].stdout)
    history = {name: {m.step: m.value for m in client.get_metric_history(rid, f"loop/{name}")} for name in ("images", "AP50", "AP", "adapt_seconds", "eval_seconds", "annotation_seconds", "cumulative_seconds")}
    assert all(sorted(h) == [1, 2, 3] for h in history.values()), history  # the preset's 3 rounds, step = round
    assert [history["images"][r] for r in (1, 2, 3)] == [5, 10, 15]  # 5-way 1-shot start, +5 a round
    assert [history["annotation_seconds"][r] for r in (1, 2, 3)] == [105, 105, 105]  # 5 images x 21 s
    cumulative = [history["cumulative_seconds"][r] for r in (1, 2, 3)]
    assert cumulative[0] >= 105 and cumulative[0] < cumulative[1] < cumulative[2]
    assert all(0 <= history["AP50"][r] <= 1 for r in (1, 2, 3))

    rows = list(csv.DictReader(io.StringIO(Path(client.download_artifacts(rid, "loop/rounds.csv", str(runs["cwd"] / "dl"))).read_text())))
    assert [int(r["round"]) for r in rows] == [1, 2, 3] and [int(r["images"]) for r in rows] == [5, 10, 15]
    manifest = json.loads(Path(client.download_artifacts(rid, "manifest.json", str(runs["cwd"] / "dl"))).read_text())
    added = [set(r["added"]) for r in manifest["rounds"]]
    assert all(len(a) == 5 for a in added) and len(set().union(*added)) == 15  # never an image twice
    assert client.get_run(rid).data.tags["fsx.command"] == "loop"
    table = [line.split() for line in runs["loop"].stdout.splitlines() if re.match(r"^\s+\d+\s+\d+\s", line)]
    assert [int(t[0]) for t in table] == [1, 2, 3] and [int(t[1]) for t in table] == [5, 10, 15]


def test_a_use_case_with_many_prior_annotations_adds_the_held_back_images(runs):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=runs["uri"])
    rid = run_id(runs["many"].stdout)
    run = client.get_run(rid)
    manifest = json.loads(Path(client.download_artifacts(rid, "manifest.json", str(runs["cwd"] / "dl-many"))).read_text())
    start, second, third = (set(r["added"]) for r in manifest["rounds"])
    assert len(second) == len(third) == 3 and not (start & second or start & third or second & third)
    # every test-adapt image annotated by the end: the start was all of them but the 6 held back
    assert start | second | third == set(manifest["split"]["test_adapt"]["image_ids"])
    images = {m.step: m.value for m in client.get_metric_history(rid, "loop/images")}
    annotation = {m.step: m.value for m in client.get_metric_history(rid, "loop/annotation_seconds")}
    assert images[2] == images[1] + 3 and images[3] == images[1] + 6
    assert annotation == {1: 0, 2: 63, 3: 63}  # the prior annotations are not part of the loop's time
    assert run.data.tags["fsx.loop_steps"].startswith("2 per round")
    assert "all of test-adapt" in run.data.tags["fsx.loop_annotated_at_start"]


def test_report_loops_tables_and_plots_the_loop_runs(runs):
    out = runs["cwd"] / "loop-report"
    result = ok(fsx(["report", "--loops", "--out", str(out), "--tracking-uri", runs["uri"]], runs["cwd"], cli_env(runs["cwd"].parent / "cache")))
    markdown = (out / "report.md").read_text()
    assert "| algorithm | rule | start | added | runs | round 1 | round 2 | round 3 |" in markdown
    lines = {line.split("|")[2].strip(): line for line in markdown.splitlines() if line.startswith("| standard |")}
    assert set(lines) == {"entropy (max)", "random"}  # one row per rule, in both tables
    assert "1-shot support" in lines["entropy (max)"] and "all of test-adapt" in lines["random"]
    rows = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    by_rule = {(r["rule"], int(r["round"])): r for r in rows}
    assert [float(by_rule["entropy (max)", k]["images"]) for k in (1, 2, 3)] == [5, 10, 15]
    cumulative = [float(by_rule["random", k]["cumulative_seconds_mean"]) for k in (1, 2, 3)]
    assert cumulative[0] < cumulative[1] < cumulative[2] and cumulative[2] - cumulative[0] >= 2 * 63
    assert all(r["AP50_ci95"] == "" and r["runs"] == "1" for r in rows)  # one run per row: no interval
    from PIL import Image

    for name in ("loop_AP50_by_round.png", "loop_AP50_by_seconds.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size == (600, 400)
    assert "MLflow run:" in result.stdout and "wrote" in result.stdout


def test_loop_report_pairs_rules_by_task_seed(tmp_path):
    from fsx.evaluation.loop_report import LoopRecord, build_loop_report

    def record(rule: str, seed: int, ap: list[float]) -> LoopRecord:
        rows = [{"round": r + 1, "images": 5 * (r + 1), "AP50": v, "acquire_seconds": 1, "adapt_seconds": 2, "eval_seconds": 3, "annotation_seconds": 105, "cumulative_seconds": 111 * (r + 1)} for r, v in enumerate(ap)]
        labels = {"algorithm": "standard", "rule": rule, "start": "1-shot support", "added": "5", "detector": "fcos", "backbone": "tiny", "dataset": "letters", "fold": "1", "ways": "5"}
        return LoopRecord(rows, labels, f"{rule}{seed}", str(seed))

    records = [record("random", 1, [0.1, 0.2]), record("random", 2, [0.3, 0.5]), record("random", 3, [0.2, 0.3]),
               record("entropy (max)", 1, [0.1, 0.3]), record("entropy (max)", 2, [0.3, 0.7]), record("entropy (max)", 3, [0.2, 0.4])]  # fmt: skip
    report = build_loop_report(records, "AP50", tmp_path)
    (difference,) = report.differences
    assert (difference["name"], difference["baseline"]) == ("entropy (max)", "random")
    assert difference["stats"][1]["mean"] == 0 and difference["stats"][1]["p"] == 1.0  # the same start: no difference
    second = difference["stats"][2]  # +0.1, +0.2, +0.1 over the three seeds
    assert second["n"] == 3 and math.isclose(second["mean"], 0.4 / 3) and 0 < second["p"] < 0.2
    assert "## Paired differences" in report.markdown and "| entropy (max) − random | 3 |" in report.markdown
    assert [g["rounds"][2]["metric"]["mean"] for g in report.groups] == pytest.approx([1.0 / 3, 1.4 / 3])


def test_the_use_case_presets_follow_the_thesis():
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="fsx.conf", version_base="1.3"):
        cfgs = {f"uc{u}_{p}": compose(config_name="loop", overrides=[f"experiment=uc{u}_{p}"]) for u in (1, 2, 3, 4) for p in ("few", "many")}
    # RT Table 6.4: steps for a Reptile / any other checkpoint
    assert {n: (c.loop.steps.reptile, c.loop.steps.default) for n, c in cfgs.items()} == {
        "uc1_few": (10, 1000), "uc2_few": (10, 1000), "uc3_few": (100, 1000), "uc4_few": (100, 1000),
        "uc1_many": (2000, 10000), "uc2_many": (2000, 10000), "uc3_many": (2000, 10000), "uc4_many": (2000, 10000),
    }  # fmt: skip
    # images annotated in the measured turn: 0 (UC1), 5, 25, 100 (1, 5, 20 per class of 5)
    assert [cfgs[f"uc{u}_many"].acquire.k for u in (1, 2, 3, 4)] == [0, 5, 25, 100]
    assert [cfgs[f"uc{u}_few"].shots for u in (1, 2, 3, 4)] == [1, 1, 5, 20] and cfgs["uc1_few"].acquire.k == 0
    assert {c.loop.start for n, c in cfgs.items() if n.endswith("many")} == {"all"}
    assert all(c.loop.annotation_seconds == 21 and c.ways == 5 for c in cfgs.values())


def test_round_steps_by_pretraining_algorithm():
    from fsx.run.loop import round_steps

    table = {"reptile": 10, "default": 1000}
    assert round_steps(table, "reptile") == 10 and round_steps(table, "standard") == 1000
    assert round_steps(7, "reptile") == 7 and round_steps(None, "standard") is None


def test_acquire_writes_the_next_k_images_of_the_pool(runs):
    out = runs["cwd"] / "picked"
    manifest = json.loads((out / "manifest.json").read_text())
    chosen = [img["image_id"] for img in manifest["images"]]
    assert manifest["rule"] == "least_confidence" and len(chosen) == 4 == len(set(chosen))
    support = set(manifest["task"]["image_ids"])
    assert not support & set(chosen) and manifest["pool_images"] > 4
    ranking = list(csv.DictReader(io.StringIO((out / "ranking.csv").read_text())))
    assert len(ranking) == manifest["pool_images"] and not support & {int(r["image_id"]) for r in ranking}
    assert [int(r["image_id"]) for r in ranking if r["selected"] == "1"] == chosen
    scores = [float(r["score"]) for r in ranking]
    assert scores == sorted(scores, reverse=True)
    pseudo = json.loads((out / "pseudo_labels.json").read_text())
    real = [a for a in pseudo["annotations"] if not a.get("pseudo")]
    guessed = [a for a in pseudo["annotations"] if a.get("pseudo")]
    assert guessed and {a["image_id"] for a in real} <= support
    assert not {a["image_id"] for a in guessed} & (support | set(chosen))
    assert "annotate next:" in runs["acquire"].stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=runs["uri"])
    rid = run_id(runs["acquire"].stdout)
    assert {f.path for f in client.list_artifacts(rid, "acquire")} >= {"acquire/manifest.json", "acquire/ranking.csv", "acquire/pseudo_labels.json"}
    assert client.get_run(rid).data.metrics["acquire/selected"] == 4


@pytest.mark.parametrize("name", ["rule", "rounds", "steps", "no-checkpoint"])
def test_bad_input_exits_2(runs, name):
    result, culprit = runs["bad"][name]
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "fsx: error:" in result.stderr and culprit in result.stderr
