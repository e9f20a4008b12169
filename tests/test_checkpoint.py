"""Checkpoints that cannot lie: checksums written with every checkpoint and verified, pruning that a kill
cannot leave half-done, and only complete step-N directories count."""

import json

import pytest

from r1kit.checkpoint import (CHECKSUMS, CheckpointError, _discard, _publish, list_checkpoints, verify_checksums,
                              write_checksums)


def fake_checkpoint(root, step, complete=True):
    path = root / f"step-{step}"
    (path / "accelerator").mkdir(parents=True)
    (path / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    (path / "accelerator" / "optimizer.bin").write_bytes(b"o" * 100)
    if complete:
        write_checksums(path)
    return path


def test_checksums_cover_every_file_and_name_the_one_that_changed(tmp_path):
    path = fake_checkpoint(tmp_path, 1)
    listed = json.loads((path / CHECKSUMS).read_text())["files"]
    assert sorted(listed) == ["accelerator/optimizer.bin", "model.safetensors"]
    assert listed["model.safetensors"]["bytes"] == 2048
    assert verify_checksums(path) == 2
    model = path / "model.safetensors"
    original = model.read_bytes()
    flipped = bytearray(original)
    flipped[1000] ^= 0x01  # one bit, same size
    cases = [  # (how the checkpoint was damaged, the one line that names it)
        (lambda: model.write_bytes(bytes(flipped)), f"{model} does not match its checksum"),
        (lambda: model.write_bytes(original[:1000]), f"{model} is torn: 1000 bytes, 2048 were written"),
        (lambda: model.unlink(), f"{model} is missing from the checkpoint"),
        (lambda: (path / "extra.pt").write_bytes(b"x"), f"{path / 'extra.pt'} was not written with the checkpoint"),
        (lambda: (path / CHECKSUMS).write_text("{tor"), f"{path} has no readable {CHECKSUMS}"),
    ]
    for damage, message in cases:
        damage()
        with pytest.raises(CheckpointError) as err:
            verify_checksums(path)
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
        model.write_bytes(original)
        (path / "extra.pt").unlink(missing_ok=True)
        write_checksums(path)
    assert verify_checksums(path) == 2


def test_only_complete_real_step_directories_are_checkpoints(tmp_path):
    for step in (1, 2, 10):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 11, complete=False)  # cut short before its checksums (an older r1kit, or a copy)
    (tmp_path / ".tmp-step-12").mkdir()  # a save killed mid-write
    fake_checkpoint(tmp_path / "elsewhere", 13)
    (tmp_path / "step-13").symlink_to(tmp_path / "elsewhere" / "step-13")  # not r1kit's to count or prune
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-1", "step-2", "step-10"]  # by number, not name


def test_pruning_renames_to_the_trash_first(tmp_path, monkeypatch):
    import r1kit.checkpoint as checkpoint

    for step in (1, 2):
        fake_checkpoint(tmp_path, step)

    def killed_while_deleting(path, *args, **kwargs):  # the kill lands after the rename, mid-deletion
        if path.exists():
            (path / "model.safetensors").unlink()
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_while_deleting)
    with pytest.raises(KeyboardInterrupt):
        _discard(tmp_path / "step-1")
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-2"]  # the half-deleted one never counts
    assert (tmp_path / ".trash-step-1").is_dir()
    tmp = fake_checkpoint(tmp_path, 3)
    tmp.rename(tmp_path / ".tmp-step-3")
    _publish(tmp_path / ".tmp-step-3", tmp_path / "step-3")  # the next save empties the trash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2", "step-3"]


def test_a_checkpoint_saved_again_replaces_the_old_one_whole(tmp_path):
    fake_checkpoint(tmp_path, 2)
    new = fake_checkpoint(tmp_path / "new", 2)
    (new / "model.safetensors").write_bytes(b"new")
    write_checksums(new)
    _publish(new, tmp_path / "step-2")
    assert (tmp_path / "step-2" / "model.safetensors").read_bytes() == b"new"
    assert verify_checksums(tmp_path / "step-2") == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["new", "step-2"]
