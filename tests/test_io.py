"""Checkpoints: safetensors round trip, refusal of pickles (nothing executes), truncation, other configs,
and the rosinality StyleGAN2 importer."""

import os
import pickle

import pytest
import torch

import coat_model
from coat_model import COAT, COATConfig, CheckpointError


def _images(seed):
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = COAT(COATConfig.tiny()).eval()
    model.w_avg.normal_()
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = coat_model.load(path)
    assert loaded.config == model.config
    for a, b in zip(model.transfer(_images(0), _images(1)), loaded.transfer(_images(0), _images(1))):
        assert torch.equal(a, b)
    assert coat_model.io.metadata(path)["format_version"] == coat_model.io.FORMAT_VERSION
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temporary file


class _Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path(__import__('os').environ['COAT_PWNED']).write_text('x')",))


def test_pickle_under_safetensors_name_is_refused_and_never_runs(tmp_path, monkeypatch):
    flag = tmp_path / "pwned"
    monkeypatch.setenv("COAT_PWNED", str(flag))
    legacy = tmp_path / "legacy.safetensors"
    with open(legacy, "wb") as f:
        pickle.dump({"w": _Boom()}, f)
    zipped = tmp_path / "zipped.safetensors"
    torch.save({"w": torch.zeros(1)}, zipped)
    for path in (legacy, zipped):
        with pytest.raises(CheckpointError, match="never unpickles"):
            coat_model.load(path)
    assert not flag.exists()


def test_a_checkpoint_whose_header_length_begins_with_the_pickle_byte_loads(tmp_path):
    """The first byte of a safetensors file is the low byte of its header's length, 0x80 for 1 header in 32 (they
    are padded to 8 bytes): such a file is a checkpoint, not a pickle (a trained checkpoint was refused so)."""
    model = COAT(COATConfig.tiny()).eval()
    path = tmp_path / "m.safetensors"
    for filler in range(300):
        model.save(path, metadata={"note": "x" * filler})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert coat_model.load(path).config == model.config
    assert coat_model.io.metadata(path)["note"].startswith("x")


def test_importer_refuses_malicious_pickle(tmp_path, monkeypatch):
    flag = tmp_path / "pwned"
    monkeypatch.setenv("COAT_PWNED", str(flag))
    path = tmp_path / "g.pt"
    torch.save({"g_ema": _Boom()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        coat_model.import_stylegan2(path)
    assert not flag.exists()


def test_truncated_missing_foreign_and_other_config_files(tmp_path):
    model = COAT(COATConfig.tiny())
    good = tmp_path / "good.safetensors"
    model.save(good)
    data = good.read_bytes()
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        coat_model.load(truncated)
    with pytest.raises(CheckpointError, match="not found"):
        coat_model.load(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match=".safetensors files"):
        coat_model.load(tmp_path / "x.ckpt")
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"a": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a COAT checkpoint"):
        coat_model.load(foreign)
    # Weights of one architecture under the config of another.
    other = tmp_path / "other.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "coat", "format_version": "1", "config": COATConfig.tiny(w_dim=8).to_json()}
    save_file(state, other, metadata=meta)
    with pytest.raises(CheckpointError, match="does not match its own config"):
        coat_model.load(other)


def _rosinality_state(model: COAT) -> dict:
    """A generator state dict in rosinality's layout (incl. its persistent blur kernels and a mapping net)."""
    g = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    g["conv1.conv.blur.kernel"] = torch.ones(4, 4)
    g["to_rgbs.0.upsample.kernel"] = torch.ones(4, 4)
    w_dim = model.config.w_dim
    for i in range(1, 3):
        g[f"style.{i}.weight"] = torch.randn(w_dim, w_dim)
        g[f"style.{i}.bias"] = torch.zeros(w_dim)
    return g


def test_stylegan2_importer_loads_the_synthesis_network(tmp_path):
    torch.manual_seed(0)
    cfg = COATConfig.tiny(channel_base=16 * 16, channel_max=16)
    src = COAT(cfg)
    for p in src.decoder.parameters():
        p.data.normal_()
    path = tmp_path / "g.pt"
    torch.save({"g_ema": _rosinality_state(src), "latent_avg": torch.full((cfg.w_dim,), 0.5)}, path)
    model = coat_model.import_stylegan2(path, cfg)
    for k, v in src.decoder.state_dict().items():
        assert torch.equal(model.decoder.state_dict()[k], v), k
    torch.testing.assert_close(model.w_avg, torch.full((cfg.w_dim,), 0.5))
    del_avg = tmp_path / "g2.pt"
    torch.save({"g_ema": _rosinality_state(src)}, del_avg)
    assert coat_model.import_stylegan2(del_avg, cfg, n_mean=64).w_avg.abs().sum() > 0  # from the mapping net
    inferred = coat_model.import_stylegan2(path)  # config read off the weights
    assert inferred.config.resolution == 32 and inferred.config.w_dim == cfg.w_dim


def test_a_save_removes_the_temporary_files_of_killed_writers_only(tmp_path):
    import subprocess
    import sys

    from coat_model.io import atomic_save_file

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    target = tmp_path / "m[1].safetensors"  # glob characters in the name are taken literally
    orphan = tmp_path / f".{target.name}.{dead_pid}.abc.tmp"
    live = tmp_path / f".{target.name}.{os.getppid()}.def.tmp"  # a writer still running
    other = tmp_path / f".other.safetensors.{dead_pid}.ghi.tmp"  # another file's business
    for f in (orphan, live, other):
        f.write_bytes(b"torn")
    atomic_save_file({"x": torch.zeros(2)}, target, {"k": "v"})
    assert target.is_file() and not orphan.exists() and live.exists() and other.exists()
