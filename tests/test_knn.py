"""Weighted kNN against a naive per-query loop, and R^2 against its definition."""
import torch
import torch.nn.functional as F

from sslcifar.knn import knn_classify, knn_regress, r2_scores


def naive_knn(train_f, train_y, q, k, T, C):
    out = torch.zeros(C)
    sims = [(float(q @ f), int(y)) for f, y in zip(train_f, train_y)]
    sims.sort(key=lambda s: -s[0])
    for s, y in sims[:k]:
        out[y] += torch.exp(torch.tensor(s / T))
    return out


def test_knn_classify_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    train_f = F.normalize(torch.randn(60, 8, generator=g), dim=1)
    train_y = torch.randint(0, 4, (60,), generator=g)
    test_f = F.normalize(torch.randn(7, 8, generator=g), dim=1)
    scores = knn_classify(train_f, train_y, test_f, 4, k=10, temperature=0.1, chunk=3)
    for i in range(7):
        torch.testing.assert_close(scores[i], naive_knn(train_f, train_y, test_f[i], 10, 0.1, 4),
                                   rtol=1e-4, atol=1e-4)


def test_knn_finds_clusters():
    g = torch.Generator().manual_seed(1)
    centers = F.normalize(torch.randn(3, 16, generator=g), dim=1)
    y = torch.arange(90) % 3
    f = F.normalize(centers[y] + 0.1 * torch.randn(90, 16, generator=g), dim=1)
    scores = knn_classify(f[:60], y[:60], f[60:], 3, k=5, temperature=0.1)
    assert (scores.argmax(1) == y[60:]).all()


def test_knn_regress_and_r2():
    g = torch.Generator().manual_seed(2)
    t = torch.rand(80, 2, generator=g)
    f = F.normalize(torch.cat([t, torch.ones(80, 1)], 1), dim=1)      # features encode targets
    pred = knn_regress(f[:60], t[:60], f[60:], k=3, temperature=0.01)
    r2 = r2_scores(pred, t[60:])
    assert (r2 > 0.8).all()
    naive = 1 - ((pred - t[60:]) ** 2).sum(0) / ((t[60:] - t[60:].mean(0)) ** 2).sum(0)
    torch.testing.assert_close(r2, naive)
    assert torch.allclose(r2_scores(t, t), torch.ones(2))
