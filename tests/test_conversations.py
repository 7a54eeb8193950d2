"""Every kind of bad input gets FILE:LINE: reason; awkward but valid files are read as a person would expect."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, write_jsonl
from conversations import read_conversations

GOOD = '{"prompt": "Hi", "completion": "Hello!"}'
INVALID_LINES = [
    ('{"prompt": "Hi", "completion": ', "invalid JSON: Expecting value (column 32)"),
    ('["Hi", "Hello!"]', "expected a JSON object, got list"),
    ('{"question": "Hi", "answer": "Hello!"}', "unknown record shape with keys ['answer', 'question']"),
    ('{"prompt": "Hi"}', "missing field 'completion'"),
    ('{"prompt": "Hi", "completion": "  "}', "field 'completion' is empty"),
    ('{"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "x"}]}',
     "message 1: field 'content' must be a string, got number"),
    ('{"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "Hi"}]}',
     "roles out of order: message 1 is 'assistant', expected 'user'"),
    ('{"messages": [{"role": "user", "content": "Hi"}]}', "no assistant turn at the end"),
    ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x", "weight": 2}]}',
     "message 2: weight must be 0 or 1, got 2"),
    ('{"conversations": [{"from": "bot", "value": "Hi"}]}', "turn 1: unknown speaker 'bot'"),
    ('{"messages": [{"role": "tool", "content": "Hi"}]}', "message 1: unknown role 'tool'"),
    ('{"context": ["Hi", "Hello"], "response": "x"}', "field 'context' must end with a user turn"),
]


def rows_of(path):
    return list(read_conversations([str(path)]))


@pytest.mark.parametrize("line,reason", INVALID_LINES, ids=[r.split(":")[0][:30] for _, r in INVALID_LINES])
def test_invalid_record_reason(tmp_path, line, reason):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, line])
    good, bad = rows_of(path)
    assert good["error"] is None and bad["messages"] == []
    assert bad["source"] == f"{path}:2"
    assert bad["error"].startswith(reason)


def test_bom_crlf_blank_lines_and_no_final_newline_are_read(tmp_path):
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\r\n\r\n  \r\n" + GOOD.encode())
    rows = rows_of(path)
    assert [r["source"] for r in rows] == [f"{path}:1", f"{path}:4"]
    assert all(r["error"] is None for r in rows)


def test_non_utf8_bytes_are_reported_with_the_column(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(GOOD.encode() + b'\n{"prompt": "caf\xe9", "completion": "x"}\n')
    assert rows_of(path)[1]["error"] == "not valid UTF-8: byte 0xe9 at column 16"


def test_json_list_records_report_the_line_they_start_on(tmp_path):
    path = tmp_path / "list.json"
    path.write_text('[\n  {"prompt": "Hi", "completion": "Hello!"},\n  {"prompt": "Hi"}\n]\n')
    rows = rows_of(path)
    assert [(r["source"], r["error"]) for r in rows] == [
        (f"{path}:2", None), (f"{path}:3", "missing field 'completion'")]


def test_json_file_that_is_not_a_list(tmp_path):
    path = tmp_path / "object.json"
    path.write_text('{"prompt": "Hi", "completion": "Hello!"}')
    assert rows_of(path)[0]["error"] == "a .json file must hold a list of records"


def test_field_map_renames_keys_before_detection(tmp_path):
    path = write_jsonl(tmp_path / "faq.jsonl", [{"id": 1, "q": "Hi", "a": "Hello!"}])
    (row,) = read_conversations([str(path)], field_map={"q": "prompt", "a": "completion"})
    assert [(m["role"], m["content"]) for m in row["messages"]] == [("user", "Hi"), ("assistant", "Hello!")]


def run_data_prep(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "data_prep.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_fails_on_invalid_lines_naming_file_line_and_reason(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [GOOD] + [line for line, _ in INVALID_LINES])
    with open(path, "ab") as handle:
        handle.write(b'{"prompt": "caf\xe9", "completion": "x"}')
    result = run_data_prep(path, "--output_dir", tmp_path / "out")
    assert result.returncode == 1
    for number, (_, reason) in enumerate(INVALID_LINES[:10], start=2):
        assert f"{path}:{number}: {reason}" in result.stderr
    assert "... and 3 more" in result.stderr
    assert "error: 13 invalid record(s); fix them or pass --skip_invalid" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_skip_invalid_writes_dataset_and_lists_every_reject(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [GOOD] + [line for line, _ in INVALID_LINES] + [GOOD])
    out = tmp_path / "out"
    result = run_data_prep(path, "--skip_invalid", "--output_dir", out, "--show", 1)
    assert result.returncode == 0, result.stderr
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rejects] == [f"{path}:{n}" for n in range(2, 2 + len(INVALID_LINES))]
    report = json.loads((out / "report.json").read_text())
    assert report["train"]["records_read"] == 14
    assert report["train"]["kept"] == 2
    assert report["train"]["dropped"] == {"invalid": 12}
    assert "[[Hello!<|im_end|>]]" in result.stdout
    assert f"saved to {out}" in result.stdout


def test_cli_rejects_empty_input(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    result = run_data_prep(path, "--output_dir", tmp_path / "out")
    assert result.returncode == 1
    assert f"{path}: no records (empty input)" in result.stderr


def test_cli_rejects_a_missing_file(tmp_path):
    result = run_data_prep(tmp_path / "nope.jsonl")
    assert result.returncode == 1
    assert f"{tmp_path / 'nope.jsonl'}: no such file" in result.stderr
