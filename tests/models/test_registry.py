import pytest

import archjax.models as models


def test_list_models_has_foundation_family():
    names = models.list_models()
    for name in ("resnet20", "resnet32", "resnet56", "resnet18", "resnet34", "resnet50"):
        assert name in names
    assert names == sorted(names)


def test_unknown_model_names_allowed_values():
    with pytest.raises(ValueError, match="Unknown model 'resnet21'") as e:
        models.create("resnet21")
    assert "resnet20" in str(e.value) and "resnet50" in str(e.value)


def test_unknown_knob_names_allowed_knobs():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['widht'\]") as e:
        models.create("resnet20", widht=2)
    assert "width_multiplier" in str(e.value)


def test_register_twice_fails():
    with pytest.raises(ValueError, match="already registered"):
        models.register("resnet20")(lambda **kw: None)
