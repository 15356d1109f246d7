"""The tuned-config table (flash_triton.tuning) and the tuner (python -m flash_triton.tune): an entry is used on its
GPU and shape only, a malformed table is refused by name, the tuner's candidates, its pruning by the AOT compile, its
coordinate descent (on a stand-in timer: timing needs a GPU) and its atomic, merging write. The parity of the kernels
under non-default configs is tests/test_mixed_chunk_attn.py::test_tuned_configs_give_the_reference_results."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
tuning = pytest.importorskip("flash_triton.tuning")
tune = pytest.importorskip("flash_triton.tune")
qa = pytest.importorskip("flash_triton.quad_attn.kernels")
sw = pytest.importorskip("flash_triton.quad_attn.short_window")
mca = pytest.importorskip("flash_triton.mixed_chunk_attn.kernels")

ROOT = Path(__file__).resolve().parents[1]
GAU_FWD_KEY = dict(window=8192, qk=128, v=1024, dropout=False, lin=False, bias=False, causal=True, mask=False)


@pytest.fixture
def table(tmp_path, monkeypatch):
    """Write a table (its entries) and point the launchers at it; the table is forgotten afterwards."""
    path = tmp_path / "tuned.json"

    def write(entries, raw=None):
        path.write_text(raw if raw is not None else json.dumps({"format": 1, "entries": entries}))
        monkeypatch.setenv(tuning.ENV, str(path))
        tuning.reload()
        return path

    yield write
    tuning.reload()


def test_the_shipped_table_is_valid():
    data = json.loads(tuning.TABLE.read_text())
    assert data["format"] == tuning.FORMAT
    tuning.reload()
    assert len(tuning._load(tuning.TABLE)) == len(data["entries"])


def test_an_entry_is_used_on_its_gpu_and_shape_only(table, monkeypatch):
    def fwd(*args, **kw):  # GAU's causal training launch unless said
        return qa.launch_config("fwd", *args, **{"causal": True, **kw})

    monkeypatch.setenv(tuning.ENV, "off")
    tuning.reload()
    static = {arch: fwd(8192, 128, 1024, torch.bfloat16, False, arch) for arch in (None, 80, 90)}
    assert (static[90]["BM"], static[90]["BE"], static[90]["BS"], static[90]["S_BLOCKS"]) == (128, 256, 128, 1)
    table([dict(arch=90, kernel="quad_attn_fwd", dtype="bf16", key=GAU_FWD_KEY, config=dict(BM=32, BS=64))])
    tuned = fwd(8192, 128, 1024, torch.bfloat16, False, 90)
    assert tuned == dict(static[90], BM=32, BS=64, S_BLOCKS=2)  # S_BLOCKS follows BS; the rest as it was
    assert fwd(8192, 128, 1024, torch.bfloat16, False, None) == static[None]  # not on a GPU: the static default
    assert fwd(8192, 128, 1024, torch.bfloat16, False, 80) == static[80]  # another GPU
    for other, bm in (  # each its static tiles (TILES_SM90's 128 rows or TILES' 64), not the entry's 32
        (fwd(8192, 128, 1024, torch.float16, False, 90), 128),  # another dtype
        (fwd(8192, 128, 1024, torch.bfloat16, False, 90, lin=True), 64),  # FLASH's launch
        (fwd(8192, 128, 1024, torch.bfloat16, True, 90), 64),  # with dropout
        (fwd(8192, 128, 1024, torch.bfloat16, False, 90, causal=False), 128),  # not causal (no band split)
        (fwd(8192, 128, 1024, torch.bfloat16, False, 90, mask=True), 128),  # with a key mask (no band split)
        (fwd(8192, 64, 1024, torch.bfloat16, False, 90), 128),  # another width
    ):
        assert other["BM"] == bm, other
    # a window in the same power-of-two bucket takes the entry, the next bucket does not
    assert fwd(5000, 128, 1024, torch.bfloat16, False, 90)["BM"] == 32
    assert fwd(16384, 128, 1024, torch.bfloat16, False, 90)["BM"] == 128


def test_entries_of_every_config_function(table):
    table(
        [
            dict(
                arch=80,
                kernel="quad_attn_product",
                dtype="fp16",
                key=dict(window=256, qk=128, v=128),
                config=dict(BD=64),
            ),
            dict(arch=80, kernel="group_state", dtype="fp16", key=dict(group=256, da=128, db=1024), config=dict(BT=64)),
            dict(arch=80, kernel="group_apply", dtype="fp16", key=dict(group=256, dx=1024, dy=128), config=dict(BY=32)),
            dict(arch=80, kernel="group_scan", dtype="fp16", key=dict(group=256, da=128, db=1024), config=dict(BB=128)),
        ]
    )
    h = torch.float16
    assert sw.short_config("product", 256, 128, 128, h, 80)["BD"] == 64
    assert sw.short_config("product", 256, 1024, 1024, h, 80)["BD"] == 128  # the value-width product: its default
    assert mca.state_config(256, 128, 1024, h, 80)["BT"] == 64
    assert mca.apply_config(256, 1024, 128, h, 80)["BY"] == 32
    assert mca.apply_config(256, 128, 1024, h, 80)["BY"] == 64
    assert mca.scan_config(256, 128, 1024, h, 80)["BB"] == 128
    # the fused scan's choice counts the tuned state tiles: 4 x 2 x 8 programs at batch 4 -> 4 x 2 x 16 by default
    assert mca.fused_scan_fits(1, 2**20, 256, 128, 1024, h, None) == mca.fused_scan_fits(
        1, 2**20, 256, 128, 1024, h, 80
    )


def test_a_tuned_scan_step_must_divide_the_group():
    forced = tuning.override({("group_scan", "bf16", tuning.freeze(dict(group=96, da=64, db=64))): dict(BT=64)})
    with forced, pytest.raises(ValueError, match="BT=64 does not divide the group size 96"):
        mca.scan_config(96, 64, 64, torch.bfloat16)


def _one_entry(kernel: str, config: dict, dtype: str = "bf16") -> str:
    """A table holding one entry (sm_90, an empty shape key), as its JSON text."""
    return json.dumps({"format": 1, "entries": [dict(arch=90, kernel=kernel, dtype=dtype, key={}, config=config)]})


@pytest.mark.parametrize(
    "raw, match",
    [
        ("{not json", "cannot read it"),
        (json.dumps({"format": 2, "entries": []}), "expected"),
        (json.dumps({"format": 1, "entries": [{"arch": 90}]}), "entry 0: needs arch, kernel, dtype, key and config"),
        (_one_entry("quad_attn_fwd", {"BM": 48}), "quad_attn_fwd.BM = 48 is out of range"),
        (_one_entry("quad_attn_weights", {"BM": 32}), "quad_attn_weights has no tunable 'BM'"),
        (_one_entry("softmax", {"BM": 32}), "unknown kernel 'softmax'"),
        (_one_entry("group_state", {"BT": 32}, dtype="int8"), "dtype one of"),
        (_one_entry("quad_attn_fwd", {"T5_BAND": 1}), "quad_attn_fwd.T5_BAND must be true or false"),
        (_one_entry("quad_attn_dv", {"BE_NEAR": 32}), "quad_attn_dv has no tunable 'BE_NEAR'"),
    ],
    ids=["not-json", "format", "fields", "value", "untunable", "kernel", "dtype", "flag", "near-step"],
)
def test_a_malformed_table_is_refused_by_name(table, raw, match):
    path = table(None, raw=raw)
    with pytest.raises(ValueError, match=match) as info:
        qa.launch_config("fwd", 8192, 128, 1024, torch.bfloat16, False, 90)
    assert str(path) in str(info.value)


def test_the_band_split_and_the_near_step_are_tunable(table):
    """A tuned entry may set T5_BAND (either way) and, for the transposed key-tile kernel (sm_90's dk and dk with dq
    added), its near steps' value-width step BE_NEAR; each leaves the other kernel as it was (the 32 x 32 kernel has
    no near steps, the transposed one always splits and takes no T5_BAND)."""
    key = dict(window=8192, qk=128, v=1024, dropout=False)
    config = dict(BE_NEAR=64, T5_BAND=False)
    table([dict(arch=a, kernel="quad_attn_dkq", dtype="bf16", key=key, config=config) for a in (80, 90)])
    hopper = qa.launch_config("dkq", 8192, 128, 1024, torch.bfloat16, False, 90)
    assert (hopper["BM_NEAR"], hopper["BE_NEAR"], "T5_BAND" in hopper) == (16, 64, False)
    ampere = qa.launch_config("dkq", 8192, 128, 1024, torch.bfloat16, False, 80)
    assert "BE_NEAR" not in ampere and "BM_NEAR" not in ampere and ampere["T5_BAND"] is False
    fwd_key = dict(window=8192, qk=128, v=1024, dropout=False, lin=False, bias=False, causal=True, mask=False)
    table([dict(arch=90, kernel="quad_attn_fwd", dtype="bf16", key=fwd_key, config=dict(T5_BAND=False))])
    assert qa.launch_config("fwd", 8192, 128, 1024, torch.bfloat16, False, 90, causal=True)["T5_BAND"] is False


def test_a_named_table_must_exist_and_off_means_none(monkeypatch, tmp_path):
    monkeypatch.setenv(tuning.ENV, str(tmp_path / "missing.json"))
    tuning.reload()
    with pytest.raises(ValueError, match="no such file"):
        qa.launch_config("fwd", 8192, 128, 1024, torch.bfloat16, False, 90)
    monkeypatch.setenv(tuning.ENV, "off")
    tuning.reload()
    assert tuning.table() == {}
    tuning.reload()


def _entry(kernel="quad_attn_dv", key=None, default=None):
    key = key or dict(window=8192, qk=128, v=1024, dropout=False)
    default = default or dict(BM=32, BN=64, BS=128, BE=256, num_warps=8, num_stages=2)
    return tune.Entry("gau", kernel, "bf16", key, default)


def test_candidates_are_the_default_then_its_nearest_valid_neighbours():
    e = _entry()
    cands = tune.candidates(e, 16)
    assert cands[0] == e.default and len(cands) == 16 and len({tuple(sorted(c.items())) for c in cands}) == 16
    base = dict(T5_BAND=True, **e.default)  # the band split on where the launcher leaves T5_BAND out
    changed = [sum(c.get(k, base[k]) != base[k] for k in base) for c in cands]
    assert changed == sorted(changed) and changed[1:14] == [1] * 13  # every single change before any pair
    assert [c for c in cands if "T5_BAND" in c] == [dict(e.default, T5_BAND=False)]  # the flag flipped, once alone
    for c in cands:
        assert 16 <= c["BS"] <= 128 and 16 <= c["BE"] <= 1024 and c["num_warps"] in (4, 8, 16)
        assert "BE_NEAR" not in c  # dv has no near steps
    # the transposed key-tile kernel (a default with BE_NEAR): its near step halved and doubled within the value
    # width, never a band flag (it always splits); the 32 x 32 kernel with the split off: tried on, no near step
    dkq = dict(BM=32, BN=128, BS=128, BE=64, num_warps=8, num_stages=2, BE_NEAR=32)
    near = tune.candidates(_entry("quad_attn_dkq", default=dkq), 100)
    assert {c["BE_NEAR"] for c in near} == {16, 32, 64} and not any("T5_BAND" in c for c in near)
    unsplit = dict(BM=32, BN=32, BS=128, BE=64, num_warps=8, num_stages=2, T5_BAND=False)
    flat = tune.candidates(_entry("quad_attn_dkq", default=unsplit), 100)
    assert dict(unsplit, T5_BAND=True) in flat and not any("BE_NEAR" in c for c in flat)
    scan = _entry("group_scan", dict(group=96, da=128, db=1024), dict(BT=32, BA=64, BB=64, num_warps=4, num_stages=3))
    assert all(96 % c["BT"] == 0 for c in tune.candidates(scan, 100))
    small = _entry("quad_attn_out", dict(window=32, qk=16, v=16), dict(BS=16, BE=16, num_warps=8, num_stages=2))
    assert all(c["BS"] == 16 == c["BE"] for c in tune.candidates(small, 100))  # nothing wider than the widths


def test_coordinate_descent_keeps_the_fastest_past_the_margin_and_stops_at_the_deadline():
    a, b = (
        _entry(),
        _entry("quad_attn_fwd", GAU_FWD_KEY, dict(BM=64, BN=32, BS=128, BE=512, num_warps=16, num_stages=2)),
    )
    a.candidates = [a.default, dict(a.default, BE=128), dict(a.default, num_warps=4)]
    b.candidates = [b.default, dict(b.default, BE=256)]
    a.functions, b.functions = {"_dv"}, {"_fwd"}
    seen = []

    def measure(overrides):
        seen.append(dict(overrides))
        cfg_a = overrides.get(a.ident, a.default)
        cfg_b = overrides.get(b.ident, b.default)
        if cfg_a.get("num_warps") == 4:
            raise RuntimeError("out of resources: shared memory")
        return {"_dv": 1.0 if cfg_a["BE"] == 256 else 0.9, "_fwd": 1.0 if cfg_b["BE"] == 512 else 0.99, "_x": 5.0}

    logs = []
    chosen = tune.tune_entries([a, b], measure, time.monotonic() + 60, 0.03, log=logs.append)
    assert chosen == {a.ident: dict(a.default, BE=128)}  # b's 1% gain is under the 3% margin
    assert a.best == dict(a.default, BE=128) and b.best is None
    assert [t for t, _ in a.timed] == [1.0, 0.9] and any("out of resources" in line for line in logs)
    assert all(s.get(a.ident) == dict(a.default, BE=128) for s in seen[3:])  # b timed with a at its choice
    c = _entry()
    c.candidates, c.functions = [c.default, dict(c.default, BE=128)], {"_dv"}
    assert tune.tune_entries([c], measure, time.monotonic() - 1, 0.03, log=logs.append) == {}
    assert c.timed == [] and "budget spent" in logs[-1]


def test_write_table_merges_and_replaces_atomically(tmp_path, monkeypatch):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"format": 1, "note": "kept", "entries": []}))
    old = dict(arch=80, kernel="group_state", dtype="bf16", key=dict(group=256, da=128, db=1024), config=dict(BT=64))
    keep = dict(old, arch=90)
    tune.write_table(path, [old, keep])
    tune.write_table(path, [dict(old, config=dict(BT=16))])
    data = json.loads(path.read_text())
    assert data["note"] == "kept" and len(data["entries"]) == 2
    assert {e["arch"]: e["config"]["BT"] for e in data["entries"]} == {80: 16, 90: 64}
    assert sorted(os.listdir(tmp_path)) == ["t.json"]  # no temporary file left behind
    monkeypatch.setenv(tuning.ENV, str(path))
    tuning.reload()
    assert mca.state_config(256, 128, 1024, torch.bfloat16, 80)["BT"] == 16
    tuning.reload()


def _cli(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the tuner compiles for a GPU
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "flash_triton.tune", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def test_cli_lists_the_launches_of_both_layers_without_compiling():
    out = _cli("--arch", "90", "--list")
    assert out.returncode == 0, out.stderr
    for kernel in (
        "quad_attn_weights",
        "quad_attn_product",
        "group_scan",
        "group_apply",
        "quad_attn_fwd",
        "quad_attn_dkq",
    ):
        assert f"[tune] {kernel} bf16" in out.stdout, kernel
    assert "flash bf16 n 8192 batch 4 sm_90" in out.stdout and "gau bf16 n 8192 batch 4 sm_90" in out.stdout


def test_cli_prunes_by_compiling_for_the_gpu(tmp_path):
    """A small kernel's candidates compiled for sm_90 here (no GPU): kept or dropped, with the reason; nothing
    written."""
    out = _cli(
        "--arch",
        "90",
        "--prune-only",
        "--layers",
        "flash",
        "--kernels",
        "group_state",
        "--max-candidates",
        "3",
        "--jobs",
        "2",
        "--out",
        str(tmp_path / "t.json"),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("  keep ") + out.stdout.count("  drop ") == 2, out.stdout
    assert not (tmp_path / "t.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a machine without a GPU")
@pytest.mark.parametrize(
    "args, match",
    [
        ([], "timing needs a CUDA GPU"),
        (["--list"], "--arch is required"),
        (["--arch", "75", "--list"], "--arch 75"),
        (["--arch", "90", "--list", "--kernels", "softmax"], "unknown"),
        (["--arch", "90", "--list", "--n", "0"], "--n"),
    ],
    ids=["timing", "arch", "unknown-arch", "kernel", "n"],
)
def test_cli_refuses_what_it_cannot_do(args, match):
    out = _cli(*args)
    assert out.returncode == 2 and match in out.stderr, out.stderr


def test_cli_timing_path_on_stand_ins_writes_the_faster_config_with_provenance(monkeypatch, tmp_path):
    """main() as on a GPU, its GPU parts stood in for: the step replays the FLASH launch's config lookups and returns
    fixed "gradients", the profiler's times make a 16-token group_state step 20% faster, the compile check passes.
    The table written holds that entry alone, with its provenance; the results check compares the stand-in
    gradients (equal)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "stand-in GPU")
    monkeypatch.setattr(tune, "_compile_ok", lambda job: (True, "stand-in"))
    key = tuning.freeze(dict(group=256, da=128, db=1024))

    def step_of(layer, n, batch, dtype, device):
        assert (layer, n, batch, dtype, device.type) == ("flash", 8192, 4, torch.bfloat16, "cuda")

        def step():
            tune._variants("flash", 8192, "bf16", 90)  # the lookups of every launch
            return [torch.ones(3), torch.full((2,), 2.0)]

        return step

    def times(step):
        step()
        forced = (tuning._override.get() or {}).get(("group_state", "bf16", key), {})
        return {"_group_state_kernel": 0.8e-3 if forced.get("BT") == 16 else 1e-3, "_group_scan_kernel": 2e-3}

    monkeypatch.setattr(tune, "_layer_step", step_of)
    monkeypatch.setattr(tune, "kernel_times", times)
    out = tmp_path / "t.json"
    argv = ["--layers", "flash", "--kernels", "group_state", "--max-candidates", "3", "--jobs", "1", "--out", str(out)]
    assert tune.main(argv) == 0
    (entry,) = json.loads(out.read_text())["entries"]
    assert (entry["arch"], entry["kernel"], entry["dtype"], entry["config"]) == (
        90,
        "group_state",
        "bf16",
        dict(BT=16, BA=64, BB=64, num_warps=4, num_stages=2),
    )
    prov = entry["provenance"]
    assert prov["device"] == "stand-in GPU" and (prov["default_us"], prov["tuned_us"]) == (1000.0, 800.0)
    assert {"date", "commit", "torch", "triton", "n", "batch"} <= prov.keys()
    tuning.reload()
