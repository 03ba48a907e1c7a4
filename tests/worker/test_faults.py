import pytest

from worker.faults import (
    Fault,
    FaultSpecError,
    decode_faults,
    encode_faults,
    parse_fault,
    parse_faults,
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("call=2:fail=2", Fault(call=2, fail_attempts=2)),
        (" call=1 : permanent ", Fault(call=1, permanent=True)),
        ("call=1:fatal", Fault(call=1, fatal=True)),
        ("CALL=3:slow=5000", Fault(call=3, slow_ms=5000)),
    ],
)
def test_parse_fault_accepts_each_kind(spec: str, expected: Fault) -> None:
    assert parse_fault(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("fail=2", "missing call=N"),
        ("call=0:fail=1", "call must be at least 1"),
        ("call=x:fail=1", "call must be a whole number"),
        ("call=1:explode", "unknown key 'explode'"),
        ("call=1", "exactly one of"),
        ("call=1:fail=1:slow=10", "exactly one of"),
        ("call=1:fail", "fail needs a value"),
        ("call=1:permanent=3", "permanent takes no value"),
        ("call=1:call=2:fail=1", "given twice"),
    ],
)
def test_parse_fault_rejects_bad_specs_with_a_reason(spec: str, message: str) -> None:
    with pytest.raises(FaultSpecError, match=message):
        parse_fault(spec)


def test_two_faults_for_one_call_are_rejected() -> None:
    with pytest.raises(FaultSpecError, match="more than one fault for call 2"):
        parse_faults(["call=2:fail=1", "call=2:slow=10"])


def test_failure_for_attempts() -> None:
    flaky = Fault(call=1, fail_attempts=2)
    assert [flaky.failure_for(a) for a in (1, 2, 3)] == ["retryable", "retryable", None]
    assert Fault(call=1, permanent=True).failure_for(9) == "retryable"
    assert Fault(call=1, fatal=True).failure_for(1) == "fatal"
    assert Fault(call=1, slow_ms=10).failure_for(1) is None


def test_encode_decode_round_trip() -> None:
    faults = parse_faults(["call=2:fail=2", "call=4:slow=10"])
    assert decode_faults(encode_faults(faults)) == {2: faults[0], 4: faults[1]}
    assert decode_faults(None) == {}
