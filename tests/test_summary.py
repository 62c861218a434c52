"""`cnn summarize`: the lecture's tables, totals, training memory and XLA's cross-check."""

import csv
import dataclasses
import io
import json
import math
import subprocess
import sys

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.models import create_model
from cnncli.summary import (MemoryModel, SummaryError, SummaryOptions, group_blocks, parse_memory, summarize_model,
                            walk_layers)
from cnncli.summary.render import display_rows, to_csv, to_markdown
from cnncli.summary.target import resolve_target, summarize_targets

runner = CliRunner()

# The lecture's VGG-16 table: output volumes, and the weights (without biases) of each conv and FC layer.
VGG16_SHAPES = [
    ("input", [224, 224, 3]),
    ("conv", [224, 224, 64]), ("conv", [224, 224, 64]), ("pool", [112, 112, 64]),
    ("conv", [112, 112, 128]), ("conv", [112, 112, 128]), ("pool", [56, 56, 128]),
    ("conv", [56, 56, 256]), ("conv", [56, 56, 256]), ("conv", [56, 56, 256]), ("pool", [28, 28, 256]),
    ("conv", [28, 28, 512]), ("conv", [28, 28, 512]), ("conv", [28, 28, 512]), ("pool", [14, 14, 512]),
    ("conv", [14, 14, 512]), ("conv", [14, 14, 512]), ("conv", [14, 14, 512]), ("pool", [7, 7, 512]),
    ("fc", [4096]), ("fc", [4096]), ("fc", [1000]),
]
VGG16_CONV_WEIGHTS = [1_728, 36_864, 73_728, 147_456, 294_912, 589_824, 589_824, 1_179_648] + [2_359_296] * 5
VGG16_FC_WEIGHTS = [102_760_448, 16_777_216, 4_096_000]


@pytest.fixture(scope="module")
def vgg16():
    return summarize_model("vgg16").as_dict()


def counted(layers):
    """The rows that store an activation, in the lecture's sense (see cnncli/summary/walk.py)."""
    return [r for r in layers if r["activations"]]


def test_vgg16_rows_are_the_lectures(vgg16):
    layers = vgg16["layers"]
    convs = [r for r in layers if r["type"] == "conv"]
    fcs = [r for r in layers if r["type"] == "fc"]
    # each layer's parameters are its weights plus one bias per output channel / unit
    assert [r["params"] - r["output_shape"][-1] for r in convs] == VGG16_CONV_WEIGHTS
    assert [r["params"] - r["output_shape"][-1] for r in fcs] == VGG16_FC_WEIGHTS
    assert all(r["params"] == 0 for r in layers if r["type"] in ("pool", "dropout"))
    assert [r["kernel"] for r in convs] == [[3, 3]] * 13 and [r["padding"] for r in convs] == [[1, 1]] * 13
    rows = [("input", vgg16["input_shape"])] + [(r["type"], r["output_shape"]) for r in counted(layers)]
    assert rows == VGG16_SHAPES
    # the adaptive pooling is already at 7x7 (an identity) and dropout acts in place: they store nothing
    assert {r["name"]: r["activations"] for r in layers if not r["activations"]} == {
        "avgpool": 0, "drop6": 0, "drop7": 0}


def test_vgg16_totals_are_the_real_sums(vgg16):
    # the lecture's slide prints ~24M activations; the sum of its own rows is this
    expected_activations = int(sum(np.prod(shape) for _, shape in VGG16_SHAPES))
    assert vgg16["activations_per_image"] == expected_activations == 15_237_608
    weights = sum(VGG16_CONV_WEIGHTS) + sum(VGG16_FC_WEIGHTS)
    biases = sum(shape[-1] for kind, shape in VGG16_SHAPES if kind in ("conv", "fc"))
    assert vgg16["trainable_params"] == weights + biases == 138_357_544
    assert vgg16["non_trainable_params"] == 0
    assert vgg16["params_bytes"] == 4 * vgg16["total_params"]
    assert vgg16["activations_bytes_per_image"] == 4 * expected_activations
    assert vgg16["activations_bytes_per_image_with_backward"] == 8 * expected_activations
    fc = sum(VGG16_FC_WEIGHTS) + 4096 + 4096 + 1000
    assert vgg16["fc_params"] == fc
    assert vgg16["fc_param_share"] == pytest.approx(fc / 138_357_544) and round(100 * vgg16["fc_param_share"]) == 89


def test_alexnet_table():
    s = summarize_model("alexnet", SummaryOptions(advice=False)).as_dict()
    lecture = [("conv", [55, 55, 96], 11, 4, 0), ("pool", [27, 27, 96], 3, 2, 0),
               ("conv", [27, 27, 256], 5, 1, 2), ("pool", [13, 13, 256], 3, 2, 0),
               ("conv", [13, 13, 384], 3, 1, 1), ("conv", [13, 13, 384], 3, 1, 1),
               ("conv", [13, 13, 256], 3, 1, 1), ("pool", [6, 6, 256], 3, 2, 0),
               ("fc", [4096], None, None, None), ("fc", [4096], None, None, None), ("fc", [1000], None, None, None)]
    rows = counted(s["layers"])
    got = [(r["type"], r["output_shape"], r["kernel"] and r["kernel"][0], r["stride"] and r["stride"][0],
            r["padding"] and r["padding"][0]) for r in rows]
    assert got == lecture
    # conv parameters and MACs from the shapes: k*k*C_in*C_out (+ C_out biases), H_out*W_out*C_out*k*k*C_in
    c_in = 3
    for r, (kind, shape, k, _, _) in zip(rows, lecture):
        if kind == "conv":
            assert r["params"] == k * k * c_in * shape[2] + shape[2]
            assert r["macs"] == shape[0] * shape[1] * shape[2] * k * k * c_in
            c_in = shape[2]
    assert rows[0]["params"] == 34_944 and rows[8]["params"] == 6 * 6 * 256 * 4096 + 4096
    assert s["activations_per_image"] == 227 * 227 * 3 + sum(math.prod(shape) for _, shape, *_ in lecture)


@pytest.mark.parametrize("name,macs", [("resnet18", 1_814_073_344), ("resnet50", 4_089_184_256),
                                       ("vgg16", 15_470_264_320)])
def test_macs_match_reference_counts(name, macs):
    model = create_model(name, abstract=True)
    rows = walk_layers(model, model.input_shape)
    assert sum(r.macs for r in rows) == macs
    assert all(r.macs == 0 for r in rows if r.type not in ("conv", "fc"))


@pytest.mark.parametrize("name,input_size,model_options", [
    ("resnet20", None, {}), ("resnet18", 64, {"width": 0.25}), ("vgg16_bn", 40, {"width": 0.25}),
    ("plain20", None, {"width": 0.5}), ("resnet50", 64, {"width": 0.25}), ("alexnet", None, {"lrn": True}),
])
def test_totals_equal_the_sum_of_the_rows(name, input_size, model_options):
    opts = SummaryOptions(input_size=input_size, model_options=model_options, advice=False)
    s = summarize_model(name, opts).as_dict()
    layers = s["layers"]
    assert s["trainable_params"] == sum(r["params"] for r in layers)
    assert s["non_trainable_params"] == sum(r["non_trainable"] for r in layers)
    assert s["total_params"] == s["trainable_params"] + s["non_trainable_params"]
    assert s["total_macs"] == sum(r["macs"] for r in layers) and s["total_flops"] == 2 * s["total_macs"]
    h, w, c = s["input_shape"]
    assert s["input_activations"] == h * w * c
    assert s["activations_per_image"] == h * w * c + sum(r["activations"] for r in layers)
    # the counting rule: every conv/fc/pool/bn/add/lrn output once, nothing for dropout, nothing for an
    # adaptive pooling whose output is its input
    previous = [h, w, c]
    for r in layers:
        identity = r["name"] == "avgpool" and r["output_shape"] == previous
        stores = r["type"] in ("conv", "fc", "pool", "bn", "add", "lrn") and not identity
        assert r["activations"] == (math.prod(r["output_shape"]) if stores else 0), r["name"]
        previous = r["output_shape"]
    # the displayed tables (blocks collapsed or expanded) and the CSV add up to the same totals
    for expand in (False, True):
        shown = [r for r in display_rows(s, expand) if not r.get("header")]
        assert sum(r["activations"] for r in shown) == s["activations_per_image"]
        assert sum(r["params"] for r in shown) == s["trainable_params"]
        assert sum(r["macs"] for r in shown) == s["total_macs"]
    csv_rows = list(csv.DictReader(io.StringIO(to_csv([s]))))
    assert len(csv_rows) == len(layers) + 1
    assert sum(int(r["activations"]) for r in csv_rows) == s["activations_per_image"]
    assert sum(int(r["macs"]) for r in csv_rows) == s["total_macs"]


def test_adaptive_pool_counts_when_it_resizes():
    at_224 = summarize_model("vgg11", SummaryOptions(model_options={"width": 0.25}, advice=False)).as_dict()
    at_256 = summarize_model("vgg11", SummaryOptions(input_size=256, model_options={"width": 0.25},
                                                     advice=False)).as_dict()
    pool = {s["input_shape"][0]: next(r for r in s["layers"] if r["name"] == "avgpool") for s in (at_224, at_256)}
    assert pool[224]["activations"] == 0  # 7x7 in, 7x7 out: the input itself
    assert pool[256]["activations"] == 7 * 7 * 128  # 8x8 averaged to 7x7: a new tensor


def test_resnet_blocks_group_stages():
    opts = SummaryOptions(input_size=64, model_options={"width": 0.25}, advice=False)
    s = summarize_model("resnet18", opts).as_dict()
    blocks = [g for g in group_blocks(s["layers"]) if g["type"] == "block"]
    assert [b["name"] for b in blocks] == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    first_down = blocks[2]  # layer2.0: 3x3/2 then 3x3, a 1x1/2 projection shortcut
    assert first_down["kernel_desc"] == "3x3/2 3x3" and first_down["layers"] == 7
    members = [r for r in s["layers"] if r["block"] == "layer2.0"]
    assert first_down["params"] == sum(r["params"] for r in members)
    assert first_down["output_shape"] == [8, 8, 32]
    assert [r["name"] for r in s["layers"] if r["block"] is None] == ["conv1", "bn1", "maxpool", "pool", "fc"]


def test_memory_formula_counts_the_lectures_copies(vgg16):
    p = vgg16["trainable_params"]
    for optimizer, copies in (("sgd", 2), ("sgd_momentum", 3), ("adam", 4)):
        m = MemoryModel(p, 0, vgg16["activations_per_image"], optimizer)
        b = m.breakdown(1)
        assert (b["params_bytes"] + b["grads_bytes"] + b["optimizer_bytes"]) == copies * 4 * p
        assert b["total_bytes"] == copies * 4 * p + 2 * 4 * vgg16["activations_per_image"]
    half = MemoryModel(p, 0, 1000, "adam", compute_dtype="bfloat16")
    assert half.breakdown(3)["activations_bytes"] == 3 * 1000 * 2 * 2
    assert half.breakdown(3)["params_bytes"] == 4 * p  # parameters stay float32


@pytest.mark.parametrize("optimizer,name", [("sgd_momentum", "sgd"), ("adam", "adam"), ("sgd", "sgd")])
def test_optimizer_state_matches_optax(optimizer, name):
    from flax import nnx

    from cnncli.summary.report import _optimizer_config
    from cnncli.train.optim import build_optimizer, build_schedule
    from cnncli.config import ScheduleConfig

    model = create_model("resnet20", width=0.25, abstract=True)
    params = nnx.state(model, nnx.Param)
    tx = build_optimizer(_optimizer_config(optimizer), build_schedule(ScheduleConfig(), 0.1, 1, 1))
    opt_state = jax.eval_shape(tx.init, params)
    # per-parameter state (step counters are scalars)
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(opt_state) if x.ndim > 0)
    s = summarize_model("resnet20", SummaryOptions(model_options={"width": 0.25}, optimizer=optimizer, advice=False))
    assert s.memory["optimizer_bytes"] == state_bytes
    assert _optimizer_config(optimizer).name == name


@pytest.mark.parametrize("name,budget,options", [
    ("vgg16", "80GB", SummaryOptions()),
    ("resnet50", "80GiB", SummaryOptions(model_options={"dtype": "bfloat16"}, optimizer="adam")),
    ("alexnet", "16GB", SummaryOptions(optimizer="sgd")), ("resnet20", "81920MB", SummaryOptions()),
    ("resnet20", "12345678", SummaryOptions()),
])
def test_largest_batch_fits_and_one_more_does_not(name, budget, options):
    budget_bytes = parse_memory(budget)
    options = dataclasses.replace(options, advice=False)
    s = summarize_model(name, dataclasses.replace(options, memory_budget=budget_bytes, batch_size=None))
    answer = s.memory["largest_batch"]
    assert answer >= 1 and s.memory["batch_size"] == answer
    assert s.memory["total_bytes"] <= budget_bytes and s.memory["fits"] is True
    one_more = summarize_model(name, dataclasses.replace(options, batch_size=answer + 1))
    assert one_more.memory["total_bytes"] > budget_bytes
    assert "activations" in s.memory["limited_by"]


def test_budget_below_the_parameters_gives_zero():
    s = summarize_model("vgg16", SummaryOptions(memory_budget=10**9, batch_size=None, advice=False))
    fixed = 3 * 4 * s.trainable_params
    assert fixed > 10**9 and s.memory["largest_batch"] == 0 and s.memory["batch_size"] == 1
    assert "parameters" in s.memory["limited_by"] and s.memory["fits"] is False


def test_advice_ranked_by_bytes_saved(vgg16):
    advice = vgg16["advice"]
    saves = [a["saves_bytes"] for a in advice]
    assert saves == sorted(saves, reverse=True) and all(v > 0 for v in saves)
    fc = next(a for a in advice if a["action"].startswith("replace the FC layers"))
    # the three FC layers give way to one 512 -> 1000 classifier; params, grads and momentum shrink
    assert fc["saves_bytes"] == 3 * 4 * (vgg16["fc_params"] - (512 * 1000 + 1000))
    assert "89%" in fc["detail"]
    bf16 = next(a for a in advice if "bfloat16" in a["action"])
    assert bf16["saves_bytes"] == vgg16["activations_bytes_per_image"]  # batch 1: half of the x2 bytes
    half_input = next(a for a in advice if a["action"].startswith("halve the input"))
    at_112 = summarize_model("vgg16", SummaryOptions(input_size=112, advice=False))
    assert half_input["saves_bytes"] == 8 * (vgg16["activations_per_image"] - at_112.activations_per_image)


@pytest.mark.parametrize("text,expected", [
    ("80GB", 80 * 10**9), ("80GiB", 80 * 2**30), ("81920MB", 81920 * 10**6), ("81920MiB", 80 * 2**30),
    ("1.5GB", 1_500_000_000), ("80 gb", 80 * 10**9), ("4096", 4096), ("2TiB", 2 * 2**40),
])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["eighty", "80XB", "", "-5GB", "0GB", "80G B", "1e9"])
def test_parse_memory_rejects(text):
    with pytest.raises(SummaryError, match="--memory"):
        parse_memory(text)


def test_xla_cross_check_on_a_tiny_model():
    s = summarize_model("resnet20", SummaryOptions(input_size=16, model_options={"width": 0.25}, batch_size=4,
                                                   compile=True, advice=False)).as_dict()
    x = s["xla"]
    assert x["backend"] == jax.default_backend()
    # a training step is about three forward passes of 2 FLOPs per MAC
    assert x["analytic_flops"] == 3 * 2 * s["total_macs"] * 4
    if jax.default_backend() == "gpu":  # XLA counts no cuDNN convolution there: no figure rather than a twelfth
        assert x["flops"] is None and x["flops_ratio"] is None and x["note"].startswith("no FLOP cross-check on a GPU")
    else:
        assert x["note"] is None
        assert 0.8 < x["flops"] / x["analytic_flops"] < 1.2 and x["flops_ratio"] == x["flops"] / x["analytic_flops"]
    # the arguments hold at least the state (params, BN statistics, momentum) and the uint8 batch; the
    # state is donated, so it is aliased to the output
    state = s["memory"]["params_bytes"] + s["memory"]["optimizer_bytes"]
    assert x["argument_bytes"] >= state + 4 * 16 * 16 * 3 + 4 * 4
    assert x["alias_bytes"] >= state
    assert x["peak_bytes"] == x["argument_bytes"] + x["output_bytes"] - x["alias_bytes"] + x["temp_bytes"]
    assert x["memory_ratio"] == x["peak_bytes"] / s["memory"]["total_bytes"]


def test_xla_figures_missing_are_none():
    from cnncli.summary.xla import _memory
    from cnncli.train.xla_cost import xla_flops as _cost_flops

    class Backend:  # a compiled executable whose backend implements neither analysis
        def cost_analysis(self):
            raise NotImplementedError

        def memory_analysis(self):
            return None

    assert _cost_flops(Backend()) is None and _memory(Backend()) is None


def test_config_run_dir_and_checkpoint(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("model:\n  name: resnet20\n  width: 0.25\ndata:\n  source: digits\n  image_size: 16\n"
                   "optimizer:\n  name: adam\ntrain:\n  batch_size: 8\n")
    s = summarize_targets([str(cfg)], compile=False)[0]
    assert s["source"] == str(cfg) and s["input_shape"] == [16, 16, 1] and s["num_classes"] == 10
    assert s["memory"]["batch_size"] == 8 and s["memory"]["optimizer"] == "adam"
    from flax import nnx

    model = create_model("resnet20", width=0.25, input_shape=(16, 16, 1), abstract=True)
    assert s["trainable_params"] == sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    # command-line options win over the config
    s2 = summarize_targets([str(cfg)], batch_size=3, optimizer="sgd", input_size=24, compile=False)[0]
    assert (s2["memory"]["batch_size"], s2["memory"]["optimizer"], s2["input_shape"]) == (3, "sgd", [24, 24, 1])

    run = tmp_path / "run"
    (run / "checkpoints" / "12").mkdir(parents=True)
    (run / "config.yaml").write_text("model:\n  name: resnet20\n  num_classes: 7\n  input_size: 20\n"
                                     "  in_channels: 3\n  width: 0.25\n  remat: true\ntrain:\n  batch_size: 5\n")
    for path in (run, run / "checkpoints", run / "checkpoints" / "12"):
        t = resolve_target(str(path))
        assert (t.model, t.source, t.input_size, t.in_channels, t.num_classes, t.batch_size) == \
            ("resnet20", str(run), 20, 3, 7, 5)
        assert t.options["width"] == 0.25
    s3 = summarize_targets([str(run / "checkpoints" / "12")], compile=False)[0]
    assert s3["input_shape"] == [20, 20, 3] and s3["num_classes"] == 7
    assert any("model.remat is on" in n for n in s3["notes"])
    with pytest.raises(SummaryError, match="neither a run directory"):
        resolve_target(str(tmp_path))


def test_json_contract():
    res = runner.invoke(app, ["summarize", "resnet20", "--input-size", "16", "--batch-size", "4", "--dtype",
                              "bfloat16", "--optimizer", "adam", "--memory", "1GB", "--format", "json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    for key in ("model", "input_shape", "num_classes", "total_params", "trainable_params", "non_trainable_params",
                "total_macs", "total_flops", "activations_per_image", "layers", "memory", "xla"):
        assert key in s
    assert s["input_shape"] == [16, 16, 3]
    assert all({"name", "type", "output_shape", "activations", "params", "macs"} <= set(r) for r in s["layers"])
    mem = s["memory"]
    assert {"params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes", "total_bytes", "batch_size",
            "dtype", "optimizer"} <= set(mem)
    assert (mem["batch_size"], mem["dtype"], mem["optimizer"]) == (4, "bfloat16", "adam")
    assert mem["optimizer_bytes"] == 2 * mem["grads_bytes"]
    assert mem["activations_bytes"] == 4 * 2 * 2 * s["activations_per_image"]
    assert mem["total_bytes"] == sum(mem[k] for k in ("params_bytes", "grads_bytes", "optimizer_bytes",
                                                      "activations_bytes"))
    assert mem["budget_bytes"] == 10**9 and mem["largest_batch"] > 4
    assert {"flops", "argument_bytes", "output_bytes", "temp_bytes"} <= set(s["xla"])
    assert isinstance(s["xla"]["flops"], float) and s["xla"]["temp_bytes"] > 0


SUMMARY_KEYS = ["model", "input_shape", "num_classes", "total_params", "trainable_params", "non_trainable_params",
                "param_dtype", "params_bytes", "total_macs", "total_flops", "input_activations",
                "activations_per_image", "activations_bytes_per_image", "activations_bytes_per_image_with_backward",
                "fc_params", "fc_param_share", "receptive_field", "layers", "memory", "advice", "xla"]


def test_summary_is_a_frozen_value_whose_dict_is_the_json_form():
    opts = SummaryOptions(input_size=32, model_options={"dtype": "bfloat16"}, batch_size=8, optimizer="adam")
    s = summarize_model("resnet20", opts)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.total_macs = 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.batch_size = 16
    d = s.as_dict()
    assert list(d) == SUMMARY_KEYS
    # the derived figures: float32 parameters (4 bytes), bfloat16 activations (2 bytes), 2 FLOPs per MAC
    # ResNet-20 by hand: 3x3 convolutions without bias (a 3->16 stem; six 16->16; 16->32 and five 32->32;
    # 32->64 and five 64->64), BatchNorm's scale and bias on their 688 channels (its running mean and
    # variance the non-trainable 2 x 688), option-A shortcuts (no weights), a 64->10 dense layer
    convs = 9 * (3 * 16 + 6 * 16 * 16 + 16 * 32 + 5 * 32 * 32 + 32 * 64 + 5 * 64 * 64)
    trainable = convs + 2 * 688 + 64 * 10 + 10
    assert (s.trainable_params, s.non_trainable_params) == (trainable, 2 * 688)
    assert d["total_params"] == trainable + 2 * 688
    assert d["params_bytes"] == 4 * d["total_params"] and d["total_flops"] == 2 * s.total_macs
    assert d["activations_bytes_per_image"] == 2 * s.activations_per_image
    assert d["activations_bytes_per_image_with_backward"] == 2 * 2 * s.activations_per_image
    assert d["fc_params"] == 64 * 10 + 10 and d["fc_param_share"] == 650 / trainable
    assert d["input_shape"] == [32, 32, 3] and (d["memory"]["batch_size"], d["xla"]) == (8, None)
    # the dict is a copy: changing it leaves the summary as it was
    d["layers"][0]["params"] = -1
    d["memory"]["batch_size"] = -1
    assert s.layers[0]["params"] > 0 and s.memory["batch_size"] == 8 and s.as_dict()["memory"]["batch_size"] == 8
    res = runner.invoke(app, ["summarize", "resnet20", "--input-size", "32", "--dtype", "bfloat16", "--batch-size",
                              "8", "--optimizer", "adam", "--no-compile", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"source": None, "notes": [], **s.as_dict()}


def test_several_models_side_by_side():
    res = runner.invoke(app, ["summarize", "resnet20", "plain20", "--no-compile", "--format", "json"])
    assert res.exit_code == 0, res.output
    both = json.loads(res.stdout)
    assert [s["model"] for s in both] == ["resnet20", "plain20"] and all(s["xla"] is None for s in both)
    # option-A shortcuts add no parameters: the plain twin has the same count
    assert both[0]["trainable_params"] == both[1]["trainable_params"]
    table = runner.invoke(app, ["summarize", "resnet20", "plain20", "--no-compile"])
    assert table.exit_code == 0
    header = next(line for line in table.stdout.splitlines() if "resnet20" in line)
    assert "plain20" in header
    md = to_markdown(both)
    assert md.startswith("|  | resnet20 | plain20 |") and "## plain20" in md


def test_table_fits_80_columns_and_wide_is_exact():
    res = runner.invoke(app, ["summarize", "resnet18", "--expand", "--no-compile", "--memory", "80GB"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(line.strip().startswith("downsample_bn") for line in lines)  # a layer inside a block, indented
    assert "1,814,073,344 MACs" in res.stdout
    wide = runner.invoke(app, ["summarize", "resnet18", "--wide", "--no-compile"])
    assert wide.exit_code == 0
    assert "118,013,952" in wide.stdout  # conv1: 112*112*64 * 7*7*3 MACs, written out in wide mode


@pytest.mark.parametrize("args,needle", [
    (["resnet5O"], "unknown model 'resnet5O' (did you mean 'resnet56' or 'resnet50'"),
    (["alexnet", "--input-size", "64"], "too small for alexnet: the minimum is 67x67"),
    (["vgg16", "--memory", "eighty"], "--memory must be a number with a unit such as 80GB"),
    (["vgg16", "--batch-size", "ten"], "Invalid value for '--batch-size': "),  # the rest is Typer's, by version
    (["vgg16", "--batch-size", "0"], "Invalid value for '--batch-size'"),
    (["vgg16", "--optimizer", "lion"], "Invalid value for '--optimizer'"),
    (["no/such/run"], "no such config file, run directory or checkpoint: no/such/run"),
])
def test_bad_input_is_one_line_exit_2(args, needle):
    proc = subprocess.run([sys.executable, "-m", "cnncli.cli", "summarize", *args, "--no-compile"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


# --- receptive fields -------------------------------------------------------------------------------------------
# Independent of cnncli.summary.receptive: the closed form RF_L = 1 + sum_l (k_l - 1) * prod_{i<l} s_i over the
# main path, written out from each architecture's description.

def closed_form(path):
    """[(rf, jump)] after each (kernel, stride) of `path`."""
    out, rf, jump = [], 1, 1
    for k, s in path:
        rf += (k - 1) * jump
        jump *= s
        out.append((rf, jump))
    return out


def resnet_path(stem, blocks_per_stage, block):
    """(main path, index of each block's last layer in it) for a ResNet: stem layers then the blocks' convs."""
    path, ends = list(stem), []
    for stage, n in enumerate(blocks_per_stage):
        for j in range(n):
            path += block(2 if stage > 0 and j == 0 else 1)
            ends.append(len(path) - 1)
    return path, ends


def basic(stride):
    return [(3, stride), (3, 1)]


def bottleneck(stride):  # torchvision v1.5: the stride on the 3x3 conv
    return [(1, 1), (3, stride), (1, 1)]


def fields(s, types):
    return [(r["receptive_field"], r["effective_stride"]) for r in s["layers"] if r["type"] in types]


def test_alexnet_receptive_fields_are_the_lectures():
    s = summarize_model("alexnet", SummaryOptions(advice=False)).as_dict()
    by_name = {r["name"]: r["receptive_field"] for r in s["layers"]}
    assert (by_name["conv1"], by_name["pool1"], by_name["conv2"]) == (11, 19, 51)  # the lecture's figures
    path = [(11, 4), (3, 2), (5, 1), (3, 2), (3, 1), (3, 1), (3, 1), (3, 2)]
    assert fields(s, ("conv", "pool"))[:8] == closed_form(path)
    assert s["receptive_field"] == {"layer": "avgpool", "receptive_field": 195, "effective_stride": 32}


def test_vgg16_receptive_fields():
    s = summarize_model("vgg16", SummaryOptions(advice=False)).as_dict()
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    path = [(2, 2) if v == "M" else (3, 1) for v in cfg]
    got = [(r["receptive_field"], r["effective_stride"]) for r in s["layers"] if r["name"].startswith("features.")]
    assert got == closed_form(path)
    assert s["receptive_field"]["receptive_field"] == 212  # pool5; the 7x7 adaptive pooling is an identity
    # past the last feature map, the first dense layer covers the whole 7x7 map
    fc6 = next(r for r in s["layers"] if r["name"] == "fc6")
    assert (fc6["receptive_field"], fc6["effective_stride"]) == (212 + 6 * 32, 7 * 32)


@pytest.mark.parametrize("name,stem,blocks,block,final", [
    ("resnet18", [(7, 2), (3, 2)], [2, 2, 2, 2], basic, 435),
    ("resnet50", [(7, 2), (3, 2)], [3, 4, 6, 3], bottleneck, 427),
    ("resnet20", [(3, 1)], [3, 3, 3], basic, 81),
    ("plain20", [(3, 1)], [3, 3, 3], basic, 81),
])
def test_resnet_receptive_fields_follow_the_deepest_path(name, stem, blocks, block, final):
    s = summarize_model(name, SummaryOptions(model_options={"width": 0.25}, advice=False)).as_dict()
    path, ends = resnet_path(stem, blocks, block)
    hand = closed_form(path)
    main = [(r["receptive_field"], r["effective_stride"]) for r in s["layers"]
            if r["type"] in ("conv", "pool") and len(r["output_shape"]) == 3
            and not r["name"].rsplit(".", 1)[-1].startswith(("downsample", "proj"))]
    assert main == hand
    block_rows = [b for b in group_blocks(s["layers"]) if b["type"] == "block"]
    assert [(b["receptive_field"], b["effective_stride"]) for b in block_rows] == [hand[i] for i in ends]
    assert s["receptive_field"]["receptive_field"] == final == hand[-1][0]


def test_shortcut_projection_starts_from_the_block_input():
    s = summarize_model("resnet18", SummaryOptions(model_options={"width": 0.25}, advice=False))
    layers = {r["name"]: r for r in s.layers}
    entry = layers["layer1.1"]  # layer2.0's input
    proj = layers["layer2.0.downsample"]
    assert (proj["receptive_field"], proj["effective_stride"]) == (entry["receptive_field"],
                                                                   2 * entry["effective_stride"])
    assert layers["layer2.0.downsample_bn"]["receptive_field"] == entry["receptive_field"]
    assert layers["layer2.0"]["receptive_field"] == layers["layer2.0.conv2"]["receptive_field"]


def test_receptive_field_geometry_helpers():
    from cnncli.summary.receptive import Field, adaptive_kernel_stride

    assert Field(1, 1).through(3, 1, dilation=2) == Field(5, 1)  # a dilated 3x3 spans 5 pixels
    assert Field(5, 2).through(3, 2, dilation=2) == Field(13, 4)
    assert adaptive_kernel_stride(14, 7) == (2, 2)
    assert adaptive_kernel_stride(8, 7) == (2, 1)  # bins [0,2), [1,3), ...


def test_receptive_field_in_every_format():
    res = runner.invoke(app, ["summarize", "resnet20", "--no-compile", "--format", "json"])
    s = json.loads(res.stdout)
    assert s["receptive_field"] == {"layer": "layer3.2", "receptive_field": 81, "effective_stride": 4}
    assert all({"receptive_field", "effective_stride"} <= set(r) for r in s["layers"])
    rows = list(csv.DictReader(io.StringIO(runner.invoke(
        app, ["summarize", "alexnet", "--no-compile", "--format", "csv"]).stdout)))
    assert {r["name"]: r["receptive_field"] for r in rows}["conv2"] == "51"
    md = runner.invoke(app, ["summarize", "alexnet", "--no-compile", "--format", "markdown"]).stdout
    assert "| RF | jump |" in md and "| conv2 | conv | 5x5 p2 | 27x27x256 | 51 | 8 |" in md
    table = runner.invoke(app, ["summarize", "resnet20", "--no-compile"]).stdout
    assert " RF " in table
    flat = " ".join(table.split())
    assert "sees 81x81 input pixels, 4 apart; larger than the 32x32 input" in flat
    assert "every unit sees the whole image" in flat  # 81 >= 2 * 32 - 1
    big = " ".join(runner.invoke(app, ["summarize", "resnet18", "--no-compile"]).stdout.split())
    assert "larger than the 224x224 input" in big and "whole image" not in big  # 435 < 447
