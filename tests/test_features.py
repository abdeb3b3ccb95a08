"""The one feature extraction (kNN, linear evaluation, the supervised baseline, t-SNE)."""
import torch

from sslcifar.data.spirograph import SpirographSource
from sslcifar.features import extract
from sslcifar.models import build_backbone


def test_extract_uses_eval_mode_and_leaves_the_module_as_it_found_it():
    src = SpirographSource(20, seed=0, device=torch.device("cpu"), mean=[0.5] * 3, std=[0.5] * 3)
    torch.manual_seed(0)
    net = build_backbone("resnet18", 4, "cifar", 32)
    for training in (True, False):
        net.train(training)
        f = extract(net, src, batch_size=8)
        assert net.training is training
    net.eval()
    with torch.no_grad():
        ref = net(src.plain(torch.arange(20)))
    torch.testing.assert_close(f, ref)                                        # batch-independent
    unit = extract(net, src, index=torch.tensor([3, 7]), normalize=True)
    torch.testing.assert_close(unit, torch.nn.functional.normalize(ref[[3, 7]], dim=1))
    assert extract(net, src, limit=5).shape == (5, net.num_features)
