"""`certify --stop-if-misclassified`: images whose selected class is not their label stop
after selection; certified accuracy at every radius equals the full run's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import certify_args, linear_binary_with_pa, read_rows

from dsmooth import Smooth
from dsmooth.analysis.tables import read_log
from dsmooth.certify.methods import CohenCP, Sequential
from dsmooth.certify.noise import STAGE_ESTIMATE, STAGE_SELECT
from dsmooth.cli import main
from dsmooth.data.images import ImageSet
from dsmooth.runs.local import certify_row


@pytest.mark.parametrize("method", [[], ["--method", "sequential", "--radius", "0.1", "0.3"]])
def test_same_certified_accuracy_fewer_samples(
    tiny_data_file, tiny_classifier_file, tmp_path, method
):
    full, short = tmp_path / "full.tsv", tmp_path / "short.tsv"
    assert main(certify_args(tiny_data_file, tiny_classifier_file, full, *method)) == 0
    args = certify_args(tiny_data_file, tiny_classifier_file, short, *method)
    assert main([*args, "--stop-if-misclassified"]) == 0
    head_f, rows_f = read_rows(full)
    head_s, rows_s = read_rows(short)
    assert head_s == [*head_f, "selection_only"]
    col = {c: k for k, c in enumerate(head_s)}
    stopped = 0
    for a, b in zip(rows_f, rows_s, strict=True):
        if b[col["selection_only"]] == "1":
            stopped += 1
            assert b[col["correct"]] == "0"
            assert b[col["radius"]] == "0"
            assert b[col["predict"]] != b[col["label"]]
            assert a[col["correct"]] == "0"  # the full run could not certify it either
            if "n_used" in col:
                assert int(b[col["n_used"]]) == 50 < int(a[col["n_used"]])
        else:  # the other rows are the same certificates (same noise)
            for c in ("idx", "label", "predict", "radius", "correct"):
                assert a[col[c]] == b[col[c]], c
    assert 0 < stopped < len(rows_s)
    lf, ls = read_log(full), read_log(short)
    for r in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5):
        assert lf.certified_count(r) == ls.certified_count(r)


class Counting(torch.nn.Module):
    """A base classifier that counts the noisy images it is shown."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.seen = model, 0

    def forward(self, x):
        self.seen += len(x)
        return self.model(x)


@pytest.mark.parametrize(
    "method", [CohenCP(40, 200, 0.01), Sequential(40, 0.01, n_max=400, radii=(0.1,))]
)
def test_certified_images_reuse_the_selection_draw(method):
    """An image that is not stopped gets the very certificate of the run without the flag,
    from n0 fewer samples: CERTIFY's selection draw is the one already made."""
    x = torch.full((1, 4, 4), 0.5)
    model, _ = linear_binary_with_pa(torch.ones(1, 4, 4), x, 0.9, 0.25)
    base = Counting(model)
    smooth = Smooth(base, 2, 0.25)
    data = ImageSet((x.permute(1, 2, 0).numpy()[None] * 255).astype(np.uint8), np.array([1]))
    full = certify_row(smooth, data, i=0, method=method, batch_size=64)
    seen_full, base.seen = base.seen, 0
    short = certify_row(smooth, data, i=0, method=method, batch_size=64, stop_if_misclassified=True)
    assert short.pop("selection_only") == 0
    assert base.seen == seen_full  # selection drawn once, not twice
    for key in ("idx", "label", "predict", "radius", "correct"):
        assert short[key] == full[key], key


def test_a_reused_draw_is_only_that_draw_of_that_image():
    smooth = Smooth(
        Counting(linear_binary_with_pa(torch.ones(3), torch.zeros(3), 0.8, 0.5)[0]), 2, 0.5
    )
    x, other = torch.zeros(1, 1, 3), torch.zeros(1, 1, 3)
    drawn = smooth.sample_counts(x, 30, 16, index=0, stage=STAGE_SELECT)
    fake = np.array([30, 0])
    with smooth.reusing(x, fake, index=0, stage=STAGE_SELECT, num=30):
        assert smooth.sample_counts(x, 30, 16, index=0, stage=STAGE_SELECT).tolist() == [30, 0]
        # another image object, index, stage or count is drawn afresh
        assert smooth.sample_counts(other, 30, 16, index=0, stage=STAGE_SELECT).tolist() == (
            drawn.tolist()
        )
        assert smooth.sample_counts(x, 30, 16, index=1, stage=STAGE_SELECT).sum() == 30
        assert smooth.sample_counts(x, 31, 16, index=0, stage=STAGE_SELECT).sum() == 31
        assert smooth.sample_counts(x, 30, 16, index=0, stage=STAGE_ESTIMATE).sum() == 30
    assert smooth.sample_counts(x, 30, 16, index=0, stage=STAGE_SELECT).tolist() == drawn.tolist()
    with (
        pytest.raises(RuntimeError, match="add up"),
        smooth.reusing(x, np.array([29, 0]), index=0, stage=STAGE_SELECT, num=30),
    ):
        pass
