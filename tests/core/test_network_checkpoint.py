"""Safe, tolerant loading of Lightning checkpoints, strict matching, clear errors, streaming conversion, cache."""

import builtins
import io
import json
import logging
import os
import pathlib
import pickle
import posix
import subprocess
import sys
import timeit
import zipfile

import numpy as np
import pytest
import safetensors.torch
import torch

from core.errors import CheckpointError, DiskFullError, OperationCancelled
from core.network import NetworkCfg, PixelNetwork, convert_checkpoint, get_config, load_network, run_network
import core.network.checkpoint as checkpoint
from core.network.checkpoint import (
    cached_conversion_path, inspect_network_file, read_lightning_checkpoint, read_network_file,
    resolve_interpolations, to_plain,
)
from core.network.synthetic import (
    lightning_cfg_tree, synthetic_system_state, write_lightning_checkpoint, write_synthetic_checkpoint,
)
from core.network import streaming, torchzip
from diskfull import ENOSPCWriter, fill

#: Globals a real OmegaConf 2.x DictConfig dump references (learned from omegaconf 2.4 with torch.save).
OMEGACONF_DUMP_GLOBALS = {
    "omegaconf.dictconfig.DictConfig", "omegaconf.base.ContainerMetadata", "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode", "typing.Any", "builtins.dict", "collections.defaultdict",
}
#: What a Lightning training run adds around the network (as in the issue's report), numpy 1 names.
LIGHTNING_EXTRAS = {
    "numpy.core.multiarray._reconstruct", "numpy.core.multiarray.scalar", "numpy.dtype", "numpy.ndarray",
    "pathlib.PosixPath", "pathlib.PurePosixPath", "datetime.datetime", "functools.partial",
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint", "torch.optim.adamw.AdamW", "builtins.int",
}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return write_synthetic_checkpoint(tmp_path_factory.mktemp("ckpt") / "uv.ckpt", "tiny", seed=3)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(5).random((512, 512, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def reference_output(image):
    """Raw output of the synthetic weights loaded by hand (no TTA)."""
    return run_network(_independent_model(), image, flip_tta=False)


def _independent_model(seed=3, cfg_name="tiny"):
    """The synthetic weights loaded by hand: prefix stripped, training buffer dropped."""
    cfg = get_config(cfg_name)
    state = synthetic_system_state(cfg, seed)
    net = PixelNetwork(cfg)
    net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")}, strict=True)
    return net


def test_reads_configuration_and_weights(tiny_ckpt):
    state, cfg = read_lightning_checkpoint(tiny_ckpt)
    assert cfg == get_config("tiny")
    assert "vertex_weight_mask" not in state and not any(k.startswith("net.") for k in state)
    ref = _independent_model()
    for key, value in ref.state_dict().items():
        assert torch.equal(state[key], value), key


def test_stand_in_carries_the_training_state_of_a_real_run(tiny_ckpt):
    """The stand-in names what a training checkpoint names; torch's weights-only load refuses it, ours reads it."""
    names = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(tiny_ckpt)))
    assert names == OMEGACONF_DUMP_GLOBALS | LIGHTNING_EXTRAS
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tiny_ckpt, weights_only=True)
    state, cfg = read_lightning_checkpoint(tiny_ckpt)
    assert cfg == get_config("tiny") and len(state) == len(PixelNetwork(cfg).state_dict())


def test_numpy2_names_read_as_inert_data(tmp_path):
    cfg = get_config("tiny")
    path = write_lightning_checkpoint(tmp_path / "np2.ckpt", synthetic_system_state(cfg, 0), lightning_cfg_tree(cfg),
                                      module_renames={"numpy.core": "numpy._core"})
    names = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    assert {"numpy._core.multiarray._reconstruct", "numpy._core.multiarray.scalar"} <= names
    assert not any(name.startswith("numpy.core.") for name in names)
    assert inspect_network_file(path).cfg == cfg


def test_other_objects_are_inert_placeholders_that_record_their_arguments(tiny_ckpt):
    with torchzip.open_archive(tiny_ckpt, checkpoint.OMEGACONF_STANDINS) as archive:
        tree = archive.tree
        assert "pathlib.PosixPath" in archive.placeholder_names
    callback = next(iter(tree["callbacks"].values()))
    dirpath = callback["dirpath"]
    assert isinstance(dirpath, torchzip.Placeholder) and dirpath.global_name == "pathlib.PosixPath"
    assert dirpath.args == pathlib.PosixPath("/runs/pixel3dmm/uv/checkpoints").__reduce__()[1]
    score = callback["best_model_score"]
    assert score.global_name == "numpy.core.multiarray.scalar" and score.args[0].global_name == "numpy.dtype"
    model_checkpoint = tree["hyper_parameters"]["checkpoint_callback"]
    assert model_checkpoint.global_name == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
    assert model_checkpoint.state["monitor"] == "val/loss"
    exp_avg = tree["optimizer_states"][0]["state"][0]["exp_avg"]
    assert isinstance(exp_avg, torchzip.TensorRef)  # optimizer tensors stay unread references


def test_inspection_reads_no_weights(tiny_ckpt, monkeypatch):
    def refuse(self, ref):
        raise AssertionError("inspect_network_file must not read tensor data")

    monkeypatch.setattr(torchzip.Archive, "read", refuse)
    info = inspect_network_file(tiny_ckpt)
    assert info.kind == "lightning" and info.cfg == get_config("tiny")
    want = {k: tuple(v.shape) for k, v in PixelNetwork(get_config("tiny")).state_dict().items()}
    assert info.shapes == want and info.ignored == ("vertex_weight_mask",)
    assert info.float32_bytes == 4 * sum(torch.Size(s).numel() for s in want.values())


def test_keys_outside_net_are_ignored_and_listed_in_the_log(tmp_path, caplog):
    state = synthetic_system_state(get_config("tiny"), 0)
    state["lpips.net.slice1.0.weight"] = torch.ones(4, 3, 3, 3)
    state["flame.shapedirs"] = torch.zeros(5, 3, 2)
    path = _write(tmp_path / "extra.ckpt", state)
    with caplog.at_level(logging.INFO, logger="core.network.checkpoint"):
        net = load_network(path, "cpu", cache=False)
    assert net.cfg == get_config("tiny")
    assert "ignoring 3 state_dict entries outside net.*: flame.shapedirs, lpips.net.slice1.0.weight, " \
           "vertex_weight_mask" in caplog.text
    assert "read as inert data" in caplog.text and "pathlib.PosixPath" in caplog.text


def test_damaged_weights_fail_their_checksum(tmp_path, tiny_ckpt):
    damaged = tmp_path / "uv.ckpt"
    raw = bytearray(tiny_ckpt.read_bytes())
    with zipfile.ZipFile(tiny_ckpt) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("/data/0"))
    local_extra = int.from_bytes(raw[info.header_offset + 28: info.header_offset + 30], "little")
    start = info.header_offset + 30 + len(info.filename) + local_extra
    raw[start + 3] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged .*fails its checksum"):
        load_network(damaged, "cpu", cache=False)


def test_loaded_network_predicts_like_the_hand_loaded_one(tiny_ckpt, image, reference_output):
    net = load_network(tiny_ckpt, "cpu", cache=False)
    assert net.cfg == get_config("tiny")
    assert torch.equal(run_network(net, image, flip_tta=False), reference_output)


def _write(path, state=None, tree=None):
    cfg = get_config("tiny")
    return write_lightning_checkpoint(path, state if state is not None else synthetic_system_state(cfg, 0),
                                      tree if tree is not None else lightning_cfg_tree(cfg))


def test_missing_key_is_reported(tmp_path):
    state = synthetic_system_state(get_config("tiny"), 0)
    del state["net.t_conv2.bias"]
    with pytest.raises(CheckpointError, match=r"missing t_conv2\.bias"):
        load_network(_write(tmp_path / "a.ckpt", state), "cpu", cache=False)


def test_unexpected_key_is_reported(tmp_path):
    state = synthetic_system_state(get_config("tiny"), 0)
    state["net.vol_decoder.layers.0.self_attn.learnable_scale"] = torch.ones(())
    with pytest.raises(CheckpointError, match=r"unexpected vol_decoder\.layers\.0\.self_attn\.learnable_scale"):
        load_network(_write(tmp_path / "a.ckpt", state), "cpu", cache=False)


def test_wrong_shape_is_reported(tmp_path):
    state = synthetic_system_state(get_config("tiny"), 0)
    state["net.view_embed"] = torch.zeros(1, 3, 16, 1, 1)
    with pytest.raises(CheckpointError, match=r"view_embed has shape \(1, 3, 16, 1, 1\)"):
        load_network(_write(tmp_path / "a.ckpt", state), "cpu", cache=False)


def test_truncated_download(tmp_path, tiny_ckpt):
    cut = tmp_path / "uv.ckpt"
    cut.write_bytes(tiny_ckpt.read_bytes()[: tiny_ckpt.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="incomplete"):
        load_network(cut, "cpu")


def test_html_page(tmp_path):
    page = tmp_path / "uv.ckpt"
    page.write_text("<!DOCTYPE html><html><body>Google Drive quota exceeded</body></html>")
    with pytest.raises(CheckpointError, match="web page"):
        load_network(page, "cpu")


def test_plain_pickle_and_non_checkpoint_torch_file(tmp_path):
    plain = tmp_path / "plain.ckpt"
    plain.write_bytes(pickle.dumps({"state_dict": {}}, protocol=4))
    with pytest.raises(CheckpointError, match="plain pickle"):
        load_network(plain, "cpu")
    other = tmp_path / "other.ckpt"
    torch.save([torch.zeros(2)], other)
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        load_network(other, "cpu")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00\x01 definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a network checkpoint"):
        load_network(junk, "cpu")


class _Call:
    """Pickles as ``func(*args)``: what a trojan's ``__reduce__`` returns. Callable so that it can itself be the
    function of an outer call (a chain such as ``getattr(__import__('os'), 'system')('...')``)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self, *args):  # never called: only pickled
        raise AssertionError


class _Global:
    """Pickles as the bare global ``module.name`` (for names that no Python object here carries)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __reduce__(self):
        return self.name

    def __call__(self, *args):  # never called: only pickled
        raise AssertionError


def _evil_pickler(globals_by_id):
    class Pickler(pickle._Pickler):
        def save_global(self, obj, name=None):
            if isinstance(obj, _Global):
                self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
                self.memoize(obj)
                return
            super().save_global(obj, name)

        def save(self, obj, save_persistent_id=True):
            if isinstance(obj, _Global):
                return self.save_global(obj)
            return super().save(obj, save_persistent_id)

    import types

    return types.SimpleNamespace(Pickler=Pickler, __name__="pickle")


def _trojans(marker):
    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": _Call(os.system, f"touch {marker}"),
        "posix.system": _Call(posix.system, f"touch {marker}"),
        "subprocess.Popen": _Call(subprocess.Popen, ["touch", str(marker)]),
        "builtins.eval": _Call(builtins.eval, touch),
        "builtins.exec": _Call(builtins.exec, touch),
        "getattr chain": _Call(_Call(builtins.getattr, _Call(builtins.__import__, "os"), "system"), f"touch {marker}"),
        "methodcaller": _Call(_Call(_Global("operator", "methodcaller"), "system", f"touch {marker}"),
                              _Call(builtins.__import__, "os")),
        "dunder chain": _Call(_Global("builtins", "object.__subclasses__")),
        "timeit": _Call(timeit.timeit, touch),
        "numpy runstring": _Call(_Global("numpy.testing._private.utils", "runstring"), touch, {}),
    }


@pytest.mark.parametrize("name", list(_trojans("x")))
def test_malicious_checkpoint_is_refused_without_running(tmp_path, name):
    marker = tmp_path / "pwned"
    cfg = get_config("tiny")
    path = tmp_path / "evil.ckpt"
    ckpt = {"state_dict": synthetic_system_state(cfg, 0),
            "hyper_parameters": {"cfg": lightning_cfg_tree(cfg)},
            "callbacks": {"Evil": _trojans(marker)[name]}}
    torch.save(ckpt, path, pickle_module=_evil_pickler({}), pickle_protocol=2)
    for attempt in (lambda: load_network(path, "cpu"), lambda: inspect_network_file(path),
                    lambda: convert_checkpoint(path, tmp_path / "out.safetensors")):
        with pytest.raises(CheckpointError, match="refers to code .* that a safe load refuses to run") as info:
            attempt()
        assert str(info.value).count(";") == 1 and str(info.value).endswith(".")
        assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("name", [n for n in _trojans("x") if n != "dunder chain"])
def test_the_trojan_payloads_are_live(tmp_path, name):
    """The payloads above really run under a plain unpickler (in a child process), so their refusal matters."""
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    _evil_pickler({}).Pickler(buffer, protocol=2).dump(_trojans(marker)[name])
    blob = tmp_path / "payload.pkl"
    blob.write_bytes(buffer.getvalue())
    code = "import pickle, sys, time; pickle.loads(open(sys.argv[1], 'rb').read()); time.sleep(0.5)"
    subprocess.run([sys.executable, "-c", code, str(blob)], capture_output=True, timeout=60)
    assert marker.exists()


def test_unknown_globals_stay_inert_even_when_called(tmp_path):
    """A global outside the refusal list is never executed: it becomes a placeholder that records its call."""
    marker = tmp_path / "pwned"
    cfg = get_config("tiny")
    path = tmp_path / "odd.ckpt"
    gadget = _Call(_Global("my_training_pkg.hooks", "run_at_load"), f"touch {marker}")
    ckpt = {"state_dict": synthetic_system_state(cfg, 0), "hyper_parameters": {"cfg": lightning_cfg_tree(cfg)},
            "callbacks": {"Hook": gadget}}
    torch.save(ckpt, path, pickle_module=_evil_pickler({}), pickle_protocol=2)
    assert load_network(path, "cpu", cache=False).cfg == cfg
    with torchzip.open_archive(path) as archive:
        hook = archive.tree["callbacks"]["Hook"]
    assert hook.global_name == "my_training_pkg.hooks.run_at_load" and hook.args == (f"touch {marker}",)
    assert not marker.exists()


def test_calling_what_a_placeholder_returned_is_a_damaged_file(tmp_path):
    """A chain that calls the result of a placeholder gets nothing callable: the file is refused as damaged."""
    cfg = get_config("tiny")
    path = tmp_path / "chain.ckpt"
    chain = _Call(_Call(_Global("my_training_pkg.hooks", "factory"), "x"), "y")
    ckpt = {"state_dict": synthetic_system_state(cfg, 0), "hyper_parameters": {"cfg": lightning_cfg_tree(cfg)},
            "callbacks": {"Chain": chain}}
    torch.save(ckpt, path, pickle_module=_evil_pickler({}), pickle_protocol=2)
    with pytest.raises(CheckpointError, match="is damaged and cannot be read"):
        inspect_network_file(path)


def test_a_placeholder_where_a_network_tensor_belongs_is_refused(tmp_path):
    cfg = get_config("tiny")
    state = synthetic_system_state(cfg, 0)
    state["net.t_conv1.bias"] = _Call(_Global("my_pkg.tensors", "LazyTensor"), "t_conv1.bias")
    ckpt = {"state_dict": state, "hyper_parameters": {"cfg": lightning_cfg_tree(cfg)}}
    path = tmp_path / "lazy.ckpt"
    torch.save(ckpt, path, pickle_module=_evil_pickler({}), pickle_protocol=2)
    with pytest.raises(CheckpointError, match=r"stores net\.t_conv1\.bias as my_pkg\.tensors\.LazyTensor instead of"):
        load_network(path, "cpu", cache=False)


def test_conversion_float32_is_exact_and_float16_is_close(tmp_path, tiny_ckpt, image, reference_output):
    f32 = convert_checkpoint(tiny_ckpt, tmp_path / "uv32.safetensors", dtype="float32")
    f16 = convert_checkpoint(tiny_ckpt, tmp_path / "uv16.safetensors")
    assert f16.stat().st_size < 0.6 * f32.stat().st_size
    meta = safetensors.safe_open(str(f16), "pt").metadata()
    assert NetworkCfg.from_dict(json.loads(meta["network_cfg"])) == get_config("tiny")
    want = reference_output
    assert torch.equal(run_network(load_network(f32, "cpu"), image, flip_tta=False), want)
    half = run_network(load_network(f16, "cpu"), image, flip_tta=False)
    assert not torch.equal(half, want)
    torch.testing.assert_close(half, want, atol=5e-3, rtol=0)


def test_conversion_cache_is_written_reused_and_repaired(tmp_path):
    src = write_synthetic_checkpoint(tmp_path / "normals.ckpt", "tiny", seed=4, prediction_type="normals")
    cached = cached_conversion_path(src)
    assert not cached.exists()
    first = load_network(src, "cpu")
    assert cached.is_file()
    state, cfg = read_network_file(cached)
    assert cfg.prediction_type == "normals"
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in state.items())
    cached.write_bytes(b"garbage")
    again = load_network(src, "cpu")
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in again.state_dict().items())
    assert read_network_file(cached)[1] == cfg


def test_conversion_cache_goes_to_the_given_folder(tmp_path):
    """The add-on passes its extension user folder: the conversion must land there, not in the default cache."""
    src = write_synthetic_checkpoint(tmp_path / "uv.ckpt", "tiny", seed=5)
    folder = tmp_path / "extension_cache"
    load_network(src, "cpu", cache_dir=folder)
    (written,) = (folder / "networks").glob("*.safetensors")
    assert written == cached_conversion_path(src, folder)
    assert not cached_conversion_path(src).exists()


def test_unusable_cache_folder_only_disables_the_cache(tiny_ckpt, monkeypatch, caplog):
    def refuse():
        raise PermissionError("read-only file system")

    monkeypatch.setattr(checkpoint, "cache_dir", refuse)
    with caplog.at_level("WARNING", logger="core.network.checkpoint"):
        net = load_network(tiny_ckpt, "cpu")
    assert "cache folder is unusable" in caplog.text
    assert net.cfg == get_config("tiny")


def test_safetensors_without_network_metadata_is_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    safetensors.torch.save_file({"a": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a converted Pixel3DMM network"):
        load_network(path, "cpu")


def test_configuration_placements_and_interpolations():
    tree = lightning_cfg_tree(get_config("tiny"))
    n_views = tree.pop("n_views")
    tree["model"]["n_views"] = n_views
    tree["model"]["view_embed_dim"] = "${data.embed}"
    tree["data"]["embed"] = 16
    cfg = NetworkCfg.from_lightning_cfg(resolve_interpolations(tree))
    assert cfg == get_config("tiny")
    with pytest.raises(CheckpointError, match="model.num_heads"):
        NetworkCfg.from_lightning_cfg({"model": {**tree["model"], "num_heads": None}})


def test_unsupported_configuration_is_refused(tmp_path):
    cfg = get_config("tiny")
    state = synthetic_system_state(cfg, 0)
    tree = lightning_cfg_tree(cfg)
    tree["model"]["use_uv_enc"] = True
    with pytest.raises(CheckpointError, match="use_uv_enc"):
        load_network(_write(tmp_path / "b.ckpt", state, tree), "cpu", cache=False)


def test_to_plain_walks_nested_stand_ins(tiny_ckpt):
    with zipfile.ZipFile(tiny_ckpt) as zf:
        assert any(name.endswith("data.pkl") for name in zf.namelist())
    from core.network.synthetic import to_dictconfig
    tree = {"a": [1, {"b": None}], "c": "x"}
    assert to_plain(to_dictconfig(tree)) == tree


def test_gpu_out_of_memory_while_loading_keeps_the_network_on_cpu(tiny_ckpt, monkeypatch, caplog):
    real_to = PixelNetwork.to
    gpu = torch.device("cuda")

    def to(self, device, *args, **kwargs):
        if device == gpu:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 400 MiB")
        return real_to(self, device, *args, **kwargs)

    monkeypatch.setattr(PixelNetwork, "to", to)
    monkeypatch.setattr(checkpoint, "is_gpu", lambda device: device == gpu)
    monkeypatch.setattr(checkpoint, "release_memory", lambda device: None)
    with caplog.at_level("WARNING", logger="core.network.checkpoint"):
        net = load_network(tiny_ckpt, gpu, cache=False)
    assert "not enough GPU memory" in caplog.text
    assert next(net.parameters()).device.type == "cpu"


@pytest.mark.slow
def test_full_size_published_configuration_round_trip(tmp_path, image):
    """The published-like ViT-B/16 configuration: write, load strictly, convert, predict identically."""
    path = write_synthetic_checkpoint(tmp_path / "uv.ckpt", "uv", seed=0)
    net = load_network(path, "cpu", cache=False)
    assert net.cfg == get_config("uv")
    converted = load_network(convert_checkpoint(path, dtype="float32"), "cpu")
    want = run_network(net, image, flip_tta=False)
    assert want.shape == (2, 512, 512) and torch.isfinite(want).all()
    assert torch.equal(run_network(converted, image, flip_tta=False), want)


def test_streaming_conversion_reports_progress_and_matches_the_weights(tmp_path, tiny_ckpt):
    seen = []
    out = convert_checkpoint(tiny_ckpt, tmp_path / "uv.safetensors", on_progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == len(PixelNetwork(get_config("tiny")).state_dict())
    written = safetensors.torch.load_file(str(out))
    ref = _independent_model().state_dict()
    assert set(written) == set(ref)
    for key, value in ref.items():
        assert written[key].dtype == torch.float16 and torch.equal(written[key], value.half()), key
    header = int.from_bytes(out.read_bytes()[:8], "little")
    assert out.stat().st_size == 8 + header + sum(2 * v.numel() for v in ref.values())  # nothing but the weights


def test_conversion_holds_one_tensor_at_a_time(tmp_path, tiny_ckpt, monkeypatch):
    """Each tensor is read from the file once, just before it is written, and dropped after."""
    alive = []
    real_read = torchzip.Archive.read

    def read(self, ref):
        tensor = real_read(self, ref)
        alive.append(__import__("weakref").ref(tensor))
        assert sum(r() is not None for r in alive[:-1]) == 0, "an earlier tensor is still in memory"
        return tensor

    monkeypatch.setattr(torchzip.Archive, "read", read)
    convert_checkpoint(tiny_ckpt, tmp_path / "uv.safetensors")
    assert len(alive) == len(PixelNetwork(get_config("tiny")).state_dict())


def test_cancelled_conversion_leaves_nothing(tmp_path, tiny_ckpt):
    calls = []
    with pytest.raises(OperationCancelled):
        convert_checkpoint(tiny_ckpt, tmp_path / "out" / "uv.safetensors",
                           should_cancel=lambda: calls.append(1) or len(calls) > 5)
    assert list((tmp_path / "out").iterdir()) == []


def test_conversion_refuses_a_disk_without_room_before_writing(small_disk, tiny_ckpt):
    disk = small_disk(256 * 1024)
    with pytest.raises(DiskFullError, match=r"needs .* but .* has only .* free; free some space") as info:
        convert_checkpoint(tiny_ckpt, disk / "uv.safetensors")
    assert str(info.value).count(";") == 1
    assert list(disk.iterdir()) == []


def test_conversion_on_a_disk_that_fills_up_leaves_nothing(small_disk, tiny_ckpt):
    disk = small_disk(4 << 20)
    filled = []

    def on_progress(fraction):  # another program fills the disk while the conversion runs
        if not filled:
            fill(disk, leave=64 * 1024)
            filled.append(fraction)

    with pytest.raises(DiskFullError, match="filled up while writing"):
        convert_checkpoint(tiny_ckpt, disk / "uv.safetensors", on_progress=on_progress)
    assert filled and sorted(p.name for p in disk.iterdir()) == ["filler.bin"]


def test_conversion_hitting_enospc_leaves_nothing(tmp_path, tiny_ckpt, monkeypatch):
    """The same without a mountable tmpfs: the file object's writes fail with ENOSPC after 100 kB."""
    real_fdopen = os.fdopen
    monkeypatch.setattr(streaming.os, "fdopen", lambda fd, mode: ENOSPCWriter(real_fdopen(fd, mode), 100_000))
    with pytest.raises(DiskFullError, match="filled up while writing"):
        convert_checkpoint(tiny_ckpt, tmp_path / "out" / "uv.safetensors")
    assert list((tmp_path / "out").iterdir()) == []
