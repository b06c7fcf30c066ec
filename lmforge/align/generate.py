"""Generation for sampling (GRPO, on-policy preference pairs) and judging (arena): batched, with
the KV cache, stopping each row at the end of its turn.

    model, tok = load_policy("runs/sft", adapter_dir=None)
    texts = generate(model, tok, ["12+7="], chat=True, n=8, temperature=1.0)   # [[8 strings]]

The loop is ours, over the model's own forward and its KV cache: prompts are left-padded
into one batch, the prompt is run once (prefill), then one token per step for every row still
going; a row stops at ``<|im_end|>`` or EOS, and finished rows leave the batch (their cache rows
are dropped), so a batch costs what its live rows cost.

Speculative decoding (greedy only, Leviathan et al. 2023; Chen et al. 2023): a small draft model
of the same tokenizer proposes ``draft_tokens`` tokens one at a time, the target scores all of
them in one forward, the longest prefix the target would have chosen itself is kept plus the
target's own next token. The output is the target's greedy output, token for token; what it
saves is target forwards. Rows are decoded one at a time on this path (the accepted lengths
differ per row, and a batch would wait for its slowest row).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from lmforge.errors import InputError

if TYPE_CHECKING:
    import torch

END_OF_TURN = "<|im_end|>"


@dataclass
class Generation:
    """Completions as token ids, for training. Row ``i * n + j`` is sample ``j`` of prompt ``i``.

    ``completion_ids`` includes the stop token when the row stopped (so a policy learns to stop);
    ``texts`` do not. ``finished`` is False for a row cut by ``max_new_tokens``.
    """

    n: int
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]
    finished: list[bool]
    stats: dict[str, float] = field(default_factory=dict)

    def grouped(self) -> list[list[str]]:
        """Texts per prompt: ``[[n texts of prompt 0], ...]``."""
        return [self.texts[i:i + self.n] for i in range(0, len(self.texts), self.n)]

    def to_batch(self, pad_id: int, rows: Sequence[int] | None = None) -> dict[str, "torch.Tensor"]:
        """Tensors for a forward over prompt + completion: ``input_ids`` (prompts left-padded to
        one length, completions right-padded), ``attention_mask``, ``position_ids`` (counting
        from each row's first real token) and ``completion_mask`` (1 on generated tokens)."""
        import torch

        rows = range(len(self.texts)) if rows is None else rows
        P = max(len(self.prompt_ids[r]) for r in rows)
        T = max(1, max(len(self.completion_ids[r]) for r in rows))
        ids = torch.full((len(rows), P + T), pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        comp = torch.zeros_like(ids)
        for k, r in enumerate(rows):
            p, c = self.prompt_ids[r], self.completion_ids[r]
            ids[k, P - len(p):P] = torch.tensor(p)
            attn[k, P - len(p):P + len(c)] = 1
            if c:
                ids[k, P:P + len(c)] = torch.tensor(c)
                comp[k, P:P + len(c)] = 1
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        return {"input_ids": ids, "attention_mask": attn, "position_ids": pos,
                "completion_mask": comp}


def load_policy(model_dir: str | os.PathLike, adapter_dir: str | os.PathLike | None = None,
                device: str = "cpu"):
    """(model, tokenizer) from a Hugging Face directory (safetensors, no hub), with a PEFT
    adapter on top when ``adapter_dir`` is given; in eval mode."""
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.errors import MissingInputError

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise MissingInputError(f"{model_dir}: not a model directory (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 local_files_only=True, use_safetensors=True)
    tok_dir = model_dir
    if adapter_dir is not None:
        from peft import PeftModel

        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise MissingInputError(f"{adapter_dir}: not a PEFT adapter (no adapter_config.json)")
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        if (adapter_dir / "tokenizer_config.json").is_file():
            tok_dir = adapter_dir
    tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    tokenizer.padding_side = "left"
    return model.to(device).eval(), tokenizer


def render_prompt(tokenizer, prompt: str | list[dict]) -> str:
    """The chat template with the prompt (one user turn, or a list of messages) and the
    assistant's generation prompt: the text the model sees before it answers."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("the tokenizer has no chat template (tokenizer_config.json: "
                         "chat_template); pass rendered prompts (chat=False)")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def stop_ids(tokenizer, model=None) -> set[int]:
    """The tokens that end a completion: the end-of-turn token and EOS."""
    ids = set()
    vocab = tokenizer.get_vocab()
    if END_OF_TURN in vocab:
        ids.add(vocab[END_OF_TURN])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if not ids:
        raise InputError(f"the tokenizer has neither {END_OF_TURN} nor an EOS token to stop at")
    return ids


def pad_token_id(tokenizer) -> int:
    """The padding token (EOS when the tokenizer has none)."""
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def _device(model):
    return next(model.parameters()).device


def _decode(tokenizer, ids: list[int], stops: set[int]) -> str:
    if ids and ids[-1] in stops:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=True)


def generate_ids(model, tokenizer, prompts: list[str], *, n: int = 1, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_k: int = 0, greedy: bool = False, seed: int = 0,
                 batch_size: int = 32, chat: bool = False, draft_model=None,
                 draft_tokens: int = 4) -> Generation:
    """``n`` completions of every prompt as token ids (see :class:`Generation`).

    ``prompts`` are rendered text, or user messages with ``chat=True``. Sampling is at
    ``temperature`` from the ``top_k`` most likely tokens (0 = all), from a generator seeded with
    ``seed`` (same inputs + seed = same samples); ``greedy`` takes the most likely token. With
    ``draft_model`` (greedy only) the decoding is speculative and gives the same tokens.
    """
    import torch

    if n < 1 or max_new_tokens < 0 or batch_size < 1:
        raise InputError(f"need n >= 1, max_new_tokens >= 0, batch_size >= 1; got {n}, "
                         f"{max_new_tokens}, {batch_size}")
    if not greedy and temperature <= 0:
        raise InputError(f"temperature must be > 0 for sampling (or greedy=True); got {temperature}")
    if draft_model is not None and not greedy:
        raise InputError("speculative decoding (draft_model) is greedy only: pass greedy=True")
    if draft_model is not None and draft_tokens < 1:
        raise InputError(f"draft_tokens must be >= 1, got {draft_tokens}")
    texts = [render_prompt(tokenizer, p) for p in prompts] if chat else list(prompts)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    for t, ids in zip(prompts, encoded):
        if not ids:
            raise InputError(f"prompt {t!r} encodes to no tokens")
    rows = [ids for ids in encoded for _ in range(n)]
    stops = stop_ids(tokenizer, model)
    was_training = model.training
    model.eval()
    completions: list[list[int]] = []
    finished: list[bool] = []
    stats: dict[str, float] = {}
    gen = torch.Generator(device=_device(model)).manual_seed(seed)
    try:
        with torch.no_grad():
            if draft_model is not None:
                draft_was_training = draft_model.training
                draft_model.eval()
                proposed = accepted = target_calls = 0
                for ids in rows:
                    c, f, s = _speculative_row(model, draft_model, ids, max_new_tokens, draft_tokens, stops)
                    completions.append(c)
                    finished.append(f)
                    proposed, accepted = proposed + s["proposed"], accepted + s["accepted"]
                    target_calls += s["target_forwards"]
                draft_model.train(draft_was_training)
                stats = {"draft_proposed": proposed, "draft_accepted": accepted,
                         "acceptance": accepted / max(1, proposed), "target_forwards": target_calls}
            else:
                for start in range(0, len(rows), batch_size):
                    c, f = _decode_batch(model, rows[start:start + batch_size], max_new_tokens,
                                         temperature, top_k, greedy, gen, stops, pad_token_id(tokenizer))
                    completions += c
                    finished += f
    finally:
        model.train(was_training)
    return Generation(n=n, prompt_ids=rows, completion_ids=completions,
                      texts=[_decode(tokenizer, c, stops) for c in completions],
                      finished=finished, stats=stats)


def generate(model, tokenizer, prompts: list[str], *, n: int = 1, max_new_tokens: int = 64,
             temperature: float = 1.0, top_k: int = 0, greedy: bool = False, seed: int = 0,
             batch_size: int = 32, chat: bool = False, draft_model=None,
             draft_tokens: int = 4) -> list[list[str]]:
    """For each prompt, ``n`` completions as text (up to, not including, the end-of-turn token).
    Arguments as :func:`generate_ids`."""
    return generate_ids(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens,
                        temperature=temperature, top_k=top_k, greedy=greedy, seed=seed,
                        batch_size=batch_size, chat=chat, draft_model=draft_model,
                        draft_tokens=draft_tokens).grouped()


def _next_token(logits: "torch.Tensor", temperature: float, top_k: int, greedy: bool,
                gen: "torch.Generator") -> "torch.Tensor":
    import torch

    if greedy:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def _decode_batch(model, rows: list[list[int]], max_new_tokens: int, temperature: float,
                  top_k: int, greedy: bool, gen, stops: set[int], pad_id: int):
    """Decode one batch of prompt rows: left-padded prefill, then one token per live row per step;
    finished rows leave the batch (and the cache)."""
    import torch

    device = _device(model)
    B, P = len(rows), max(len(r) for r in rows)
    ids = torch.full((B, P), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r):] = torch.tensor(r)
        attn[i, P - len(r):] = 1
    ids, attn = ids.to(device), attn.to(device)
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    out_tokens: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    if max_new_tokens == 0:
        return out_tokens, done
    stop_t = torch.tensor(sorted(stops), device=device)
    live = torch.arange(B, device=device)  # which original rows the batch rows are
    key = _cache_key(model)
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True,
                logits_to_keep=1)
    cache = _cache_of(out)
    last_pos = pos[:, -1:]
    for step in range(max_new_tokens):
        tok = _next_token(out.logits[:, -1, :], temperature, top_k, greedy, gen)
        for b, t in zip(live.tolist(), tok.tolist()):
            out_tokens[b].append(t)
        ended = torch.isin(tok, stop_t)
        for b in live[ended].tolist():
            done[b] = True
        if step == max_new_tokens - 1 or bool(ended.all()):
            break
        if bool(ended.any()):
            keep = (~ended).nonzero().squeeze(-1)
            live, tok, attn, last_pos = live[keep], tok[keep], attn[keep], last_pos[keep]
            cache.batch_select_indices(keep)
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        last_pos = last_pos + 1
        out = model(input_ids=tok[:, None], attention_mask=attn, position_ids=last_pos,
                    use_cache=True, **{key: cache})
        cache = _cache_of(out)
    return out_tokens, done


def _speculative_row(target, draft, prompt: list[int], max_new_tokens: int, k: int,
                     stops: set[int]) -> tuple[list[int], bool, dict[str, int]]:
    """Greedy speculative decoding of one prompt; the tokens are the target's greedy tokens.

    Invariant: both caches hold every token of ``seq`` but the last; the draft may lag further
    (``pending`` holds the tokens it has not seen yet, fed in its next forward)."""
    import torch

    device = _device(target)
    stats = {"proposed": 0, "accepted": 0, "target_forwards": 1}
    if max_new_tokens == 0:
        return [], False, stats
    inp = torch.tensor([prompt], device=device)
    t_key, d_key = _cache_key(target), _cache_key(draft)
    t_out = target(input_ids=inp, use_cache=True, logits_to_keep=1)
    t_cache = _cache_of(t_out)
    first = int(t_out.logits[0, -1].argmax())
    out = [first]
    if first in stops:
        return out, True, stats
    d_cache = None
    pending = list(prompt) + [first]  # tokens the draft has not seen (its first call: the prompt)
    while len(out) < max_new_tokens:
        # the draft proposes up to k tokens (never more than the budget left)
        want = min(k, max_new_tokens - len(out))
        proposal: list[int] = []
        feed = pending
        for _ in range(want):
            d_out = draft(input_ids=torch.tensor([feed], device=device), use_cache=True,
                          logits_to_keep=1, **{d_key: d_cache})
            d_cache = _cache_of(d_out)
            nxt = int(d_out.logits[0, -1].argmax())
            proposal.append(nxt)
            feed = [nxt]
            if nxt in stops:
                break
        # draft cache now holds seq + proposal[:-1]; proposal[-1] is not in it
        # the target checks [last, proposal...] in one forward
        verify = [out[-1]] + proposal
        t_out = target(input_ids=torch.tensor([verify], device=device), use_cache=True,
                       **{t_key: t_cache})
        t_cache = _cache_of(t_out)
        stats["target_forwards"] += 1
        choice = t_out.logits[0].argmax(-1).tolist()  # target's token after each verify position
        m = 0
        while m < len(proposal) and proposal[m] == choice[m]:
            m += 1
        stats["proposed"] += len(proposal)
        stats["accepted"] += m
        new = proposal[:m] + [choice[m]] if m < len(proposal) else proposal[:m]
        if m == len(proposal) and not (proposal and proposal[-1] in stops):
            new = proposal + [choice[m]]
        # The target cache holds seq + proposal; keep seq + proposal[:m] (the last new token is
        # fed next round). The draft holds seq + proposal[:-1]: cut it to the same, or, when it
        # accepted every proposal, give it the last proposal with the new token next round.
        _drop(t_cache, len(proposal) - m)
        keep = len(prompt) + len(out) + m
        draft_len = d_cache.get_seq_length()
        _drop(d_cache, max(0, draft_len - keep))
        pending = proposal[m - 1:m] + [new[-1]] if draft_len < keep else [new[-1]]
        for t in new:
            out.append(t)
            if t in stops:
                return out, True, stats
            if len(out) >= max_new_tokens:
                return out, False, stats
        # invariant: the target cache holds seq[:-1], pending holds what the draft lacks
        assert t_cache.get_seq_length() == len(prompt) + len(out) - 1
    return out, False, stats


def _cache_key(model) -> str:
    """The forward's name for the KV cache: ``cache`` from transformers 5.2x, ``past_key_values``
    before (and deprecated after)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _cache_of(out):
    cache = out.get("cache")
    return cache if cache is not None else out.get("past_key_values")


def _drop(cache, n: int) -> None:
    """Remove the last ``n`` tokens from a KV cache."""
    if n > 0:
        cache.crop(-n)  # a negative length removes that many tokens (transformers 4.x and 5.x)
