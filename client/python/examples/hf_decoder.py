"""A real HuggingFace transformers decoder driving lmhead.

Builds a small Llama causal LM from a config with seeded weights and saves it with
`save_pretrained` (so transformers itself writes the checkpoint lmhead serves), then for each
lmhead head format (--weight_format=bf16, FP8 per-row, and the seed's unscaled FP8 cast) starts
`lmhead-server` on that checkpoint and runs the decoder stack *without its head*: each step's
final hidden state goes to lmhead over one StreamLogits session, and the returned token is fed
back. Reports against transformers' own generate() with the model's own head:

- teacher-forced greedy agreement: at every position of generate()'s sequence, whether lmhead's
  argmax equals the model's own head's argmax on the same hidden state (lmhead's effect alone) and
  generate()'s token (which also carries the decoder's own bf16 differences between its cached
  decode and a full forward pass), and the mean KL(model head || lmhead) per step;
- free-running: the fraction of sequences lmhead generates exactly as generate() does;
- tokens/s of the lmhead-driven loop (decoder + gRPC + head).

    python3 client/python/examples/hf_decoder.py --server=build/service/lmhead-server [--device=cuda]

Needs torch, transformers, numpy and the lmhead package (pip install client/python).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import lmhead


def build_model(args, path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 4,
                         num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=8,
                         max_position_embeddings=1024, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # A trained head's logits spread over several units; a fresh init (std 0.02) gives nearly
        # flat ones. Rows with lognormal scales and a few heavy-tailed entries, like real heads.
        w = torch.randn(args.vocab, args.hidden) * args.head_std
        w *= torch.exp(0.3 * torch.randn(args.vocab, 1))
        heavy = torch.rand_like(w) < 1e-3
        w[heavy] *= 8
        model.lm_head.weight.copy_(w)
    model = model.to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    return model


def start_server(args, checkpoint, *flags):
    port = args.port
    log = open(os.path.join(args.workdir, f"server_{port}.log"), "w")
    proc = subprocess.Popen([args.server, f"--checkpoint={checkpoint}", f"--listen=127.0.0.1:{port}",
                             "--metrics_listen=", f"--backend={args.backend}", "--max_rows_per_request=64", *flags],
                            stdout=log, stderr=subprocess.STDOUT)
    client = lmhead.LmHeadClient(f"127.0.0.1:{port}", timeout=60)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if client.is_serving():
                return proc, client
        except lmhead.LmHeadError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"lmhead-server exited: see {log.name}")
        time.sleep(0.2)
    raise RuntimeError("lmhead-server did not start")


@torch.no_grad()
def reference(model, prompts, steps):
    out = model.generate(prompts, max_new_tokens=steps, do_sample=False, min_new_tokens=steps,
                         pad_token_id=0, eos_token_id=None)
    return out


@torch.no_grad()
def teacher_forced(model, client, sequences, prompt_len):
    """Per position after the prompt, on the same hidden states: lmhead's argmax vs the model's own
    head's argmax, vs generate()'s token, and KL(model head || lmhead)."""
    hidden = model.model(sequences).last_hidden_state  # [B, T, H] after the final norm
    head = model.lm_head.weight.float()
    same, agree, kls = [], [], []
    with client.stream() as session:
        for t in range(prompt_len - 1, sequences.shape[1] - 1):
            h = hidden[:, t, :]
            own = (h.float() @ head.T).double()
            result = session.step(h, return_logits=True)
            theirs = torch.from_numpy(result.logits).double().to(own.device)
            ids = torch.from_numpy(result.argmax_ids).to(own.device)
            same.append((ids == own.argmax(-1)).float())
            agree.append((ids == sequences[:, t + 1]).float())
            p = torch.log_softmax(own, -1)
            q = torch.log_softmax(theirs, -1)
            kls.append((p.exp() * (p - q)).sum(-1))
    return torch.stack(same).mean().item(), torch.stack(agree).mean().item(), torch.stack(kls).mean().item()


@torch.no_grad()
def free_running(model, client, prompts, steps):
    """Generation with lmhead choosing every token (greedy), one stream step per decode step."""
    from transformers import DynamicCache

    cache = DynamicCache()
    tokens = prompts
    next_input = prompts
    start = time.time()
    with client.stream() as session:
        for _ in range(steps):
            out = model.model(next_input, past_key_values=cache, use_cache=True)
            h = out.last_hidden_state[:, -1, :]
            chosen = torch.from_numpy(session.step(h).argmax_ids).to(prompts.device).unsqueeze(1)
            tokens = torch.cat([tokens, chosen], dim=1)
            next_input = chosen
    if prompts.is_cuda:
        torch.cuda.synchronize()
    elapsed = time.time() - start
    return tokens, prompts.shape[0] * steps / elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True, help="path of lmhead-server")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--head_std", type=float, default=0.08)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt_len", type=int, default=16)
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=50161)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    args = ap.parse_args()
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="hf_decoder_")
    checkpoint = os.path.join(args.workdir, "model")

    model = build_model(args, checkpoint).to(args.device).eval()
    gen = torch.Generator().manual_seed(args.seed + 1)
    prompts = torch.randint(3, args.vocab, (args.batch, args.prompt_len), generator=gen).to(args.device)
    reference(model, prompts[:, : args.prompt_len], 2)  # warm-up
    if args.device == "cuda":
        torch.cuda.synchronize()
    t0 = time.time()
    ref = reference(model, prompts, args.steps)
    ref_tps = args.batch * args.steps / (time.time() - t0)

    modes = [("bf16 weights", ["--weight_format=bf16"]), ("fp8 per-row (lmhead)", ["--scale_mode=per_row"]),
             ("fp8 unscaled cast (seed)", ["--scale_mode=none"])]
    lines = [f"model: Llama {args.layers} layers, hidden {args.hidden}, vocab {args.vocab} (seeded, saved by "
             f"transformers {__import__('transformers').__version__}), {args.batch} sequences x {args.steps} "
             f"greedy steps, decoder on {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'})",
             f"transformers generate() with the model's own head: {ref_tps:.0f} tokens/s", "",
             "| lmhead head | backend | argmax = own head's (same hidden states) | argmax = generate()'s token | mean KL per step | free-running sequences identical | tokens/s |",
             "|---|---|---|---|---|---|---|"]
    for name, flags in modes:
        proc, client = start_server(args, checkpoint, *flags)
        try:
            info = client.model_info()
            same, agreement, kl = teacher_forced(model, client, ref, args.prompt_len)
            free, tps = free_running(model, client, prompts, args.steps)
            identical = (free == ref).all(dim=1).float().mean().item()
            lines.append(f"| {name} | {info.backend} | {same:.4f} | {agreement:.4f} | {kl:.3g} | {identical:.3f} | {tps:.0f} |")
            print(lines[-1], flush=True)
        finally:
            client.close()
            proc.terminate()
            proc.wait(timeout=60)
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
