"""The report's figures: honest colour scales, flags, grouping, and sentences for empty panels."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from xstilts.analysis import figures as figs


def image(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)


def test_heatmap_scale_has_a_floor_and_is_symmetric():
    assert figs.heatmap_bound(np.array([0.2, -0.1, np.nan])) == pytest.approx(figs.HEATMAP_FLOOR)
    assert figs.heatmap_bound(np.array([0.2, -7.5])) == pytest.approx(7.5)
    assert figs.heatmap_bound(np.array([0.2]), floor=4.0) == pytest.approx(4.0)
    assert figs.heatmap_bound(np.array([np.nan])) == pytest.approx(figs.HEATMAP_FLOOR)


def test_a_small_gain_is_drawn_pale_not_saturated():
    mat = pd.DataFrame([[0.2]], index=["anli"], columns=["xnli"])
    a = image(figs.gain_heatmap(mat, title="t", xlabel="x", ylabel="y", annotations=pd.DataFrame([[""]])))
    h, w, _ = a.shape
    # the cell covers the middle of the plot area: near white (a saturated blue has R ~ 5-30)
    centre = a[h // 2 - 5:h // 2 + 5, int(w * 0.4) - 5:int(w * 0.4) + 5]
    assert centre[..., 0].mean() > 200


def test_heatmap_marks_flags_and_average_column_render():
    mat = pd.DataFrame([[1.0, 0.0, 0.5], [-2.0, 3.0, 0.5]], index=["a", "b"], columns=["xnli", "panx", "average"])
    marks = pd.DataFrame([["*", "", ""], ["", "**", ""]], index=mat.index, columns=mat.columns)
    flagged = pd.DataFrame([[False, True, False], [False, False, False]], index=mat.index, columns=mat.columns)
    png = figs.gain_heatmap(mat, title="t", xlabel="x", ylabel="y", marks=marks, flagged=flagged, floor=5.0)
    assert image(png).var() > 50


def test_language_panels_group_and_colour_by_family():
    rows = []
    for setup in ("anli", "cosmosqa"):
        for lang, fam, g in [("German", "Indo-European", 1.0), ("Swahili", "Niger-Congo", -2.0),
                             ("French", "Indo-European", 2.0), ("Yoruba", "Niger-Congo", 0.5)]:
            rows.append({"setup": setup, "language_label": lang, "family": fam, "mean_gain": g,
                         "err_low": 0.3, "err_high": 0.4})
    png = figs.language_gain_panels(pd.DataFrame(rows), group="family", title="t", ylabel="gain")
    assert image(png).var() > 50


def test_resource_points_and_old_name():
    f = pd.DataFrame({"series": ["anli", "anli", "cosmosqa"], "resource_class": [1, 5, 5],
                      "mean_gain": [1.0, -0.5, 0.3],
                      "ci_low": [0.0, np.nan, -1.0], "ci_high": [2.0, np.nan, 1.5], "n_languages": [2, 7, 7]})
    assert image(figs.resource_points(f, title="t", ylabel="gain")).var() > 50
    assert image(figs.resource_curves(f.drop(columns=["n_languages"]), title="t", ylabel="gain")).var() > 50


def test_similarity_panels_hue_fit_binary_and_too_few_points():
    rng = np.random.default_rng(0)
    pts = pd.DataFrame({"sim": rng.uniform(size=12), "same": [0, 1] * 6, "sparse": [0.1, 0.2] + [np.nan] * 10,
                        "mean_gain": rng.normal(size=12), "target": ["xnli", "panx", "tydiqa"] * 4,
                        "label": [f"p{i}" for i in range(12)]})
    corr = pd.DataFrame([{"group": "all", "measure": "sim", "n": 12, "spearman": 0.3, "spearman_p": 0.2,
                          "spearman_ci_low": -0.3, "spearman_ci_high": 0.7, "kendall": 0.2, "kendall_p": 0.3,
                          "kendall_ci_low": -0.2, "kendall_ci_high": 0.6, "p_adjusted": 0.6}])
    diff = pd.DataFrame([{"measure": "same", "difference": 0.4, "ci_low": -0.5, "ci_high": 1.2, "n_1": 6, "n_0": 6,
                          "p": 0.4, "p_adjusted": 0.8}])
    png = figs.similarity_scatter(pts, ["sim", "same", "sparse"], corr, title="t", ylabel="gain", label_column="label",
                                  binary=["same"], differences=diff)
    assert image(png).var() > 50
    # the old call (no hue column, no binary measures) still works
    assert image(figs.similarity_scatter(pts.drop(columns=["target"]), ["sim"], corr, title="t", ylabel="g")).var() > 50
