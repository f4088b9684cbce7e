"""Reading a cell result's findings in tests."""


def finding(result, check, landed=None):
    """The first finding of ``check`` (that landed in ``landed``, for oob); fails the test if none."""
    found = [f for f in result["findings"] if f["check"] == check
             and (landed is None or landed in f["details"].get("landed", {}))]
    assert found, f"no {check} finding{' landed in ' + landed if landed else ''}: {result['findings']}"
    return found[0]


def failing(result):
    return sorted({f["check"] for f in result["findings"] if not f["ok"]})
