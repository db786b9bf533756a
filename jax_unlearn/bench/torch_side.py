"""PyTorch re-implementations of the benchmarked hot paths, written to match the JAX code op for op
(same architectures, losses, optimisers, batch sizes). The only module of the project importing torch.

Each `make_*` returns a zero-argument callable doing one iteration (eager PyTorch returns when the work
is done), so `harness` can interleave it with the JAX iteration: both then see the same machine load.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def allcnn(num_classes: int, width: float, in_ch: int) -> nn.Module:
  """AllCNN with BN (models.allcnn.AllCNN): conv(no bias)-BN-ReLU x8, global average pool, linear."""
  c1, c2 = max(1, round(96 * width)), max(1, round(192 * width))
  spec = [(c1, 3, 1), (c1, 3, 1), (c2, 3, 2), (c2, 3, 1), (c2, 3, 1), (c2, 3, 2), (c2, 3, 1), (c2, 1, 1)]
  layers, cin = [], in_ch
  for ch, k, s in spec:
    layers += [nn.Conv2d(cin, ch, k, s, (k - 1) // 2, bias=False), nn.BatchNorm2d(ch), nn.ReLU()]
    cin = ch
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
  return nn.Sequential(*layers)


class DFQGenerator(nn.Module):
  """models.generators.DFQGenerator: Linear -> BN -> up -> conv-BN-LReLU -> up -> conv-BN-LReLU -> conv
  -> sigmoid."""

  def __init__(self, nz, ngf, img_size, channels):
    super().__init__()
    self.s, self.ngf = img_size // 4, ngf
    self.fc = nn.Linear(nz, 4 * ngf * self.s * self.s)
    self.net = nn.Sequential(
        nn.BatchNorm2d(4 * ngf), nn.Upsample(scale_factor=2),
        nn.Conv2d(4 * ngf, 2 * ngf, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * ngf), nn.LeakyReLU(0.2),
        nn.Upsample(scale_factor=2),
        nn.Conv2d(2 * ngf, ngf, 3, 1, 1, bias=False), nn.BatchNorm2d(ngf), nn.LeakyReLU(0.2),
        nn.Conv2d(ngf, channels, 3, 1, 1), nn.Sigmoid())

  def forward(self, z):
    return self.net(self.fc(z).view(z.shape[0], 4 * self.ngf, self.s, self.s))


def _images(shape, n, seed=0):
  h, w, c = shape
  return torch.from_numpy(np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32))


def timeit(fn, reps):
  """Median seconds of `reps` calls after one warm-up call (allocator, oneDNN primitive cache)."""
  fn()
  times = []
  for _ in range(max(1, reps)):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def make_train_step(shape, num_classes, width, batch):
  """One SGD step (momentum 0.9, wd 1e-4, CE) of AllCNN in train mode."""
  model = allcnn(num_classes, width, shape[2]).train()
  opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
  x = _images(shape, batch)
  y = torch.from_numpy(np.random.default_rng(1).integers(0, num_classes, batch))

  def step():
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
  return step


def _postfilter(z, forget, tau):
  p = z.softmax(-1)
  m = z.min(-1, keepdim=True).values
  sel = forget[None, :] & (p > tau)
  delta = torch.where(sel, z - m, torch.zeros_like(z)).sum(-1, keepdim=True)
  zt = torch.where(forget[None, :], z, z + delta / (z.shape[-1] - forget.sum()))
  return torch.where(sel, m.expand_as(z), zt)


def make_ispf_loop(shape, num_classes, width, batch, nz, ngf, kd_steps, forget_class=3, tau=0.01):
  """One ISPF loop: 1 generator Adam step (L_BN + L_oh + IS + L_bal, grads through teacher and
  student) + `kd_steps` student SGD steps on fresh eval-mode generator batches with the PostFilter target."""
  h, _, c = shape
  teacher = allcnn(num_classes, width, c).eval()
  student = allcnn(num_classes, width, c).train()
  gen = DFQGenerator(nz, ngf, h, c)
  for p in teacher.parameters():
    p.requires_grad_(False)
  mean, std = 0.5, 0.25
  forget = torch.zeros(num_classes, dtype=torch.bool)
  forget[forget_class] = True
  g_opt = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.5, 0.999))
  s_opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
  stats = []

  def hook(mod, inp, out):
    x = inp[0]
    stats.append((x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False), mod.running_mean, mod.running_var))
  for m in teacher.modules():
    if isinstance(m, nn.BatchNorm2d):
      m.register_forward_hook(hook)

  def kl_terms(t, s):
    pt = t.softmax(-1)
    return torch.xlogy(pt, pt) - pt * s.log_softmax(-1)

  def loop():
    gen.train()
    student.eval()
    stats.clear()
    x = (gen(torch.randn(batch, nz)) - mean) / std
    t = teacher(x)
    s = student(x)
    bn = sum(torch.linalg.vector_norm(rv - v) + torch.linalg.vector_norm(rm - mu) for mu, v, rm, rv in stats)
    oh = F.cross_entropy(t, t.argmax(-1))
    k = kl_terms(t, s)
    adv = torch.where(forget[None, :], k, -k).sum() / batch
    pbar = t.softmax(-1).mean(0)
    loss = bn + oh + adv + torch.xlogy(pbar, pbar).sum()
    grads = torch.autograd.grad(loss, list(gen.parameters()))
    for p, g in zip(gen.parameters(), grads):
      p.grad = g
    g_opt.step()
    gen.eval()
    student.train()
    for _ in range(kd_steps):
      with torch.no_grad():
        x = (gen(torch.randn(batch, nz)) - mean) / std
        target = _postfilter(teacher(x), forget, tau).softmax(-1)
      s_opt.zero_grad(set_to_none=True)
      s_logits = student(x)
      kl = (torch.xlogy(target, target) - target * s_logits.log_softmax(-1)).sum(-1).mean()
      kl.backward()
      s_opt.step()
  return loop


def make_lfssd_importance(shape, num_classes, width, batch, n_images):
  """One LFSSD importance pass ('reference' mode): mean over batches of |grad of the batch-mean
  squared logit norm| of every parameter, eval mode."""
  model = allcnn(num_classes, width, shape[2]).eval()
  x = _images(shape, n_images)
  params = list(model.parameters())

  def run():
    imp = [torch.zeros_like(p) for p in params]
    nb = 0
    for i in range(0, n_images, batch):
      out = model(x[i:i + batch])
      grads = torch.autograd.grad(out.square().sum(-1).mean(), params)
      for a, g in zip(imp, grads):
        a.add_(g.abs())
      nb += 1
    return [a / nb for a in imp]
  return run


def info() -> dict:
  return {"torch_version": torch.__version__, "torch_threads": torch.get_num_threads()}
