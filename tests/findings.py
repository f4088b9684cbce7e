"""Reading a cell result's findings in tests."""


def finding(result, check, landed=None):
    """The first finding of ``check`` (that landed in ``landed``, for oob); fails the test if none."""
    found = [f for f in result["findings"] if f["check"] == check
             and (landed is None or landed in f["details"].get("landed", {}))]
    assert found, f"no {check} finding{' landed in ' + landed if landed else ''}: {result['findings']}"
    return found[0]


def failing(result):
    return sorted({f["check"] for f in result["findings"] if not f["ok"]})


def old_causal_rule_mask(context_lens, next_n, consumer="length-bounded", max_model_len=None):
    """The mask finding's per_row a kernel with the old aiter causal rule must get: row i of a
    sequence sees ``t <= ctx - i`` where SPEC says ``t <= ctx - next_n + i``. Positions it loses are
    spurious -inf for any reader; positions it gains lie past the row's valid length, a finding for an
    unbounded reader only, and run to ``t = ctx - i`` (past the context too, up to ``max_model_len``)."""
    want = {}
    for b, ctx in enumerate(context_lens):
        for i in range(next_n):
            spec_len = max(0, ctx - next_n + i + 1)
            got_len = min(ctx - i + 1, max_model_len if max_model_len is not None else ctx)
            lost = got_len < spec_len
            if got_len == spec_len or (consumer == "length-bounded" and not lost):
                continue
            lo, hi = sorted((got_len, spec_len))
            want[b * next_n + i] = {"first_cols": list(range(lo, hi))[:8], "count": hi - lo,
                                    "spurious_finite": 0 if lost else hi - lo,
                                    "spurious_neg_inf": hi - lo if lost else 0, "pos_inf_or_nan": 0}
    return want
