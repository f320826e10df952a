"""Does int8 answer as fp32 does? Short factual questions and a few multi-turn chats, greedy,
asked through `sepcli chat`'s own code (:class:`sepcli.generate.chat.ChatSession`).

    python bench/int8_answers.py [--variants fp32,gguf,int8,...] [--max-new-tokens 48] [--limit N]
                                 [--out int8-answers.json]

Each variant runs in its own process (``--one VARIANT``). Per variant: answers judged right
(an expected string in the reply, case-insensitive) and, against fp32, identical replies and
the first differing token. Results: bench/results/int8-answers.json (``--out`` another name).

Variants that find where int8 loses (bench only; the library is unchanged): ``chunk`` is the
path of a prompt's chunks (int8 GEMM or fp32), ``step`` the one-token decode step (``c``: the
C step of the shipped path; ``int8``: the int8 model's modules one token at a time, 4-bit
products; ``fp32``), ``head`` the LM head. ``int8-ref`` is the shipped int8 path under
SEPCLI_KERNELS=reference (torch's one-token products, bf16 activations).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
from torch import nn

from sepcli.generate.chat import ChatSession
from sepcli.generate.decode import GenerateConfig
from sepcli.models import load_model
from sepcli.quant import Int8Linear
from sepcli.stream.config import StreamConfig
from sepcli.stream.one_token import OneToken

from common import command, machine, write_result

# question -> accepted answers (any one, case-insensitive, as a substring of the reply)
QUESTIONS = [
    ("What is the capital of France?", ["paris"]),
    ("What is the capital of Japan?", ["tokyo"]),
    ("What is the capital of Italy?", ["rome"]),
    ("What is the capital of Germany?", ["berlin"]),
    ("What is the capital of Spain?", ["madrid"]),
    ("What is the capital of the United Kingdom?", ["london"]),
    ("What is the capital of Russia?", ["moscow"]),
    ("What is the capital of Egypt?", ["cairo"]),
    ("What is the capital of China?", ["beijing"]),
    ("What is the capital of Canada?", ["ottawa"]),
    ("Which planet is the largest in our solar system?", ["jupiter"]),
    ("Which planet is known as the Red Planet?", ["mars"]),
    ("What is the chemical formula of water?", ["h2o", "h₂o"]),
    ("Who wrote Romeo and Juliet?", ["shakespeare"]),
    ("Who was the first president of the United States?", ["washington"]),
    ("How many days are there in a week?", ["seven", "7"]),
    ("How many legs does a spider have?", ["eight", "8"]),
    ("At what temperature in Celsius does water freeze?", ["0", "zero"]),
    ("At what temperature in Celsius does water boil?", ["100"]),
    ("What language is spoken in Brazil?", ["portuguese"]),
    ("What is the tallest mountain in the world?", ["everest"]),
    ("What is the largest ocean on Earth?", ["pacific"]),
    ("Who painted the Mona Lisa?", ["leonardo", "da vinci"]),
    ("Who developed the theory of relativity?", ["einstein"]),
    ("Which gas do plants absorb from the air?", ["carbon dioxide", "co2"]),
    ("What is the chemical symbol for gold?", ["au"]),
    ("How many continents are there?", ["seven", "7"]),
    ("What is the largest mammal?", ["blue whale"]),
    ("What is the currency of Japan?", ["yen"]),
    ("What is the fastest land animal?", ["cheetah"]),
    ("What is 5 plus 7?", ["12", "twelve"]),
    ("Who wrote the novel 1984?", ["orwell"]),
    ("In which year did World War II end?", ["1945"]),
    ("Who discovered penicillin?", ["fleming"]),
    ("What do bees make?", ["honey"]),
    ("Which organ pumps blood through the body?", ["heart"]),
]
# conversations: (user turns, accepted answers for the last reply)
CHATS = [
    (["Hi! My name is Alice.", "What is my name?"], ["alice"]),
    (["What is the capital of France?", "And what is the capital of Italy?"], ["rome"]),
    (["I have three apples and I buy two more.", "How many apples do I have now?"], ["five", "5"]),
    (["Let's talk about the sea.", "Which ocean is the largest?"], ["pacific"]),
]

VARIANTS = {  # name -> (chunk, step, head, SEPCLI_KERNELS)
    "fp32": ("fp32", "fp32", "fp32", None),
    "gguf": ("gguf", "gguf", "gguf", None),  # the file's own blocks, as shipped (auto's pick)
    "int8": ("int8", "c", "int8", None),
    "int8-ref": ("int8", "c", "int8", "reference"),
    "int8-fp32-head": ("int8", "c", "fp32", None),
    "chunks-only": ("int8", "fp32", "fp32", None),
    "steps-only": ("fp32", "int8", "fp32", None),
    "c-steps-only": ("fp32", "c", "fp32", None),
    "head-only": ("fp32", "fp32", "int8", None),
}


class Switch(nn.Module):
    """One linear layer with two implementations: ``chunk`` for several tokens, ``one`` for a
    single token."""

    def __init__(self, chunk: nn.Module, one: nn.Module, in_features: int):
        super().__init__()
        self.chunk, self.one, self.in_features = chunk, one, in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.one if x.numel() == self.in_features else self.chunk)(x)


def build(variant: str, model_name: str):
    """(model, tokenizer, make_one_token or None) for a variant."""
    chunk, step, head, _ = VARIANTS[variant]
    if variant in ("fp32", "gguf"):
        lm = load_model(model_name, device="cpu", dtype=variant)
        return lm.model, lm.tokenizer, None
    q = load_model(model_name, device="cpu", dtype="int8")
    if (chunk, step, head) == ("int8", "c", "int8"):
        return q.model, q.tokenizer, None  # as shipped
    f = load_model(model_name, device="cpu", dtype="fp32").model
    shape_src = q.model
    # the C step reads the int8 model's layers directly: build it before the modules are wrapped
    make_step = None
    if step == "c":
        from sepcli import arch

        shape = arch.shape_of(q.model)
        if OneToken.for_model(q.model, shape) is None:
            raise SystemExit("the C one-token step does not run here")

        def make_step():
            return OneToken.for_model(shape_src, shape)

    model = f  # fp32 modules, with the int8 ones put in where the variant says
    for name, module in list(q.model.named_modules()):
        if not isinstance(module, Int8Linear):
            continue
        owner_name, _, attr = name.rpartition(".")
        fp = f.get_submodule(name)
        if name == "lm_head":
            use = module if head == "int8" else fp
        else:
            use = Switch(
                module if chunk == "int8" else fp,
                module if step in ("int8", "c") else fp,
                module.in_features,
            )
        setattr(model.get_submodule(owner_name) if owner_name else model, attr, use)
    return model, q.tokenizer, make_step


def ask(model, tokenizer, turns, max_new, make_step) -> list[dict]:
    gen = GenerateConfig(max_new_tokens=max_new)
    session = ChatSession(model, tokenizer, StreamConfig(), gen)
    if make_step is not None:
        session.engine.one_token = make_step()
    out = []
    for user in turns:
        ids, text = [], []
        for tok in session.send(user):
            ids.append(tok.id)
            text.append(tok.text)
        out.append({"user": user, "reply": "".join(text), "ids": ids})
    return out


@torch.inference_mode()
def run_one(args) -> None:
    torch.set_num_threads(args.threads)
    model, tokenizer, make_step = build(args.one, args.model)
    rows = []
    cases = [([q], a) for q, a in QUESTIONS[: args.limit]] + CHATS[: args.limit]
    for turns, answers in cases:
        replies = ask(model, tokenizer, turns, args.max_new_tokens, make_step)
        last = replies[-1]["reply"].lower()
        rows.append({"turns": replies, "answers": answers, "right": any(a in last for a in answers)})
        print(f"[{args.one} {len(rows)}/{len(cases)}] {replies[-1]['reply'][:70]!r}", file=sys.stderr)
    json.dump(rows, sys.stdout)


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default="int8-answers.json", help="result file in bench/results")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="first N questions and chats only")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return run_one(args)
    names = ["fp32", *[v for v in args.variants.split(",") if v and v != "fp32"]]
    results, summary = {}, {}
    for name in names:
        env = dict(os.environ)
        if VARIANTS[name][3]:
            env["SEPCLI_KERNELS"] = VARIANTS[name][3]
        argv = [sys.argv[0], "--one", name, "--model", args.model, "--threads", str(args.threads)]
        argv += ["--max-new-tokens", str(args.max_new_tokens)]
        if args.limit:
            argv += ["--limit", str(args.limit)]
        proc = subprocess.run([sys.executable, *argv], env=env, stdout=subprocess.PIPE, text=True)
        if proc.returncode:
            raise SystemExit(f"variant {name} failed (exit {proc.returncode})")
        results[name] = json.loads(proc.stdout)
        base = results["fp32"]
        same, firsts = 0, []
        for row, ref in zip(results[name], base, strict=True):
            a = [i for t in row["turns"] for i in t["ids"]]
            b = [i for t in ref["turns"] for i in t["ids"]]
            d = first_difference(a, b)
            same += d is None
            if d is not None:
                firsts.append(d)
        summary[name] = {
            "cases": len(base),
            "right": sum(r["right"] for r in results[name]),
            "identical_to_fp32": same,
            "first_difference_tokens": sorted(firsts),
            "path": dict(zip(("chunk", "step", "head", "kernels"), VARIANTS[name], strict=True)),
        }
        print(json.dumps({name: summary[name]}), file=sys.stderr)
        write_result(
            args.out,
            {"command": command(), **machine(), "max_new_tokens": args.max_new_tokens,
             "summary": summary, "replies": results},
        )  # fmt: skip


if __name__ == "__main__":
    main()
