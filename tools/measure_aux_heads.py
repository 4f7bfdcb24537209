"""GoogLeNet / Inception v3 with auxiliary heads: two training steps with
loss = CE(out) + 0.3 * sum(CE(aux)), measured with the oracle's StorageTracker."""
import sys, json, argparse
sys.path.insert(0, "/work/shared/oracle")
import torch, torch.nn.functional as F, torchvision
import torch_memory_oracle as tmo

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="googlenet")
ap.add_argument("--input", default="3x64x64")
ap.add_argument("--batch", type=int, default=2)
ap.add_argument("--optimizer", default="sgd_momentum")
ap.add_argument("--classes", type=int, default=10)
a = ap.parse_args()
torch.set_num_threads(1)
torch.manual_seed(0)
shape = tuple(int(v) for v in a.input.split("x"))
kw = dict(weights=None, num_classes=a.classes, aux_logits=True, init_weights=False)
model = getattr(torchvision.models, a.model)(**kw).train()
opt = tmo.make_optimizer(a.optimizer, model.parameters())
x = torch.randn(a.batch, *shape)
y = torch.randint(0, a.classes, (a.batch,))
tr = tmo.StorageTracker(model, opt, (x, y))
tr.register_existing()
rec = {"model": a.model, "input_shape": list(shape), "batch": a.batch, "optimizer": a.optimizer,
       "num_classes": a.classes, "torch": torch.__version__}
with tr:
    for step in (1, 2):
        opt.zero_grad(set_to_none=True)
        tr.reset_peak()
        before = tr.cur
        tr.phase = "forward"
        out = model(x)
        if a.model == "googlenet":
            main, aux2, aux1 = out
            loss = F.cross_entropy(main, y) + 0.3 * F.cross_entropy(aux1, y) + 0.3 * F.cross_entropy(aux2, y)
        else:
            main, aux = out
            loss = F.cross_entropy(main, y) + 0.3 * F.cross_entropy(aux, y)
        tr.phase = "backward"
        loss.backward()
        tr.phase = "optimizer"
        opt.step()
        rec[f"step{step}"] = {"tracker_peak": tr.peak, "peak_phase": tr.peak_phase, "peak_op": tr.peak_op,
                              "live_before": before, "live_after": tr.cur}
        del out, main, loss
        if a.model == "googlenet":
            del aux1, aux2
        else:
            del aux
print(json.dumps(rec))
