"""Loading multi-task examples: readers, format detection and errors that name file:line."""

import json

import datasets
import pytest

from cgc.adapter.task_map import TaskMap
from cgc.data import DataError, check_tasks, load_examples, task_counts

ROWS = [
    {"task": "add", "input": "1 2", "target": "3"},
    {"task": "upper", "input": "ab", "target": "AB"},
]


def write_jsonl(path, rows, raw_lines=()):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        for line in raw_lines:
            f.write(line + "\n")
    return path


def as_rows(dataset):
    return [dict(r) for r in dataset]


def test_generic_jsonl_json_parquet_and_dataset_dir(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", ROWS)
    array = tmp_path / "b.json"
    array.write_text(json.dumps(ROWS))
    parquet = tmp_path / "c.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(str(parquet))
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(saved))
    for path in (jsonl, array, parquet, saved):
        assert as_rows(load_examples(path)) == ROWS, path
    both = load_examples([jsonl, parquet])
    assert len(both) == 4 and task_counts(both) == {"add": 2, "upper": 2}


def test_promptcblue_firefly_and_alpaca_readers(tmp_path):
    cblue = write_jsonl(
        tmp_path / "cblue.jsonl",
        [{"input": "病历", "target": "答案", "task_dataset": "CMeIE", "task_type": "ie", "answer_choices": None}],
    )
    assert as_rows(load_examples(cblue)) == [{"task": "CMeIE", "input": "病历", "target": "答案"}]
    firefly = write_jsonl(tmp_path / "firefly.jsonl", [{"kind": "Couplet", "input": "上联", "target": "下联"}])
    assert as_rows(load_examples(firefly, format="firefly")) == [{"task": "Couplet", "input": "上联", "target": "下联"}]
    alpaca = write_jsonl(
        tmp_path / "summarize.jsonl",
        [
            {"instruction": "Summarize.", "input": "long text", "output": "short"},
            {"instruction": "Hi", "input": "", "output": "Hello"},
        ],
    )
    assert as_rows(load_examples(alpaca)) == [
        {"task": "summarize", "input": "Summarize.\n\nlong text", "target": "short"},  # task from the file name
        {"task": "summarize", "input": "Hi", "target": "Hello"},
    ]
    with_field = write_jsonl(
        tmp_path / "x.jsonl", [{"instruction": "Do", "input": "", "output": "ok", "category": "qa"}]
    )
    assert load_examples(with_field, task_field="category")[0]["task"] == "qa"


def test_format_detection_errors_are_clear(tmp_path):
    both = write_jsonl(tmp_path / "both.jsonl", [{"task": "a", "kind": "b", "input": "x", "target": "y"}])
    with pytest.raises(DataError, match=r"both.jsonl: columns .* fit several formats \['generic', 'firefly'\]"):
        load_examples(both)
    assert load_examples(both, format="firefly")[0]["task"] == "b"
    neither = write_jsonl(tmp_path / "neither.jsonl", [{"question": "x", "answer": "y"}])
    with pytest.raises(
        DataError, match=r"neither.jsonl: cannot tell the data format from columns \['answer', 'question'\]"
    ):
        load_examples(neither)
    with pytest.raises(DataError, match="format 'alpaca' needs columns"):
        load_examples(both, format="alpaca")
    with pytest.raises(DataError, match="unknown data format 'csv'"):
        load_examples(both, format="csv")


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ROWS, raw_lines=["", '{"task": "add", "input": "1 1", "target": '])
    with pytest.raises(DataError, match=r"bad.jsonl:4: malformed JSON line"):
        load_examples(path)
    array = tmp_path / "bad.json"
    array.write_text('[\n{"task": "a", "input": "x", "target": "y"},\n{"task": "a" "input": "x"}\n]')
    with pytest.raises(DataError, match=r"bad.json:3: malformed JSON"):
        load_examples(array)


def test_bad_field_values_name_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "nulls.jsonl", ROWS + [{"task": "add", "input": "2 2", "target": None}])
    with pytest.raises(DataError, match=r"nulls.jsonl:3: target must be a string, got None"):
        load_examples(path)
    path = write_jsonl(tmp_path / "notask.jsonl", [{"task": "", "input": "2 2", "target": "4"}])
    with pytest.raises(DataError, match=r"notask.jsonl:1: task must be a non-empty string"):
        load_examples(path)


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data file not found: .*nope.jsonl"):
        load_examples(tmp_path / "nope.jsonl")
    csv = tmp_path / "a.csv"
    csv.write_text("task,input,target\n")
    with pytest.raises(DataError, match=r"a.csv: unsupported file type '.csv'"):
        load_examples(csv)


def test_task_in_no_cluster_names_task_and_known_tasks(tmp_path):
    dataset = load_examples(write_jsonl(tmp_path / "a.jsonl", ROWS))
    check_tasks(dataset, TaskMap.from_clusters({"c1": ["add"], "c2": ["upper"]}))
    with pytest.raises(
        DataError, match=r"task 'upper' of the data is in no cluster; tasks in the cluster map: \['add', 'mul'\]"
    ):
        check_tasks(dataset, TaskMap.from_clusters({"c1": ["add", "mul"]}))
