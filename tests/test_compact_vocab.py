"""Compact-vocabulary training must give the same weights as dense AdamW training."""

from __future__ import annotations

import torch
from torch import nn

from xstilts.train.compact_vocab import CompactVocabulary, collect_token_ids


class TinyEncoder(nn.Module):
    def __init__(self, vocab: int = 500, dim: int = 8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.lin = nn.Linear(dim, 3)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.emb

    def set_input_embeddings(self, e: nn.Embedding) -> None:
        self.emb = e

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lin(self.emb(ids).mean(1))


def _train(compact: bool, steps: int = 12, wd: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyEncoder()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(10, 60, (4, 5), generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(steps)]
    cv = None
    if compact:
        cv = CompactVocabulary(model, collect_token_ids({"input_ids": b[0].flatten().tolist()} for b in batches), always=[0])
        cv.apply()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / (steps + 1))
    for i, (ids, y) in enumerate(batches):
        if cv is not None:
            ids = cv.remap(ids)
        loss = nn.functional.cross_entropy(model(ids), y)
        loss.backward()
        lr = opt.param_groups[0]["lr"]
        opt.step()
        opt.zero_grad()
        sched.step()
        if cv is not None:
            cv.record_step(lr, wd)
        if cv is not None and i == steps // 2:
            with cv.full_view() as enc:  # a checkpoint in the middle must not perturb training
                assert enc.get_input_embeddings().num_embeddings == 500
    if cv is not None:
        cv.restore()
    return model.emb.weight.detach().clone(), model.lin.weight.detach().clone()


def test_compact_vocabulary_matches_dense_adamw():
    dense_emb, dense_lin = _train(compact=False)
    comp_emb, comp_lin = _train(compact=True)
    assert comp_emb.shape == dense_emb.shape
    torch.testing.assert_close(comp_lin, dense_lin, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(comp_emb, dense_emb, rtol=1e-5, atol=1e-6)
    # untouched rows really were decayed (not left as initialised)
    torch.manual_seed(0)
    init = TinyEncoder().emb.weight.detach()
    assert not torch.allclose(comp_emb[400], init[400])


def test_collect_token_ids_nested_choices():
    rows = [{"input_ids": [[1, 2], [3]]}, {"input_ids": [4, 2]}]
    assert collect_token_ids(rows) == {1, 2, 3, 4}
