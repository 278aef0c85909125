"""`specbench train-head`: train an EAGLE head on the target's own answers (the target stays frozen).

EAGLE's recipe (SafeAILab/EAGLE `eagle/train/main.py`), per pair (f_i, t_{i+1}) -> f_{i+1}:
- loss = 1.0 * smooth-L1(f'_{i+1}, f_{i+1}) (mean over features)
       + 0.1 * cross-entropy(softmax(lm_head(f_{i+1})), log_softmax(lm_head(f'_{i+1})))
  averaged over the pairs whose target predicts an answer token (EAGLE's loss mask);
- uniform noise on the input features: U(-0.1, 0.1) (their `std=0.2` at a 512-token sequence;
  their code scales it by 512 / sequence length);
- AdamW, betas (0.9, 0.95), weight decay 0.01 (PyTorch's default, which they keep), gradients
  clipped by value at 0.5, linear warm-up then linear decay (`get_linear_schedule_with_warmup`);
- 95% / 5% train / validation split; validation reports the head's top-1 / top-3 accuracy against
  the target's own next token (argmax of lm_head(f_{i+1})).
Learning rate: EAGLE uses 3e-5 for 7B heads over ~20 epochs of 68k ShareGPT conversations
(~340k steps of 4 sequences). A run that fits a GPU session makes ~100x fewer steps, with a 2.7x
narrower head (1.5B target: hidden 1536 vs 4096), so the default is 10x theirs, 3e-4, decayed to 0
over the run, with 5% warm-up (theirs: 2,000 steps); `--lr` overrides it.

The head trains in float32 master weights under bf16 autocast when the target is in bf16 (a bf16
weight would swallow AdamW's small updates). Progress: a log line every `log_every` steps (loss,
train top-1) and per epoch (validation top-1 / top-3). The checkpoint folder (`--out`) is written at
every epoch's end: `head.safetensors`, `manifest.json`, `curve.png` and `train_state.pt` (optimizer,
schedule, epoch); a run started again with the same settings and data resumes from the last epoch.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..options import option
from ..types import LoadedModel, SpecbenchError
from .data import Sequence, data_sha256
from .model import FORMAT_VERSION, MANIFEST_FILE, WEIGHTS_FILE, EagleHead, target_fingerprint

STATE_FILE = "train_state.pt"
CURVE_FILE = "curve.png"


@dataclass
class TrainSettings:
    epochs: int = option(
        2, "passes over the training answers", "ours (EAGLE: 20 over 68k conversations)", minimum=1
    )
    lr: float = option(
        3e-4, "AdamW peak learning rate", "EAGLE 3e-5 for 7B, scaled for a short run (see module doc)"
    )
    batch_sequences: int = option(
        8, "sequences per optimizer step", "EAGLE bs=4 (of up to 2,048 tokens)", minimum=1
    )
    v_weight: float = option(1.0, "feature regression (smooth L1) weight", "EAGLE v_w")
    p_weight: float = option(0.1, "token cross-entropy weight", "EAGLE p_w")
    noise: float = option(0.2, "uniform feature noise width (U(-noise/2, noise/2))", "EAGLE std=0.2, uniform")
    grad_clip: float = option(0.5, "gradient clip by value", "EAGLE grad_clip")
    warmup_fraction: float = option(0.05, "share of steps spent warming up", "ours (EAGLE: 2,000 steps)")
    val_fraction: float = option(0.05, "sequences held out for validation", "EAGLE 95/5 split")
    seed: int = option(0, "data split, shuffling and noise seed", "")


@dataclass
class Batch:
    tokens: torch.Tensor  # (B, n) t_{i+1}
    features: torch.Tensor  # (B, n, H) f_i (float32)
    targets: torch.Tensor  # (B, n, H) f_{i+1}
    loss_mask: torch.Tensor  # (B, n) pairs whose target predicts an answer token
    attention: torch.Tensor  # (B, 1, n, n) bool, True = visible: causal, padding keys hidden


def make_batch(seqs: list[Sequence], device: torch.device) -> Batch:
    """Right-padded pairs (f_i, t_{i+1}) -> f_{i+1}, i = 0 .. L-3, of each sequence.

    The features travel in the dtype they were stored in (bf16 from a GPU target: half the bytes of
    float32, on the host and over the bus) and become float32 on `device`."""
    n = max(len(s.tokens) - 2 for s in seqs)
    hidden = seqs[0].features.shape[-1]
    tokens = torch.zeros((len(seqs), n), dtype=torch.long)
    # Row i of `padded` is f_i, i = 0 .. n: inputs are rows 0 .. n-1, regression targets rows 1 .. n.
    padded = torch.zeros((len(seqs), n + 1, hidden), dtype=seqs[0].features.dtype)
    loss_mask = torch.zeros((len(seqs), n), dtype=torch.bool)
    valid = torch.zeros((len(seqs), n), dtype=torch.bool)
    for b, s in enumerate(seqs):
        m = len(s.tokens) - 2
        tokens[b, :m] = torch.tensor(s.tokens[1 : m + 1])
        padded[b, : m + 1] = s.features[: m + 1]
        valid[b, :m] = True
        # f_{i+1} predicts t_{i+2}, an answer token when i + 2 >= prompt_len.
        loss_mask[b, max(0, s.prompt_len - 2) : m] = True
    # A boolean mask works in any dtype (SDPA; autocast changes the query's dtype, not the mask's).
    attention = (torch.tril(torch.ones((n, n), dtype=torch.bool))[None] & valid[:, None, :])[:, None]
    padded = padded.to(device, non_blocking=True).float()
    features, targets = padded[:, :n], padded[:, 1:]
    return Batch(tokens.to(device), features, targets, loss_mask.to(device), attention.to(device))


def head_losses(
    head: EagleHead, batch: Batch, settings: TrainSettings, generator: torch.Generator | None
) -> tuple[torch.Tensor, dict]:
    """EAGLE's loss on one batch, plus top-1 / top-3 hits against the target's next token."""
    features = batch.features
    if generator is not None and settings.noise > 0:
        noise = torch.rand(features.shape, generator=generator, device=features.device) - 0.5
        features = features + noise * settings.noise
    positions = torch.arange(features.shape[1], device=features.device).expand(features.shape[0], -1)
    predicted = head.predict(batch.tokens, features, positions, batch.attention)
    pred, target = predicted[batch.loss_mask], batch.targets[batch.loss_mask]
    lm_head = head.shared[1]
    vloss = F.smooth_l1_loss(pred.float(), target, reduction="none").mean(-1).mean()
    with torch.no_grad():
        target_logits = lm_head(target.to(lm_head.weight.dtype)).float()
        target_p = torch.softmax(target_logits, dim=-1)
    logits = lm_head(pred.to(lm_head.weight.dtype)).float()
    ploss = -(target_p * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
    loss = settings.v_weight * vloss + settings.p_weight * ploss
    with torch.no_grad():
        want = target_logits.argmax(-1)
        top3 = logits.topk(min(3, logits.shape[-1]), dim=-1).indices
        stats = {
            "vloss": vloss.item(),
            "ploss": ploss.item(),
            "top1": int((top3[:, 0] == want).sum()),
            "top3": int((top3 == want[:, None]).any(-1).sum()),
            "count": int(want.numel()),
        }
    return loss, stats


def split(sequences: list[Sequence], settings: TrainSettings) -> tuple[list[Sequence], list[Sequence]]:
    usable = [s for s in sequences if len(s.tokens) - 2 > max(0, s.prompt_len - 2)]
    order = torch.randperm(len(usable), generator=torch.Generator().manual_seed(settings.seed)).tolist()
    n_val = max(1, round(len(usable) * settings.val_fraction)) if len(usable) > 1 else 0
    return [usable[i] for i in order[n_val:]], [usable[i] for i in order[:n_val]]


@torch.no_grad()
def validate(head: EagleHead, val: list[Sequence], settings: TrainSettings, autocast) -> dict:
    hits1 = hits3 = count = 0
    for i in range(0, len(val), settings.batch_sequences):
        with autocast():
            _, stats = head_losses(
                head, make_batch(val[i : i + settings.batch_sequences], _device(head)), settings, None
            )
        hits1, hits3, count = hits1 + stats["top1"], hits3 + stats["top3"], count + stats["count"]
    return {"top1": hits1 / max(count, 1), "top3": hits3 / max(count, 1), "tokens": count}


def _device(head: EagleHead) -> torch.device:
    return head.fc.weight.device


def train_head(
    loaded: LoadedModel,
    sequences: list[Sequence],
    settings: TrainSettings,
    out: Path,
    corpus: dict,
    generation: dict,
    log=print,
    log_every: int = 50,
) -> dict:
    """Train (or resume) a head for `loaded` on `sequences`; write the checkpoint folder; return the manifest."""
    from contextlib import nullcontext

    from safetensors.torch import save_file
    from transformers import get_linear_schedule_with_warmup

    train, val = split(sequences, settings)
    if not train:
        raise SpecbenchError(
            "no answer long enough to train on; give more prompts or a larger --max-new-tokens"
        )
    data_hash = data_sha256(sequences, generation)
    target = loaded.model
    target.requires_grad_(False)
    torch.manual_seed(settings.seed)
    head = EagleHead(target)
    head.fc.float()
    head.layer.float()  # float32 master weights; the target's own modules stay as they are
    head.train()
    low = next(target.parameters()).dtype
    device = _device(head)
    use_autocast = low in (torch.bfloat16, torch.float16)

    def autocast():
        return torch.autocast(device.type, dtype=low) if use_autocast else nullcontext()

    params = list(head.fc.parameters()) + list(head.layer.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.95))
    steps_per_epoch = -(-len(train) // settings.batch_sequences)
    total = steps_per_epoch * settings.epochs
    scheduler = get_linear_schedule_with_warmup(
        optimizer, max(1, int(total * settings.warmup_fraction)), total
    )
    curve: list[dict] = []
    start_epoch = 0
    state_path = out / STATE_FILE
    identity = {"settings": asdict(settings), "data_sha256": data_hash, "target": target_fingerprint(loaded)}
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        if state["identity"] != identity:
            raise SpecbenchError(
                f"{out} holds a head trained with other settings, data or target; choose another --out"
            )
        head.load_state_dict(state["head"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, curve = state["epoch"], state["curve"]
        log(f"resuming from epoch {start_epoch} of {settings.epochs}")

    noise_gen = torch.Generator(device=device)
    step = start_epoch * steps_per_epoch
    t0 = time.perf_counter()
    metrics = curve[-1]["val"] if curve else None
    for epoch in range(start_epoch, settings.epochs):
        noise_gen.manual_seed(settings.seed * 1000 + epoch)
        order = torch.randperm(
            len(train), generator=torch.Generator().manual_seed(settings.seed + epoch)
        ).tolist()
        run = {"loss": 0.0, "top1": 0, "count": 0, "steps": 0}
        for b in range(0, len(order), settings.batch_sequences):
            batch = make_batch([train[i] for i in order[b : b + settings.batch_sequences]], device)
            with autocast():
                loss, stats = head_losses(head, batch, settings, noise_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_value_(params, settings.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            run["loss"] += loss.item()
            run["top1"] += stats["top1"]
            run["count"] += stats["count"]
            run["steps"] += 1
            curve.append(
                {"step": step, "loss": loss.item(), "vloss": stats["vloss"], "ploss": stats["ploss"]}
            )
            if step % log_every == 0:
                log(
                    f"step {step}/{total} epoch {epoch + 1}: loss {run['loss'] / run['steps']:.4f} "
                    f"train top-1 {run['top1'] / max(run['count'], 1):.3f} lr {scheduler.get_last_lr()[0]:.2e}"
                )
        head.eval()
        metrics = validate(head, val, settings, autocast) if val else None
        head.train()
        curve[-1]["val"] = metrics
        if metrics:
            log(
                f"epoch {epoch + 1}/{settings.epochs}: validation top-1 {metrics['top1']:.3f} top-3 {metrics['top3']:.3f}"
            )
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": "eagle-head",
            "target": identity["target"],
            "corpus": corpus,
            "data": {
                "sha256": data_hash,
                "generation": generation,
                "sequences": len(sequences),
                "train_sequences": len(train),
                "val_sequences": len(val),
                "answer_tokens": sum(len(s.tokens) - s.prompt_len for s in sequences),
            },
            "settings": asdict(settings),
            "head": {"layer": type(head.layer).__name__, "parameters": sum(p.numel() for p in params)},
            "validation": metrics,
            "epochs_done": epoch + 1,
            "complete": epoch + 1 == settings.epochs,
            "train_seconds": round(time.perf_counter() - t0, 1),
        }
        out.mkdir(parents=True, exist_ok=True)
        own = {k: v.detach().float().contiguous().cpu() for k, v in head.own_state().items()}
        save_file(own, str(out / (WEIGHTS_FILE + ".tmp")))
        (out / (WEIGHTS_FILE + ".tmp")).replace(out / WEIGHTS_FILE)
        torch.save(
            {
                "identity": identity,
                "head": own,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "curve": curve,
            },
            out / (STATE_FILE + ".tmp"),
        )
        (out / (STATE_FILE + ".tmp")).replace(state_path)
        (out / (MANIFEST_FILE + ".tmp")).write_text(json.dumps(manifest, indent=1))
        (out / (MANIFEST_FILE + ".tmp")).replace(out / MANIFEST_FILE)
        plot_curve(curve, out / CURVE_FILE)
    return json.loads((out / MANIFEST_FILE).read_text())


def plot_curve(curve: list[dict], path: Path) -> None:
    """Training loss per step, and validation top-1 / top-3 at each epoch's end."""
    from ..report.plots import _figure, _png
    from ..results import write_bytes_atomic

    fig, ax = _figure(8.0)
    ax.plot(
        [c["step"] for c in curve], [c["loss"] for c in curve], color="#4c72b0", lw=0.8, label="train loss"
    )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    evals = [c for c in curve if c.get("val")]
    if evals:
        acc = ax.twinx()
        for key, color in (("top1", "#c44e52"), ("top3", "#55a868")):
            acc.plot(
                [c["step"] for c in evals],
                [c["val"][key] for c in evals],
                "o-",
                color=color,
                label=f"val {key}",
            )
        acc.set_ylabel("validation accuracy")
        acc.set_ylim(0, 1)
        acc.legend(loc="upper right", frameon=False)
    ax.legend(loc="upper left", frameon=False)
    ax.set_title("EAGLE head training")
    write_bytes_atomic(path, _png(fig))
