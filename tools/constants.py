"""Numbers shared with C, mirrored here exactly once.

Type ids and block sizes must equal the ones in our patched `ggml/include/ggml.h` and in
`kernels/bitnet-kernels.h`; `tests/test_constants.py` parses those headers and compares.

ref: shared/spec/bitnet-formats.md §1 (type ids and collisions with the pinned upstream tree).
"""

from __future__ import annotations

from enum import IntEnum


class GGMLType(IntEnum):
    """ggml tensor types we read or write (ids of the pinned upstream tree plus ours)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q8_0 = 8
    Q6_K = 14
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    # Ours. 36..38 are removed stubs upstream (blck_size 0), so they are free to take; 36 is the
    # id of Microsoft's published I2_S files. TL2 cannot be 39 (upstream MXFP4) and takes the
    # first id past the pinned tree's GGML_TYPE_COUNT (43).
    I2_S = 36
    I8_S = 37  # per-token int8 activations; never stored in a file
    TL1 = 38
    TL2 = 43


#: GGML_TYPE_COUNT in our patched tree.
GGML_TYPE_COUNT = 44

#: Upstream ids that are live in the pinned tree; none of ours may equal one of these.
UPSTREAM_LIVE_TYPE_IDS = frozenset(
    [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26,
     27, 28, 29, 30, 34, 35, 39, 40, 41, 42]
)  # fmt: skip


class LlamaFileType(IntEnum):
    """`general.file_type` values. Metadata only: readers must never validate it (spec §4.1)."""

    ALL_F32 = 0
    MOSTLY_F16 = 1
    MOSTLY_Q4_0 = 2
    MOSTLY_Q8_0 = 7
    MOSTLY_Q6_K = 18
    MOSTLY_TQ1_0 = 36
    MOSTLY_TQ2_0 = 37
    # Ours, above every upstream ftype (38..41 are live upstream: MXFP4_MOE, NVFP4, Q1_0, Q2_0).
    MOSTLY_I2_S = 64
    MOSTLY_TL1 = 65
    MOSTLY_TL2 = 66


# --- block geometry ---------------------------------------------------------------------------

#: I2_S: 128 elements per block, 32 bytes, MSB first (the layout of Microsoft's x86 files).
QK_I2_S = 128
#: Bytes after the packed codes of an I2_S / TL1 / TL2 tensor; the f32 scale sits at their start.
TERNARY_TAIL_BYTES = 32

#: (elements per block, bytes per block) of the block-regular types.
BLOCK_GEOMETRY: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.BF16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q6_K: (256, 210),
    GGMLType.TQ1_0: (256, 54),
    GGMLType.TQ2_0: (256, 66),
}

# --- GGUF container ---------------------------------------------------------------------------

GGUF_MAGIC = 0x46554747  # "GGUF" little-endian
GGUF_VERSION = 3
GGUF_DEFAULT_ALIGNMENT = 32


class GGUFValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# --- architectures ----------------------------------------------------------------------------

#: The GGUF architecture we write for BitNet b1.58 (ReLU² FFN, sub-norms).
ARCH_BITNET_B158 = "bitnet-b1.58"
#: Older name of the same graph, used by Microsoft's first 2B-4T upload.
ARCH_BITNET_25 = "bitnet-25"
#: Upstream's 1bitLLM graph (SiLU FFN).
ARCH_BITNET = "bitnet"
#: The standard Llama graph (SiLU FFN, no sub-norms): Llama3-8B-1.58, Falcon3-*-1.58bit, Falcon-E.
ARCH_LLAMA = "llama"
BITNET_B158_ARCHES = (ARCH_BITNET_B158, ARCH_BITNET_25)
#: Every graph our converters write and the NumPy reference runs.
TERNARY_ARCHES = (*BITNET_B158_ARCHES, ARCH_BITNET, ARCH_LLAMA)


class Keys:
    """GGUF metadata keys; `{arch}` is replaced by the architecture name."""

    ARCHITECTURE = "general.architecture"
    NAME = "general.name"
    FILE_TYPE = "general.file_type"
    ALIGNMENT = "general.alignment"
    QUANTIZATION_VERSION = "general.quantization_version"

    VOCAB_SIZE = "{arch}.vocab_size"
    CONTEXT_LENGTH = "{arch}.context_length"
    EMBEDDING_LENGTH = "{arch}.embedding_length"
    BLOCK_COUNT = "{arch}.block_count"
    FEED_FORWARD_LENGTH = "{arch}.feed_forward_length"
    HEAD_COUNT = "{arch}.attention.head_count"
    HEAD_COUNT_KV = "{arch}.attention.head_count_kv"
    LAYERNORM_RMS_EPS = "{arch}.attention.layer_norm_rms_epsilon"
    ROPE_FREQ_BASE = "{arch}.rope.freq_base"
    ROPE_DIMENSION_COUNT = "{arch}.rope.dimension_count"

    TOKENIZER_MODEL = "tokenizer.ggml.model"
    TOKENIZER_PRE = "tokenizer.ggml.pre"
    TOKENIZER_TOKENS = "tokenizer.ggml.tokens"
    TOKENIZER_TOKEN_TYPE = "tokenizer.ggml.token_type"
    TOKENIZER_SCORES = "tokenizer.ggml.scores"
    TOKENIZER_MERGES = "tokenizer.ggml.merges"
    TOKENIZER_BOS_ID = "tokenizer.ggml.bos_token_id"
    TOKENIZER_EOS_ID = "tokenizer.ggml.eos_token_id"
    TOKENIZER_EOT_ID = "tokenizer.ggml.eot_token_id"
    TOKENIZER_PAD_ID = "tokenizer.ggml.padding_token_id"
    TOKENIZER_UNK_ID = "tokenizer.ggml.unknown_token_id"
    TOKENIZER_ADD_BOS = "tokenizer.ggml.add_bos_token"
    TOKENIZER_ADD_EOS = "tokenizer.ggml.add_eos_token"
    CHAT_TEMPLATE = "tokenizer.chat_template"


class TokenType(IntEnum):
    """llama.cpp token types (`tokenizer.ggml.token_type`)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6
