import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from common.data.models import FAST_PATH, MODELS, ResNet, make_model, model_names
from common.errors import ConfigError

SMALL = ["softmax", "mlp", "cnn"]
BIG = ["resnet20", "resnet18", "vgg11"]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


_BUILT = {}


def built(name, shape=(3, 32, 32)):
    """Build each (slow to initialise) big model once per test session."""
    if (name, shape) not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name, shape] = make_model(name, shape, 10)
    return _BUILT[name, shape]


def test_registry():
    assert set(model_names()) == {"softmax", "mlp", "cnn", "resnet20", "resnet18", "vgg11"}
    assert set(FAST_PATH) == set(MODELS)
    with pytest.raises(ConfigError, match="choose one of"):
        make_model("lenet", (1, 28, 28), 10)


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_small_forward_shape(name, shape):
    torch.manual_seed(0)
    model = make_model(name, shape, 10)
    assert model(torch.randn(3, *shape)).shape == (3, 10)
    assert list(model.buffers()) == []


@pytest.mark.parametrize("name", BIG)
def test_big_forward_shape_no_buffers(name):
    model = built(name)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert list(model.buffers()) == []  # flat parameter vector == whole model state


def test_vgg_and_resnet20_accept_28x28():
    torch.manual_seed(0)
    for name in ("vgg11", "resnet20"):
        model = make_model(name, (1, 28, 28), 10)
        with torch.no_grad():
            assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_dense_models_accept_flat_input():
    for name in ("softmax", "mlp"):
        assert make_model(name, (64,), 10)(torch.randn(4, 64)).shape == (4, 10)
    with pytest.raises(ConfigError, match="image input"):
        make_model("cnn", (64,), 10)


def test_parameter_counts():
    assert n_params(make_model("mlp", (1, 28, 28), 10)) == 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10
    assert n_params(make_model("softmax", (1, 28, 28), 10)) == 7850
    assert n_params(make_model("cnn", (1, 28, 28), 10)) == 1_199_882  # the classic MNIST CNN
    assert n_params(built("resnet20")) == 269_722  # option-A shortcuts
    assert n_params(built("resnet18")) == pytest.approx(11.2e6, rel=0.01)
    assert n_params(built("vgg11")) == pytest.approx(9.23e6, rel=0.01)


def test_softmax_init_zero():
    torch.manual_seed(123)
    model = make_model("softmax", (1, 8, 8), 10)
    assert all(bool((p == 0).all()) for p in model.parameters())


def test_vgg_init_glorot_zero_bias_groupnorm():
    model = built("vgg11")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 8 and all(m.num_channels // m.num_groups == 16 for m in norms)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(bool((m.bias == 0).all()) for m in convs)
    w = convs[0].weight  # xavier uniform bound sqrt(6 / (fan_in + fan_out))
    bound = (6.0 / (3 * 9 + 64 * 9)) ** 0.5
    m = float(w.detach().abs().max())
    assert 0.9 * bound < m <= bound


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet20"])
def test_deterministic_init(name):
    shape = (1, 8, 8)
    torch.manual_seed(7)
    a = make_model(name, shape, 10)
    torch.manual_seed(7)
    b = make_model(name, shape, 10)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", SMALL + ["tiny_resnet"])
def test_vmap_grad_matches_loop(name):
    shape, k, batch = (1, 8, 8), 3, 4
    torch.manual_seed(0)
    if name == "tiny_resnet":  # the ResNet code path (batch-stat BatchNorm, option-A shortcut), small
        model = ResNet(1, 10, (4, 8), (1, 1), shortcut="A", kaiming_init=True)
    else:
        model = make_model(name, shape, 10)
    if name == "softmax":  # zero init gives trivial gradients in the weights' structure; perturb
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    params = {n: p.detach() for n, p in model.named_parameters()}
    x = torch.randn(k, batch, *shape)
    y = torch.randint(0, 10, (k, batch))

    def loss_fn(p, xb, yb):
        return F.cross_entropy(functional_call(model, p, (xb,)), yb)

    vg = vmap(grad(loss_fn), in_dims=(None, 0, 0))(params, x, y)
    for i in range(k):
        model.zero_grad()
        F.cross_entropy(model(x[i]), y[i]).backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(vg[n][i], p.grad, atol=1e-5, rtol=1e-4)
