"""`transformers-internvl filter`: the paper's repetition filter on JSONL training data."""

import json

from transformers_internvl.cli import main
from transformers_internvl.training.filtering import filter_jsonl, repetition_reason

LOOP = " ".join(["the cat sat on the mat and looked at the dog"] * 4)  # 44 words, 35 10-grams, 11 distinct repeated
# 40 distinct words written twice: 71 10-grams, the 31 inside the first copy recur -> 31 / 71 = 0.437 > 0.4
TWICE = " ".join([f"w{i}" for i in range(40)] * 2)


def _row(answer, key="conversations"):
    if key == "messages":
        return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}]}
    return {"conversations": [{"from": "human", "value": LOOP}, {"from": "gpt", "value": answer}]}


def test_reason_uses_only_answers_and_the_10_gram_rule():
    assert repetition_reason(_row("a short and varied answer")) is None  # the looping question is not checked
    assert repetition_reason(_row(LOOP)) is None  # 11 / 35 = 0.314: a short-period loop stays below 0.4
    assert repetition_reason(_row(TWICE)) == f"answer 0: {31 / 71:.3f} of its 10-grams repeated (> 0.4)"
    assert repetition_reason(_row(TWICE, "messages")).startswith("answer 0: ")
    assert repetition_reason(_row(" ".join([f"w{i}" for i in range(30)] * 2))) == (
        f"answer 0: {21 / 51:.3f} of its 10-grams repeated (> 0.4)"
    )
    assert repetition_reason(_row(" ".join([f"w{i}" for i in range(20)] * 2))) is None  # 11 / 31 = 0.355


def test_cli_writes_kept_rows_and_prints_dropped(tmp_path, capsys):
    rows = [_row("fine answer"), _row(TWICE), _row("another fine one", "messages")]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    assert main(["filter", str(source), "-o", str(tmp_path / "out.jsonl")]) == 0
    kept = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert kept == [rows[0], rows[2]]
    out = capsys.readouterr().out
    assert f"dropped {source}:2: answer 0: " in out and f"dropped {source}:4: invalid JSON" in out
    assert "kept 2, dropped 2" in out
    report = filter_jsonl(source, tmp_path / "again.jsonl", threshold=1.0)
    assert report.kept == 3 and report.dropped == 1


def test_filter_defaults_are_the_original_settings():
    from transformers_internvl.training import filtering

    # original `check_conversations_repetition` (internvl_chat/internvl/train/dataset.py): 10-grams, ratio 0.4
    assert (filtering.REPETITION_NGRAM_SIZE, filtering.REPETITION_THRESHOLD) == (10, 0.4)
    assert filtering.filter_jsonl.__defaults__ == (10, 0.4)
