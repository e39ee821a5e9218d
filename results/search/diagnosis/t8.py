import sys, time
sys.path.insert(0, "/work/wt11/tests")
import test_search_learning as T
import torch
from torch import nn
from fbprof.search.data import load_data
from fbprof.search.supernet import MEMORY_FORMAT, Supernet, sample_gumbel, to_device
_, proxy = T._fbnet_proxy(8)
data = load_data("digits", 8, 3)
for shared in (False,):
    t=time.time()
    torch.manual_seed(0)
    net = Supernet(proxy, 1984, shared_init=shared).to(memory_format=MEMORY_FORMAT).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    theta = torch.zeros(len(proxy.layers), 9); mask = torch.ones_like(theta, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0); ces=[]
    for s in range(30):
        b = torch.randint(0, len(data.y_train), (32,), generator=gen)
        _, index = sample_gumbel(theta, mask, 5.0, True, gen)
        loss = nn.functional.cross_entropy(net(to_device(data.x_train[b], "cpu"), index=index), data.y_train[b])
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); ces.append(float(loss))
        if (s+1)%10==0: print(shared, s+1, round(sum(ces[-10:])/10,3), round(time.time()-t,1), flush=True)
