"""Router datasets: BFCL read from a (fake, same-layout) bfcl-eval wheel, the catalogue view, the synthetic set."""

from __future__ import annotations

import json
import math
import zipfile

import pytest

from causalqwen.training import router_data as rd

SQ = "bfcl_eval/data/BFCL_v4_{}.json"
ANS = "bfcl_eval/data/possible_answer/BFCL_v4_{}.json"


def fn(name, description="does things", **params):
    props = {k: {"type": t, "description": f"the {k}"} for k, t in params.items()}
    return {"name": name, "description": description,
            "parameters": {"type": "dict", "properties": props, "required": list(params)[:1]}}  # fmt: skip


def q(text, system=None):
    turn = [{"role": "system", "content": system}] if system else []
    return [turn + [{"role": "user", "content": text}]]


WEATHER = fn("get_weather", "Get the weather for a city.", city="string", days="integer")
AREA = fn("triangle.area", "Area of a triangle.", base="integer")
EMAIL = fn("send_email", "Send an email.", to="string")


def fake_files():
    files = {
        "simple_python": [{"id": f"simple_python_{i}", "question": q(f"weather in city {i}"), "function": [WEATHER]}
                          for i in range(6)],
        "multiple": [{"id": f"multiple_{i}", "question": q(f"area with base {i}"), "function": [WEATHER, AREA, EMAIL]}
                     for i in range(4)],
        "irrelevance": [{"id": "irrelevance_0", "question": q("tell me a joke"), "function": [AREA]},
                        {"id": "irrelevance_1", "question": q("sing"), "function": [EMAIL]}],
        "live_simple": [{"id": "live_simple_0-0-0", "question": q("mail bob", system="be nice"), "function": [EMAIL]}],
        "live_irrelevance": [{"id": "live_irrelevance_0-0-0", "question": q("hi"), "function": [WEATHER, EMAIL]},
                             {"id": "live_irrelevance_1-0-0", "question": q("nothing offered"), "function": []}],
    }  # fmt: skip
    answers = {
        "simple_python": [{"id": f"simple_python_{i}", "ground_truth": [{"get_weather": {"city": ["x"]}}]} for i in range(6)],
        "multiple": [{"id": f"multiple_{i}", "ground_truth": [{"triangle.area": {"base": [i]}}]} for i in range(4)],
        "live_simple": [{"id": "live_simple_0-0-0", "ground_truth": [{"send_email": {}}, {"send_email": {}}]}],
    }  # fmt: skip
    return files, answers


def write_wheel(path, files, answers):
    with zipfile.ZipFile(path, "w") as archive:
        for category, rows in files.items():
            archive.writestr(SQ.format(category), "\n".join(json.dumps(r) for r in rows) + "\n")
        for category, rows in answers.items():
            archive.writestr(ANS.format(category), "\n".join(json.dumps(r) for r in rows))
    return path


CATS = dict(train_categories=("simple_python", "multiple", "irrelevance"),
            test_categories=("live_simple", "live_irrelevance"))  # fmt: skip


@pytest.fixture
def wheel(tmp_path):
    return write_wheel(tmp_path / "bfcl_eval-0-py3-none-any.whl", *fake_files())


def test_function_to_text_keeps_names_types_and_descriptions():
    assert rd.function_to_text(WEATHER) == (
        "get_weather: Get the weather for a city. | parameters: city (string): the city; "
        "days (integer, optional): the days"
    )
    arr = {
        "name": "f",
        "description": "",
        "parameters": {"properties": {"xs": {"type": "array", "items": {"type": "float"}}}},
    }
    assert rd.function_to_text(arr) == "f: | parameters: xs (array of float, optional)"
    with pytest.raises(ValueError, match="needs a 'name'"):
        rd.function_to_text({"description": "no name"})


def test_bfcl_splits_sizes_labels_and_columns(wheel):
    ds = rd.build_bfcl_dataset(wheel, dev_fraction=0.25, seed=0, **CATS)
    assert {k: len(v) for k, v in ds.items()} == {"train": 9, "dev": 3, "test": 2}
    assert ds["test"]["id"] == [
        "live_simple_0-0-0",
        "live_irrelevance_0-0-0",
    ]  # the no-function row is skipped
    assert set(ds["train"].column_names) == {"id", "category", "query", "tool_names", "tool_texts", "labels",
                                             "resource_vectors", "latency", "runtime_load"}  # fmt: skip
    rows = {r["id"]: r for split in ("train", "dev") for r in ds[split]}
    assert rows["multiple_2"]["tool_names"] == ["get_weather", "triangle.area", "send_email"]
    assert rows["multiple_2"]["labels"] == [0, 1, 0]
    assert rows["irrelevance_1"]["labels"] == [0]
    assert rows["simple_python_3"]["query"] == "weather in city 3"
    assert rows["simple_python_3"]["resource_vectors"] == [[0.0] * 6]
    assert rows["simple_python_3"]["latency"] == [rd.MISSING_LATENCY]
    test = ds["test"][0]
    assert test["query"] == "mail bob"  # the system prompt is not part of the request
    assert test["labels"] == [1]  # a parallel answer repeating one function still labels it once
    assert ds["test"][1]["labels"] == [0, 0]
    assert not any(i.startswith("live") for split in ("train", "dev") for i in ds[split]["id"])


def test_bfcl_split_is_seeded_and_independent_of_category_order(wheel):
    a = rd.build_bfcl_dataset(wheel, dev_fraction=0.25, seed=3, **CATS)
    b = rd.build_bfcl_dataset(wheel, dev_fraction=0.25, seed=3, test_categories=CATS["test_categories"],
                              train_categories=tuple(reversed(CATS["train_categories"])))  # fmt: skip
    assert a["dev"]["id"] == b["dev"]["id"] and a["train"]["id"] == b["train"]["id"]
    others = [rd.build_bfcl_dataset(wheel, dev_fraction=0.25, seed=s, **CATS)["dev"]["id"] for s in range(4)]
    assert len({tuple(o) for o in others}) > 1
    assert sorted(list(a["train"]["id"]) + list(a["dev"]["id"])) == sorted(
        [f"simple_python_{i}" for i in range(6)]
        + [f"multiple_{i}" for i in range(4)]
        + ["irrelevance_0", "irrelevance_1"]
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f, a: a["multiple"].pop(), "missing from possible_answer"),
        (lambda f, a: a["multiple"][0].update(ground_truth=[{"nope": {}}]), "names none of the candidates"),
        (lambda f, a: f["multiple"][0]["question"][0].pop(), "no user message"),
        (lambda f, a: a.pop("simple_python"), "not a bfcl-eval wheel of the expected layout"),
    ],
)
def test_bfcl_inconsistent_files_raise(tmp_path, mutate, message):
    files, answers = fake_files()
    mutate(files, answers)
    path = write_wheel(tmp_path / "w.whl", files, answers)
    with pytest.raises(ValueError, match=message):
        rd.build_bfcl_dataset(path, **CATS)


def test_bfcl_bad_arguments(wheel, tmp_path):
    with pytest.raises(ValueError, match="test-only"):
        rd.build_bfcl_dataset(wheel, train_categories=("simple_python", "live_simple"))
    with pytest.raises(ValueError, match="dev_fraction"):
        rd.build_bfcl_dataset(wheel, dev_fraction=1.0, **CATS)
    with pytest.raises(ValueError, match="wheel not found"):
        rd.build_bfcl_dataset(tmp_path / "missing.whl", **CATS)


def test_fetch_uses_the_cached_wheel_without_pip(tmp_path, monkeypatch):
    monkeypatch.setenv("CAUSALQWEN_CACHE", str(tmp_path))
    assert rd.cache_dir() == tmp_path
    cached = tmp_path / "bfcl" / "bfcl_eval-1.2.3-py3-none-any.whl"
    cached.parent.mkdir()
    cached.write_bytes(b"zip")
    monkeypatch.setattr(
        rd.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run for a cached wheel")
    )
    assert rd.fetch_bfcl_wheel("1.2.3") == cached


def test_catalogue_is_distinct_tools_and_targets_point_into_it(wheel):
    ds = rd.build_bfcl_dataset(wheel, dev_fraction=0.25, **CATS)
    catalogue = rd.build_tool_catalogue([ds["train"], ds["dev"], ds["test"]])
    assert sorted(catalogue["name"]) == ["get_weather", "send_email", "triangle.area"]
    assert catalogue["tool_id"] == [0, 1, 2]
    targets = rd.catalogue_targets(ds["test"], catalogue)
    assert targets == [[catalogue["name"].index("send_email")], []]
    only_test = rd.build_tool_catalogue([ds["test"]])
    assert len(only_test) == 2
    with pytest.raises(ValueError, match="does not contain every tool"):
        rd.catalogue_targets(ds["train"].filter(lambda r: r["id"].startswith("multiple")), only_test)


# ------------------------------------------------------------------------------------------- synthetic
def test_synthetic_shapes_and_determinism():
    a = rd.build_synthetic_routing_dataset(40, 10, 12, num_families=2, seed=5)
    b = rd.build_synthetic_routing_dataset(40, 10, 12, num_families=2, seed=5)
    assert {k: len(v) for k, v in a.items()} == {"train": 40, "dev": 10, "test": 12}
    assert a["train"].to_list() == b["train"].to_list()
    row = a["train"][0]
    assert len(row["tool_texts"]) == len(row["resource_vectors"]) == len(row["latency"]) == 2 * len(rd._SIZES)
    assert all(len(v) == len(rd.RESOURCE_FIELDS) for v in row["resource_vectors"])
    assert sum(row["labels"]) <= 1
    assert a["train"]["query"] != rd.build_synthetic_routing_dataset(40, 10, 12, seed=6)["train"]["query"]


def test_synthetic_label_is_the_largest_variant_meeting_the_budget():
    ds = rd.build_synthetic_routing_dataset(400, 1, 1, seed=0)["train"]
    n_abstain = 0
    for row in ds:
        load = row["runtime_load"]
        fits = []
        for name, res in zip(row["tool_names"], row["resource_vectors"]):
            cpu, memory, gpu, latency, cost, size = res
            q = row["query"]
            ok = name.startswith(row["category"] + "_") and name[len(row["category"]) + 1 :] in {
                s[0] for s in rd._SIZES
            }
            if q.endswith(" ms"):
                ok &= latency * 1000 <= float(q.split("under ")[1].split(" ms")[0])
            if "CPU only" in q:
                ok &= gpu == 0
            if "GB" in q:
                ok &= memory <= float(q.split("at most ")[1].split(" GB")[0])
            if "dollars" in q:
                ok &= cost <= float(q.split("under ")[1].split(" dollars")[0])
            fits.append(size if ok else -1)
        expected = [0] * len(fits)
        if max(fits) >= 0:
            expected[fits.index(max(fits))] = 1
        else:
            n_abstain += 1
        assert row["labels"] == expected, row["query"]
        assert 0.0 <= load <= 1.0
    assert 20 < n_abstain < 200  # both classes present


def test_synthetic_latency_is_heavy_tailed_around_the_effective_latency():
    ds = rd.build_synthetic_routing_dataset(500, 1, 1, seed=1)["train"]
    ratios = sorted(o / r[3] for row in ds for o, r in zip(row["latency"], row["resource_vectors"]))
    median = ratios[len(ratios) // 2]
    assert min(ratios) >= 0.999 and 1.05 < median < 1.3
    assert ratios[-1] > 20 * median  # Cauchy-like stragglers
    assert all(math.isfinite(r) for r in ratios)


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="num_train must be a positive int"):
        rd.build_synthetic_routing_dataset(0)
    with pytest.raises(ValueError, match="num_families must lie in"):
        rd.build_synthetic_routing_dataset(5, 5, 5, num_families=99)


# ------------------------------------------------------------------------------------------- real wheel
@pytest.mark.slow
def test_real_bfcl_wheel_counts():
    wheel = rd.cache_dir() / "bfcl" / f"bfcl_eval-{rd.BFCL_VERSION}-py3-none-any.whl"
    if not wheel.is_file():
        pytest.skip(f"the bfcl-eval wheel is not cached at {wheel} (run fetch_bfcl_wheel once)")
    ds = rd.build_bfcl_dataset(wheel)
    assert {k: len(v) for k, v in ds.items()} == {"train": 1182, "dev": 208, "test": 2231}
    assert sum(not any(y) for y in ds["test"]["labels"]) == 880  # live_irrelevance rows offering functions
    assert len(rd.build_tool_catalogue([ds["test"]])) == 1713
