"""Speed and memory benchmarks on the embedded model, reported as ratios measured in one run.

    python benchmarks/run.py [--n 128] [--quick]
    python benchmarks/run.py --model qwen2.5-coder-0.5b-instruct --only extraction generation \
        --new-tokens 32

Writes ``benchmarks/results.json`` and prints a Markdown table (also ``benchmarks/results.md``).
Targets: streaming extraction >= 3x the naive cache-everything baseline and >= 30% of the
measured float32 matmul roofline; peak RSS at N=512 within 10% of N=64; orthogonalized
generation within 5% of the plain model; KV-cache generation >= 3x no-cache; cached load <= 5 s;
with half the decoder layers offloaded to disk, lower peak RSS than without (and its time cost);
``refusal-lens --help`` and every ``refusal-lens <command> --help`` <= 1 s in a fresh process.
``--model`` measures the extraction, generation and selection rows on another model (kept under
``models`` in the JSON, with the same targets). ``--new-tokens`` sets the generation row's
greedy tokens (recorded in the row as ``new_tokens``): its uncached arm re-reads the whole prompt at
every token, so on a larger model 64 tokens make that one arm most of the suite's time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from process_benches import bench_cli, bench_load, bench_memory, bench_offload  # noqa: E402
from targets import markdown, targets  # noqa: E402
from timing import timed  # noqa: E402


def matmul_roofline(n: int = 2048, repeat: int = 5) -> float:
    """Measured float32 matmul rate of this machine (FLOP/s), all threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    sec, _ = timed(lambda: a @ b, repeat)
    return 2 * n**3 / sec


class BlockFlops:
    """Counts the matmul FLOPs the decoder blocks really run (2 x the block's parameters per
    token that enters it, padding included), with a pre-hook on every block: a shared system
    prompt that runs once per batch, or a pass that stops before the last block, is counted as
    run, not as the prompt tokens would suggest. Attention's score matmuls are left out."""

    def __init__(self, model) -> None:
        self.flops = 0
        self._handles = []
        for block in model.bridge.blocks:  # the Hugging Face decoder layers the bridge wraps
            block = getattr(block, "original_component", block)
            n = sum(p.numel() for p in block.parameters())
            self._handles.append(block.register_forward_pre_hook(
                lambda _m, args, kwargs, n=n: self._add(args, kwargs, n), with_kwargs=True))

    def _add(self, args, kwargs, n: int) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        self.flops += 2 * n * x.shape[0] * x.shape[1]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def bench_extraction(model, prompts: list[str], roofline: float) -> dict:
    """Streaming resid_means vs run_with_cache(all hooks, no autograd, batches of 32) + mean
    afterwards; on a model with a large vocabulary the cached logits dominate that baseline's
    memory."""
    from refusal_lens.batching import iter_batches

    positions = model.post_instruction_positions
    layers = list(range(model.n_layers))
    counter = BlockFlops(model)
    try:
        stream_s, means = timed(lambda: model.resid_means(prompts, batch_size=32, progress=False))
    finally:
        counter.remove()

    @torch.no_grad()  # without it the autograd graph of every cached activation is kept too
    def naive():
        sums, n = None, 0
        for batch in iter_batches(model, prompts, 32):
            _, cache = model.bridge.run_with_cache(batch.input_ids, **batch.forward_kwargs())
            acts = torch.stack([batch.gather(cache[f"blocks.{l}.hook_resid_pre"], positions)
                                for l in layers]).double().sum(1)
            sums = acts if sums is None else sums + acts
            n += batch.input_ids.shape[0]
            del cache
        return sums / n

    naive_s, ref = timed(naive)
    tokens = sum(len(t) for t in model.tokenizer(model.format(prompts), add_special_tokens=False)["input_ids"])
    flops = counter.flops
    return {
        "n_prompts": len(prompts), "tokens": tokens, "block_flops": flops,
        "streaming_s": stream_s, "naive_s": naive_s,
        "streaming_prompts_per_s": len(prompts) / stream_s,
        "naive_prompts_per_s": len(prompts) / naive_s,
        "speedup_vs_naive": naive_s / stream_s,
        "max_abs_diff_vs_naive": float((means - ref).abs().max()),
        "achieved_flops": flops / stream_s,
        "prompt_tokens_per_s": tokens / stream_s,
        "roofline_flops": roofline,
        "roofline_fraction": flops / stream_s / roofline,
    }


def bench_generation(model, prompts: list[str], new_tokens: int = 64, rounds: int = 3) -> dict:
    """Plain vs hook ablation / addition vs orthogonalized weights; KV cache vs none (batch of
    16), by wall time. Rows leave the batch when they end, so an arm whose intervention changes
    the text decodes a different number of tokens: each arm's tokens (of the decoded
    completions) and its time per token are recorded beside the wall-time ratios. Orthogonalized
    weights and hook ablation compute the same function (same completions), as do the bridge
    and the plain path, and the cached and uncached loops.

    The cached arms run in ``rounds`` interleaved rounds (every arm once per round, the order
    rotated by one each round), so a change in the host's load falls on all arms alike rather
    than on whichever arm ran then: an arm's time is its median over rounds, and a ratio of two
    arms is the median of their per-round ratios. Each round's seconds are recorded
    (``round_s``). The uncached arm, slower by design, runs once after the rounds."""
    from statistics import median

    from refusal_lens.directions import random_like
    from refusal_lens.generation import generate
    from refusal_lens.interventions import ablation, addition
    from refusal_lens.orthogonalize import orthogonalize

    d = random_like(torch.ones(model.d_model, dtype=torch.float64), seed=0)
    ortho = orthogonalize(model, d)
    kw = dict(max_new_tokens=new_tokens, batch_size=16, progress=False)
    for m in (model, ortho):  # the first call pays one-time costs; no timed arm should
        generate(m, prompts, max_new_tokens=2, batch_size=16, progress=False)
    arms = {
        "plain": lambda: generate(model, prompts, **kw),
        "hook_ablation": lambda: generate(model, prompts, interventions=[ablation(model, d)],
                                          **kw),
        "hook_addition": lambda: generate(model, prompts, **kw, interventions=[
            addition(model, d, model.n_layers // 2)]),
        "orthogonalized": lambda: generate(ortho, prompts, **kw),
        "bridge_hook_ablation": lambda: generate(model, prompts, interventions=[
            ablation(model, d)], backend="bridge", attn=None, **kw),
    }
    names = list(arms)
    round_s: dict[str, list[float]] = {name: [] for name in names}
    texts: dict[str, list[str]] = {}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            texts[name] = arms[name]()
            round_s[name].append(time.perf_counter() - t)
    sec_nokv, texts["no_kv_cache"] = timed(
        lambda: generate(model, prompts, use_cache=False, **kw))
    seconds = {name: median(v) for name, v in round_s.items()} | {"no_kv_cache": sec_nokv}
    out: dict = {"batch": len(prompts), "new_tokens": new_tokens, "rounds": rounds,
                 "round_s": round_s}
    per_token = {}
    for name, sec in seconds.items():
        n = sum(len(model.tokenizer(t, add_special_tokens=False)["input_ids"])
                for t in texts[name])
        out |= {f"{name}_s": sec, f"{name}_tokens": n}
        per_token[name] = sec / max(n, 1)

    def paired(a: str, b: str) -> float:
        """Median over rounds of arm a's time over arm b's in the same round."""
        return median(x / y for x, y in zip(round_s[a], round_s[b]))

    return out | {
        "orthogonalized_over_plain": paired("orthogonalized", "plain"),
        "orthogonalized_over_plain_per_token": per_token["orthogonalized"] / per_token["plain"],
        "hook_over_plain_per_token": per_token["hook_ablation"] / per_token["plain"],
        "addition_over_plain_per_token": per_token["hook_addition"] / per_token["plain"],
        "orthogonalized_over_hook": paired("orthogonalized", "hook_ablation"),
        "kv_cache_speedup": seconds["no_kv_cache"] / seconds["plain"],
        "plain_path_speedup": paired("bridge_hook_ablation", "hook_ablation"),
    }


def bench_selection(model, s, n_val: int) -> dict:
    """Time per candidate of the selection (screen: bypass on a few prompts; full: bypass +
    induce + KL on the validation prompts), from ``select_direction``'s own timing."""
    from refusal_lens.scoring import refusal_token_ids
    from refusal_lens.selection import SelectionConfig, select_direction

    cfg = SelectionConfig(top_k=4)
    ids = refusal_token_ids(model.tokenizer, ["I", "As"])
    res = select_direction(model, s.harmful_train[:32], s.harmless_train[:32],
                           s.harmful_val[:n_val], s.harmless_val[:n_val], ids, cfg,
                           progress=False)
    n_screened = sum(1 for c in res.scores if c.screen_bypass == c.screen_bypass)
    n_scored = sum(1 for c in res.scores if c.scored)
    t = res.timing
    return {
        "layers_scanned": len({c.layer for c in res.scores}),
        "positions": len(model.post_instruction_positions),
        "n_screened": n_screened, "n_fully_scored": n_scored, "n_val": n_val,
        "n_screen_prompts": cfg.n_screen,
        "fit_s": t["fit_s"], "screen_s_per_candidate": t["screen_s"] / max(1, n_screened),
        "full_score_s_per_candidate": t["score_s"] / max(1, n_scored),
        "scaling": "fit: one pass over the training prompts, independent of the candidate count; "
                   "screening and scoring: linear in layers x positions (screen) and top_k (full)",
    }


BENCHES = ("load", "extraction", "memory", "generation", "selection", "offload", "cli")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="prompts for the extraction benchmark")
    parser.add_argument("--quick", action="store_true", help="small counts (smoke test)")
    parser.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES),
                        help="run only these benchmarks (the others keep their last results)")
    parser.add_argument("--new-tokens", type=int, default=None, metavar="N",
                        help="greedy tokens per completion in the generation row (default 64; "
                             "16 with --quick)")
    parser.add_argument("--rounds", type=int, default=None, metavar="R",
                        help="interleaved rounds of the generation row's cached arms; each arm's "
                             "time is its median over rounds (default 3; 1 with --quick)")
    parser.add_argument("--model", default="embedded",
                        help="model spec for the extraction, generation and selection rows; "
                             "another model's rows are kept beside the embedded ones (the "
                             "load, memory, cli and offload rows are the embedded model's)")
    args = parser.parse_args()
    embedded_only = [b for b in args.only if b in ("load", "memory", "cli", "offload")]
    if embedded_only and args.model != "embedded":
        parser.error(f"--only {' '.join(embedded_only)} measure(s) the embedded model; with "
                     f"--model {args.model} pass --only from extraction, generation, selection")
    args.rounds = args.rounds if args.rounds is not None else 1 if args.quick else 3
    args.new_tokens = args.new_tokens if args.new_tokens is not None else 16 if args.quick else 64
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    if args.new_tokens < 1:
        parser.error(f"--new-tokens must be at least 1, not {args.new_tokens}")
    import refusal_lens as rl
    from refusal_lens.datasets import load_splits

    torch.manual_seed(0)
    s = load_splits(seed=0)
    n = 16 if args.quick else args.n
    path = HERE / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    machine = {"platform": platform.platform(), "processor": platform.processor(),
               "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "load_avg_1min_before": os.getloadavg()[0]}
    model = None
    own = results if args.model == "embedded" else \
        results.setdefault("models", {}).setdefault(args.model, {})
    own["machine"] = machine  # another model's rows say where (and on how many threads) they ran
    for name in args.only:
        print(f"{name} ...", file=sys.stderr)
        if name == "load":
            results["load"] = bench_load()
            continue
        if name == "memory":
            results["memory"] = bench_memory((16, 64) if args.quick else (64, 512))
            continue
        if name == "cli":
            results["cli"] = bench_cli()
            continue
        if name == "offload":
            results["offload"] = bench_offload(16 if args.quick else 64,
                                               8 if args.quick else 32)
            continue
        model = model or rl.load_model(args.model)
        if name == "extraction":
            own["extraction"] = bench_extraction(
                model, (s.harmful_train + s.harmless_train)[:n], matmul_roofline())
        elif name == "generation":
            own["generation"] = bench_generation(model, s.harmless_test[:16],
                                                 args.new_tokens, args.rounds)
        elif name == "selection":
            own["selection"] = bench_selection(model, s, 8 if args.quick else 32)
    machine["load_avg_1min_after"] = os.getloadavg()[0]
    results["targets"] = targets(results)
    from refusal_lens.paths import atomic_write_text

    atomic_write_text(path, json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    atomic_write_text(HERE / "results.md", table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
