"""Pretraining throughput: lmforge's loop against the Hugging Face Trainer and stock DeepSpeed.

    python benchmarks/pretrain_throughput.py [--preset tiny] [--steps 10] [--warmup 3]
        [--micro-batch 8] [--seq-len 256] [--data TOKENS_DIR] [--compile] [--peak-flops F]
        [--engine auto|plain|deepspeed] [--loss-chunk N] [--attention-backend auto|cudnn|flash|...]
        [--repeats 3]

All four train the same ``LlamaForCausalLM`` (an ``lmforge.train.model`` preset, same seed) on
the same windows of the same tokens (random tokens by default, or our shards with ``--data``),
with the same batch, sequence length, AdamW settings and gradient clipping:

- lmforge: ``lmforge.train.loop.train``, what ``lmforge pretrain`` runs after it has loaded the
  tokenizer, with ``--engine`` (default auto: the plain PyTorch engine on one device), bf16
  autocast on GPU, its own loss over all of a step's tokens, and the ``--loss-chunk`` /
  ``--attention-backend`` knobs;
- lmforge, DeepSpeed engine: the same with ``engine="deepspeed"`` (what lmforge ran on one device
  before the plain engine), so the table shows what the engine alone costs;
- HF Trainer: ``transformers.Trainer`` with ``TrainingArguments`` as its docs show (``bf16=True``
  on GPU, ``torch_compile`` with ``--compile``), loss from the model's ``labels``;
- DeepSpeed: ``deepspeed.initialize`` on the HF model with a plain ``forward / backward / step``
  loop, its stock ``bf16`` mode on GPU.

``--loss-chunk`` and ``--attention-backend`` are lmforge's knobs and apply to the two lmforge
runs only; the others run as their users would run them.

Each runs in its own process (``--repeats`` times round robin, the fastest run counting, for
shared machines). Peak memory is per process: ``torch.cuda.max_memory_allocated`` on GPU, the max
RSS from ``getrusage`` on CPU, both after the same imports. Only steps after
``--warmup`` are timed, between synchronisations at step boundaries. Tokens/s counts input
tokens. MFU uses ``lmforge.train.model.mfu`` against ``--peak-flops``: by default the H100's
dense bf16 peak on GPU, and on CPU the fp32 matmul rate this script measures on the same number of
threads (so CPU MFU reads "share of what this CPU's matmul can do").

Defaults: ``tiny`` on CPU (1 thread per framework, DeepSpeed on its CPU accelerator with gloo, one
process), ``124m`` with micro-batch 16 x 1024 tokens when CUDA is available.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FRAMEWORKS = ("lmforge", "lmforge_deepspeed", "hf_trainer", "deepspeed")
LABELS = {"lmforge": "lmforge", "lmforge_deepspeed": "lmforge, DeepSpeed engine", "hf_trainer": "HF Trainer",
          "deepspeed": "DeepSpeed (plain loop)"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help="lmforge.train.model preset (default: tiny on CPU, 124m on CUDA)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--steps", type=int, help="timed optimizer steps (default 10 CPU, 30 GPU)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 3 CPU, 10 GPU)")
    p.add_argument("--micro-batch", type=int, help="sequences per micro-batch (default 8 CPU, 16 GPU)")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--seq-len", type=int, help="default: the preset's")
    p.add_argument("--vocab-size", type=int, help="random-token vocabulary (default 1024 tiny, else 50304)")
    p.add_argument("--data", help="token shard dir (train.bin/.json) instead of random tokens")
    p.add_argument("--compile", action="store_true", help="torch.compile in all of them")
    p.add_argument("--engine", choices=["auto", "plain", "deepspeed"], default="auto",
                   help="the 'lmforge' run's engine (auto: plain on one device)")
    p.add_argument("--loss-chunk", type=int, default=0,
                   help="lmforge runs: tokens per chunk of the output projection + cross-entropy (0: off)")
    p.add_argument("--attention-backend", choices=["auto", "cudnn", "flash", "efficient", "math"], default="auto",
                   help="lmforge runs: SDPA kernel")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 on GPU, fp32 on CPU")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process on CPU")
    p.add_argument("--peak-flops", type=float, help="per-device peak FLOP/s for MFU")
    p.add_argument("--only", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per framework, interleaved; the fastest counts (for shared, noisy machines)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    p.add_argument("--child-spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return args


# ---------------------------------------------------------------------------------------------
# the spec every framework runs: resolved once in the parent, handed to each child as JSON


def resolve_spec(args: argparse.Namespace, workdir: Path) -> dict:
    import numpy as np
    import torch

    from lmforge.train.data import read_header
    from lmforge.train.model import H100_BF16_PEAK_FLOPS, get_preset

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device == "cuda"
    preset = args.preset or ("124m" if gpu else "tiny")
    seq_len = args.seq_len or get_preset(preset).seq_len
    if args.data:
        data_dir, vocab = args.data, int(read_header(args.data, "train")["vocab_size"])
    else:
        # Random tokens: enough for every window, written as a real shard so all three frameworks
        # read through the same TokenWindows.
        vocab = args.vocab_size or (1024 if preset == "tiny" else 50304)
        data_dir = str(workdir / "tokens")
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        n = 2_000_000
        dtype = "uint16" if vocab <= 65536 else "uint32"
        np.random.default_rng(args.seed).integers(0, vocab, size=n).astype(dtype).tofile(Path(data_dir) / "train.bin")
        (Path(data_dir) / "train.json").write_text(json.dumps(
            {"dtype": dtype, "num_tokens": n, "num_documents": 1, "vocab_size": vocab, "eos_id": 0}))
    spec = dict(device=device, preset=preset, seq_len=seq_len, vocab_size=vocab, data_dir=data_dir,
                steps=args.steps or (30 if gpu else 10), warmup=args.warmup if args.warmup is not None else (10 if gpu else 3),
                micro_batch=args.micro_batch or (16 if gpu else 8), grad_accum=args.grad_accum,
                compile=args.compile, threads=args.threads, seed=args.seed, engine=args.engine,
                loss_chunk=args.loss_chunk, attention_backend=args.attention_backend,
                bf16=args.precision == "bf16" or (args.precision == "auto" and gpu),
                lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95), grad_clip=1.0, workdir=str(workdir))
    if args.peak_flops:
        spec["peak_flops"], spec["peak_source"] = args.peak_flops, "--peak-flops"
    elif gpu:
        spec["peak_flops"], spec["peak_source"] = H100_BF16_PEAK_FLOPS, "H100 bf16 dense"
    else:
        spec["peak_flops"], spec["peak_source"] = cpu_matmul_flops(args.threads), f"measured fp32 matmul, {args.threads} thread(s)"
    return spec


def cpu_matmul_flops(threads: int, n: int = 512, seconds: float = 1.0) -> float:
    """Achieved fp32 FLOP/s of square matmuls on this CPU: the denominator of CPU MFU."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# pieces shared by the children


def _common(spec: dict):
    import torch

    from lmforge.train.data import TokenWindows
    from lmforge.train.model import build_model, model_config

    if spec["device"] == "cpu":
        torch.set_num_threads(spec["threads"])
    mconf = model_config(spec["preset"], spec["vocab_size"], seq_len=spec["seq_len"])
    model = build_model(mconf, seed=spec["seed"])
    windows = TokenWindows(spec["data_dir"], "train", spec["seq_len"], seed=spec["seed"])
    return mconf, model, windows


def _sync(spec: dict) -> None:
    import torch

    if spec["device"] == "cuda":
        torch.cuda.synchronize()


def _peak_memory(spec: dict) -> int:
    import torch

    if spec["device"] == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _total_steps(spec: dict) -> int:
    # One extra untimed step at the end: the timed window ends when the step after it begins, so
    # the end-of-run work (final checkpoint, export) falls outside it.
    return spec["warmup"] + spec["steps"] + 1


def _tokens_timed(spec: dict) -> int:
    return spec["steps"] * spec["micro_batch"] * spec["grad_accum"] * spec["seq_len"]


class StepClock:
    """Time from the start of step ``warmup`` to the start of step ``warmup + steps``."""

    def __init__(self, spec: dict):
        self.spec, self.t0, self.t1 = spec, None, None

    def at_step_start(self, step: int) -> None:
        if step == self.spec["warmup"] and self.t0 is None:
            _sync(self.spec)
            self.t0 = time.perf_counter()
        elif step == self.spec["warmup"] + self.spec["steps"] and self.t1 is None:
            _sync(self.spec)
            self.t1 = time.perf_counter()

    @property
    def seconds(self) -> float:
        if self.t0 is None or self.t1 is None:
            raise RuntimeError("the timed window was not reached")
        return self.t1 - self.t0


# ---------------------------------------------------------------------------------------------
# (a) lmforge


def run_lmforge(spec: dict, engine: str | None = None) -> dict:
    from lmforge.train.loop import TrainConfig, init_distributed, train
    from lmforge.train.model import flops_per_token
    from lmforge.train.telemetry import Telemetry

    dist = init_distributed(spec["device"])
    mconf, model, windows = _common(spec)
    cfg = TrainConfig(max_steps=_total_steps(spec), micro_batch=spec["micro_batch"], grad_accum=spec["grad_accum"],
                      lr=spec["lr"], warmup_steps=spec["warmup"], weight_decay=spec["weight_decay"],
                      beta1=spec["betas"][0], beta2=spec["betas"][1], grad_clip=spec["grad_clip"],
                      eval_every=0, eval_batches=0, log_every=10**9, save_every=0, seed=spec["seed"],
                      device=spec["device"], precision="bf16" if spec["bf16"] else "fp32",
                      compile=spec["compile"], cpu_threads=spec["threads"], peak_flops=spec["peak_flops"],
                      engine=engine or spec["engine"], loss_chunk=spec["loss_chunk"],
                      attention_backend=spec["attention_backend"])
    clock = StepClock(spec)

    def batch_fn(step, micro, rank, world):
        if micro == 0:
            clock.at_step_start(step)
        return windows.batch(step, micro, cfg.micro_batch, cfg.grad_accum, rank, world)

    with Telemetry(dist.rank, prefix="bench:lmforge") as tel:
        # A fresh run directory each time: an old checkpoint there would be resumed.
        run_dir = tempfile.mkdtemp(prefix="lmforge_run-", dir=spec["workdir"])
        result = train(model, cfg, run_dir, batch_fn=batch_fn, eval_fn=None,
                       dist=dist, telemetry=tel, flops_per_token=flops_per_token(mconf, spec["seq_len"]))
    return {"seconds": clock.seconds, "final_loss": result.final_loss, "engine": result.engine_name}


def run_lmforge_deepspeed(spec: dict) -> dict:
    return run_lmforge(spec, engine="deepspeed")


# ---------------------------------------------------------------------------------------------
# (b) Hugging Face Trainer


def run_hf_trainer(spec: dict) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    mconf, model, windows = _common(spec)
    per_step = spec["micro_batch"] * spec["grad_accum"]

    class Windows(torch.utils.data.Dataset):
        """Row i is window (i % per_step) of step i // per_step: the windows lmforge reads."""

        def __len__(self):
            return _total_steps(spec) * per_step

        def __getitem__(self, i):
            step, j = divmod(i, per_step)
            micro, row = divmod(j, spec["micro_batch"])
            b = windows.batch(step, micro, spec["micro_batch"], spec["grad_accum"])
            ids = b["input_ids"][row]
            return {"input_ids": ids, "labels": ids.clone()}  # the model shifts labels itself

    clock = StepClock(spec)

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            clock.at_step_start(state.global_step)

    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf_run-", dir=spec["workdir"]), max_steps=_total_steps(spec),
        per_device_train_batch_size=spec["micro_batch"], gradient_accumulation_steps=spec["grad_accum"],
        learning_rate=spec["lr"], lr_scheduler_type="cosine", warmup_steps=spec["warmup"],
        weight_decay=spec["weight_decay"], adam_beta1=spec["betas"][0], adam_beta2=spec["betas"][1],
        max_grad_norm=spec["grad_clip"], bf16=spec["bf16"], use_cpu=spec["device"] == "cpu",
        torch_compile=spec["compile"], logging_steps=10**9, save_strategy="no", report_to=[],
        dataloader_num_workers=0, seed=spec["seed"], disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=Windows(), callbacks=[Clock()])
    # In-order sampling: the same windows in the same steps as the other two.
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
    out = trainer.train()
    return {"seconds": clock.seconds, "mean_loss": float(out.training_loss)}


# ---------------------------------------------------------------------------------------------
# (c) stock DeepSpeed


def run_deepspeed(spec: dict) -> dict:
    import deepspeed
    import torch

    cpu = spec["device"] == "cpu"
    if cpu:
        # As lmforge does: skip compiling DeepSpeed's shared-memory all-reduce op (~40 s of g++),
        # which one process never uses.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl", verbose=False)
    mconf, model, windows = _common(spec)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": spec["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=spec["lr"], betas=spec["betas"])
    total = _total_steps(spec)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, spec["warmup"])))
    config = {"train_micro_batch_size_per_gpu": spec["micro_batch"],
              "gradient_accumulation_steps": spec["grad_accum"], "gradient_clipping": spec["grad_clip"],
              "zero_allow_untested_optimizer": True, "steps_per_print": 10**9,
              "bf16": {"enabled": spec["bf16"]}, "zero_optimization": {"stage": 0}}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=config)
    if spec["compile"]:
        engine.compile()
    device = engine.device
    clock = StepClock(spec)
    engine.train()
    loss = None
    for step in range(total):
        clock.at_step_start(step)
        for micro in range(spec["grad_accum"]):
            b = windows.batch(step, micro, spec["micro_batch"], spec["grad_accum"])
            ids = b["input_ids"].to(device)
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            engine.step()
    return {"seconds": clock.seconds, "final_loss": float(loss)}


RUNNERS = {"lmforge": run_lmforge, "lmforge_deepspeed": run_lmforge_deepspeed, "hf_trainer": run_hf_trainer,
           "deepspeed": run_deepspeed}


def child(name: str, spec: dict) -> None:
    import deepspeed  # noqa: F401 - the same imports in every child, so RSS baselines match
    import transformers  # noqa: F401

    out = RUNNERS[name](spec)
    out["peak_memory"] = _peak_memory(spec)
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------------
# the parent: one child process per framework, then the table


def run_child(name: str, spec: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if spec["device"] == "cpu":
        env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(spec["threads"]))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", name, "--child-spec", json.dumps(spec)],
                          env=env, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{name} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(lines[-1][len("RESULT "):])
    out["process_s"] = time.perf_counter() - t0
    return out


def label(name: str, result: dict) -> str:
    """The row's name; the lmforge run says which engine ``auto`` chose."""
    if name == "lmforge" and result.get("engine"):
        return f"lmforge ({result['engine']} engine)"
    return LABELS[name]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args.child, json.loads(args.child_spec))
        return 0

    from lmforge.train.model import flops_per_token, mfu, model_config

    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp:
        spec = resolve_spec(args, Path(tmp))
        mconf = model_config(spec["preset"], spec["vocab_size"], seq_len=spec["seq_len"])
        tokens = _tokens_timed(spec)
        print(f"preset {spec['preset']} on {spec['device']}: vocab {spec['vocab_size']}, "
              f"{spec['micro_batch']}x{spec['grad_accum']} sequences of {spec['seq_len']} tokens per step, "
              f"{spec['warmup']} warm-up + {spec['steps']} timed steps, "
              f"{'bf16' if spec['bf16'] else 'fp32'}{', torch.compile' if spec['compile'] else ''}, "
              f"data {'random tokens' if not args.data else args.data}; "
              f"{flops_per_token(mconf, spec['seq_len']) / 1e6:.1f} MFLOP/token; "
              f"peak {spec['peak_flops'] / 1e12:.3f} TFLOP/s ({spec['peak_source']}); lmforge: engine "
              f"{spec['engine']}, loss_chunk {spec['loss_chunk']}, attention {spec['attention_backend']}", flush=True)
        results: dict[str, dict] = {}
        for rep in range(args.repeats):
            for name in dict.fromkeys(args.only):
                r = run_child(name, spec)
                r["tokens_per_s"] = tokens / r["seconds"]
                r["mfu"] = mfu(r["tokens_per_s"], mconf, spec["seq_len"], peak_flops=spec["peak_flops"])
                print(f"  run {rep + 1}/{args.repeats} {label(name, r)}: {r['tokens_per_s']:,.0f} tokens/s, "
                      f"peak memory {r['peak_memory'] / 2**30:.3f} GiB", flush=True)
                if name not in results or r["tokens_per_s"] > results[name]["tokens_per_s"]:
                    results[name] = r

    mem_label = "peak GPU mem (GiB)" if spec["device"] == "cuda" else "peak RSS (GiB)"
    header = f"{'':28} {'tokens/s':>12} {'MFU %':>8} {mem_label:>20} {'timed s':>8}"
    print()
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{label(name, r):28} {r['tokens_per_s']:12,.0f} {100 * r['mfu']:8.3f} "
              f"{r['peak_memory'] / 2**30:20.3f} {r['seconds']:8.2f}")
    if "lmforge" in results:
        lm = results["lmforge"]
        for other in ("lmforge_deepspeed", "hf_trainer", "deepspeed"):
            if other in results:
                o = results[other]
                print(f"{label('lmforge', lm)} / {label(other, o)}: "
                      f"tokens/s x{lm['tokens_per_s'] / o['tokens_per_s']:.2f}, "
                      f"peak memory x{lm['peak_memory'] / o['peak_memory']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"spec": {k: v for k, v in spec.items() if k != "workdir"},
                                               "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
