"""Metric functions on hand-made cases, with empty predictions and non-ASCII text."""

import pytest

from cgc.evaluation.metrics import (
    MetricSpec,
    UnicodeWordTokenizer,
    choice_accuracy,
    exact_match,
    example_scores,
    parse_metric,
    pick_choice,
    rouge_l,
    set_f1,
    task_metrics,
)


def test_exact_match_normalises_whitespace_and_width_but_keeps_case():
    assert exact_match([" 42 ", "HELLO  world", "Ｈｅｌｌｏ"], ["42", "HELLO world", "Hello"]) == 1.0
    assert exact_match(["hello"], ["HELLO"]) == 0.0  # case can be the answer (an uppercase task)
    assert exact_match(["", "x"], ["x", "x"]) == 0.5
    assert exact_match(["", ""], ["", "y"]) == 0.5  # an empty prediction matches only an empty target
    assert exact_match(["北京"], ["北京"]) == 1.0
    assert exact_match([], []) == 0.0


def test_choice_accuracy_maps_answers_onto_choices():
    choices = ["yes", "no", "not sure"]
    assert pick_choice("No.", choices) == "no"
    assert pick_choice("I am not sure about it", choices) == "not sure"  # longest choice at the earliest position
    assert pick_choice("the answer: yes, not no", choices) == "yes"  # the earliest choice named
    assert pick_choice("", choices) is None
    predictions = ["Yes", "no, it is not", "", "maybe"]
    references = ["yes", "no", "no", "yes"]
    assert choice_accuracy(predictions, references, choices) == 0.5
    # without explicit choices the task's distinct references are the choices
    assert choice_accuracy(["阳性", "结果为阴性"], ["阳性", "阴性"]) == 1.0
    assert choice_accuracy(["阴性"], ["阳性"], ["阳性", "阴性"]) == 0.0


def test_set_f1_is_micro_over_items():
    # example 1: pred {a, b, c}, gold {a, b}: tp 2; example 2: pred {}, gold {d}: tp 0
    # micro: P = 2/3, R = 2/3 -> F1 = 2/3 (a macro average would give (0.8 + 0) / 2 = 0.4)
    assert set_f1(["a, b, c", ""], ["b;a", "d"]) == pytest.approx(2 / 3)
    assert set_f1(["A ,B"], ["b,a"]) == 1.0  # order, case and spaces do not matter
    assert set_f1(["", ""], ["", ""]) == 1.0  # nothing to find, nothing found
    assert set_f1([""], ["x"]) == 0.0
    assert set_f1(["头痛，发热、咳嗽"], ["咳嗽，头痛"]) == pytest.approx(2 * 2 / (3 + 2))  # full-width separators
    assert set_f1(["a|b"], ["a|c"], separators="|") == pytest.approx(0.5)


def test_rouge_l_handles_words_and_cjk_characters():
    assert rouge_l(["the cat sat"], ["the cat sat"]) == 1.0
    # LCS 3 of prediction 3, reference 4: P = 1, R = 3/4 -> F = 6/7
    assert rouge_l(["the cat sat"], ["the cat sat down"]) == pytest.approx(6 / 7)
    # rouge-score's own tokenizer drops non-ASCII text (this would be 0); here each ideograph is a token
    assert rouge_l(["患者头痛"], ["患者发热头痛"]) == pytest.approx(2 * 1.0 * (4 / 6) / (1 + 4 / 6))
    assert rouge_l(["Café au lait"], ["café"]) == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert rouge_l([""], ["some text"]) == 0.0
    assert rouge_l([""], [""]) == 1.0
    assert UnicodeWordTokenizer().tokenize("Hello, 世界! naïve_x") == ["hello", "世", "界", "naïve", "x"]


def test_length_mismatch_is_an_error():
    for metric in (exact_match, choice_accuracy, set_f1, rouge_l):
        with pytest.raises(ValueError, match="2 predictions for 1 references"):
            metric(["a", "b"], ["a"])


def test_parse_metric_and_task_metrics():
    assert parse_metric("rouge_l", "x") == MetricSpec("rouge_l")
    spec = parse_metric({"name": "choice_accuracy", "choices": ["yes", "no"]}, "x")
    assert spec(["yes", "no"], ["yes", "yes"]) == 0.5
    with pytest.raises(ValueError, match=r"eval.metrics.nli: unknown metric 'bleu'; known metrics"):
        parse_metric("bleu", "eval.metrics.nli")
    with pytest.raises(ValueError, match="rouge_l has no option"):
        parse_metric({"name": "rouge_l", "choices": ["a"]}, "x")
    with pytest.raises(ValueError, match="choices must be a non-empty list"):
        parse_metric({"name": "choice_accuracy", "choices": []}, "x")
    metrics = task_metrics(["a", "b"], "exact_match", {"b": "set_f1"})
    assert metrics == {"a": MetricSpec("exact_match"), "b": MetricSpec("set_f1")}
    with pytest.raises(ValueError, match=r"in no cluster: \['zz'\]"):
        task_metrics(["a", "b"], "exact_match", {"zz": "set_f1"})


def test_example_scores_average_to_the_task_score_except_set_f1_micro_averaging():
    predictions = ["the answer is not sure", "sure", "YES", "no idea", "a, b", "c"]
    references = ["not sure", "sure", "yes", "no", "a, b", "c, d"]
    for name in ("exact_match", "choice_accuracy", "rouge_l"):
        spec = MetricSpec(name)
        scores = example_scores(spec, predictions, references)
        assert len(scores) == 6 and sum(scores) / 6 == pytest.approx(spec(predictions, references)), name
    # choice_accuracy judges one answer against all of the task's choices: "not sure" is not read as "sure".
    assert example_scores(MetricSpec("choice_accuracy"), predictions, references)[:2] == [1.0, 1.0]
    assert example_scores(MetricSpec("set_f1"), ["a, b", "c"], ["a, b", "c, d"]) == pytest.approx([1.0, 2 / 3])
