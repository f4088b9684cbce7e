"""Reading a cell result's findings in tests."""


def finding(result, check, landed=None):
    """The first finding of ``check`` (that landed in ``landed``, for oob); fails the test if none."""
    found = [f for f in result["findings"] if f["check"] == check
             and (landed is None or landed in f["details"].get("landed", {}))]
    assert found, f"no {check} finding{' landed in ' + landed if landed else ''}: {result['findings']}"
    return found[0]


def failing(result):
    return sorted({f["check"] for f in result["findings"] if not f["ok"]})


def old_causal_rule_mask(context_lens, next_n):
    """The mask finding's per_row a kernel with the old aiter causal rule must get: row i of a
    sequence sees ``t <= ctx - i`` (within the context) where SPEC says ``t <= ctx - next_n + i``;
    the positions between the two are spurious finite (rows that gain) or spurious -inf (lose)."""
    want = {}
    for b, ctx in enumerate(context_lens):
        for i in range(next_n):
            got_len, spec_len = min(ctx, ctx - i + 1), ctx - next_n + i + 1
            if got_len != spec_len:
                lo, hi = sorted((got_len, spec_len))
                gained = got_len > spec_len
                want[b * next_n + i] = {"first_cols": list(range(lo, hi))[:8], "count": hi - lo,
                                        "spurious_finite": (hi - lo) if gained else 0,
                                        "spurious_neg_inf": 0 if gained else hi - lo}
    return want
