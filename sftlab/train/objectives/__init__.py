"""Training objectives: what the one loop trains, registered by name (``TrainConfig.objective``).

``base.py`` is the contract every objective fulfils (and how DPO, KTO, reward modelling
and PPO/GRPO will plug in); one file per objective registers itself:

    sft    token cross-entropy on labelled tokens (``sft.py``)
    spin   SPIN's pairwise loss against the previous iterate (``spin.py``)
    dpo    DPO / IPO / cDPO on given preference pairs (``dpo.py``)
    ppo    PPO against a trained reward model, value head, GAE, KL penalty (``ppo.py``)
    vision LLaVA-style visual instruction tuning, stages 1 and 2 (``vision.py``)

``pair.py`` holds what the pairwise objectives share.
"""
# registration order is ``train.config.ObjectiveName``'s
from sftlab.train.objectives import sft, spin, dpo, kto, reward, grpo, ppo  # noqa: F401,I001  (register themselves)
from sftlab.train.objectives import vision  # noqa: F401,I001  (last: ObjectiveName ends with it)
from sftlab.train.objectives.base import OBJECTIVES, Objective

__all__ = ["OBJECTIVES", "Objective"]
