"""convert.py: official StyleGAN2-ADA pickles -> checkpoints of this project, read without running code.

The fixtures are pickled here in the layout of the official StyleGAN2-ADA code (torch_utils/persistence.py):
each network is a call of torch_utils.persistence._reconstruct_persistent_obj(meta) whose meta holds
module_src, class_name and state (_parameters / _buffers / _modules, _init_kwargs with dnnlib.util.EasyDict
inside). The names torch_utils.persistence and dnnlib.util exist in sys.modules only while a fixture is
pickled; module_src writes a marker file if anything ever executes it.
"""

import collections
import contextlib
import os
import pickle
import re
import subprocess
import sys
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import config
import convert
import modules
import ops
import predict
import runs
import transfer

REPO = Path(__file__).resolve().parents[1]
BUFFERS = ("w_avg", "noise_const", "resample_filter")
CLASS_NAMES = {"mapping": "MappingNetwork", "synthesis": "SynthesisNetwork", "torgb": "ToRGBLayer",
               "input": "SynthesisInput", "mbstd": "MinibatchStdLayer"}            # input: StyleGAN3 only
STAND_IN_MODULES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")


class EasyDict(dict):
    """Pickles as dnnlib.util.EasyDict, the dict type of the official init_kwargs."""


EasyDict.__module__ = "dnnlib.util"


def _never_called(meta):
    raise AssertionError("the pickling stand-in must never be called")


_never_called.__module__, _never_called.__qualname__ = "torch_utils.persistence", "_reconstruct_persistent_obj"


class Persistent:
    """Pickles as torch_utils.persistence._reconstruct_persistent_obj(meta), as the official networks do."""

    def __init__(self, meta: dict):
        self.meta = meta

    def __reduce__(self):
        return _never_called, (self.meta,)


@contextlib.contextmanager
def pickling_stand_ins():
    """torch_utils.persistence and dnnlib.util in sys.modules while a fixture is pickled, then gone."""
    assert not any(name in sys.modules for name in STAND_IN_MODULES)
    stand_ins = {name: types.ModuleType(name) for name in STAND_IN_MODULES}
    stand_ins["torch_utils.persistence"]._reconstruct_persistent_obj = _never_called
    stand_ins["dnnlib.util"].EasyDict = EasyDict
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        for name in STAND_IN_MODULES:
            sys.modules.pop(name, None)


# ----------------------------------------------------------------------------------------------
# Fixtures in the official layout

def tiny_cfg(**kw) -> config.TrainConfig:
    return config.TrainConfig(**{**dict(resolution=16, channel_base=256, channel_max=32, z_dim=32, w_dim=32,
                                        mapping_layers=2, mbstd_group=2, batch=4, label_encoding="none"), **kw})


def random_networks(cfg):
    """(G, D, G_ema) of cfg with every tensor perturbed, so that each one changes the outputs."""
    nets = [*runs.build_networks(cfg), runs.build_networks(cfg)[0]]
    with torch.no_grad():
        for net in nets:
            for t in net.state_dict().values():
                t.add_(0.2 * torch.randn_like(t))
    return nets


def official_names(state: dict) -> dict:
    """modules.py state-dict names -> the official ones (the official StyleGAN2-ADA code), written
    independently of convert.py, plus the resample_filter buffers the official layers hold."""
    out = {}
    for name, t in state.items():
        parts = name.split(".")
        if parts[:2] == ["mapping", "layers"]:
            parts = ["mapping", f"fc{parts[2]}", *parts[3:]]
        elif parts[:2] == ["synthesis", "blocks"]:
            parts = ["synthesis", *parts[2:]]
        elif parts[0] == "blocks":
            parts = parts[1:]
        elif parts[0] == "epilogue":
            parts = ["b4", *parts[1:]]
        out[".".join(parts)] = t
    for name in list(out):
        layer = name.rsplit(".", 1)[0]
        if re.search(r"(^|\.)(b\d+)\.(conv0|conv1|conv|skip|fromrgb)$", layer):
            out[f"{layer}.resample_filter"] = ops.fir_kernel()
            out[f"{layer.rsplit('.', 1)[0]}.resample_filter"] = ops.fir_kernel()
    return out


def record(class_name: str, tree: dict, module_src: str, init_kwargs=None) -> Persistent:
    """A module as the official persistence stores it: meta with the module's __dict__ as state."""
    params, buffers, subs = collections.OrderedDict(), collections.OrderedDict(), collections.OrderedDict()
    for key, value in tree.items():
        if isinstance(value, dict):
            name = CLASS_NAMES.get(key, "FullyConnectedLayer" if key.startswith(("fc", "affine", "embed", "out"))
                                   else "Conv2dLayer" if key.startswith(("conv", "skip", "fromrgb")) else "Block")
            subs[key] = record(name, value, module_src)
        elif key in BUFFERS:
            buffers[key] = value.clone()
        else:
            params[key] = torch.nn.Parameter(value.clone(), requires_grad=False)
    state = {"training": False, "_parameters": params, "_buffers": buffers, "_non_persistent_buffers_set": set(),
             "_modules": subs, "_init_args": (), "_init_kwargs": init_kwargs or {}, "activation": "lrelu",
             "act_gain": np.sqrt(2), "conv_clamp": np.int64(256)}
    return Persistent({"type": "class", "version": 4, "module_src": module_src, "class_name": class_name,
                       "state": state})


def nest(tensors: dict) -> dict:
    root = {}
    for name, t in tensors.items():
        *path, leaf = name.split(".")
        node = root
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = t
    return root


def init_kwargs(cfg, **synthesis):
    g = dict(z_dim=cfg.z_dim, w_dim=cfg.w_dim, c_dim=cfg.c_dim, img_resolution=cfg.resolution,
             img_channels=cfg.img_channels, mapping_kwargs=EasyDict(num_layers=cfg.mapping_layers),
             synthesis_kwargs=EasyDict(channel_base=cfg.channel_base, channel_max=cfg.channel_max, num_fp16_res=4,
                                       conv_clamp=256, **synthesis))
    d = dict(c_dim=cfg.c_dim, img_resolution=cfg.resolution, img_channels=cfg.img_channels,
             channel_base=cfg.channel_base, channel_max=cfg.channel_max, num_fp16_res=4, conv_clamp=256,
             block_kwargs=EasyDict(), mapping_kwargs=EasyDict(),
             epilogue_kwargs=EasyDict(mbstd_group_size=cfg.mbstd_group))
    return g, d


TRAINING_SET = {"class_name": "training.dataset.ImageFolderDataset", "path": "/data/ffhq.zip", "use_labels": False,
                "max_size": 70000, "xflip": True, "resolution": 16}


def write_official(path: Path, nets, cfg, marker: Path, edit=None, extra_src: str = "", mutate=None,
                   **synthesis) -> Path:
    """A network-snapshot pickle of (G, D, G_ema) in the official layout. module_src writes `marker`.
    edit(key, official tensors) may change the tensors of a network before pickling; mutate(data) may change
    the whole snapshot (records are Persistent, their meta in .meta)."""
    module_src = f"open({str(marker)!r}, 'w').write('module_src was executed')\nclass Generator: pass\n{extra_src}"
    g_kwargs, d_kwargs = init_kwargs(cfg, **synthesis)
    data = {"training_set_kwargs": dict(TRAINING_SET), "augment_pipe": record(
        "AugmentPipe", {"p": torch.tensor(0.25)}, module_src)}
    for key, net, class_name, kwargs in (("G", nets[0], "Generator", g_kwargs),
                                         ("D", nets[1], "Discriminator", d_kwargs),
                                         ("G_ema", nets[2], "Generator", g_kwargs)):
        tensors = official_names(net.state_dict())
        if edit is not None:
            edit(key, tensors)
        data[key] = record(class_name, nest(tensors), module_src, init_kwargs=kwargs)
    if mutate is not None:
        mutate(data)
    with pickling_stand_ins():
        path.write_bytes(pickle.dumps(data, protocol=3))
    return path


# ----------------------------------------------------------------------------------------------
# 1. Nothing from the pickle runs

def armed_packages(root: Path) -> Path:
    """Importable torch_utils / dnnlib that behave like the official ones (module_src executed) and leave
    markers when imported or called; an ordinary pickle.load of a fixture uses them."""
    (root / "torch_utils").mkdir(parents=True)
    (root / "dnnlib").mkdir()
    (root / "torch_utils" / "__init__.py").write_text(f"open({str(root / 'imported')!r}, 'w').close()\n")
    (root / "torch_utils" / "persistence.py").write_text(
        "def _reconstruct_persistent_obj(meta):\n    exec(meta['module_src'], {})\n")
    (root / "dnnlib" / "__init__.py").write_text(f"open({str(root / 'imported')!r}, 'w').close()\n")
    (root / "dnnlib" / "util.py").write_text("class EasyDict(dict):\n    pass\n")
    return root


@pytest.mark.slow
def test_conversion_runs_nothing_from_the_pickle(tmp_path):
    cfg = tiny_cfg()
    marker = tmp_path / "pwned"
    pkl = write_official(tmp_path / "network-snapshot-000100.pkl", random_networks(cfg), cfg, marker)
    packages = armed_packages(tmp_path / "site")
    env = dict(os.environ, PYTHONPATH=f"{packages}{os.pathsep}{REPO}", OMP_NUM_THREADS="1")
    # Control: an ordinary unpickler imports torch_utils and executes module_src, so the fixture is armed.
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))", str(pkl)],
                   env=env, check=True, capture_output=True)
    assert marker.exists() and (packages / "imported").exists()
    marker.unlink()
    (packages / "imported").unlink()

    out = tmp_path / "model.pt"
    result = subprocess.run([sys.executable, "convert.py", str(pkl), "--out", str(out)], cwd=REPO, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and "wrote" in result.stdout
    assert not marker.exists(), "module_src was executed"
    assert not (packages / "imported").exists(), "torch_utils or dnnlib was imported"


def test_conversion_in_process_imports_nothing(tmp_path):
    cfg = tiny_cfg()
    marker = tmp_path / "pwned"
    pkl = write_official(tmp_path / "net.pkl", random_networks(cfg), cfg, marker)
    assert convert.main([str(pkl), "--out", str(tmp_path / "model.pt")]) == 0
    assert not marker.exists()
    assert not any(name in sys.modules for name in STAND_IN_MODULES)


# ----------------------------------------------------------------------------------------------
# 2. The converted networks compute what the source networks compute

@pytest.mark.parametrize("img_channels, c_dim", [(1, 0), (3, 3)], ids=["gray-unconditional", "rgb-conditional"])
def test_converted_networks_equal_the_source(tmp_path, img_channels, c_dim):
    cfg = tiny_cfg(img_channels=img_channels, c_dim=c_dim, cond="json" if c_dim else "none")
    G, D, G_ema = random_networks(cfg)
    pkl = write_official(tmp_path / "network-snapshot-000100.pkl", (G, D, G_ema), cfg, tmp_path / "pwned")
    out = tmp_path / "model.pt"
    assert convert.main([str(pkl), "--out", str(out)]) == 0

    G2, cfg2, state, _ = runs.load_generator(out, torch.device("cpu"))     # the path predict.py takes
    for name in ("resolution", "img_channels", "z_dim", "w_dim", "mapping_layers", "d_mapping_layers",
                 "channel_base", "channel_max", "mbstd_group", "c_dim"):
        assert getattr(cfg2, name) == getattr(cfg, name), name
    nets = dict(zip(("G", "D"), runs.build_networks(cfg2)))
    runs.load_networks_into(nets, state, out)
    torch.manual_seed(1)
    z = torch.randn(4, cfg.z_dim)
    c = torch.eye(c_dim)[[0, 1, 2, 0]] if c_dim else None
    img = torch.randn(4, img_channels, 16, 16)
    with torch.no_grad():
        assert torch.equal(G2(z, c, noise_mode="const"), G_ema.eval()(z, c, noise_mode="const"))
        assert torch.equal(G2(z, c, truncation_psi=0.5, noise_mode="const"),
                           G_ema(z, c, truncation_psi=0.5, noise_mode="const"))       # w_avg came along
        assert torch.equal(nets["G"](z, c, noise_mode="const"), G.eval()(z, c, noise_mode="const"))
        assert torch.equal(nets["D"](img, c), D(img, c))
    source = state["source"]
    assert source["class_names"] == {"G": "Generator", "D": "Discriminator", "G_ema": "Generator"}
    assert source["training_set_kwargs"] == TRAINING_SET
    assert source["init_kwargs"]["G"]["mapping_kwargs"] == {"num_layers": cfg.mapping_layers}
    assert source["file"] == str(pkl.resolve()) and source["ada_p"] == 0.25


def test_predict_samples_a_converted_network(tmp_path):
    cfg = tiny_cfg(img_channels=3, c_dim=2, cond="json")
    pkl = write_official(tmp_path / "net.pkl", random_networks(cfg), cfg, tmp_path / "pwned")
    out = tmp_path / "model.pt"
    assert convert.main([str(pkl), "--out", str(out), "--label_names", "class_0,class_1"]) == 0
    assert predict.main(["--checkpoint", str(out), "--seeds", "0-1", "--class", "1", "--device", "cpu",
                         "--outdir", str(tmp_path / "predict")]) == 0
    assert (tmp_path / "predict" / "seed0001.png").is_file() and (tmp_path / "predict" / "grid.png").is_file()


def test_rgb_conversion_feeds_grayscale_transfer(tmp_path):
    """Official releases are RGB: train.py --init_from turns the converted G into the luma of its images."""
    cfg = tiny_cfg(img_channels=3)
    G, D, G_ema = random_networks(cfg)
    out = tmp_path / "model.pt"
    assert convert.main([str(write_official(tmp_path / "net.pkl", (G, D, G_ema), cfg, tmp_path / "pwned")),
                         "--out", str(out)]) == 0
    source = transfer.load_source(str(out))
    gray_cfg = transfer.config_for(tiny_cfg(img_channels=1, channel_base=1024, mapping_layers=8), {}, source[1])
    gray = dict(zip(("G", "D"), runs.build_networks(gray_cfg)), G_ema=runs.build_networks(gray_cfg)[0])
    transfer.init_networks(gray, *source, gray_cfg, log=lambda m: None)
    z = torch.randn(2, cfg.z_dim)
    with torch.no_grad():
        luma = (torch.tensor(transfer.LUMA).view(1, 3, 1, 1) * G_ema.eval()(z, noise_mode="const")).sum(1, True)
        assert torch.allclose(gray["G_ema"].eval()(z, noise_mode="const"), luma, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 3. Refusals: one line on stderr naming what was found, exit code 1, nothing written

def refused(capsys, argv, *words) -> str:
    assert convert.main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for word in words:
        assert word in err, err
    return err


def test_unknown_global_is_named_and_never_called(tmp_path):
    touched = tmp_path / "touched"
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(b"\x80\x02cos\nsystem\nVtouch " + str(touched).encode() + b"\n\x85R.")
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))", str(pkl)],
                   check=True, capture_output=True)                  # control: an ordinary load runs the command
    assert touched.exists()
    touched.unlink()
    result = subprocess.run([sys.executable, "convert.py", str(pkl), "--out", str(tmp_path / "m.pt")], cwd=REPO,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "os.system" in result.stderr, result.stderr
    assert not touched.exists() and not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("where", ["class_name", "module_src"])
def test_stylegan3_is_refused(tmp_path, capsys, where):
    cfg = tiny_cfg()
    nets = random_networks(cfg)

    def add_input(key, tensors):                                      # StyleGAN3's Fourier-feature input layer
        if key != "D":
            tensors["synthesis.input.freqs"] = torch.randn(32, 2)

    pkl = write_official(tmp_path / "sg3.pkl", nets, cfg, tmp_path / "pwned",
                         edit=add_input if where == "class_name" else None,
                         extra_src="from torch_utils.ops import filtered_lrelu\n" if where == "module_src" else "")
    refused(capsys, [pkl, "--out", tmp_path / "m.pt"], "StyleGAN3")
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "pwned").exists()


def test_architecture_orig_is_refused(tmp_path, capsys):
    cfg = tiny_cfg()
    pkl = write_official(tmp_path / "orig.pkl", random_networks(cfg), cfg, tmp_path / "pwned", architecture="orig")
    refused(capsys, [pkl, "--out", tmp_path / "m.pt"], "'orig'")


def test_unknown_and_missing_tensors_are_named(tmp_path, capsys):
    cfg = tiny_cfg()
    nets = random_networks(cfg)

    def add(key, tensors):
        if key == "G":
            tensors["synthesis.b16.skip.weight"] = torch.zeros(16, 32, 1, 1)

    def drop(key, tensors):
        if key == "D":
            del tensors["b8.conv0.bias"]

    refused(capsys, [write_official(tmp_path / "a.pkl", nets, cfg, tmp_path / "pwned", edit=add), "--out",
                     tmp_path / "m.pt"], "G.synthesis.b16.skip.weight")
    refused(capsys, [write_official(tmp_path / "b.pkl", nets, cfg, tmp_path / "pwned", edit=drop), "--out",
                     tmp_path / "m.pt"], "D", "blocks.b8.conv0.bias")


def test_d_label_mapping_of_its_own_depth_converts(tmp_path):
    """The official code sets G's mapping depth only; D's label mapping keeps its own (8 by default)."""
    cfg = tiny_cfg(c_dim=2, cond="json", d_mapping_layers=4)
    G, D, G_ema = random_networks(cfg)
    assert len(D.mapping.layers) == 4 and len(G.mapping.layers) == cfg.mapping_layers == 2
    pkl = write_official(tmp_path / "net.pkl", (G, D, G_ema), cfg, tmp_path / "pwned")
    assert convert.main([str(pkl), "--out", str(tmp_path / "m.pt")]) == 0
    state = runs.load_checkpoint(tmp_path / "m.pt")
    cfg2 = runs.checkpoint_config(state, tmp_path / "m.pt")
    assert (cfg2.mapping_layers, cfg2.d_mapping_layers) == (2, 4)
    nets = dict(zip(("G", "D"), runs.build_networks(cfg2)))
    runs.load_networks_into(nets, state, tmp_path / "m.pt")
    img, c = torch.randn(4, 1, 16, 16), torch.eye(2)[[0, 1, 1, 0]]
    with torch.no_grad():
        assert torch.equal(nets["D"](img, c), D(img, c))


def test_other_files_are_refused(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a pickle\n")
    refused(capsys, [text, "--out", tmp_path / "m.pt"], "not a pickle")
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    refused(capsys, [other, "--out", tmp_path / "m.pt"], "no G, D and G_ema", "weights")
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"G": {}}, checkpoint)
    refused(capsys, [checkpoint, "--out", tmp_path / "m.pt"], "zip archive")
    refused(capsys, [tmp_path / "missing.pkl", "--out", tmp_path / "m.pt"], "no such file")
    assert not (tmp_path / "m.pt").exists()


def test_existing_out_is_never_overwritten(tmp_path, capsys):
    cfg = tiny_cfg()
    pkl = write_official(tmp_path / "net.pkl", random_networks(cfg), cfg, tmp_path / "pwned")
    out = tmp_path / "model.pt"
    out.write_bytes(b"precious")
    refused(capsys, [pkl, "--out", out], str(out), "another --out")
    assert out.read_bytes() == b"precious"


def test_usage_errors_exit_2(tmp_path, capsys):
    assert convert.main([str(tmp_path / "net.pkl")]) == 2                 # no --out
    assert "--out" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# 4. Damaged and crafted pickles: one line each, found before any network is built

@pytest.fixture
def no_networks(monkeypatch):
    """convert.py's runs.build_networks fails the test if it is called (the fixtures still build theirs)."""
    def refuse(cfg, conv_clamp=None):
        raise AssertionError("a network was built")
    monkeypatch.setattr(convert, "runs", types.SimpleNamespace(**{**vars(runs), "build_networks": refuse}))


def state_of(data, *path) -> dict:
    """The state of a module record inside a snapshot being written: state_of(data, "G", "mapping")."""
    rec = data[path[0]]
    for name in path[1:]:
        rec = rec.meta["state"]["_modules"][name]
    return rec.meta["state"]


def splice(pkl: Path, placeholder: str, raw: bytes) -> Path:
    """Replace the pickled string `placeholder` (protocol 3: BINUNICODE) by the opcodes `raw`, which push one
    object: a way to write what Python's own pickler cannot (it recurses, and stops at ~1000 levels)."""
    text = placeholder.encode()
    opcode = b"X" + len(text).to_bytes(4, "little") + text
    data = pkl.read_bytes()
    assert data.count(opcode) == 1
    pkl.write_bytes(data.replace(opcode, raw))
    return pkl


def _self_record(data):
    loop = {"class_name": "Block", "state": {"_modules": {}}}
    loop["state"]["_modules"]["again"] = loop
    state_of(data, "G")["_modules"]["loop"] = loop


@pytest.mark.parametrize("mutate, words", [
    (lambda data: state_of(data, "G").__setitem__("_modules", [1, 2]), ["G: its _modules is list, not a dict"]),
    (lambda data: state_of(data, "G", "mapping")["_modules"].__setitem__("fc0", 7), ["G.mapping.fc0 is int, not a module"]),
    (lambda data: state_of(data, "D", "b4", "out")["_parameters"].__setitem__("weight", "w"),
     ["D.b4.out.weight is str, not a tensor"]),
    (lambda data: state_of(data, "G")["_init_kwargs"].__setitem__("synthesis_kwargs", [256, 32]),
     ["synthesis_kwargs is list, not a dict"]),
    (lambda data: state_of(data, "D").__setitem__("_init_kwargs", "c_dim=0"), ["D: its _init_kwargs is str"]),
    (_self_record, ["G.state._modules.loop.state._modules.again contains itself"]),
], ids=["modules-list", "module-int", "parameter-str", "kwargs-list", "init-kwargs-str", "self-reference"])
def test_records_of_the_wrong_type_or_referring_to_themselves(tmp_path, capsys, no_networks, mutate, words):
    cfg = tiny_cfg()
    pkl = write_official(tmp_path / "net.pkl", random_networks(cfg), cfg, tmp_path / "pwned", mutate=mutate)
    refused(capsys, [pkl, "--out", tmp_path / "m.pt"], *words)
    assert not (tmp_path / "m.pt").exists()


def deep_records(levels: int) -> bytes:
    """Opcodes that push {"class_name": "Block", "state": {"_modules": {"m": {... levels deep ...}}}}."""
    s = lambda text: b"X" + len(text).to_bytes(4, "little") + text.encode()          # noqa: E731
    opening = b"}" + s("class_name") + s("Block") + b"s" + s("state") + b"}" + s("_modules") + b"}" + s("m")
    return opening * levels + b"}" + b"sss" * levels


def test_deeply_nested_records_and_values(tmp_path, capsys, no_networks):
    """Deeper than Python's own recursion could walk: refused by depth, not a RecursionError traceback."""
    cfg = tiny_cfg()
    nets = random_networks(cfg)

    def place(data):
        state_of(data, "G")["_modules"]["deep"] = "PLACEHOLDER"

    pkl = splice(write_official(tmp_path / "records.pkl", nets, cfg, tmp_path / "pwned", mutate=place),
                 "PLACEHOLDER", deep_records(20_000))
    refused(capsys, [pkl, "--out", tmp_path / "m.pt"], "G.state._modules.deep.state._modules.m.state",
            f"nests deeper than {convert.MAX_DEPTH} levels")
    pkl = write_official(tmp_path / "lists.pkl", nets, cfg, tmp_path / "pwned",
                         mutate=lambda data: data.__setitem__("training_set_kwargs", "PLACEHOLDER"))
    splice(pkl, "PLACEHOLDER", b"]" * 100_000 + b"a" * 99_999)                     # a list in a list ... 100,000 deep
    refused(capsys, [pkl, "--out", tmp_path / "m.pt"], "training_set_kwargs.[0].[0]", "nests deeper")

    def shared(data):                                         # 2^22 values along every path, a few bytes stored
        part = [0]
        for _ in range(22):
            part = [part, part]
        data["training_set_kwargs"] = part

    pkl = write_official(tmp_path / "shared.pkl", nets, cfg, tmp_path / "pwned", mutate=shared)
    refused(capsys, [pkl, "--out", tmp_path / "m.pt"], f"more than {convert.MAX_VALUES:,} values")
    assert not (tmp_path / "m.pt").exists()


def _kwargs(g=None, d=None, epilogue=None, synthesis=None):
    """mutate(data) that sets entries of G's (and G_ema's: the same dict) and D's init_kwargs."""
    def mutate(data):
        g_kw, d_kw = state_of(data, "G")["_init_kwargs"], state_of(data, "D")["_init_kwargs"]
        g_kw.update(g or {})
        g_kw["synthesis_kwargs"].update(synthesis or {})
        d_kw.update(d or {})
        d_kw["epilogue_kwargs"].update(epilogue or {})
    return mutate


@pytest.mark.parametrize("mutate, words", [
    (_kwargs(g=dict(z_dim=2 ** 40)), ["z_dim=1099511627776", "G.mapping.fc0.weight has shape [32, 32]"]),
    (_kwargs(g=dict(w_dim=64)), ["w_dim=64", "G.mapping.w_avg has shape [32]"]),
    (_kwargs(g=dict(c_dim=5), d=dict(c_dim=5)), ["c_dim=5", "G.mapping.embed.weight is missing"]),
    (_kwargs(g=dict(img_channels=3), d=dict(img_channels=3)), ["img_channels=3", "torgb.weight has shape [1, 16, 1, 1]"]),
    (_kwargs(g=dict(img_resolution=32), d=dict(img_resolution=32)), ["img_resolution=32", "no synthesis.b32.torgb"]),
    (_kwargs(synthesis=dict(channel_max=2 ** 30), d=dict(channel_max=2 ** 30)),
     ["channel_max=1073741824 (64 channels at 4x4)", "synthesis.b4.conv1.weight has shape [32, 32, 3, 3]"]),
    (_kwargs(epilogue=dict(mbstd_group_size=10 ** 9)), ["mbstd_group_size=1000000000", "a batch of at least"]),
], ids=["z_dim", "w_dim", "c_dim", "img_channels", "img_resolution", "channel_max", "mbstd_group-batch"])
def test_declared_sizes_must_match_the_tensors(tmp_path, capsys, no_networks, mutate, words):
    cfg = tiny_cfg()
    pkl = write_official(tmp_path / "net.pkl", random_networks(cfg), cfg, tmp_path / "pwned", mutate=mutate)
    refused(capsys, [pkl, "--out", tmp_path / "m.pt"], *words)


class CraftedTensor:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...), the official tensor
    call, with any view of the storage; clone() keeps it as it is when the fixture stores a buffer."""

    def __init__(self, values: torch.Tensor, offset: int, size: tuple, stride: tuple):
        self.storage, self.view = values.untyped_storage(), (offset, size, stride)

    def clone(self):
        return self

    def __reduce__(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            storage = torch.TypedStorage(wrap_storage=self.storage, dtype=torch.float32, _internal=True)
        return torch._utils._rebuild_tensor_v2, (storage, *self.view, False, collections.OrderedDict())


@pytest.mark.parametrize("offset, size, stride", [(0, (32,), (1,)), (0, (33,), (1,)), (8, (32,), (1,)),
                                                  (0, (2, 16), (1, 31))],
                         ids=["fits", "size", "offset", "stride"])
def test_a_tensor_reaching_outside_its_storage_is_refused(tmp_path, capsys, offset, size, stride):
    cfg = tiny_cfg()
    nets = random_networks(cfg)
    w_avg = nets[2].mapping.w_avg.clone()                       # 32 values, as G_ema's w_avg

    def craft(key, tensors):
        if key == "G_ema":
            tensors["mapping.w_avg"] = CraftedTensor(w_avg, offset, size, stride)

    pkl = write_official(tmp_path / "net.pkl", nets, cfg, tmp_path / "pwned", edit=craft)
    out = tmp_path / "m.pt"
    if size == (32,) and offset == 0:                           # control: the crafted call itself is read
        assert convert.main([str(pkl), "--out", str(out)]) == 0
        assert torch.equal(runs.load_checkpoint(out)["G_ema"]["mapping.w_avg"], w_avg)
        return
    refused(capsys, [pkl, "--out", out], f"(size {list(size)}, stride {list(stride)}, offset {offset})",
            "reaches past its storage of 32 values")
    assert not out.exists()


@pytest.mark.parametrize("name", ["mapping.fc0.weight", "mapping.w_avg"])
def test_integer_tensors_are_refused_where_float_weights_belong(tmp_path, capsys, name):
    cfg = tiny_cfg()

    def to_int(key, tensors):
        if key == "G":
            tensors[name] = tensors[name].round().long()

    pkl = write_official(tmp_path / "net.pkl", random_networks(cfg), cfg, tmp_path / "pwned", edit=to_int)
    refused(capsys, [pkl, "--out", tmp_path / "m.pt"], f"G.{name} holds int64 values, not floating-point weights")


def test_a_pickle_with_a_zip_end_marker_is_read_as_a_pickle(tmp_path, capsys):
    end_marker = b"PK\x05\x06" + bytes(18)                     # a zip archive's end of central directory
    damaged = tmp_path / "damaged.pkl"
    damaged.write_bytes(b"\x80\x03}q\x00(X\x01\x00\x00\x00G" + end_marker)
    assert zipfile.is_zipfile(damaged)                          # control: the marker alone makes it "a zip"
    err = refused(capsys, [damaged, "--out", tmp_path / "m.pt"], "damaged")
    assert "zip archive" not in err
    # A whole snapshot that carries the marker in a string converts like any other.
    cfg = tiny_cfg()
    pkl = write_official(tmp_path / "net.pkl", random_networks(cfg), cfg, tmp_path / "pwned",
                         mutate=lambda data: data.__setitem__("zz_note", end_marker.decode("latin-1")))
    assert zipfile.is_zipfile(pkl)
    assert convert.main([str(pkl), "--out", str(tmp_path / "m.pt")]) == 0
