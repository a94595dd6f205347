"""The toy task: bit strings scored by their number of ones; the whole loop in seconds.

**This package is the template of a task**: to add one, copy ``wrjax/tasks/toy/`` and
replace each module's contents, keeping the module names every task has:

* ``data.py``: the data set (loading or generating; files found via :mod:`wrjax.paths`);
* ``objective.py``: the black-box objective and the novelty key;
* ``model.py``: the flax VAE (``encode``/``decode``), its init and the ``build_fn`` that
  rebuilds it from a checkpoint record (``wrjax.checkpoint.load_model``);
* ``pretrain.py``: the pretraining recipe on ``wrjax.vae.train``, and the command line
  (``PRESETS``, ``add_arguments``, ``main``) of ``python experiments/pretrain.py toy``;
* ``task.py``: ``make_<task>_task(key, ...) -> wrjax.Task``;

then ``experiments/configs/<task>.py`` for its presets (``python -m experiments.run``).

Objects are binary strings of ``length`` bits; the score is the number of ones (the "area"
of a 1-D shape). As in the paper's shapes task, the best points lie outside the data, so
weighted retraining has to move the latent space towards them.
"""

from wrjax.tasks.toy.data import bits_key, toy_data
from wrjax.tasks.toy.model import BitVAE, build_model, init_params
from wrjax.tasks.toy.objective import bits_area, make_objective
from wrjax.tasks.toy.pretrain import pretrain
from wrjax.tasks.toy.task import make_toy_task

__all__ = ["BitVAE", "bits_area", "bits_key", "build_model", "init_params", "make_objective",
           "make_toy_task", "pretrain", "toy_data"]
