import pytest
import torch

from coursepkg import models
from coursepkg.nets import MLP, as_hidden


def test_data_shape_convention():
    assert models.data_shape(2) == (2,)
    assert models.data_shape((1, 8, 8)) == (1, 8, 8)
    for bad in (0, (1, 8), (3, 0, 2)):
        with pytest.raises(ValueError, match=r"\(C, H, W\)"):
            models.data_shape(bad)
    base = models.standard_normal_base((1, 8, 8))
    assert base.sample(2).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("name", sorted(models._PLANNED))
def test_families_not_written_yet_say_which_chapter_brings_them(name):
    assert name not in models.__all__, f"models.{name} exists: remove it from models._PLANNED"
    with pytest.raises(NotImplementedError, match="chapter"):
        getattr(models, name)


def test_written_families_are_no_longer_planned():
    assert {"nice", "realnvp"} <= set(models.__all__)
    assert not set(models.__all__) & set(models._PLANNED)


def test_unknown_model_is_an_attribute_error():
    with pytest.raises(AttributeError):
        models.does_not_exist  # noqa: B018


def test_mlp_shapes_hidden_and_zero_last_layer():
    assert as_hidden(32) == (32, 32)
    assert as_hidden((16, 8)) == (16, 8)
    with pytest.raises(ValueError):
        as_hidden(())
    net = MLP(3, 5, hidden=(7, 11))
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 7), (7, 11), (11, 5)]
    assert torch.count_nonzero(net(torch.randn(4, 3))) == 0
    assert torch.count_nonzero(MLP(3, 5, zero_last=False)(torch.randn(4, 3))) > 0
