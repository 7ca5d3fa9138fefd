import pytest

from salbench.datasets import create_dataset, list_datasets
from salbench.methods import create_method, list_methods
from salbench.metrics import create_metric, list_metrics
from salbench.models import list_models
from salbench.harness.registry import Registry, UnknownNameError


def test_glob_listing_and_lazy_entries():
    registry = Registry("thing")
    registry.register("alpha")(dict)
    registry.register_lazy("beta", "collections:OrderedDict")
    registry.register_lazy("alphabet", "collections:Counter")
    assert registry.list("alpha*") == ["alpha", "alphabet"]
    assert registry.list() == ["alpha", "alphabet", "beta"]
    assert registry.create("beta", a=1, b=None) == {"a": 1}  # None options are dropped
    assert registry.get("beta").__name__ == "OrderedDict"


def test_unknown_name_lists_close_matches_and_choices():
    with pytest.raises(UnknownNameError) as error:
        create_method("gradcma", None)
    message = str(error.value)
    assert "unknown method 'gradcma'" in message and "Did you mean 'gradcam'" in message
    assert "random" in message  # every valid choice is listed
    for factory, name in [(create_dataset, "synthtic"), (create_metric, "campaper")]:
        with pytest.raises(UnknownNameError, match="Did you mean"):
            factory(name)


def test_public_listings():
    assert {"gradcam", "random", "center"} <= set(list_methods())
    assert "gradcam" in list_methods("*cam*") and "random" not in list_methods("*cam*")
    assert "synthetic_cnn" in list_models() and "synthetic" in list_datasets() and "cam_paper" in list_metrics()


def test_registering_a_name_twice_is_an_error():
    registry = Registry("thing")
    registry.register("a")(dict)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(list)
