"""The harmonic vocoder's pitch: the speaker's track moved to the target voice's register.

The speaker's mean log f0 is learnt frame by frame as they talk, starting from ``PRIOR_F0_HZ`` as if heard for
``PRIOR_FRAMES`` voiced frames (10 ms); beyond ``MEMORY_FRAMES`` the oldest fade (a new speaker at the same mic
is followed within ~10 s of their speech). A pure function, so the streaming and offline passes share it.
"""

from __future__ import annotations

import numpy as np
import torch

from models.audio.pitch_track import hold_unvoiced

PRIOR_F0_HZ, PRIOR_FRAMES, MEMORY_FRAMES = 150.0, 5, 1000
F0_RANGE_HZ = (50.0, 600.0)


def map_pitch(f0: torch.Tensor, voicing: torch.Tensor, stats: torch.Tensor,
              target_log_f0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk's pitch for a harmonic vocoder: the speaker's track moved to the target's register.

    ``f0``, ``voicing`` (B, N): the tracker's frames of the speaker; ``stats`` (B, 3): the sum of log f0 and
    the count of the speaker's voiced frames so far and the last output f0; ``target_log_f0`` (B,). Returns
    the output f0 (B, N) (log f0 shifted by the target's median minus the speaker's running mean, held
    through unvoiced frames) and the new stats. A pure function, so streaming and offline passes share it.
    """
    log_f0 = f0.clamp_min(1.0).log()
    voiced = (voicing > 0.5).float()
    # the speaker's mean log f0 up to and including each frame (the prior counts as PRIOR_FRAMES frames)
    total = stats[:, :1] + torch.cumsum(log_f0 * voiced, dim=1)
    count = stats[:, 1:2] + torch.cumsum(voiced, dim=1)
    mean = (total + PRIOR_FRAMES * np.log(PRIOR_F0_HZ)) / (count + PRIOR_FRAMES)
    shifted = (log_f0 - mean + target_log_f0[:, None]).exp().clamp(*F0_RANGE_HZ)
    out = hold_unvoiced(shifted, voicing, stats[:, 2])
    fade = MEMORY_FRAMES / count[:, -1].clamp_min(MEMORY_FRAMES)  # beyond the memory the oldest frames fade
    return out, torch.stack([total[:, -1] * fade, count[:, -1] * fade, out[:, -1]], dim=1)
