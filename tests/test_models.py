import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from cnncli.errors import ModelError
from cnncli.models import create_model, get_spec, list_models
from cnncli.summary import walk_layers


def n_params(model):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def n_stats(model):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))


# Published / torchvision parameter counts (trainable), at the family's default input and classes.
EXPECTED = {
    "alexnet": 62_378_344,
    "vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg16_bn": 138_365_992,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
    "resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018, "resnet110": 1_727_962,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_counts(name):
    assert n_params(create_model(name, abstract=True, check_input=False)) == EXPECTED[name]


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_plain_twins_match_resnets(depth):
    plain = create_model(f"plain{depth}", abstract=True, check_input=False)
    assert n_params(plain) == EXPECTED[f"resnet{depth}"]


def test_bn_variants_add_scale_and_bias_per_conv():
    for name, convs_width in (("vgg11", 64 + 128 + 256 * 2 + 512 * 4),):
        assert n_params(create_model(name + "_bn", abstract=True, check_input=False)) == \
            n_params(create_model(name, abstract=True, check_input=False)) + 2 * convs_width


def test_resnet20_one_channel_and_batchnorm_statistics_separate():
    m = create_model("resnet20", input_shape=(32, 32, 1), abstract=True)
    assert n_params(m) == 269_434
    # 19 BatchNorms over 16*7 + 32*6 + 64*6 channels, mean and var each
    assert n_stats(m) == 2 * (16 * 7 + 32 * 6 + 64 * 6)


def test_option_b_adds_projections():
    a = n_params(create_model("resnet20", abstract=True))
    b = n_params(create_model("resnet20", shortcut="B", abstract=True))
    # two 1x1 projections (16->32, 32->64) with BatchNorm scale+bias
    assert b - a == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64


def test_alexnet_table_shapes():
    rows = walk_layers(create_model("alexnet", abstract=True), (227, 227, 3))
    shapes = {r.name: r.output_shape for r in rows}
    assert shapes["conv1"] == [55, 55, 96]
    assert shapes["pool1"] == [27, 27, 96]
    assert shapes["conv2"] == [27, 27, 256]
    assert shapes["pool2"] == [13, 13, 256]
    assert shapes["conv3"] == [13, 13, 384]
    assert shapes["conv4"] == [13, 13, 384]
    assert shapes["conv5"] == [13, 13, 256]
    assert shapes["pool3"] == [6, 6, 256]
    assert [shapes[f"fc{i}"] for i in (6, 7, 8)] == [[4096], [4096], [1000]]


@pytest.mark.parametrize("name", [n for n in list_models() if get_spec(n).family in ("cifar_resnet", "cifar_plain")])
def test_cifar_models_forward_32(name):
    m = create_model(name, num_classes=7, input_shape=(32, 32, 3))
    m.eval()
    out = m(jnp.ones((2, 32, 32, 3)))
    assert out.shape == (2, 7) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize("name,size", [("alexnet", 67), ("vgg11", 32), ("vgg16_bn", 32), ("resnet18", 32),
                                       ("resnet50", 32)])
def test_imagenet_models_at_reduced_size(name, size):
    m = create_model(name, num_classes=5, input_shape=(size, size, 3), width=0.25)
    m.eval()
    out = m(jnp.ones((1, size, size, 3)))
    assert out.shape == (1, 5)
    assert bool(jnp.all(jnp.isfinite(out)))


def test_too_small_input_names_minimum():
    with pytest.raises(ModelError, match="too small for alexnet: the minimum is 67x67"):
        create_model("alexnet", input_shape=(64, 64, 3), abstract=True)
    with pytest.raises(ModelError, match="minimum is 32x32"):
        create_model("vgg16", input_shape=(31, 31, 3), abstract=True)


def test_unknown_model_and_option():
    with pytest.raises(ModelError, match="did you mean .*'resnet50'"):
        create_model("resnet5O")
    with pytest.raises(ModelError, match="does not apply to vgg16"):
        create_model("vgg16", shortcut="B", abstract=True)
    with pytest.raises(ModelError, match="unknown model option 'widht'"):
        create_model("resnet20", widht=2)


def test_bfloat16_compute_float32_params():
    m = create_model("resnet20", dtype="bfloat16", num_classes=10, input_shape=(32, 32, 3))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
    m.eval()
    assert m(jnp.ones((1, 32, 32, 3))).dtype == jnp.float32


def test_zero_init_residual_zeroes_last_bn_scale():
    m = create_model("resnet20", zero_init_residual=True, input_shape=(32, 32, 3))
    assert float(jnp.abs(m.layer1[0].bn2.scale.value).sum()) == 0.0
    assert float(jnp.abs(m.layer1[0].bn1.scale.value).sum()) > 0.0


@pytest.mark.slow
def test_remat_gives_same_gradients():
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))

    def grads(remat):
        m = create_model("resnet20", width=0.25, remat=remat, input_shape=(32, 32, 3))
        return nnx.grad(lambda m: jnp.sum(m(x) ** 2))(m)

    a, b = jax.tree.leaves(grads(False)), jax.tree.leaves(grads(True))
    assert all(jnp.allclose(u, v, atol=1e-5) for u, v in zip(a, b))


def test_adaptive_pool_matches_torch_bins():
    from cnncli.models.layers import _adaptive_matrix

    m = _adaptive_matrix(5, 3)  # bins [0,2), [1,4), [3,5)
    assert (m > 0).tolist() == [[True, True, False, False, False],
                                [False, True, True, True, False],
                                [False, False, False, True, True]]


def test_models_command_json():
    import json

    from typer.testing import CliRunner

    from cnncli.cli import app

    res = CliRunner().invoke(app, ["models", "vgg1*", "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["name"] for r in rows] == ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
                                         "vgg19_bn"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["vgg16"]["params"] == EXPECTED["vgg16"] and by_name["vgg16"]["family"] == "vgg"
    assert by_name["vgg16_bn"]["default_input"] == [224, 224, 3]
