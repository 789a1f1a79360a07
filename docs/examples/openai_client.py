"""Talk to `sage-health serve` with the official OpenAI Python client.

    .venv/bin/sage-health principals token create clinician     # prints the token once
    .venv/bin/sage-health serve --port 8000 &
    SAGE_TOKEN=sage_... .venv/bin/python docs/examples/openai_client.py --base-url http://127.0.0.1:8000/v1 \
        --model smollm2 --purpose treatment

Lists the registered models, asks for one completion, then streams the same answer. The token (``SAGE_TOKEN``)
says who you are; the purpose of use (``X-Sage-Purpose``) must be one your role may act for.
"""

from __future__ import annotations

import argparse
import os

import openai


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--purpose", default=os.environ.get("SAGE_PURPOSE", "treatment"))
    args = parser.parse_args()
    token = os.environ.get("SAGE_TOKEN")
    if not token:
        parser.error("set SAGE_TOKEN to a token from `sage-health principals token create NAME`")
    client = openai.OpenAI(base_url=args.base_url, api_key=token, default_headers={"X-Sage-Purpose": args.purpose})
    print("models:", ", ".join(m.id for m in client.models.list()))
    messages = [
        {"role": "system", "content": "You are a radiologist. Answer in one sentence."},
        {"role": "user", "content": "Findings: The heart is normal in size. The lungs are clear. Impression?"},
    ]
    answer = client.chat.completions.create(
        model=args.model,
        messages=messages,
        max_tokens=args.max_tokens,
        temperature=0,  # type: ignore[arg-type]
    )
    print("answer:", answer.choices[0].message.content)
    stream = client.chat.completions.create(
        model=args.model,
        messages=messages,
        max_tokens=args.max_tokens,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    print("streamed:", "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices))


if __name__ == "__main__":
    main()
