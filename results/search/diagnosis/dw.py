import time, torch
from torch import nn
torch.set_num_threads(1)
def bench(m, x, n=10):
    for cl in (False, True):
        mm = m.to(memory_format=torch.channels_last) if cl else m
        xx = (x.to(memory_format=torch.channels_last) if cl else x).clone().requires_grad_(True)
        for _ in range(2): mm(xx).sum().backward()
        t=time.time()
        for _ in range(n): mm(xx).sum().backward()
        print(m, x.shape, "channels_last" if cl else "nchw", f"{(time.time()-t)/n*1000:.2f} ms")
bench(nn.Conv2d(96,96,5,1,2,groups=96,bias=False), torch.randn(32,96,16,16))
bench(nn.Conv2d(96,96,3,1,1,groups=96,bias=False), torch.randn(32,96,16,16))
bench(nn.Conv2d(16,96,1,bias=False), torch.randn(32,16,16,16))
bench(nn.Conv2d(1104,1104,5,1,2,groups=1104,bias=False), torch.randn(32,1104,2,2))
