"""Decode top-k ops with vLLM's signature, ``op(logits, next_n, seq_lens, indices, num_rows, stride0, stride1,
top_k)``, in plain torch on the CPU: a correct one, and ones that each plant one defect the top-k
contract must catch. ``as_read`` behaves as reading vLLM's csrc/sampler.cu predicts (parity.contract.topk_cases),
written here from that description, not from the predictions' code."""
import torch

PLANTED = ("duplicates", "out_of_range", "tail_not_minus_one", "neighbour_write", "unwritten_tail")


def _rows(logits, next_n, seq_lens, num_rows, stride0, stride1):
    cols = logits.shape[1]
    view = logits.as_strided((num_rows, cols), (stride0, stride1), logits.storage_offset())
    lens = [int(seq_lens[r // next_n]) - next_n + r % next_n + 1 for r in range(num_rows)]
    return view, lens


def _best(values, L, k):
    return torch.topk(values[:L], k).indices.to(torch.int32)


def make_op(defect=None):
    if defect not in (None, *PLANTED):
        raise ValueError(f"defect must be None or one of {PLANTED}, got {defect!r}")

    def op(logits, next_n, seq_lens, indices, num_rows, stride0, stride1, top_k):
        view, lens = _rows(logits, next_n, seq_lens, num_rows, stride0, stride1)
        flat = indices.as_strided((indices.untyped_storage().nbytes() // 4,), (1,), 0)  # the whole storage
        base = indices.storage_offset()
        for r, L in enumerate(lens):
            row = indices[r]
            if L < 0 and defect == "neighbour_write":
                flat[base + r * top_k + L:base + r * top_k] = -1  # outIndices[L .. -1], as a shortcut of length L
            if L <= top_k:
                n = max(L, 0)
                row[:n] = torch.arange(n, dtype=torch.int32)
                if defect == "unwritten_tail" and 0 < L < top_k:
                    continue
                row[n:] = 0 if defect == "tail_not_minus_one" and 0 < L < top_k else -1
                continue
            row[:] = _best(view[r], L, top_k)
            if defect == "duplicates":
                row[-3:] = row[:3]
            elif defect == "out_of_range":
                row[-1] = L  # one past the row's last valid position
    return op


def as_read(logits, next_n, seq_lens, indices, num_rows, stride0, stride1, top_k):
    """The op as its source reads: a one-block row whose k-th value lies in a tie group of more than
    2048 entries with fewer than k values above it gets those values twice; in the two-pass path
    (200000 columns and more) a row of 0 < L < k gets its top min(L, k - L) twice; a negative count
    writes -1 into the previous row's last slots (or before the buffer) on the one-block paths."""
    view, lens = _rows(logits, next_n, seq_lens, num_rows, stride0, stride1)
    two_pass = logits.shape[1] >= 200_000
    flat = indices.as_strided((indices.untyped_storage().nbytes() // 4,), (1,), 0)
    base = indices.storage_offset()
    for r, L in enumerate(lens):
        row = indices[r]
        if L < 0 and not two_pass:
            flat[base + r * top_k + L:base + r * top_k] = -1
        if L <= 0:
            row[:] = -1
            continue
        values = view[r, :L]
        order = torch.argsort(values, descending=True, stable=True).to(torch.int32)
        if L < top_k and two_pass:
            again = order[:min(L, top_k - L)]
            out = torch.cat([order, again, torch.full((top_k,), -1, dtype=torch.int32)])[:top_k]
        elif L <= top_k:
            out = torch.cat([torch.arange(L, dtype=torch.int32), torch.full((top_k - L,), -1, dtype=torch.int32)])
        else:
            kth = values[order[top_k - 1]]
            above = order[values[order] > kth]
            ties = order[values[order] == kth]
            if ties.numel() > 2048 and 0 < above.numel() < top_k:
                out = torch.cat([above, above[:top_k - above.numel()], ties])[:top_k]
            else:
                out = order[:top_k]
        row[:] = out
