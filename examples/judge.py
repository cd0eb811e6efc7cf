#!/usr/bin/env python
"""Score an instruction-tuned model's responses 0-100 with an LLM judge, as the book's chapter 7
does with Ollama (`query_model` + `generate_model_scores`).

    ollama serve                # in another terminal; then once: ollama pull llama3
    python examples/judge.py runs/instruct/responses.json --model llama3

Reads the recipe's responses.json (entries with "instruction", "input", "output" and
"model_response"), asks the judge with the book's prompt and options (seed 123, temperature 0,
num_ctx 2048), prints the mean score and writes the entries with a "judge_score" (null when the
answer held no number in 0..100) to responses_scored.json beside the input (or --output).
"""

from __future__ import annotations

import argparse
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

from hf_gpt_scratch.training.data import format_alpaca_prompt


def judge_prompt(entry: dict) -> str:
    """The book's scoring prompt for one entry."""
    return (
        f"Given the input `{format_alpaca_prompt(entry)}` "
        f"and correct output `{entry['output']}`, "
        f"score the model response `{entry['model_response']}`"
        f" on a scale from 0 to 100, where 100 is the best score. "
        f"Respond with the integer number only."
    )


def query_model(prompt: str, model: str, url: str, timeout: float) -> str:
    """The judge's answer: POST {url} (Ollama's /api/chat), read its streamed JSON lines."""
    payload = {"model": model, "messages": [{"role": "user", "content": prompt}],
               "options": {"seed": 123, "temperature": 0, "num_ctx": 2048}}
    request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return "".join(json.loads(line)["message"]["content"] for line in response if line.strip())


def parse_score(answer: str) -> float | None:
    """The number in the judge's answer (the book's `int(score)`, or the first number in a wordier
    answer); None when there is none or it is outside 0..100."""
    match = re.search(r"-?\d+(?:\.\d+)?", answer)
    return float(match.group(0)) if match and 0 <= float(match.group(0)) <= 100 else None


def main(argv: list[str] | None = None) -> list[float | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("responses", type=Path, help="responses.json of recipes/instruct.py")
    parser.add_argument("--model", default="llama3", help="the model the judge server runs")
    parser.add_argument("--url", default="http://localhost:11434/api/chat", help="Ollama's chat endpoint")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each answer")
    parser.add_argument("--output", type=Path, default=None, help="default: responses_scored.json beside the input")
    args = parser.parse_args(argv)

    entries = json.loads(args.responses.read_text(encoding="utf-8"))
    scores = []
    for i, entry in enumerate(entries):
        try:
            answer = query_model(judge_prompt(entry), args.model, args.url, args.timeout)
        except (OSError, urllib.error.URLError) as err:
            raise SystemExit(f"the judge at {args.url} did not answer entry {i}: {err} (is `ollama serve` running?)")
        scores.append(parse_score(answer))
        if scores[-1] is None:
            print(f"Could not convert score for entry {i}: {answer!r}")
    output = args.output or args.responses.with_name("responses_scored.json")
    scored = [dict(entry, judge_score=score) for entry, score in zip(entries, scores)]
    output.write_text(json.dumps(scored, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
    valid = [s for s in scores if s is not None]
    mean = f"{sum(valid) / len(valid):.2f}" if valid else "-"
    print(f"Number of scores: {len(valid)} of {len(entries)}\nAverage score: {mean}\nWritten: {output}")
    return scores


if __name__ == "__main__":
    main()
