"""Write tiny but real models that llama-server and mlx_lm.server can load.

The tests and the benchmarks serve models written here (the default `instances.yaml` serves a real
model that scripts/fetch_model.py fetches): a llama-architecture
GGUF with a byte-level `gpt2` vocabulary, and the same shape saved the way mlx-lm saves models.
The answers are gibberish; loading, serving and process behaviour are real.

    python scripts/make_demo_models.py [OUT_DIR]     # default: ./models
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

EOS = "<|endoftext|>"
# A handful of merges: llama-server refuses a BPE vocabulary without any.
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("a", "n")]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SHAPE = {
    "hidden": 64,
    "layers": 2,
    "heads": 4,
    "kv_heads": 2,
    "ffn": 128,
    "context": 512,
    "rms_eps": 1e-5,
}


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def vocabulary() -> tuple[list[str], list[str]]:
    """Tokens (256 bytes, the merged pairs, then EOS) and merges as 'a b' strings."""
    tokens = [_byte_to_unicode()[b] for b in range(256)]
    for left, right in MERGES:
        tokens.append(left + right)
    tokens.append(EOS)
    return tokens, [f"{left} {right}" for left, right in MERGES]


def write_gguf(
    path: Path,
    *,
    embedding_length: int = SHAPE["hidden"],
    feed_forward_length: int = SHAPE["ffn"],
    pad_vocab_to: int = 0,
    layers: int = SHAPE["layers"],
) -> Path:
    """A llama GGUF of random f32 weights.

    Larger `embedding_length` and `feed_forward_length` grow the file: the memory tests map one
    of a few hundred MB from several servers at once (1536 and 6144 give about 290 MB).
    `pad_vocab_to` adds unused tokens.
    """
    import gguf
    import numpy as np

    tokens, merges = vocabulary()
    types = [gguf.TokenType.NORMAL] * (len(tokens) - 1) + [gguf.TokenType.CONTROL]
    for index in range(len(tokens), pad_vocab_to):
        tokens.append(f"<|unused{index}|>")
        types.append(gguf.TokenType.UNUSED)
    hidden, ffn = embedding_length, feed_forward_length
    head_dim = hidden // SHAPE["heads"]
    kv_width = head_dim * SHAPE["kv_heads"]

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("llmctl-tiny-llama")
    writer.add_context_length(SHAPE["context"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(SHAPE["heads"])
    writer.add_head_count_kv(SHAPE["kv_heads"])
    writer.add_layer_norm_rms_eps(SHAPE["rms_eps"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    eos_id = len(vocabulary()[0]) - 1
    writer.add_bos_token_id(eos_id)
    writer.add_eos_token_id(eos_id)
    writer.add_chat_template(CHAT_TEMPLATE)

    rng = np.random.default_rng(0)

    def weights(*shape: int) -> np.ndarray:
        return rng.random(shape, dtype=np.float32) * 0.04 - 0.02  # uniform: as random as needed, and fast

    vocab = len(tokens)
    writer.add_tensor("token_embd.weight", weights(vocab, hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("output.weight", weights(vocab, hidden))
    for layer in range(layers):
        prefix = f"blk.{layer}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"{prefix}.attn_q.weight", weights(hidden, hidden))
        writer.add_tensor(f"{prefix}.attn_k.weight", weights(kv_width, hidden))
        writer.add_tensor(f"{prefix}.attn_v.weight", weights(kv_width, hidden))
        writer.add_tensor(f"{prefix}.attn_output.weight", weights(hidden, hidden))
        writer.add_tensor(f"{prefix}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"{prefix}.ffn_gate.weight", weights(ffn, hidden))
        writer.add_tensor(f"{prefix}.ffn_up.weight", weights(ffn, hidden))
        writer.add_tensor(f"{prefix}.ffn_down.weight", weights(hidden, ffn))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_mlx(folder: Path) -> Path:
    """The same shape as an MLX model folder: config, safetensors and a tokenizer."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokens, merges = vocabulary()
    folder.mkdir(parents=True, exist_ok=True)
    bpe = models.BPE(
        vocab={token: index for index, token in enumerate(tokens)},
        merges=[tuple(merge.split(" ")) for merge in merges],
    )
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([EOS])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": EOS,
                "eos_token": EOS,
                "chat_template": CHAT_TEMPLATE,
                "model_max_length": SHAPE["context"],
            },
            indent=2,
        )
    )
    config = {
        "model_type": "llama",
        "hidden_size": SHAPE["hidden"],
        "num_hidden_layers": SHAPE["layers"],
        "intermediate_size": SHAPE["ffn"],
        "num_attention_heads": SHAPE["heads"],
        "num_key_value_heads": SHAPE["kv_heads"],
        "rms_norm_eps": SHAPE["rms_eps"],
        "vocab_size": len(tokens),
        "max_position_embeddings": SHAPE["context"],
        "tie_word_embeddings": True,
        "eos_token_id": len(tokens) - 1,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.random.seed(0)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    return folder


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path("models")
    print(write_gguf(out / "tiny-llama.gguf"))
    print(write_mlx(out / "tiny-mlx"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
