"""The task map: one frozen name <-> id <-> cluster table that every part of cgc reads, and no other lookup."""

import re

import pytest
import torch

import cgc
from cgc.adapter.routing import Router
from cgc.adapter.task_map import TaskMap, UnknownTaskError
from tests.conftest import ROOT, make_config, tiny_llama


def test_every_task_round_trips_through_the_map():
    config = make_config()
    task_map = config.task_map
    assert task_map is config.task_map  # built once, not per access
    assert task_map.clusters == tuple(config.clusters)
    for task_id, task in enumerate(config.tasks):
        assert task_map.id_of(task) == task_id and task_map.name_of(task_id) == task
        place = task_map.place(task)
        assert place == task_map.place(task_id)
        assert task in config.clusters[place.cluster]  # the cluster map's own answer
        assert task_map.clusters[place.cluster_index] == place.cluster
        assert task_map.tasks_of(place.cluster)[place.local_index] == task
        assert config.clusters[place.cluster][place.local_index] == task
    assert sum(len(task_map.tasks_of(c)) for c in task_map.clusters) == len(task_map) == len(config.tasks)


def test_unknown_names_and_ids_are_one_clear_error():
    task_map = make_config().task_map
    with pytest.raises(UnknownTaskError, match=r"unknown task 'division'; known tasks: \['synonym'"):
        task_map.place("division")
    with pytest.raises(UnknownTaskError, match=r"task id 5 out of range: this model has 5 tasks \(0..4\)"):
        task_map.cluster_of(5)
    with pytest.raises(UnknownTaskError, match=r"task id -1 out of range"):
        task_map.name_of(-1)
    with pytest.raises(UnknownTaskError, match=r"task 'mod' of eval.jsonl is in no cluster \(nor are \['pow'\]\)"):
        task_map.check_known(["add", "pow", "mod"], where="eval.jsonl")
    with pytest.raises(ValueError, match="unknown cluster 'physics'"):
        task_map.tasks_of("physics")


def test_the_model_router_and_config_share_one_map_and_route_by_it():
    config = make_config()
    model = cgc.attach(tiny_llama(), config)
    assert model.task_map is config.task_map
    router = Router(config)
    assert router.task_map is config.task_map
    ids = torch.tensor([model.task_id(t) for t in ["mul", "synonym", "sub", "antonym", "mul"]])
    routing = router.route(ids, "cpu")
    for s in routing.slices:
        rows = range(len(ids)) if s.index is None else s.index.tolist()
        for row, local in zip(rows, s.local_tasks.tolist(), strict=True):
            place = config.task_map.place(int(ids[row]))
            assert (place.cluster, place.local_index) == (s.cluster, local)


def test_config_is_frozen_so_the_map_cannot_drift_from_the_clusters():
    config = make_config()
    with pytest.raises(AttributeError):
        config.clusters = {"a": ["x"]}


def test_the_task_map_is_the_only_task_to_cluster_lookup():
    # The helpers it replaced are gone ...
    assert not hasattr(cgc.CGCLoraConfig, "cluster_of")
    assert not hasattr(cgc.CGCModel, "task_place")
    assert not hasattr(Router(make_config()), "_place")
    # ... and no source file builds its own task -> cluster table: neither an inverted cluster map
    # ({t: c for c, ts in clusters.items() for t in ts}) nor a search of a cluster's task list.
    inverted = re.compile(
        r"\{\s*(\w+)\s*:\s*(\w+)\s+for\s+\2\s*,\s*(\w+)\s+in\s+[\w.]+\.items\(\)\s+for\s+\1\s+in\s+\3"
    )
    searched = re.compile(r"clusters\[[^\]]+\]\.index\(")
    offenders = []
    for path in [*ROOT.glob("cgc/**/*.py"), *ROOT.glob("recipes/*.py"), *ROOT.glob("benchmarks/*.py")]:
        if path.name == "task_map.py":
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(ROOT)}: {m.group(0)}" for p in (inverted, searched) for m in p.finditer(text)]
    assert not offenders, offenders
    assert inverted.search("{t: c for c, tasks in config.clusters.items() for t in tasks}")  # the pattern works


def test_task_map_from_clusters_keeps_listing_order():
    task_map = TaskMap.from_clusters({"b": ["z", "y"], "a": ["x"]})
    assert task_map.tasks == ("z", "y", "x") and task_map.clusters == ("b", "a")
    assert [p.cluster_index for p in task_map.places] == [0, 0, 1]
