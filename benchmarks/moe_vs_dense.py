"""Dense vs MoE speed per active parameter on CPU (or GPU).

    python benchmarks/moe_vs_dense.py --threads 1
    python benchmarks/moe_vs_dense.py --threads 2 --hidden 640 --layers 2 --device cuda

Builds a dense MiniMind and two MoE variants of the same width (MiniMind2-MoE style: 4 routed top-2 + 1 shared;
minimind-3 style: 4 routed top-1), times inference forwards and training steps (forward + backward + AdamW), and
prints tokens/s, microseconds per token per million active parameters, and the ratio to dense measured in the same
run. The design target is MoE <= 2x dense per active parameter.
"""

import argparse
import time

import torch

from minimind_hf import MiniMindConfig, MiniMindForCausalLM


def active_parameters(model: MiniMindForCausalLM) -> int:
    """Parameters one token touches (tied embedding counted once)."""
    config = model.config
    total = sum(p.numel() for p in model.parameters())
    if not config.num_experts:
        return total
    expert = sum(p.numel() for p in model.model.layers[0].mlp.experts[0].parameters())
    return total - (config.num_experts - config.num_experts_per_tok) * expert * config.num_hidden_layers


def time_it(fn, warmup: int, repeats: int, device: str) -> float:
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def measure(config: MiniMindConfig, args) -> dict:
    torch.manual_seed(0)
    model = MiniMindForCausalLM(config).to(args.device)
    ids = torch.randint(3, config.vocab_size, (args.batch, args.seq), device=args.device)
    tokens = ids.numel()
    model.eval()

    def infer():
        with torch.no_grad():
            model(ids, use_cache=False, logits_to_keep=1)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train():
        model.train()
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    results = {"active": active_parameters(model), "total": sum(p.numel() for p in model.parameters())}
    for name, fn in (("infer", infer), ("train", train)):
        seconds = time_it(fn, args.warmup, args.repeats, args.device)
        results[f"{name}_tps"] = tokens / seconds
        results[f"{name}_us"] = seconds / tokens * 1e6 / (results["active"] / 1e6)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base = {"hidden_size": args.hidden, "num_hidden_layers": args.layers, "max_position_embeddings": 4096}
    variants = {
        "dense": MiniMindConfig(**base),
        "moe 4x top-2 + shared": MiniMindConfig(**base, num_experts=4, num_experts_per_tok=2, num_shared_experts=1),
        "moe 4x top-1": MiniMindConfig(
            **base, num_experts=4, num_experts_per_tok=1, num_shared_experts=0, router_aux_loss_type="switch"
        ),
    }
    rows = {name: measure(config, args) for name, config in variants.items()}
    dense = rows["dense"]
    print(
        f"device={args.device} threads={torch.get_num_threads()} hidden={args.hidden} layers={args.layers} "
        f"batch={args.batch} seq={args.seq} repeats={args.repeats}"
    )
    header = (
        f"{'model':<24}{'active M':>9}{'total M':>9}{'infer tok/s':>13}{'us/tok/Mp':>11}{'x dense':>9}"
        f"{'train tok/s':>13}{'us/tok/Mp':>11}{'x dense':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        print(
            f"{name:<24}{r['active'] / 1e6:>9.2f}{r['total'] / 1e6:>9.2f}"
            f"{r['infer_tps']:>13.0f}{r['infer_us']:>11.3f}{r['infer_us'] / dense['infer_us']:>9.2f}"
            f"{r['train_tps']:>13.0f}{r['train_us']:>11.3f}{r['train_us'] / dense['train_us']:>9.2f}"
        )


if __name__ == "__main__":
    main()
