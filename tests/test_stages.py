"""The stage registry: a consistent graph, upstream paths only for declared outputs, and the preamble's checks."""

from __future__ import annotations

import pytest
import torch

from es2_lib import runs, stages


def test_graph_reads_only_earlier_stages_and_every_notebook_is_registered():
    order = list(stages.STAGES)
    for name, stage in stages.STAGES.items():
        assert all(order.index(up) < order.index(name) for up in stage.reads + stage.optional), name
        assert stage.notebook.is_file(), stage.notebook
    assert {nb.stem for nb in (runs.ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")} == set(order)
    assert order[-1] == "06_figures"


def test_upstream_names_only_declared_outputs(tiny_params):
    run = runs.Run(tiny_params)
    assert stages.upstream(run, "02_es2_training", "adapter") == run.dir / "02_es2_training" / "adapter"
    with pytest.raises(ValueError, match="does not write 'adaptor'"):
        stages.upstream(run, "02_es2_training", "adaptor")
    with pytest.raises(ValueError, match="unknown stage '02_training'"):
        stages.upstream(run, "02_training", "adapter")


def test_begin_checks_inputs_seeds_and_makes_the_output_folder(tiny_params):
    namespace = tiny_params.to_dict()
    with pytest.raises(FileNotFoundError, match="run stage 01_probing first"):
        stages.begin("02_es2_training", namespace)
    p, run, out = stages.begin("01_probing", namespace)
    assert p == tiny_params and out == run.dir / "01_probing" and out.is_dir()
    first = torch.rand(3)
    stages.begin("01_probing", namespace)
    assert torch.equal(torch.rand(3), first)
    for file in stages.stage("01_probing").writes:
        (out / file).write_text("")
    assert stages.begin("02_es2_training", namespace)[2].name == "02_es2_training"
