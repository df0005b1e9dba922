"""The quality bench split into shards (``quality --first``) and added up (``python -m coat_model.bench merge``):
the merge is the single run's record, and records that are not one run's shards are refused with the reason."""

import json

import pytest
import torch

from coat_model.bench import quality, shards
from coat_model.bench.shards import ShardError, merge
from coat_model.model.coat import COAT
from coat_model.model.config import COATConfig

META = dict(ckpt="runs/tiny.safetensors", data="procedural:faces", split="easy", settings={}, resolution=32)


def assert_same(got, expected, where=()):
    """Nested dicts of numbers (or None) equal to 1e-9, key for key."""
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            assert_same(got[key], expected[key], where + (key,))
    else:
        assert got == (None if expected is None else pytest.approx(expected, abs=1e-9)), where


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return COAT(COATConfig.tiny()).eval()


@pytest.fixture(scope="module")
def runs(tiny_model):
    """The same 6 pairs benched as one run and as shards (batches of 2): pairs 0-1, 2-5, 2-3 and 4-5."""
    whole = quality.report(tiny_model, n_pairs=6, batch_size=2)
    parts = [quality.record(quality.report(tiny_model, n_pairs=n, batch_size=2, first=first), pairs=n, first=first,
                            **META) for first, n in ((0, 2), (2, 4), (2, 2), (4, 2))]
    return whole, parts


def test_merged_shards_are_the_single_run(runs):
    whole, parts = runs
    merged = merge([parts[1], parts[0]])  # in any order; unequal shards: a mean of their means would be off
    assert (merged["pairs"], merged["first"], merged["shards"]) == (6, 0, [[0, 2], [2, 4]])
    assert_same(merged["methods"], whole.methods)
    assert_same(merged["parts"], whole.parts)
    thirds = merge([merge([parts[0], parts[2]]), parts[3]])  # a merged record merges on
    assert_same(thirds["methods"], whole.methods)
    assert_same(thirds["parts"], whole.parts)


def test_a_shard_differs_from_the_run_it_is_not(runs):
    whole, parts = runs
    assert parts[2]["methods"]["coat"]["psnr"] != pytest.approx(whole.methods["coat"]["psnr"], abs=1e-6)


def test_a_shard_starts_where_one_of_the_full_runs_batches_does(tiny_model):
    with pytest.raises(ValueError, match="multiple of the batch size"):
        quality.report(tiny_model, n_pairs=2, batch_size=2, first=1)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(first=4), "leave a gap at pair 2"),
    (lambda r: r.update(first=1), "overlap at pair 1"),
    (lambda r: r.update(split="hard"), "different runs: split"),
    (lambda r: r.update(settings={"flow_median": 2}), "different runs: settings"),
    (lambda r: r.update(ckpt="other.safetensors"), "different checkpoints"),
    (lambda r: r.pop("sums"), "no sums to add up"),
])
def test_records_that_do_not_tile_one_run_are_refused_with_the_reason(runs, change, message):
    first, second = (json.loads(json.dumps(r)) for r in runs[1][:3:2])
    change(second)
    with pytest.raises(ShardError, match=message):
        merge([first, second])


def test_a_first_shard_is_needed(runs):
    with pytest.raises(ShardError, match="leave a gap at pair 0"):
        merge([runs[1][3]])


def test_the_commands_write_shards_and_merge_them(tiny_model, tmp_path, capsys):
    ckpt = tmp_path / "tiny.safetensors"
    tiny_model.save(ckpt)
    args = ["--ckpt", str(ckpt), "--pairs", "2", "--set", "fill=global", "--json"]
    assert quality.main(args + [str(tmp_path / "a.json")]) == 0
    record = json.loads((tmp_path / "a.json").read_text())
    assert (record["first"], record["pairs"], record["settings"]) == (0, 2, {"fill": "global"})
    plain = tmp_path / "plain.json"
    assert quality.main(["--ckpt", str(ckpt), "--pairs", "2", "--json", str(plain)]) == 0
    assert json.loads(plain.read_text())["methods"]["coat"] != record["methods"]["coat"]  # the setting ran
    capsys.readouterr()
    assert shards.main([str(tmp_path / "a.json"), "--json", str(tmp_path / "m.json")]) == 0
    assert "coat_gt_matches" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["methods"] == record["methods"]
    with pytest.raises(SystemExit):
        shards.main([str(tmp_path / "a.json"), str(plain)])
    assert "different runs: settings" in capsys.readouterr().err


class ClosedPipe:
    """A stdout whose reader has gone, as ``merge ... | head -1`` leaves it."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass


def test_the_merged_record_is_written_before_a_closed_pipe_stops_the_tables(runs, tmp_path, monkeypatch):
    paths = []
    for i, part in enumerate(runs[1][:2]):
        paths.append(tmp_path / f"s{i}.json")
        paths[-1].write_text(json.dumps(part))
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    with pytest.raises(BrokenPipeError):
        shards.main([str(p) for p in paths] + ["--json", str(tmp_path / "m.json")])
    assert_same(json.loads((tmp_path / "m.json").read_text())["methods"], runs[0].methods)


@pytest.mark.parametrize("args, message", [
    (["--first", "10"], "multiple of 25"),
    (["--set", "resolution=64"], "inference default"),
    (["--set", "flow_median"], "OPTION=VALUE"),
])
def test_the_quality_command_refuses_a_bad_shard_or_setting(tiny_model, tmp_path, capsys, args, message):
    ckpt = tmp_path / "tiny.safetensors"
    tiny_model.save(ckpt)
    with pytest.raises(SystemExit):
        quality.main(["--ckpt", str(ckpt), "--pairs", "2"] + args)
    assert message in capsys.readouterr().err
