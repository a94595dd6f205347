"""The chemical-design task (paper §6.3): ZINC250k, penalized logP, SELFIES, novelty.

Modules (the public names of all but ``pretrain`` are re-exported here, so
``from wrjax.tasks import chem; chem.penalized_logp("CCO")`` works):

* :mod:`~wrjax.tasks.chem.data`: ZINC250k and its cached scores, SELFIES and novelty keys;
* :mod:`~wrjax.tasks.chem.objective`: penalized logP (also size-capped), QED, SA, Tanimoto;
* :mod:`~wrjax.tasks.chem.selfies`: the SELFIES vocabulary and token rows;
* :mod:`~wrjax.tasks.chem.novelty`: the novelty key and the set of known molecules;
* :mod:`~wrjax.tasks.chem.molecules`: RDKit parsing, canonical SMILES, a parallel map;
* :mod:`~wrjax.tasks.chem.model`: the SELFIES VAE (flax), its shipped checkpoints and
  :func:`load_model` for research code;
* :mod:`~wrjax.tasks.chem.pretrain`: its pretraining (:func:`wrjax.vae.train`) and the
  ``chem`` subcommand of ``experiments/pretrain.py``;
* :mod:`~wrjax.tasks.chem.task`: :func:`make_chem_task`, the task of the retraining loop;
* :mod:`~wrjax.tasks.chem.ga`: a genetic algorithm over SELFIES (the chemist's baseline).

Three lines from research code::

    model = wrjax.tasks.chem.load_model()     # the shipped GRU checkpoint
    z = model.encode(["CCO", "c1ccccc1"])     # (2, 56) encoder means
    smiles = model.decode(z)                  # greedy decodes, a list of SMILES
"""

from wrjax.tasks.chem.molecules import *  # noqa: F401,F403
from wrjax.tasks.chem.novelty import *  # noqa: F401,F403
from wrjax.tasks.chem.objective import *  # noqa: F401,F403
from wrjax.tasks.chem.selfies import *  # noqa: F401,F403
from wrjax.tasks.chem.data import *  # noqa: F401,F403
from wrjax.tasks.chem.model import *  # noqa: F401,F403
from wrjax.tasks.chem.task import *  # noqa: F401,F403
from wrjax.tasks.chem.ga import *  # noqa: F401,F403
from wrjax.tasks.chem import molecules, novelty, objective, selfies, data, model, task, ga

__all__ = [
    *molecules.__all__,
    *novelty.__all__,
    *objective.__all__,
    *selfies.__all__,
    *data.__all__,
    *model.__all__,
    *task.__all__,
    *ga.__all__,
]
