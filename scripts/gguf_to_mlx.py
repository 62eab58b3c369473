"""Turn a llama-architecture GGUF with Q4_1 (or float) tensors into an mlx-lm model folder.

`mx.load` reads a GGUF's Q4_1 tensors straight into MLX-quantized triples (packed `weight`,
`scales`, `biases`; group size 32, 4 bits), so no dequantization is needed: the tensors are renamed
to the Hugging Face layout mlx-lm's `llama` model expects, the q/k projection rows that llama.cpp's
converter reordered (for its rotary embedding) are put back in Hugging Face order, and `config.json`,
`tokenizer.json` (from the GGUF's byte-level BPE vocabulary and merges) and `tokenizer_config.json`
(with the GGUF's chat template) are written beside `model.safetensors`.

    python scripts/gguf_to_mlx.py MODEL.gguf OUT_DIR
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

# GGUF tensor name (after "blk.N.") -> Hugging Face / mlx-lm name (after "model.layers.N.").
LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
GGML_CONTROL = 3  # tokenizer.ggml.token_type of special (control) tokens


def _scalar(value):
    return value.item() if hasattr(value, "item") else value


def hf_name(gguf_name: str) -> str:
    base, _, suffix = gguf_name.rpartition(".")  # suffix: weight, scales or biases
    if base.startswith("blk."):
        _, layer, part = base.split(".", 2)
        return f"model.layers.{layer}.{LAYER_NAMES[part]}.{suffix}"
    return f"{TOP_NAMES[base]}.{suffix}"


def unpermute_rows(array, n_heads: int):
    """Undo llama.cpp's q/k row order: within each head it stores the rotary pairs interleaved
    (row 2i, 2i+1) where Hugging Face keeps the two halves apart (row i, i + head_dim/2). Rows are
    whole output channels, so a quantized weight, its scales and its biases move alike."""
    rows = array.shape[0]
    rest = tuple(array.shape[1:])
    return array.reshape(n_heads, rows // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def config_from_metadata(meta: dict, quantized: bool, tied: bool) -> dict:
    arch = meta["general.architecture"]
    if arch != "llama":
        raise SystemExit(f"only llama-architecture GGUFs are supported, not {arch!r}")

    def get(key):
        return _scalar(meta[f"{arch}.{key}"])

    hidden = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(get("block_count")),
        "intermediate_size": int(get("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_scalar(meta.get(f"{arch}.attention.head_count_kv", heads))),
        "head_dim": hidden // heads,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "max_position_embeddings": int(get("context_length")),
        "rope_theta": float(_scalar(meta.get(f"{arch}.rope.freq_base", 10000.0))),
        "rope_traditional": False,
        "tie_word_embeddings": tied,
        "bos_token_id": int(_scalar(meta["tokenizer.ggml.bos_token_id"])),
        "eos_token_id": int(_scalar(meta["tokenizer.ggml.eos_token_id"])),
    }
    if quantized:
        config["quantization"] = {"group_size": 32, "bits": 4}
        config["quantization_config"] = config["quantization"]
    return config


def write_tokenizer(meta: dict, out: Path) -> None:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise SystemExit("only byte-level BPE (tokenizer.ggml.model 'gpt2') vocabularies are supported")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = [int(t) for t in meta["tokenizer.ggml.token_type"].tolist()]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if meta.get("tokenizer.ggml.pre") in ("smollm", "starcoder", "refact"):  # digits split one by one
        steps.insert(0, pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()
    special = [tokens[i] for i, kind in enumerate(types) if kind == GGML_CONTROL]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tokenizer.save(str(out / "tokenizer.json"))

    def token(key: str) -> str | None:
        value = meta.get(f"tokenizer.ggml.{key}_token_id")
        return None if value is None else tokens[int(_scalar(value))]

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "unk_token": token("unknown"),
        "pad_token": token("padding"),
        "add_bos_token": bool(_scalar(meta.get("tokenizer.ggml.add_bos_token", False))),
        "model_max_length": int(_scalar(meta[f"{meta['general.architecture']}.context_length"])),
        "clean_up_tokenization_spaces": False,
    }
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def convert(gguf_path: Path, out: Path, progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the mlx-lm folder `out` from `gguf_path`; `progress(done, total)` follows the tensors."""
    import mlx.core as mx

    tensors, meta = mx.load(str(gguf_path), return_metadata=True)
    heads = int(_scalar(meta["llama.attention.head_count"]))
    kv_heads = int(_scalar(meta.get("llama.attention.head_count_kv", heads)))
    quantized = any(name.endswith(".scales") for name in tensors)
    tied = not any(name.startswith("output.") for name in tensors)
    weights = {}
    total = len(tensors)
    for done, (name, array) in enumerate(sorted(tensors.items()), 1):
        if ".attn_q." in name:
            array = unpermute_rows(array, heads)
        elif ".attn_k." in name:
            array = unpermute_rows(array, kv_heads)
        weights[hf_name(name)] = array
        if progress:
            progress(done, total)
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config_from_metadata(meta, quantized, tied), indent=2) + "\n")
    write_tokenizer(meta, out)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    print(convert(Path(argv[0]), Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
