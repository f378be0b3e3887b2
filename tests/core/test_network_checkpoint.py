"""Safe loading of Lightning checkpoints, strict matching, clear errors, conversion and the conversion cache."""

import builtins
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import safetensors.torch
import torch

from core.errors import CheckpointError
from core.network import NetworkCfg, PixelNetwork, convert_checkpoint, get_config, load_network, run_network
import core.network.checkpoint as checkpoint
from core.network.checkpoint import (
    cached_conversion_path, read_lightning_checkpoint, read_network_file, resolve_interpolations, to_plain,
)
from core.network.synthetic import (
    lightning_cfg_tree, synthetic_system_state, write_lightning_checkpoint, write_synthetic_checkpoint,
)

#: Globals a real OmegaConf 2.x DictConfig dump references (learned from omegaconf 2.4 with torch.save).
OMEGACONF_DUMP_GLOBALS = {
    "omegaconf.dictconfig.DictConfig", "omegaconf.base.ContainerMetadata", "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode", "typing.Any", "builtins.dict", "collections.defaultdict",
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


def test_stand_in_pickle_references_the_omegaconf_classes(tiny_ckpt):
    names = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(tiny_ckpt)))
    assert names == OMEGACONF_DUMP_GLOBALS


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


class _RunsCommand:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("func", [os.system, builtins.eval, builtins.exec])
def test_malicious_checkpoint_is_refused_without_running(tmp_path, func):
    marker = tmp_path / "pwned"
    payload = {
        os.system: f"touch {marker}",
        builtins.eval: f"open({str(marker)!r}, 'w').close()",
        builtins.exec: f"open({str(marker)!r}, 'w').close()",
    }[func]
    cfg = get_config("tiny")
    path = tmp_path / "evil.ckpt"
    ckpt = {"state_dict": synthetic_system_state(cfg, 0), "hyper_parameters": {"cfg": _RunsCommand(func, payload)}}
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="refuses to run"):
        load_network(path, "cpu")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refuses to run"):
        convert_checkpoint(path, tmp_path / "out.safetensors")
    assert not marker.exists()


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
