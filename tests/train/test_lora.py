"""LoRA: only the adapter weights move, the saved adapter reloads with PEFT to the same outputs,
the merged export matches, checkpoints hold only what trains and resume exactly, and QLoRA without
a GPU fails with a clear message."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.train import lora as lora_mod
from lmforge.train.lora import LoraConfig, main, train_lora


def test_lora_trains_only_adapters_and_reloads(base_model_dir, chat_jsonl, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(base_model_dir).state_dict().items()}
    out = tmp_path / "adapter"
    cfg = LoraConfig(base=str(base_model_dir), data=str(chat_jsonl), out_dir=str(out), max_steps=8, micro_batch=4,
                     max_len=256, lr=1e-2, rank=4, alpha=8, dropout=0.0, merge=True, device="cpu", log_every=1)
    stats = train_lora(cfg)
    trained = stats.model
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["trainable_fraction"] < 0.2
    assert summary["final_loss"] < summary["first_loss"]

    # Base weights untouched, every adapter B matrix (initialised to zero) moved.
    lora_b = 0
    for name, p in trained.named_parameters():
        if "lora_" in name:
            assert p.requires_grad
            if "lora_B" in name:
                lora_b += 1
                assert p.abs().sum() > 0, name
        else:
            assert not p.requires_grad
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(p.detach(), base_before[key]), name
    assert lora_b == 4 * 7  # 4 layers x (q, k, v, o, gate, up, down)

    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("Weng earns $12 an hour for babysitting.", return_tensors="pt")["input_ids"]
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model_dir), out)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    for m in (trained, reloaded, merged):
        m.eval()
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        assert torch.equal(reloaded(input_ids=ids).logits, expected)
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)
        assert not torch.allclose(AutoModelForCausalLM.from_pretrained(base_model_dir)(input_ids=ids).logits,
                                  expected, atol=1e-3)


def test_lora_checkpoint_holds_only_the_adapter_and_resumes_exactly(base_model_dir, chat_jsonl, tmp_path,
                                                                    monkeypatch):
    # Dropout on: the resumed run must also restore the RNG state to match.
    kw = dict(base=str(base_model_dir), data=str(chat_jsonl), max_steps=4, save_every=2, micro_batch=4,
              max_len=128, lr=1e-2, rank=2, alpha=4, dropout=0.1, device="cpu", log_every=1)
    full = train_lora(LoraConfig(out_dir=str(tmp_path / "full"), **kw))
    assert full["engine"] == "plain"

    state = torch.load(tmp_path / "full" / "checkpoints" / "step_00000004" / "mp_rank_00_model_states.pt",
                       weights_only=False)
    trainable = {n for n, p in full.model.named_parameters() if p.requires_grad}
    # Only the adapters: not the frozen base, not even the tied embedding under its second name.
    assert set(state["module"]) == trainable and all("lora_" in n for n in trainable)
    assert len(state["optimizer"]["state"]) == len(trainable) and state["step"] == 4

    real_prepare = lora_mod.prepare

    def crashing_prepare(*a, **k):
        data_stats, train_ex, val_ex, max_steps, batch_fn, eval_fn = real_prepare(*a, **k)

        def batch_at(step, *b):
            if step == 3:
                raise KeyboardInterrupt("simulated preemption")
            return batch_fn(step, *b)
        return data_stats, train_ex, val_ex, max_steps, batch_at, eval_fn

    monkeypatch.setattr(lora_mod, "prepare", crashing_prepare)
    with pytest.raises(KeyboardInterrupt):
        train_lora(LoraConfig(out_dir=str(tmp_path / "crash"), **kw))
    monkeypatch.setattr(lora_mod, "prepare", real_prepare)
    resumed = train_lora(LoraConfig(out_dir=str(tmp_path / "crash"), **kw))
    assert resumed["resumed_from"] == 2
    assert resumed["final_loss"] == full["final_loss"] and resumed["val_loss"] == full["val_loss"]
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name


def test_qlora_without_gpu_is_a_clear_error(base_model_dir, chat_jsonl, tmp_path, capsys):
    rc = main(["--base", str(base_model_dir), "--data", str(chat_jsonl), "--out", str(tmp_path / "q"),
               "--qlora", "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "QLoRA needs a CUDA GPU with bitsandbytes" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="QLoRA needs a CUDA GPU"):
        train_lora(LoraConfig(base=str(base_model_dir), data=str(chat_jsonl), out_dir=str(tmp_path / "q2"),
                              qlora=True, device="cpu"))
