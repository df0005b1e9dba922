"""The run folder (coat_model.train.run_dir): one layout and one resume rule for coat-train (run.json) and the COAT Train
node (node_run.json); folders written before the class still resume."""

import json

import pytest
import torch

from coat_model.train.run_dir import CLI_RECORD, NODE_RECORD, RunDirectory
from coat_model.train.state import save_state


@pytest.mark.parametrize("record", [CLI_RECORD, NODE_RECORD])
def test_the_resume_rule_is_the_same_for_the_command_line_and_the_node(tmp_path, record):
    run = RunDirectory(tmp_path / "run", record)
    assert run.record == tmp_path / "run" / record
    assert not run.resumes(True) and not run.resumes(False)     # nothing saved: both start at step 0
    save_state({"step": 3, "w": torch.zeros(2)}, run.state)     # a run stopped at step 3
    assert run.resumes(True)                                    # asked (--resume, restart off) and saved: resume
    assert not run.resumes(False)                               # not asked: start at step 0
    run.write_record({"settings": {"seed": 1}})
    run.samples.mkdir()
    run.sample(3).write_bytes(b"png")
    for path in (run.model, run.metrics, run.losses):
        path.write_text("x")
    run.clear()                                                 # the node's restart
    assert not run.resumes(True) and run.read_record() is None
    assert not any(p.exists() for p in run.run_files) and run.sample(3).is_file()


def test_file_names_are_the_ones_runs_already_have(tmp_path):
    """Folders of both kinds written before RunDirectory keep their names (nothing to migrate)."""
    cli, node = RunDirectory(tmp_path), RunDirectory(tmp_path, NODE_RECORD)
    assert cli.model.name == "coat.safetensors" and cli.state.name == "train_state.safetensors"
    assert cli.metrics.name == "metrics.jsonl" and node.losses.name == "losses.jsonl"
    assert cli.sample(12).relative_to(tmp_path).as_posix() == "samples/step_0000012.png"
    assert cli.record.name == "run.json" and node.record.name == "node_run.json"
    with pytest.raises(ValueError):
        RunDirectory(tmp_path, "other.json")


def test_a_node_run_folder_from_before_resumes_with_its_record(tmp_path):
    (tmp_path / "node_run.json").write_text(json.dumps({"settings": {"seed": 5}, "steps": 2}, indent=2))
    save_state({"step": 2}, tmp_path / "train_state.safetensors")
    run = RunDirectory(tmp_path, NODE_RECORD)
    assert run.resumes(True) and run.read_record()["settings"] == {"seed": 5}
    (tmp_path / "node_run.json").write_text("{not json")        # a damaged record reads as none
    assert run.read_record() is None


def test_command_line_record_keeps_the_history_of_invocations(tmp_path):
    run = RunDirectory(tmp_path)
    run.append_invocation(0, {"command": "coat-train --steps 100"})
    run.append_invocation(100, {"command": "coat-train --resume --steps 300"})
    assert [h["start_step"] for h in run.read_record()["history"]] == [0, 100]


def test_the_command_line_follows_the_rule(tmp_path, monkeypatch):
    """coat-train --resume on a folder without a state starts fresh; with one, it resumes (the rule above)."""
    from coat_model.train import cli as train

    seen = []
    real = RunDirectory.resumes
    monkeypatch.setattr(RunDirectory, "resumes", lambda self, requested: seen.append(
        (self.record_name, requested)) or real(self, requested))

    class Stop(Exception):
        pass

    def no_training(*_a, **_k):
        raise Stop

    monkeypatch.setattr(train, "make_dataset", no_training)
    for resume in ([], ["--resume"]):
        with pytest.raises(Stop):
            train.main(["--out", str(tmp_path), "--preset", "tiny", "--device", "cpu", *resume])
    assert seen == [(CLI_RECORD, False), (CLI_RECORD, True)]


def test_set_on_a_resumed_run_is_refused_not_ignored(tmp_path, capsys):
    from coat_model.train import cli as train

    (tmp_path / "train_state.safetensors").write_bytes(b"a state")  # only its presence is read before the check
    code = train.main(["--out", str(tmp_path), "--preset", "tiny", "--device", "cpu", "--resume", "--set", "lr=0.1"])
    err = capsys.readouterr().err
    assert code == 2 and "--set changes the settings of a new run" in err and "--init" in err
    assert (tmp_path / "train_state.safetensors").read_bytes() == b"a state"
    # lr above has its own option (--set lr=... is --lr); a field without one is refused the same way
    assert train.main(["--out", str(tmp_path), "--preset", "tiny", "--device", "cpu", "--resume", "--set",
                       "pair_mix=1,0,0"]) == 2
