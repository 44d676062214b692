"""Held-out scoring after training: teacher-forced CE / objective, and answer accuracy.

Accuracy uses greedy generation from the prompt (every turn before the last assistant turn,
plus the generation prompt) and compares the final ``Answer: X`` of the output with the sample's
``answer`` field. It exists so the demo shows more than a falling loss: DFT's loss can fall while
the model collapses (DESIGN.md section 7). Benchmark evaluation lives in the lmms-eval bridge.
"""

from __future__ import annotations

import dataclasses

import torch

from vldft.adapters.base import Adapter
from vldft.collate import Collator, Encoded
from vldft.data import Sample
from vldft.data.synth import extract_final_answer
from vldft.objectives import ObjectiveSpec, compute_objective


@torch.no_grad()
def evaluate_heldout(adapter: Adapter, collator: Collator, samples: list[Sample],
                     batch_size: int = 16, max_new_tokens: int = 64,
                     objective: ObjectiveSpec | str = "dft") -> dict:
    """Returns {"n", "ce", "loss", "mean_p", "accuracy", "accuracy_by_kind", "examples"}.

    For asft the held-out "loss" is its DFT part (the KL anchor needs the reference model)."""
    spec = ObjectiveSpec(name=objective) if isinstance(objective, str) else objective
    if spec.name == "asft":
        spec = dataclasses.replace(spec, name="dft")
    model = adapter.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(4, dtype=torch.float64)
    for i in range(0, len(samples), batch_size):
        items = [collator.encode(s) for s in samples[i: i + batch_size]]
        batch = collator([it for it in items if isinstance(it, Encoded)])
        if "input_ids" not in batch:
            continue
        inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        labels = inputs.pop("labels")
        head = adapter.output_layer()
        out = compute_objective(adapter.hidden_states(inputs), head.weight, labels, spec,
                                bias=head.bias)
        sums += torch.tensor([out.loss_sum.item(), out.stats["ce_sum"].item(),
                              out.stats["p_sum"].item(), out.n_tokens], dtype=torch.float64)
    n_tok = max(sums[3].item(), 1.0)
    result = {"n": len(samples), "loss": sums[0].item() / n_tok, "ce": sums[1].item() / n_tok,
              "mean_p": sums[2].item() / n_tok, "accuracy": None, "examples": []}

    scored = [s for s in samples if s.answer is not None]
    if scored:
        correct, per_kind = 0, {}
        for i in range(0, len(scored), batch_size):
            chunk = scored[i: i + batch_size]
            outputs = generate(adapter, chunk, max_new_tokens, device)
            for s, text in zip(chunk, outputs, strict=True):
                pred = extract_final_answer(text)
                ok = pred is not None and pred == extract_final_answer(f"Answer: {s.answer}")
                correct += ok
                hits = per_kind.setdefault(s.kind or "all", [0, 0])
                hits[0], hits[1] = hits[0] + ok, hits[1] + 1
                if len(result["examples"]) < 5:
                    result["examples"].append({"id": s.id, "output": text, "answer": s.answer,
                                               "correct": ok})
        result["accuracy"] = correct / len(scored)
        result["accuracy_by_kind"] = {k: c / n for k, (c, n) in sorted(per_kind.items())}
    model.train(was_training)
    return result


def generate(adapter: Adapter, samples: list[Sample], max_new_tokens: int,
             device: torch.device) -> list[str]:
    """Greedy completions of each sample's last assistant turn (batched, left padding)."""
    prompts, images = [], []
    for s in samples:
        last = max(i for i, m in enumerate(s.messages) if m["role"] == "assistant")
        prompts.append(adapter.render(s.messages[:last], add_generation_prompt=True))
        n_img = sum(p["type"] == "image" for m in s.messages[:last] for p in m["content"])
        images += [adapter.load_image(img) for img in s.images[:n_img]]
    tok = adapter.tokenizer
    side, tok.padding_side = tok.padding_side, "left"
    try:
        inputs = adapter.processor(text=prompts, images=images or None, padding=True,
                                   return_tensors="pt")
    finally:
        tok.padding_side = side
    inputs = {k: v.to(device) for k, v in inputs.items()}
    out = adapter.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=adapter.eot_token_id,
                                 pad_token_id=adapter.pad_token_id)
    new = out[:, inputs["input_ids"].shape[1]:]
    return tok.batch_decode(new, skip_special_tokens=True)
