"""Bring your own weights: an official StyleGAN2-ADA network pickle -> a checkpoint of this project.

Owns `python convert.py network-snapshot.pkl --out model.pt`: reading the pickle without running any
code from it (a restricted unpickler that resolves only a fixed list of globals; the Python source stored
in the pickle is kept as a string and never imported or executed), the networks' hyperparameters from
their init_kwargs, the renaming of the official tensor names to modules.py's, and the checks that refuse
damaged or crafted records (cycles, deep nesting, wrong types, sizes that disagree with the tensors,
tensors outside their storage) and what this project cannot represent. Does not own the networks
(modules.py), the checkpoint format and how checkpoints are rebuilt (runs.py) or RGB -> grayscale transfer
(transfer.py, train.py --init_from).

    python convert.py network-snapshot-025000.pkl --out ffhq256.pt
    python predict.py --checkpoint ffhq256.pt --seeds 0-15
    python train.py --preset oasis256 --data /path/to/oasis --init_from ffhq256.pt

The output holds G, D and G_ema as plain tensors, a TrainConfig with the source network's shape and a
"source" record (file, SHA-256, class names, init_kwargs and training_set_kwargs as plain JSON).
"""

import collections
import hashlib
import io
import json
import pickle
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

import errors
import config as config_lib
import modules
import ops
import runs

NETWORK_KEYS = ("G", "D", "G_ema")
STYLEGAN3_MARKERS = ("SynthesisInput", "filtered_lrelu")    # classes and ops found only in StyleGAN3 networks
NUMPY_CODE = re.compile(r"[biuf]\d{1,2}|b1")                  # numeric numpy dtypes a scalar may carry
CONTAINERS = (dict, list, tuple, set, frozenset)             # what a pickle can nest, and make refer to itself
MAX_DEPTH = 64                                                # nesting of containers (an official snapshot: 16)
MAX_VALUES = 1_000_000                                        # values counted along every path (official: thousands)
MBSTD_GROUP_MAX = 64                                          # official configs group 4 images (cifar: 32)
RENAMES = (                                                   # official name prefix -> modules.py's, first match
    (re.compile(r"mapping\.fc(\d+)\."), r"mapping.layers.\1."),
    (re.compile(r"synthesis\.b(\d+)\."), r"synthesis.blocks.b\1."),
    (re.compile(r"b4\."), "epilogue."),                       # D's 4x4 head
    (re.compile(r"b(\d+)\."), r"blocks.b\1."),                # D's blocks
)


class ConvertError(errors.ProjectError):
    """A file that cannot be converted, as one line that names what was found."""


# ----------------------------------------------------------------------------------------------
# Reading the pickle: every global it names is looked up in SAFE_GLOBALS, nothing else is imported

def _persistent_object(meta):
    """Stand-in for torch_utils.persistence._reconstruct_persistent_obj: the meta dict as plain data
    (type, version, module_src as an unexecuted string, class_name, state)."""
    if not (isinstance(meta, dict) and meta.get("type") == "class" and isinstance(meta.get("class_name"), str)
            and isinstance(meta.get("state"), dict)):
        raise ConvertError("a persistent object of the pickle is not a class record (type, class_name, state)")
    return meta


def _load_storage(data):
    """Stand-in for torch.storage._load_from_bytes: the bytes of a torch.save'd storage, read with
    weights_only=True."""
    if not isinstance(data, bytes):
        raise ConvertError(f"a tensor storage of the pickle is {type(data).__name__}, not bytes")
    storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise ConvertError(f"a tensor storage of the pickle holds {type(storage).__name__}, not a storage")
    return storage


def _counts(values) -> bool:
    return isinstance(values, tuple) and all(type(v) is int and v >= 0 for v in values)


def _rebuild_tensor(storage, offset, size, stride, *rest):
    """Stand-in for torch._utils._rebuild_tensor_v2 that refuses a view reaching outside its storage: torch
    would grow the storage to fit, with uninitialised memory, and the weights would be whatever it held."""
    if not (isinstance(storage, torch.TypedStorage) and _counts((offset,)) and _counts(size) and _counts(stride)
            and len(size) == len(stride)):
        raise ConvertError("a tensor of the pickle has no typed storage or a malformed size, stride or offset; "
                           "damaged file")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))        # the last element the view reads
    values = storage._size()                                  # len() would warn that TypedStorage is deprecated
    if all(size) and last >= values:
        raise ConvertError(f"a tensor of the pickle (size {list(size)}, stride {list(stride)}, offset {offset}) "
                           f"reaches past its storage of {values} values; damaged or crafted file")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, *rest)


class _Dtype:
    """Stand-in for numpy.dtype: records the type code and byte order only."""

    def __init__(self, code, align=False, copy=True):
        self.code, self.order = str(code), "="

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]


def _numpy_scalar(dtype, data):
    """Stand-in for numpy's scalar reconstructor: a numeric scalar as a Python number."""
    if not isinstance(dtype, _Dtype) or not NUMPY_CODE.fullmatch(dtype.code) or not isinstance(data, bytes):
        raise ConvertError(f"a numpy scalar of the pickle is not a plain number "
                           f"(dtype {getattr(dtype, 'code', type(dtype).__name__)!r})")
    return np.frombuffer(data, dtype=np.dtype(dtype.order.replace("|", "=") + dtype.code))[0].item()


class _PlainDict(dict):
    """Stand-in for dnnlib.util.EasyDict (a dict with attribute access): a dict, any instance state dropped."""

    def __setstate__(self, state):
        pass


SAFE_GLOBALS = {                                              # every global an official snapshot names
    ("collections", "OrderedDict"): collections.OrderedDict,  # module state: _parameters, _buffers, _modules
    ("builtins", "set"): set,                                 # _non_persistent_buffers_set (pickle protocol < 4)
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("numpy", "dtype"): _Dtype,                               # numpy scalars among the layers' attributes
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,      # the same under numpy >= 2
    ("dnnlib.util", "EasyDict"): _PlainDict,                  # init_kwargs' nested dicts
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_object,   # each network and layer
}


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in SAFE_GLOBALS:
            raise ConvertError(f"refused: it needs the global {module}.{name}, which official StyleGAN2-ADA "
                               f"pickles do not use (loading it could run code); nothing was loaded")
        return SAFE_GLOBALS[(module, name)]


def read_pickle(path: Path):
    """The unpickled object, or a ConvertError: not a pickle, a zip archive, an unknown global, damaged. A
    file is a zip archive only when it starts like one: a pickle that carries a zip end marker among its
    bytes is read (and refused) as a pickle."""
    with open(path, "rb") as f:
        head = f.read(2)
        if head == b"PK" and zipfile.is_zipfile(f):
            raise ConvertError("is a zip archive (a torch.save file, e.g. a checkpoint of this project, which needs "
                               "no conversion), not a network pickle")
        if not head.startswith(b"\x80"):
            raise ConvertError("not a pickle (no pickle protocol header); give a network-snapshot-*.pkl")
        f.seek(0)
        try:
            return SafeUnpickler(f).load()
        except ConvertError:
            raise
        except Exception as e:                            # a damaged stream raises many types
            raise ConvertError(f"not a readable pickle, or a damaged one ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''})") from None


# ----------------------------------------------------------------------------------------------
# The networks' records: their structure and types, tensors, class names, hyperparameters

def _children(x):
    """(name, child) of a container: a dict's values under their keys (and keys that are containers)."""
    if isinstance(x, dict):
        yield from ((k if isinstance(k, str) else f"<{type(k).__name__} key>", v) for k, v in x.items())
        yield from (("<key>", k) for k in x if isinstance(k, CONTAINERS))
    else:
        yield from ((f"[{i}]", v) for i, v in enumerate(x))


def _add(tally: list, below: list) -> None:
    """Count a child container's [values, height] into its parent's."""
    tally[0] += below[0]
    tally[1] = max(tally[1], below[1] + 1)


def check_structure(data) -> None:
    """Refuse, before anything walks it, a pickle whose containers contain themselves, nest deeper than
    MAX_DEPTH or hold more than MAX_VALUES values counted along every path (a pickle may share a part many
    times, and the walks that follow, submodules and plain, recurse over every path). One pass without
    recursion, each container walked once: a shared one's count and height are remembered."""
    done = {}                                                 # id of a walked container -> [values, height]
    stack = [(data, "the pickle", _children(data), [1, 0])]   # (container, name, children left, [values, height])
    on_path = {id(data)}

    def where(name: str) -> str:                              # the path to a child, its first 8 names
        names = [s[1] for s in stack[1:]] + [name]
        return ".".join(names[:8]) + ("..." if len(names) > 8 else "")

    while stack:
        node, _, children, tally = stack[-1]
        if tally[0] > MAX_VALUES:
            raise ConvertError(f"holds more than {MAX_VALUES:,} values counted along every path (a shared part "
                               f"once per path); damaged or crafted file")
        name, child = next(children, (None, None))
        if name is None:                                      # node done
            stack.pop()
            on_path.discard(id(node))
            done[id(node)] = tally
            if stack:
                _add(stack[-1][3], tally)
        elif not isinstance(child, CONTAINERS):
            tally[0] += 1
        elif id(child) in on_path:
            raise ConvertError(f"{where(name)} contains itself (a record that refers back to itself); damaged "
                               f"or crafted file")
        elif len(stack) + done.get(id(child), [0, 0])[1] >= MAX_DEPTH:
            raise ConvertError(f"{where(name)} nests deeper than {MAX_DEPTH} levels (an official snapshot "
                               f"nests 16); damaged or crafted file")
        elif id(child) in done:
            _add(tally, done[id(child)])
        else:
            stack.append((child, name, _children(child), [1, 0]))
            on_path.add(id(child))


def is_record(x) -> bool:
    return isinstance(x, dict) and isinstance(x.get("class_name"), str) and isinstance(x.get("state"), dict)


def check_record(key: str, record: dict) -> None:
    """Refuse a network record with parts of the wrong type: state groups or init_kwargs that are not dicts,
    sub-modules that are not records, parameters and buffers that are not tensors (None, which torch stores
    for an absent one, is allowed)."""
    for prefix, rec in submodules(record):                    # a record is checked before its _modules are read
        where, state = f"{key}.{prefix}".rstrip("."), rec["state"]
        for group in ("_parameters", "_buffers", "_modules", "_init_kwargs", "init_kwargs"):
            if state.get(group) is not None and not isinstance(state[group], dict):
                raise ConvertError(f"{where}: its {group} is {type(state[group]).__name__}, not a dict; damaged file")
        for group, fits, what in (("_parameters", torch.is_tensor, "a tensor"),
                                  ("_buffers", torch.is_tensor, "a tensor"), ("_modules", is_record, "a module record")):
            for name, value in (state.get(group) or {}).items():
                if value is not None and not fits(value):
                    raise ConvertError(f"{where}.{name} is {type(value).__name__}, not {what}; damaged file")


def submodules(record: dict, prefix: str = ""):
    """(dotted name, record) of record and every nested module record."""
    yield prefix, record
    for name, child in (record["state"].get("_modules") or {}).items():
        if is_record(child):
            yield from submodules(child, f"{prefix}{name}.")


def tensors_of(record: dict) -> dict:
    """{official state-dict name: tensor} of a module record and its sub-modules."""
    out = {}
    for prefix, rec in submodules(record):
        for group in ("_parameters", "_buffers"):
            for name, t in (rec["state"].get(group) or {}).items():
                if torch.is_tensor(t):
                    out[prefix + name] = t.detach()
    return out


def init_kwargs(record: dict) -> dict:
    kwargs = record["state"].get("_init_kwargs", record["state"].get("init_kwargs"))
    return kwargs if isinstance(kwargs, dict) else {}


def plain(x):
    """JSON-ready copy of init_kwargs / training_set_kwargs (dicts, lists, numbers, strings)."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [plain(v) for v in (sorted(x, key=repr) if isinstance(x, set) else x)]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return f"<{type(x).__name__}>"


def check_stylegan2(key: str, record: dict) -> None:
    """Refuse StyleGAN3 networks (their class names and module source differ from StyleGAN2's)."""
    for _, rec in submodules(record):
        found = [m for m in STYLEGAN3_MARKERS if m == rec["class_name"] or m in str(rec.get("module_src", ""))]
        if found:
            raise ConvertError(f"{key} is a StyleGAN3 network ({found[0]} found); this project implements "
                               f"StyleGAN2 (networks with architecture 'skip' / 'resnet') only")


def mapping_layers(tensors: dict, key: str, kwargs: dict) -> int:
    """FC layers of a mapping network, counted from its tensors and checked against mapping_kwargs."""
    count = len([n for n in tensors if re.fullmatch(r"mapping\.fc\d+\.weight", n)])
    given = kwargs.get("num_layers")
    if given is not None and given != count:
        raise ConvertError(f"{key}'s mapping_kwargs say num_layers={given} but it holds {count} layers; damaged file")
    return count


def lacks(what: str) -> ConvertError:
    return ConvertError(f"uses {what}, which this project's networks do not have; it cannot be converted")


def sub_kwargs(kwargs: dict, name: str) -> dict:
    value = kwargs.get(name)
    if value is not None and not isinstance(value, dict):
        raise ConvertError(f"the init_kwargs' {name} is {type(value).__name__}, not a dict; damaged file")
    return value or {}


def check_features(g_kw: dict, d_kw: dict, shape: list) -> None:
    """Refuse options that change what the networks compute and that modules.py does not implement."""
    mapping, synthesis = sub_kwargs(g_kw, "mapping_kwargs"), sub_kwargs(g_kw, "synthesis_kwargs")
    d_mapping, epilogue = sub_kwargs(d_kw, "mapping_kwargs"), sub_kwargs(d_kw, "epilogue_kwargs")
    if synthesis.get("architecture", "skip") != "skip":
        raise lacks(f"G architecture {synthesis['architecture']!r} (only 'skip' is implemented)")
    if d_kw.get("architecture", "resnet") != "resnet":
        raise lacks(f"D architecture {d_kw['architecture']!r} (only 'resnet' is implemented)")
    blocks = sub_kwargs(d_kw, "block_kwargs")
    for where, kw in (("G mapping", mapping), ("G synthesis", synthesis), ("D blocks", blocks),
                      ("D mapping", d_mapping), ("D epilogue", epilogue)):
        if kw.get("activation", "lrelu") != "lrelu":
            raise lacks(f"activation {kw['activation']!r} in {where} (only 'lrelu')")
        if plain(kw.get("resample_filter", [1, 3, 3, 1])) != [1, 3, 3, 1]:
            raise lacks(f"resample_filter {kw['resample_filter']} in {where} (only [1, 3, 3, 1])")
    for where, kw, width in (("G", mapping, g_kw["w_dim"]), ("D", d_mapping, modules.channels_at(4, *shape))):
        if kw.get("lr_multiplier", 0.01) != 0.01:
            raise lacks(f"{where} mapping lr_multiplier {kw['lr_multiplier']} (fixed at 0.01 here)")
        for name in ("embed_features", "layer_features"):
            if kw.get(name) not in (None, width):
                raise lacks(f"{where} mapping {name}={kw[name]} (the width is {width} here)")
    if d_kw.get("cmap_dim") not in (None, modules.channels_at(4, *shape)):
        raise lacks(f"D cmap_dim={d_kw['cmap_dim']} (the channels at 4x4, {modules.channels_at(4, *shape)}, here)")
    if synthesis.get("use_noise", True) is not True:
        raise lacks("a generator without noise inputs (use_noise=False)")
    if epilogue.get("mbstd_num_channels", 1) != 1:
        raise lacks(f"mbstd_num_channels={epilogue['mbstd_num_channels']} (1 here)")


def check_declared(g_kw: dict, shape: list, g: dict, d: dict) -> None:
    """The sizes G's init_kwargs declare (resolution, channels, z_dim, w_dim, c_dim, channel_base/max) against
    the tensors G and D hold, before any network is built: a damaged size would otherwise be allocated first
    (z_dim=2**40) or be blamed on some other tensor afterwards."""
    res = g_kw["img_resolution"]
    config_lib.check_resolution(res, "G's img_resolution", ConvertError)
    for key, tensors, name in (("G", g, f"synthesis.b{res}.torgb.weight"), ("D", d, f"b{res}.fromrgb.weight")):
        if name not in tensors:
            raise ConvertError(f"the init_kwargs give img_resolution={res}, but {key} holds no {name}; damaged or "
                               f"edited file")
    z_dim, w_dim, c_dim, channels = (g_kw[k] for k in ("z_dim", "w_dim", "c_dim", "img_channels"))
    if not c_dim and "mapping.embed.weight" in g:
        raise ConvertError("the init_kwargs give c_dim=0, but G holds a label embedding (mapping.embed.weight); "
                           "damaged or edited file")
    ch = lambda r: modules.channels_at(r, *shape)                                     # noqa: E731
    expected = [                                              # (net, tensor, dim, size, what declares it)
        ("G", g, "mapping.embed.weight", 1, c_dim, f"c_dim={c_dim}"),
        ("G", g, "mapping.fc0.weight", 1, z_dim + w_dim, f"z_dim={z_dim} (+ w_dim={w_dim} for the label)"),
        ("G", g, "mapping.w_avg", 0, w_dim, f"w_dim={w_dim}"),
        ("G", g, f"synthesis.b{res}.torgb.weight", 0, channels, f"img_channels={channels}"),
        ("D", d, f"b{res}.fromrgb.weight", 1, channels, f"img_channels={channels}"),
        *[("G", g, f"synthesis.b{r}.conv1.weight", 0, ch(r), f"channel_base={shape[0]}, channel_max={shape[1]} "
           f"({ch(r)} channels at {r}x{r})") for r in (2 ** k for k in range(2, res.bit_length()))],
        ("D", d, "b4.conv.weight", 1, ch(4) + 1, f"{ch(4)} channels at 4x4 (+ 1 minibatch-stddev channel)")]
    if not c_dim:
        expected[:2] = [("G", g, "mapping.fc0.weight", 1, z_dim, f"z_dim={z_dim}")]
    for key, tensors, name, dim, size, what in expected:
        t = tensors.get(name)
        if t is None or t.dim() <= dim or t.shape[dim] != size:
            found = f"has shape {list(t.shape)}" if t is not None else "is missing"
            raise ConvertError(f"the init_kwargs give {what}, but {key}.{name} {found}; damaged or edited file")


def source_config(records: dict, label_names: str) -> config_lib.TrainConfig:
    """The TrainConfig whose networks (runs.build_networks) have the source's shapes, or a ConvertError."""
    g_kw, d_kw = init_kwargs(records["G"]), init_kwargs(records["D"])
    if plain(init_kwargs(records["G_ema"])) != plain(g_kw):
        raise ConvertError("G and G_ema have different init_kwargs; damaged or edited file")
    synthesis = sub_kwargs(g_kw, "synthesis_kwargs")
    shape = [synthesis.get("channel_base", 32768), synthesis.get("channel_max", 512)]  # class defaults if absent;
    # a wrong guess cannot pass: check_declared compares them with the tensors before anything is built
    for name in ("z_dim", "w_dim", "c_dim", "img_resolution", "img_channels"):
        if not isinstance(g_kw.get(name), int):
            raise ConvertError(f"G's init_kwargs lack the integer {name}; not an official StyleGAN2-ADA generator")
        if name in ("c_dim", "img_resolution", "img_channels") and d_kw.get(name) != g_kw[name]:
            raise ConvertError(f"G has {name}={g_kw[name]} but D has {d_kw.get(name)}; they do not belong together")
    if not all(isinstance(v, int) and v > 0 for v in shape):
        raise ConvertError(f"G's channel_base/channel_max {shape} are not positive integers; damaged file")
    if [d_kw.get("channel_base", 32768), d_kw.get("channel_max", 512)] != shape:
        raise lacks("different channel_base/channel_max in G and D (one pair here)")
    check_features(g_kw, d_kw, shape)
    g_tensors, d_tensors = tensors_of(records["G"]), tensors_of(records["D"])
    check_declared(g_kw, shape, g_tensors, d_tensors)
    layers = mapping_layers(g_tensors, "G", sub_kwargs(g_kw, "mapping_kwargs"))
    d_layers = (mapping_layers(d_tensors, "D", sub_kwargs(d_kw, "mapping_kwargs")) if g_kw["c_dim"]
                else config_lib.TrainConfig.d_mapping_layers)       # D's label mapping has its own depth
    group = sub_kwargs(d_kw, "epilogue_kwargs").get("mbstd_group_size", 4)
    if type(group) is not int or group < 1:
        raise lacks(f"mbstd_group_size={group!r} (a positive group size here)")
    if group > MBSTD_GROUP_MAX:                              # the batch below is a multiple of the group
        raise ConvertError(f"D's mbstd_group_size={group} would need a batch of at least {group} (official "
                           f"configs group 4 images, at most 32); damaged or edited file")
    if label_names and len(label_names.split(",")) != g_kw["c_dim"]:
        raise config_lib.ConfigError(f"--label_names {label_names!r}: give {g_kw['c_dim']} names (its c_dim)")
    clamp = synthesis.get("conv_clamp")                       # 256 when the source trained in float16, else None
    cfg = config_lib.TrainConfig(
        resolution=g_kw["img_resolution"], img_channels=g_kw["img_channels"], z_dim=g_kw["z_dim"],
        w_dim=g_kw["w_dim"], mapping_layers=layers, d_mapping_layers=d_layers, channel_base=shape[0],
        channel_max=shape[1],
        mbstd_group=group, batch=-(-16 // group) * group, c_dim=g_kw["c_dim"],
        cond="json" if g_kw["c_dim"] else "none", label_names=label_names, label_encoding="none",
        conv_clamp=float(clamp) if isinstance(clamp, (int, float)) and clamp > 0 else 256.0)
    try:
        config_lib.validate(cfg)
    except config_lib.ConfigError as e:
        raise ConvertError(f"the network's shape is not one this project trains: {e}") from None
    return cfg


# ----------------------------------------------------------------------------------------------
# Tensors: official names -> modules.py names, every tensor used, every shape checked

def load_into(net: torch.nn.Module, key: str, tensors: dict) -> None:
    """Copy the official tensors into net; refuse unused, missing or misshapen tensors by name, and integer
    (or boolean, complex) tensors where floating-point weights belong: a cast would hide the damage."""
    target, mapped = net.state_dict(), {}
    for official, t in tensors.items():
        if official.endswith("resample_filter"):               # a constant here (ops.fir_kernel)
            if t.shape != (4, 4) or not torch.allclose(t.float(), ops.fir_kernel()):
                raise lacks(f"the resample filter {key}.{official} (only [1, 3, 3, 1] here)")
            continue
        name = next((p.sub(r, official, count=1) for p, r in RENAMES if p.match(official)), official)
        if name not in target:
            raise lacks(f"the tensor {key}.{official}")
        if t.shape != target[name].shape:
            raise ConvertError(f"{key}.{official} has shape {list(t.shape)}, but its init_kwargs give "
                               f"{list(target[name].shape)}; damaged or edited file")
        if target[name].is_floating_point() and not t.is_floating_point():
            raise ConvertError(f"{key}.{official} holds {str(t.dtype).removeprefix('torch.')} values, not "
                               f"floating-point weights; damaged or crafted file")
        mapped[name] = t.to(target[name].dtype).clone()
    missing = [n for n in target if n not in mapped]
    if missing:
        raise ConvertError(f"{key} holds nothing for {missing[0]} of this project's network (a variant "
                           f"architecture this project lacks); it cannot be converted")
    net.load_state_dict(mapped)


def convert(src: Path, label_names: str = "") -> dict:
    """A checkpoint state of this project (runs.save_checkpoint) from an official pickle."""
    data = read_pickle(src)
    check_structure(data)
    if not isinstance(data, dict) or not all(k in data for k in NETWORK_KEYS):
        found = f"keys {', '.join(map(str, list(data)[:6]))}" if isinstance(data, dict) else type(data).__name__
        raise ConvertError(f"holds no G, D and G_ema ({found}); not a StyleGAN2-ADA network snapshot")
    for key in NETWORK_KEYS:
        if not is_record(data[key]):
            raise ConvertError(f"{key} is {type(data[key]).__name__}, not a network stored as a persistent class")
        check_record(key, data[key])
        check_stylegan2(key, data[key])
    cfg = source_config(data, label_names)
    nets = dict(zip(("G", "D"), runs.build_networks(cfg)))
    nets["G_ema"] = runs.build_networks(cfg)[0]
    for key, net in nets.items():
        load_into(net, key, tensors_of(data[key]))
    augment = data.get("augment_pipe")
    if is_record(augment):
        check_record("augment_pipe", augment)
    ada_p = tensors_of(augment).get("p") if is_record(augment) else None
    digest = hashlib.sha256()
    with open(src, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    source = {
        "file": str(src.resolve()), "sha256": digest.hexdigest(), "converted_by": "convert.py",
        "class_names": {k: data[k]["class_name"] for k in NETWORK_KEYS},
        "init_kwargs": {k: plain(init_kwargs(data[k])) for k in ("G", "D")},
        "training_set_kwargs": plain(data.get("training_set_kwargs")),
        "ada_p": float(ada_p.reshape(-1)[0]) if ada_p is not None and ada_p.numel() else None,
    }
    return {"format": runs.CHECKPOINT_FORMAT, "version": runs.CHECKPOINT_VERSION,
            "config": json.loads(cfg.to_json()), **{k: net.state_dict() for k, net in nets.items()},
            "source": json.loads(json.dumps(source))}


# ----------------------------------------------------------------------------------------------
# Command line

def build_parser() -> config_lib.Parser:
    p = config_lib.Parser(prog="convert.py", description="Convert an official StyleGAN2-ADA network pickle into "
                          "a checkpoint of this project, without running any code from the pickle.")
    p.add_argument("pickle", help="network-snapshot-*.pkl (StyleGAN2-ADA, PyTorch release)")
    p.add_argument("--out", required=True, help="checkpoint to write (a new file; never overwritten)")
    p.add_argument("--label_names", default="", help="a conditional network: what its c_dim label values mean, "
                   "comma-separated (class_0,class_1,... lets predict.py --class pick a class)")
    return p


def run(args) -> str:
    src, out = Path(args.pickle), Path(args.out)
    if not src.is_file():
        raise ConvertError(f"{src}: no such file; give a network-snapshot-*.pkl")
    if out.exists():
        raise ConvertError(f"--out {out}: exists, and convert.py never overwrites; use another --out")
    try:
        state = convert(src, args.label_names)
    except ConvertError as e:
        raise ConvertError(f"{src}: {e}") from None
    runs.save_checkpoint(out, state)
    cfg = config_lib.from_dict(state["config"])
    note = ("; RGB: train.py --init_from adapts it to 1 channel" if cfg.img_channels == 3 else "")
    return (f"wrote {out}: G, D and G_ema of a {cfg.resolution}x{cfg.resolution} {cfg.img_channels}-channel "
            f"StyleGAN2 (c_dim {cfg.c_dim}, {cfg.mapping_layers} mapping layers) from {src.name}{note}")


def main(argv=None) -> int:
    """Exit codes: 0 written, 1 the file cannot be converted (one line), 2 a usage error (one line)."""
    return errors.run_main(_main, argv)


def _main(argv: list) -> None:
    print(run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
