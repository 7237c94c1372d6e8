"""Comparing two runtimes' detections slot by slot, with the ties that float32 rounding may decide
either way excused: the order of equal scores, the top-k cut-off, and a peak that won or lost its
3x3 test by a near-tie (the deploy tests: ONNX Runtime and the TFLite detector against Keras)."""
from __future__ import annotations

import numpy as np

# Float32 rounding moves a score by up to about 1e-7 between ONNX Runtime and TensorFlow (at most
# 9.7e-8 over six trainings of the tiny model, on its parity frames; the TFLite float32 detector at
# most 1.2e-8 over three); ten times the larger is a near-tie.
NEAR_TIE = 1e-6


def peak_margins(heat: np.ndarray) -> np.ndarray:
    """Scores [B,h,w,C] -> each score minus the highest of its 8 neighbours. Decoding keeps a cell as a
    peak when that margin is positive (models/detection_decode._local_peaks); within NEAR_TIE of zero
    the runtimes' rounding decides, and the peak may sit in the neighbouring cell instead."""
    height, width = heat.shape[1:3]
    padded = np.pad(heat, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    neighbours = [padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
                  for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    return heat - np.max(neighbours, axis=0)


def _near_tied_peak(heat, margins, frame, score, cls) -> bool:
    """True when the reference's cell with this score and class (within NEAR_TIE) won or lost its
    3x3 peak test by no more than NEAR_TIE."""
    cells = np.abs(heat[frame, ..., cls] - score) <= NEAR_TIE
    return bool(np.any(np.abs(margins[frame, ..., cls][cells]) <= NEAR_TIE))


def assert_same_detections(out: dict, reference: dict, heat=None, score_atol=1e-4, box_atol=1e-2) -> None:
    """Every slot of `out` is a distinct slot of `reference` in the same frame: same class, score within
    score_atol, box within box_atol. Slots whose scores tie within score_atol may come in either order
    (top-k among equal scores is the runtime's choice), so slots are matched, not compared by index.
    For the same reason a slot may be missing from `reference` when its score ties, within score_atol,
    with the lowest score `reference` kept: the two runtimes cut the top k between tied candidates.
    With the reference's heat map (scores [B,h,w,C]), a slot may also be missing on either side when
    its cell won or lost the 3x3 peak test by a near-tie (peak_margins). The tiny model's heat map is
    nearly flat (its kept scores about 0.011): 26-31 of its ~850 peaks on the parity frames win by
    under NEAR_TIE. One `make test` of six on 2026-12-05 failed on an ONNX peak (score 0.0109) that
    Keras did not have: the mismatch this rule excuses where the heat map shows the near-tie."""
    margins = None if heat is None else peak_margins(heat)

    def near_tie(frame, score, cls):
        return margins is not None and _near_tied_peak(heat, margins, frame, score, cls)

    for i in range(len(reference["scores"])):
        free = list(range(len(reference["scores"][i])))
        lowest_kept = float(np.min(reference["scores"][i])) if len(free) else -np.inf
        for score, cls, box in zip(out["scores"][i], out["classes"][i], out["boxes"][i]):
            match = next((j for j in free if reference["classes"][i][j] == cls
                          and abs(reference["scores"][i][j] - score) <= score_atol
                          and np.allclose(reference["boxes"][i][j], box, atol=box_atol)), None)
            if match is None and (abs(score - lowest_kept) <= score_atol or near_tie(i, score, cls)):
                continue  # tied with the cut-off of the top k, or with a neighbour in the peak test
            assert match is not None, (i, score, cls, box)
            free.remove(match)
        # ...and every reference slot left over is one of those ties, not a lost detection.
        for j in free:
            score, cls = reference["scores"][i][j], reference["classes"][i][j]
            assert abs(score - lowest_kept) <= score_atol or near_tie(i, score, cls), (i, j, score)


def keras_heat(net, images: list[np.ndarray]) -> np.ndarray:
    """The Keras net's heat-map scores [B,h,w,C] on the parity batches (frames at the model size);
    `net`: the reference predictor's own (runtimes.KerasPredictor.net), not a second load."""
    logits = [net({"image": batch.astype(np.float32)}, training=False)["detection"].numpy() for batch in images]
    logits = np.concatenate(logits)
    classes = logits.shape[-1] - 4  # heat maps, then size and offset
    return 1.0 / (1.0 + np.exp(-logits[..., :classes].astype(np.float64)))
