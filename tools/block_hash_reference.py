#!/usr/bin/env python3
"""Reference implementation of Strata's chain hash and namespace id (docs/design/block-hash.md).

Written from the spec alone, with the standard library only, so that the test vectors in the doc
do not come from the C++ code they test. xxh3-128 is not in the standard library: its vectors
come from the C++ implementation and are only checked for syntax here.

  block_hash_reference.py                 print the root seed, a worked example and the vectors
  block_hash_reference.py --check DOC     verify every sha256 and namespace-id vector in DOC;
                                          exit status 1 on any mismatch or malformed line
"""

import argparse
import hashlib
import re
import struct
import sys

ROOT_SEED_TEXT = b"strata/v1 chain-hash root"
NAMESPACE_DOMAIN = b"strata-ns-v1"
CHAIN_FENCE = "chain-hash-vectors"
NAMESPACE_FENCE = "namespace-id-vectors"
ALGORITHMS = ("sha256", "xxh3-128")


def u32le(v):
    return struct.pack("<I", v)


def root_parent():
    # The same root for both algorithms.
    return hashlib.sha256(ROOT_SEED_TEXT).digest()


def encode_extras(extras):
    out = b""
    if extras.get("lora"):
        lora = extras["lora"].encode()
        out += b"\x01" + u32le(len(lora)) + lora
    for mm in extras.get("mm", []):
        if not 1 <= len(mm) <= 255:
            raise ValueError("mm hash of %d bytes, want 1..255" % len(mm))
        out += b"\x02" + bytes([len(mm)]) + mm
    if extras.get("group") is not None:
        out += b"\x03" + u32le(extras["group"])
    return out


def block_input(parent, tokens, extras):
    return parent + b"".join(u32le(t) for t in tokens) + encode_extras(extras)


def sha256_chain(tokens, block_tokens, extras):
    if block_tokens == 0:
        raise ValueError("block_tokens must be >= 1")
    parent = root_parent()
    hashes = []
    for b in range(len(tokens) // block_tokens):
        block = tokens[b * block_tokens:(b + 1) * block_tokens]
        parent = hashlib.sha256(block_input(parent, block, extras)).digest()
        hashes.append(parent)
    return hashes


def lp(s):
    return u32le(len(s)) + s


def namespace_input(model_id, dtype, layout, block_tokens, tp_rank, tp_size, algorithm):
    return (NAMESPACE_DOMAIN + lp(model_id.encode()) + lp(dtype.encode()) + lp(layout.encode()) +
            u32le(block_tokens) + u32le(tp_rank) + u32le(tp_size) + lp(algorithm.encode()))


def namespace_id(*fields):
    digest = hashlib.sha256(namespace_input(*fields)).digest()
    return struct.unpack("<Q", digest[:8])[0]


# ---- vector notation (see the doc's "Test vectors" section) ----


def parse_tokens(text):
    return [] if text == "-" else [int(t) for t in text.split(",")]


def format_tokens(tokens):
    return ",".join(str(t) for t in tokens) if tokens else "-"


def parse_extras(text):
    extras = {}
    if text == "-":
        return extras
    for item in text.split(";"):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError("extras item %r has no '='" % item)
        if key == "lora":
            extras["lora"] = value
        elif key == "mm":
            extras["mm"] = [bytes.fromhex(h) for h in value.split("/")]
        elif key == "group":
            extras["group"] = int(value)
        else:
            raise ValueError("unknown extras key %r" % key)
    return extras


def parse_hashes(text):
    if text == "-":
        return []
    hashes = text.split(",")
    for h in hashes:
        if not re.fullmatch(r"[0-9a-f]{64}", h):
            raise ValueError("expected hash %r is not 64 lower-case hex digits" % h)
    return hashes


def fenced_blocks(doc, fence):
    """Lines of every ```<fence> block, without comments and blank lines."""
    lines, inside = [], False
    for n, line in enumerate(doc.splitlines(), 1):
        stripped = line.strip()
        if not inside and stripped == "```" + fence:
            inside = True
        elif inside and stripped == "```":
            inside = False
        elif inside and stripped and not stripped.startswith("#"):
            lines.append((n, stripped))
    if inside:
        raise ValueError("unterminated ```%s block" % fence)
    return lines


def check(doc_path):
    try:
        with open(doc_path, encoding="utf-8") as f:
            doc = f.read()
        chain_lines = fenced_blocks(doc, CHAIN_FENCE)
        namespace_lines = fenced_blocks(doc, NAMESPACE_FENCE)
    except (OSError, ValueError) as e:
        print("%s: %s" % (doc_path, e))
        return 1
    failures, checked, skipped = 0, 0, 0

    def fail(n, msg):
        nonlocal failures
        failures += 1
        print("%s:%d: %s" % (doc_path, n, msg))

    root_hex = root_parent().hex()
    if root_hex not in doc:
        fail(0, "root seed %s is not quoted in the doc" % root_hex)

    for n, line in chain_lines:
        try:
            fields = [f.strip() for f in line.split("|")]
            if len(fields) != 5:
                raise ValueError("%d fields, want 5" % len(fields))
            algorithm, block_tokens, extras, tokens, expected = fields
            if algorithm not in ALGORITHMS:
                raise ValueError("unknown algorithm %r" % algorithm)
            block_tokens, extras = int(block_tokens), parse_extras(extras)
            if block_tokens < 1:
                raise ValueError("block_tokens %d, want >= 1" % block_tokens)
            tokens, expected = parse_tokens(tokens), parse_hashes(expected)
            if len(expected) != len(tokens) // block_tokens:
                raise ValueError("%d expected hashes for %d full blocks" %
                                 (len(expected), len(tokens) // block_tokens))
        except ValueError as e:
            fail(n, "malformed vector: %s" % e)
            continue
        if algorithm != "sha256":
            skipped += 1
            continue
        actual = [h.hex() for h in sha256_chain(tokens, block_tokens, extras)]
        checked += 1
        if actual != expected:
            fail(n, "sha256 mismatch: computed %s" % ",".join(actual))

    for n, line in namespace_lines:
        fields = [f.strip() for f in line.split("|")]
        if (len(fields) != 8 or not all(f.isdigit() for f in fields[3:6]) or
                fields[6] not in ALGORITHMS or not re.fullmatch(r"[0-9a-f]{16}", fields[7])):
            fail(n, "malformed namespace vector")
            continue
        model_id, dtype, layout, bt, rank, size, algorithm, expected = fields
        actual = "%016x" % namespace_id(model_id, dtype, layout, int(bt), int(rank), int(size),
                                         algorithm)
        checked += 1
        if actual != expected:
            fail(n, "namespace id mismatch: computed %s" % actual)

    if checked == 0:
        fail(0, "no vectors found (fences ```%s / ```%s)" % (CHAIN_FENCE, NAMESPACE_FENCE))
    print("%s: %d vectors checked, %d xxh3-128 vectors skipped, %d failures" %
          (doc_path, checked, skipped, failures))
    return 1 if failures else 0


# ---- generation: the vectors published in the doc ----

LLAMA3_PROMPT = [128000, 128006, 9125, 128007, 271, 38766, 1303, 33025, 2696, 25, 6790, 220, 2366,
                 18, 198, 15724, 2696, 25, 220, 1627, 10263, 220, 2366, 19, 271, 2675, 527, 264,
                 11190, 18328, 13, 128009, 128006, 882, 128007, 271, 3923, 374, 279, 6864, 315,
                 9822, 30, 128009, 128006, 78191, 128007, 271]
ONE_TO_8 = list(range(1, 9))
MM_A = bytes.fromhex("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")

CHAIN_VECTORS = [
    ("sha256", 4, "-", ONE_TO_8),
    ("sha256", 16, "-", LLAMA3_PROMPT),
    ("sha256", 4, "-", list(range(1, 11))),
    ("sha256", 4, "-", [1, 2, 3]),
    ("sha256", 1, "-", [0, 4294967295]),
    ("sha256", 4, "lora=sql-adapter-v2", ONE_TO_8),
    ("sha256", 4, "mm=%s/07" % MM_A.hex(), ONE_TO_8),
    ("sha256", 4, "group=0", ONE_TO_8),
    ("sha256", 4, "group=1", ONE_TO_8),
    ("sha256", 4, "lora=a;mm=00ff;group=4294967295", ONE_TO_8),
]

NAMESPACE_VECTORS = [
    ("meta-llama/Llama-3.1-8B-Instruct", "bf16", "vllm-paged-v1", 16, 0, 1, "sha256"),
    ("meta-llama/Llama-3.1-8B-Instruct", "bf16", "vllm-paged-v1", 16, 1, 2, "sha256"),
    ("meta-llama/Llama-3.1-8B-Instruct", "bf16", "vllm-paged-v1", 16, 0, 1, "xxh3-128"),
    ("meta-llama/Llama-3.1-8B-Instruct", "fp8", "vllm-paged-v1", 32, 0, 1, "sha256"),
    ("Qwen/Qwen2.5-72B", "fp16", "sglang-token-major", 64, 3, 8, "sha256"),
    ("m", "bf16", "l", 16, 0, 1, "sha256"),
]


def generate():
    print("root parent (both algorithms): %s" % root_parent().hex())
    example = block_input(root_parent(), [1, 2, 3, 4], {})
    print("worked example: sha256 block 0 of tokens 1,2,3,4, input (%d bytes):" % len(example))
    print("  %s" % example.hex())
    ns = namespace_input("m", "bf16", "l", 16, 0, 1, "sha256")
    print("worked example: namespace input (%d bytes): %s" % (len(ns), ns.hex()))
    print("  id = %016x" % namespace_id("m", "bf16", "l", 16, 0, 1, "sha256"))
    print("\n```" + CHAIN_FENCE)
    for algorithm, bt, extras, tokens in CHAIN_VECTORS:
        hashes = sha256_chain(tokens, bt, parse_extras(extras))
        expected = ",".join(h.hex() for h in hashes) if hashes else "-"
        print("%s | %d | %s | %s | %s" % (algorithm, bt, extras, format_tokens(tokens), expected))
    print("```\n\n```" + NAMESPACE_FENCE)
    for v in NAMESPACE_VECTORS:
        print("%s | %s | %s | %d | %d | %d | %s | %016x" % (v + (namespace_id(*v),)))
    print("```")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", metavar="DOC", help="verify the vectors in DOC")
    args = parser.parse_args()
    return check(args.check) if args.check else generate()


if __name__ == "__main__":
    sys.exit(main())
