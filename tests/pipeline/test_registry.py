"""The one registry shape: names in registration order with their descriptions, duplicates refused,
unknown names answered with the allowed ones, plain value sets, and membership that never raises."""
import pytest

from pipeline.core.registry import Registry


def test_entries_keep_their_order_and_description_and_duplicates_are_refused():
    reg = Registry("colour")
    reg.add("red", 1, "warm")

    @reg.register("blue", "cold")
    def blue():
        return 2

    assert reg.names() == ("red", "blue") and list(reg) == ["red", "blue"] and len(reg) == 2
    assert reg.get("blue") is blue and reg.about("red") == "warm" and reg.items() == (("red", 1), ("blue", blue))
    with pytest.raises(ValueError, match="already registered under the name 'red'"):
        reg.add("red", 3)
    with pytest.raises(ValueError, match="unknown colour 'green'; allowed: red, blue"):
        reg.get("green")


def test_a_value_set_is_its_own_entries_and_anything_unhashable_is_simply_not_in_it():
    devices = Registry.of("device", {"auto": "cuda when present", "cpu": ""})
    assert devices.get("cpu") == "cpu" and devices.about("auto") == "cuda when present"
    assert Registry.of("format", ("zarr", "hdf5")).names() == ("zarr", "hdf5")
    assert "cpu" in devices and "gpu" not in devices
    assert ["cpu"] not in devices and {"a": 1} not in devices   # a config file's list: not a name, no TypeError
