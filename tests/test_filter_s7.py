"""`filter_jsonl` / `transformers-internvl filter` on bad settings and malformed rows (session 7): settings are refused
by name before anything is written; a malformed row is dropped with a reason naming the field, the rest are kept."""

import json
import math

import pytest

from transformers_internvl.training.filtering import filter_jsonl, repetition_reason

GOOD = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "a short answer"}]}
# 50 distinct words said twice: 91 10-grams, 41 distinct ones occur twice -> 0.45 > 0.4 (the paper's rule).
LOOP = {"conversations": [{"from": "gpt", "value": " ".join([f"w{i}" for i in range(50)] * 2)}]}


@pytest.mark.parametrize(
    "ngram,threshold,name",
    [
        (0, 0.4, "ngram"),
        (-3, 0.4, "ngram"),
        (True, 0.4, "ngram"),
        (2.5, 0.4, "ngram"),
        (10, math.nan, "threshold"),
        (10, math.inf, "threshold"),
        (10, -0.1, "threshold"),
        (10, 1.5, "threshold"),
        (10, "0.4", "threshold"),
    ],
)
def test_bad_settings_are_refused_before_writing(tmp_path, ngram, threshold, name):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(GOOD) + "\n")
    with pytest.raises(ValueError, match=f"`{name}`"):
        filter_jsonl(source, tmp_path / "out.jsonl", ngram, threshold)
    with pytest.raises(ValueError, match=f"`{name}`"):
        repetition_reason(GOOD, ngram, threshold)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


@pytest.mark.parametrize(
    "row,field",
    [
        ({"conversations": "abc"}, "`conversations`"),
        ({"conversations": [1, 2]}, "`conversations`"),
        ({"conversations": [{"from": "gpt", "value": 5}]}, "`conversations[0].value`"),
        ({"messages": {"role": "assistant"}}, "`messages`"),
        ({"messages": [{"role": "assistant", "content": [5]}]}, "`messages[0].content`"),
        ({"messages": [{"role": "assistant", "content": 7}]}, "`messages[0].content`"),
        ({"messages": [{"role": "assistant", "content": [{"type": "text", "text": None}]}]}, "`messages[0].content`"),
        # no turns at all (the README's "rows whose turns are not ... are dropped"; the dataset skips them too)
        ({"foo": 1}, "neither `conversations` nor `messages`"),
        ({"image": "a.jpg", "conversation": []}, "neither `conversations` nor `messages`"),
    ],
)
def test_malformed_rows_are_dropped_with_the_field_named(tmp_path, row, field):
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in (GOOD, row, LOOP, GOOD)) + "\n")
    report = filter_jsonl(source, tmp_path / "out.jsonl")
    assert report.kept == 2
    assert [number for number, _ in report.dropped_lines] == [2, 3]
    assert report.dropped_lines[0][1].startswith("malformed row: ") and field in report.dropped_lines[0][1]
    assert "repeated" in report.dropped_lines[1][1]
    assert (tmp_path / "out.jsonl").read_text().splitlines() == [json.dumps(GOOD)] * 2


def test_cli_reports_bad_threshold_and_dropped_rows(tmp_path, capsys):
    from transformers_internvl.cli.app import main

    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"conversations": "abc"}) + "\n" + json.dumps(GOOD) + "\n")
    assert main(["filter", str(source), "-o", str(tmp_path / "out.jsonl"), "--threshold", "nan"]) != 0
    assert "`threshold`" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()
    assert main(["filter", str(source), "-o", str(tmp_path / "out.jsonl")]) == 0
    out = capsys.readouterr().out
    assert f"dropped {source}:1: malformed row: `conversations` must be a list of objects" in out
    assert "kept 1, dropped 1" in out
