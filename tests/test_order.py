import pytest

from infogrowth.core.order import OrderedGate


def test_items_pass_straight_through_when_nothing_waits():
    gate: OrderedGate[int] = OrderedGate()
    assert gate.push("a", 1) == [("a", 1)]
    assert gate.push("b", 2) == [("b", 2)]
    assert len(gate) == 0


def test_waiting_item_holds_everything_behind_it_in_order():
    gate: OrderedGate[str] = OrderedGate()
    assert gate.push("a", "A") == [("a", "A")]
    assert gate.push("b", None) == []  # b goes to recaption
    assert gate.push("c", "C") == []
    assert gate.push("d", None) == []
    assert gate.push("e", "E") == []
    assert gate.waiting("b") and gate.waiting("d") and not gate.waiting("c")
    assert gate.resolve("d", "D") == []  # d is back, but b still blocks
    assert gate.resolve("b", "B") == [("b", "B"), ("c", "C"), ("d", "D"), ("e", "E")]
    assert len(gate) == 0


def test_resolving_an_unknown_or_ready_item_is_an_error():
    gate: OrderedGate[str] = OrderedGate()
    gate.push("a", None)
    gate.push("b", "B")
    with pytest.raises(KeyError):
        gate.resolve("zzz", "Z")
    with pytest.raises(KeyError):
        gate.resolve("b", "B")
    with pytest.raises(KeyError):
        gate.push("a", "A")


def test_item_shows_what_a_snapshot_keeps_of_a_held_entry():
    gate: OrderedGate[str] = OrderedGate()
    gate.push("a", None)
    gate.push("b", "B")
    assert gate.item("a") is None and gate.item("b") == "B"
    with pytest.raises(KeyError):
        gate.item("zzz")


def test_a_pickled_gate_still_holds_what_waits():
    """The curator's selection process restores the gate and sends it to the worker."""
    import pickle

    gate = OrderedGate()
    gate.push("a", None)
    gate.push("b", b"B")
    copy = pickle.loads(pickle.dumps(gate))
    assert copy.waiting("a") and copy.head() == "a"
    assert copy.resolve("a", b"A") == [("a", b"A"), ("b", b"B")]
