"""sslcifar: self-supervised pretraining and evaluation in plain PyTorch and Hydra."""
import os

# On a CPU, a tensor of 2 MB or more (a batch of 224 px float views is 38 MB, and every
# activation of a step) is a fresh mmap, and its first write takes a page fault every
# 4 KB: 0.28 ms a view for the views alone on a 2-core AMD EPYC. PyTorch's allocator
# asks for transparent huge pages (2 MB) where this is set: 0.09 ms. It is read once, at
# torch's first allocation, so it is set here, before `import torch`, unless the user
# set it (THP_MEM_ALLOC_ENABLE=0 turns it off). Other systems ignore it.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
