"""The fit table's search (minilm_jax.fit_table) on a compiler stand-in whose memory is a
known function of the settings: the walk must find the smallest slice and cheapest setting
that meet the goal, skip only compiles whose outcome is certain, and report (never invent)
what it has not compiled. The real compiles are tests/compile_test.py's."""

import json

import pytest

from minilm_jax import fit_table, tpu

GIB = 2**30
EXPERIMENT = "experiments/bert_base_6x384.py"
ARGUMENTS = 1.0 * GIB
# GiB of temporaries per sequence held by a chip, per lever (remat lowers them).
PER_ROW = {"none": 0.08, "attention": 0.06, "layer": 0.05}


def fake_compile(experiment, topology, overrides, arguments=ARGUMENTS):
    """A compile's summary row, as compile_one writes it, from the model above (fsdp divides
    the arguments by its size)."""
    rows = fit_table.rows_per_chip(topology, overrides)
    temporaries = PER_ROW[overrides.get("remat", "none")] * rows * GIB
    arguments = arguments / int(overrides.get("mesh.fsdp", 1))
    total = arguments + temporaries
    usable = tpu.parse_topology(topology).chip.hbm_usable_bytes
    fits = total <= usable
    return {
        "experiment": experiment,
        "topology": topology,
        "overrides": dict(overrides),
        "exit": 0 if fits else 3,
        "seconds": 1,
        "num_devices": fit_table.chips(topology),
        "per_device_bytes": {
            "arguments": arguments,
            "temporaries": temporaries,
            "outputs": 0,
            "aliased": 0,
            "code": 0,
            "total": total,
        },
        "fits": fits,
        "hbm_free_fraction": round(1 - total / usable, 3) if fits else None,
        "step_seconds": {"at_peak": 0.1, "at_40pct": 0.25} if fits else None,
        "run_hours": {"at_peak": 11.1, "at_40pct": 27.8} if fits else None,
    }


@pytest.fixture
def compiles(monkeypatch):
    done = type("Compiles", (list,), {})()  # a list that can carry the model's arguments

    def compile_one(experiment, topology, overrides):
        done.append((topology, dict(overrides)))
        return fake_compile(experiment, topology, overrides, getattr(done, "arguments", ARGUMENTS))

    monkeypatch.setattr(fit_table, "compile_one", compile_one)
    return done


def test_walk_finds_the_smallest_slice_and_skips_only_certain_failures(compiles, tmp_path):
    results = fit_table.Results(str(tmp_path / "fits.jsonl"))
    found = fit_table.search(EXPERIMENT, "v5e", results, 0.2, log=lambda s: None)
    layer_bf16 = {"remat": "layer", "teacher.param_dtype": "bfloat16"}
    # v5e usable 15.75 GiB, goal 80% of it = 12.6 GiB. One chip (1024 rows): nothing fits, all
    # four settings compiled. 2x2 (256 rows): plain (21.5 GiB) and attention (16.4) are
    # predicted over the goal by more than 25% and skipped; layer (13.8) fits with 12% left,
    # short of the goal; with accumulation 2 (128 rows: 7.4 GiB) it meets it.
    assert compiles[:4] == [
        ("v5e:1x1", dict(levers)) for levers in fit_table.LADDER if "mesh.fsdp" not in levers
    ]
    assert compiles[4:6] == [
        ("v5e:2x2", layer_bf16),
        ("v5e:2x2", {**layer_bf16, "grad_accum_steps": 2}),
    ]
    assert found["row"]["topology"] == "v5e:2x2"
    assert found["row"]["overrides"] == {**layer_bf16, "grad_accum_steps": 2}
    # Without accumulation: the next slice, 2x4 (128 rows), plain already meets it (11.2 GiB).
    assert compiles[6:] == [("v5e:2x4", {})]
    assert found["no_accum"]["topology"] == "v5e:2x4" and found["no_accum"]["overrides"] == {}
    # Every compile is one line of the results file, and a second search compiles nothing.
    with open(tmp_path / "fits.jsonl") as f:
        assert len([json.loads(line) for line in f]) == len(compiles) == 7
    again = fit_table.search(
        EXPERIMENT, "v5e", fit_table.Results(str(tmp_path / "fits.jsonl")), 0.2, log=print
    )
    assert len(compiles) == 7 and again["row"] == found["row"]
    table = fit_table.markdown([found])
    assert (
        "| bert_base_6x384 | v5e | v5e:2x2 (4 chips) | data 4, remat=layer, bf16 teacher, grad accum 2 | 7.40 (1.00 + 6.40) | 53% |"
        in table
    )
    assert (
        "| bert_base_6x384 | v5e | v5e:2x4 (8 chips) | data 8 | 11.24 (1.00 + 10.24) | 29% |"
        in table
    )


def test_without_compiling_the_table_names_the_missing_compile(compiles, tmp_path):
    path = str(tmp_path / "fits.jsonl")
    results = fit_table.Results(path)
    for levers in fit_table.LADDER:  # only the one-chip compiles are there
        if "mesh.fsdp" not in levers:
            results.add(fake_compile(EXPERIMENT, "v5e:1x1", levers))
    found = fit_table.search(EXPERIMENT, "v5e", results, 0.2, log=print, compile=False)
    assert compiles == []
    assert found["row"] is None
    assert found["missing"] == "v5e:2x2 {'remat': 'layer', 'teacher.param_dtype': 'bfloat16'}"
    assert "not compiled yet (next: v5e:2x2" in fit_table.markdown([found])
    # The command line: the same table, exit 0, and nothing compiled.
    table_file = tmp_path / "table.md"
    code = fit_table.main(
        [
            "--no_compile",
            "--results",
            path,
            "--generations",
            "v5e",
            "--experiments",
            EXPERIMENT,
            "--markdown",
            str(table_file),
        ]
    )
    assert code == 0 and compiles == []
    assert "not compiled yet" in table_file.read_text()


def test_fsdp_is_tried_where_the_arguments_fill_the_chip(compiles, tmp_path):
    """Arguments of 7 GiB (XLM-R XL's teacher in bf16): on 2x2 neither sharding them (1.75 +
    12.8 GiB) nor accumulating (7 + 6.4) leaves 20%; on 2x4 replicated ones do not either (7 +
    6.4), sharded over the 8 chips they do (0.875 + 6.4). Never fsdp on one chip."""
    compiles.arguments = 7 * GIB
    results = fit_table.Results(str(tmp_path / "fits.jsonl"))
    found = fit_table.search(EXPERIMENT, "v5e", results, 0.2, log=print)
    fsdp = [(t, o["mesh.fsdp"]) for t, o in compiles if "mesh.fsdp" in o]
    assert fsdp[0] == ("v5e:2x2", 4) and all(t != "v5e:1x1" for t, _ in fsdp)
    assert found["row"]["topology"] == "v5e:2x4"
    assert found["row"]["overrides"]["mesh.fsdp"] == 8
    assert "fsdp 8, remat=layer, bf16 teacher |" in fit_table.markdown([found])


def test_the_estimate_prefers_a_compile_of_the_same_generation(tmp_path):
    """XLA:TPU compiles differently per chip generation, so a v4 compile with the same rows
    per chip must not stand in for a v5e one at other rows per chip (with the v4 figure the
    walk would predict a fit it has not seen on v5e)."""
    results = fit_table.Results(str(tmp_path / "fits.jsonl"))
    layer = {"remat": "layer"}
    # v5e: one chip (1024 rows per chip), 0.05 GiB per row = 51.2 GiB of temporaries.
    results.add(fake_compile(EXPERIMENT, "v5e:1x1", layer))
    # v4, 4 chips (256 rows per chip), a generation whose program needs half the memory.
    v4_row = fake_compile(EXPERIMENT, "v4:2x2x1", layer)
    v4_row["per_device_bytes"]["temporaries"] /= 2
    results.add(v4_row)
    # v5e, 4 chips: scaled from v5e's own compile, 1 + 51.2 / 4 = 13.8 GiB (not v4's 7.4).
    guess = fit_table.estimate(results, EXPERIMENT, "v5e:2x2", layer)
    assert guess == pytest.approx(13.8 * GIB)
    # With only another generation's compile, that one is used.
    only_v4 = fit_table.Results(None)
    only_v4.add(v4_row)
    assert fit_table.estimate(only_v4, EXPERIMENT, "v5e:2x2", layer) == pytest.approx(7.4 * GIB)


def test_a_missing_compile_of_the_walk_without_accumulation_is_named(compiles, tmp_path):
    """The smallest slice needs accumulation and its row is there, but the compile that would
    give the smallest slice without it is not: the table shows the first and names the second
    (never drops it silently)."""
    path = str(tmp_path / "fits.jsonl")
    fit_table.search(EXPERIMENT, "v5e", fit_table.Results(path), 0.2, log=lambda s: None)
    results = fit_table.Results(path)
    del results.rows[fit_table._key(EXPERIMENT, "v5e:2x4", {})]  # the no-accumulation row
    found = fit_table.search(EXPERIMENT, "v5e", results, 0.2, log=print, compile=False)
    assert found["row"]["overrides"]["grad_accum_steps"] == 2 and found["no_accum"] is None
    assert found["no_accum_missing"] == "v5e:2x4 plain"
    table = fit_table.markdown([found])
    assert "| bert_base_6x384 | v5e | v5e:2x2 (4 chips) |" in table
    assert (
        "| bert_base_6x384 | v5e | without accumulation: not compiled yet (next: v5e:2x4 plain)"
        in table
    )
